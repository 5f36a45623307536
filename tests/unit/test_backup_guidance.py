"""The backup guidance in the generated cluster/README.md against backup-maker-controller v0.1.2.

The README shows users the ScheduledBackup to commit. Its example is taken out of the README as
rendered and checked against the CRD's OpenAPI v3 schema as the API server would take it with
strict field validation: required fields, types, enums, and no field the schema does not know.
The schema is our own minimal CRD fixture, pinned like the real file (tests/fixtures/upstream/);
the real CRD, pinned in manifests/upstream.yaml, is checked too once ./scripts/vendor fetched it.
"""

from __future__ import annotations

import copy
import re
from typing import Any

import jsonschema
import pytest
import yaml

from components import upstream
from components.config import load_config
from components.platform.backup import BACKUP_SECRET, BACKUP_TOKEN_KEY
from components.render.gitops import render_tree
from components.render.platform import secret_specs
from tests.conftest import base_config
from tests.harness import fixture_upstream

CRD_KIND = "backup-maker-crd"
CRD_VERSION = "v0.1.2"  # the chart's version in manifests/gitops/versions.yaml
REPOSITORY = "https://backups.example.org:8443/"


def backup_config(**backup: Any) -> dict[str, Any]:
    config = base_config(agents=1)
    config["components"]["sealedSecrets"] = {"enabled": True}
    config["components"]["backup"] = {
        "enabled": True,
        "schedule": "30 2 * * *",
        "repositoryUrl": REPOSITORY,
        "collectionId": "harbor-prod",
        "token": "a-token",
        **backup,
    }
    return config


def generated_readme(config: dict[str, Any]) -> str:
    model = load_config(config)
    # The README does not depend on the ciphertext; a SealedSecret of the right name stands in for it.
    sealed = {
        spec.path: yaml.safe_dump(
            {"kind": "SealedSecret", "metadata": {"name": spec.name, "namespace": spec.namespace}}
        )
        for spec in secret_specs(model)
    }
    tree = render_tree(model, sealed)
    return tree[f"{model.gitops.path}/README.md"]


def yaml_blocks(markdown: str) -> list[dict[str, Any]]:
    """Every document of every ```yaml block."""
    documents: list[dict[str, Any]] = []
    for block in re.findall(r"^```yaml\n(.*?)^```$", markdown, re.MULTILINE | re.DOTALL):
        documents += [d for d in yaml.safe_load_all(block) if d]
    return documents


def strict(schema: dict[str, Any]) -> dict[str, Any]:
    """An OpenAPI v3 structural schema as JSON Schema, refusing unknown fields as strict field
    validation does (except where the schema keeps unknown fields, and in metadata)."""
    schema = copy.deepcopy(schema)
    if schema.get("type") == "object" and "properties" in schema:
        if not schema.get("x-kubernetes-preserve-unknown-fields"):
            schema["additionalProperties"] = False
        schema["properties"] = {name: strict(sub) for name, sub in schema["properties"].items()}
    if "items" in schema:
        schema["items"] = strict(schema["items"])
    return {key: value for key, value in schema.items() if not key.startswith("x-kubernetes-")}


def problems(crd_text: str, obj: dict[str, Any]) -> list[str]:
    """Why the API server would refuse `obj` under this CRD; nothing when it would take it."""
    crd = yaml.safe_load(crd_text)
    spec = crd["spec"]
    found = []
    group_version = obj.get("apiVersion", "")
    versions = {f"{spec['group']}/{v['name']}": v for v in spec["versions"] if v.get("served")}
    if group_version not in versions:
        return [f"apiVersion {group_version!r} is not served; served: {sorted(versions)}"]
    if obj.get("kind") != spec["names"]["kind"]:
        found.append(f"kind {obj.get('kind')!r} is not {spec['names']['kind']}")
    if spec["scope"] == "Namespaced" and not (obj.get("metadata") or {}).get("namespace"):
        found.append("metadata.namespace: a namespaced object names its namespace")
    schema = strict(versions[group_version]["schema"]["openAPIV3Schema"])
    validator = jsonschema.Draft7Validator(schema)
    for error in sorted(validator.iter_errors(obj), key=lambda e: list(e.absolute_path)):
        path = ".".join(str(part) for part in error.absolute_path) or "(top)"
        found.append(f"{path}: {error.message}")
    return found


def fixture_crd() -> str:
    return fixture_upstream().read(CRD_KIND, CRD_VERSION)


def scheduled_backups(config: dict[str, Any]) -> list[dict[str, Any]]:
    return [d for d in yaml_blocks(generated_readme(config)) if d.get("kind") == "ScheduledBackup"]


def test_the_readme_example_is_a_valid_scheduled_backup_of_v0_1_2() -> None:
    examples = scheduled_backups(backup_config())
    assert examples, "the generated README shows no ScheduledBackup to commit"
    for example in examples:
        assert problems(fixture_crd(), example) == []


def test_the_example_carries_the_stack_config_where_v0_1_2_reads_it() -> None:
    config = backup_config()
    (example,) = scheduled_backups(config)
    spec = example["spec"]
    assert example["metadata"]["namespace"] == "backup"
    assert spec["operation"] == "backup"
    assert spec["cronJob"] == {"enabled": True, "scheduleEvery": "30 2 * * *"}
    assert spec["collectionId"] == "harbor-prod"
    # The token the program seals, by the name and key it seals it under.
    (token,) = secret_specs(load_config(config))
    assert (token.namespace, token.name) == ("backup", BACKUP_SECRET)
    assert spec["tokenSecretRef"] == {"secretName": token.name, "tokenKey": BACKUP_TOKEN_KEY}
    assert BACKUP_TOKEN_KEY in token.data
    # The GPG key pair lives in a Secret of its own: the controller adds its keys to the Secret it
    # is given, which must not be the one Sealed Secrets keeps equal to git.
    assert spec["gpgKeySecretRef"]["secretName"] != BACKUP_SECRET
    # v0.1.2 has no repository-URL field: the template's script reads it from vars.
    variables = yaml.safe_load(spec["vars"])
    assert variables["Repository"]["url"] == REPOSITORY
    assert variables["Repository"]["collectionId"] == "harbor-prod"
    assert variables["Repository"]["recipient"] == spec["gpgKeySecretRef"]["email"]
    assert "repositoryUrl" not in str(spec) and "token" not in variables["Repository"]


def test_the_check_refuses_the_guidance_as_it_was() -> None:
    """The control: what the README told users before (a repository URL, a schedule, a collection
    and the token Secret, nothing else) is refused, naming every field v0.1.2 requires."""
    before = {
        "apiVersion": "riotkit.org/v1alpha1",
        "kind": "ScheduledBackup",
        "metadata": {"name": "app", "namespace": "backup"},
        "spec": {
            "cronJob": {"scheduleEvery": "0 3 * * *"},
            "collectionId": "harbor-prod",
            "repositoryUrl": REPOSITORY,
            "tokenSecretRef": {"secretName": BACKUP_SECRET, "tokenKey": BACKUP_TOKEN_KEY},
        },
    }
    found = "\n".join(problems(fixture_crd(), before))
    for field in ("gpgKeySecretRef", "operation", "templateRef", "vars", "varsSecretRef"):
        assert f"'{field}' is a required property" in found
    assert "'enabled' is a required property" in found
    assert "'repositoryUrl' was unexpected" in found


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda o: o["spec"].update(operation="archive"), "'archive' is not one of ['backup', 'restore']"),
        (lambda o: o["spec"].update(vars={"Repository": {}}), "spec.vars: {'Repository': {}} is not of type 'string'"),
        (lambda o: o.update(apiVersion="riotkit.org/v1"), "apiVersion 'riotkit.org/v1' is not served"),
        (lambda o: o["metadata"].pop("namespace"), "metadata.namespace: a namespaced object names its namespace"),
        (lambda o: o["spec"]["templateRef"].pop("kind"), "spec.templateRef: 'kind' is a required property"),
    ],
)
def test_the_check_catches_each_kind_of_mistake(change: Any, expected: str) -> None:
    (example,) = scheduled_backups(backup_config())
    change(example)
    assert expected in "\n".join(problems(fixture_crd(), example))


@pytest.mark.vendored
def test_the_example_validates_against_the_real_crd() -> None:
    real = upstream.read_pinned(CRD_KIND, CRD_VERSION)
    (example,) = scheduled_backups(backup_config())
    assert problems(real, example) == []


def test_the_fixture_mirrors_the_real_pin() -> None:
    real = upstream.PinnedFiles(upstream.PINS_FILE, upstream.CACHE_DIR)
    assert real.versions(CRD_KIND) == fixture_upstream().versions(CRD_KIND) == (CRD_VERSION,)
    pin = real.pin(CRD_KIND, CRD_VERSION)
    assert pin.url == (
        "https://raw.githubusercontent.com/riotkit-org/backup-maker-controller/"
        f"{CRD_VERSION}/config/crd/bases/riotkit.org_scheduledbackups.yaml"
    )
    versions = yaml.safe_load((upstream.ROOT / "manifests" / "gitops" / "versions.yaml").read_text())
    assert str(versions["backup"]["version"]) == CRD_VERSION
