"""Argo CD Core under mocks, as the real engine will run it (issue 10, points 1-4; issue 11, point 6).

The program reads the pinned core-install.yaml; here the harness points it at our fixtures
(tests/fixtures/upstream), two versions that differ as an upgrade does. What is asserted is what
the engine acts on: URNs and the aliases that carry old ones over, retainOnDelete, deletedWith,
dependencies, and which resource owns which Kubernetes object.
"""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path
from typing import Any

import pulumi
import pytest
import yaml

from components.upstream import PinnedFiles
from tests.conftest import EXAMPLE_HOST_KEY, base_config, fake_private_key
from tests.harness import (
    STACK,
    UPSTREAM_FIXTURE_PINS,
    ProgramRun,
    Registered,
    fixture_upstream,
    resolve_identities,
    run_program,
)

MODES = {"preview": True, "up": False}
FIXTURES = UPSTREAM_FIXTURE_PINS.parent
OLD, NEW = "v2.13.3", "v2.14.21"
ARGOCD = f"urn:pulumi:{STACK}::space-harbor::space-harbor:index:ArgoCD"
CONFIG_FILE_CHAIN = "space-harbor:index:ArgoCD$kubernetes:yaml/v2:ConfigFile"
CLUSTER_SCOPED = {"CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding"}
KNOWN_HOSTS_CM = "argocd-ssh-known-hosts-cm"
OLD_URNS = Path(__file__).parent / "fixtures" / "urns-single.txt"


def fixture_objects(version: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all((FIXTURES / f"argocd-core-{version}.yaml").read_text()) if doc]


def token(document: dict[str, Any]) -> str:
    group, _, version = document["apiVersion"].rpartition("/")
    return f"kubernetes:{group or 'core'}/{version}:{document['kind']}"


def config_file_child_urn(document: dict[str, Any]) -> str:
    """The URN a child of the old ConfigFile "argocd-core" had: pulumi-kubernetes's yaml/v2 naming rule."""
    name = document["metadata"]["name"]
    scoped = name if document["kind"] in CLUSTER_SCOPED else f"argocd/{name}"
    return f"urn:pulumi:{STACK}::space-harbor::{CONFIG_FILE_CHAIN}${token(document)}::argocd-core:{scoped}"


def with_version(version: str, config: dict[str, Any] | None = None) -> dict[str, Any]:
    config = copy.deepcopy(config or base_config(agents=1))
    config["argocd"] = {"version": version}
    return config


def kubernetes_objects(run: ProgramRun) -> list[Registered]:
    return [r for r in run.resources if r.custom and r.type.startswith("kubernetes:")]


def argocd_children(run: ProgramRun) -> list[Registered]:
    return [r for r in run.resources if r.parent and r.parent.endswith("::space-harbor:index:ArgoCD::argocd")]


def writers_of(run: ProgramRun, kind: str, name: str) -> list[Registered]:
    return [
        r
        for r in kubernetes_objects(run)
        if r.type.endswith(f":{kind}") or r.type.endswith(f":{kind}Patch")
        if (r.inputs.get("metadata") or {}).get("name") == name
    ]


def known_hosts_entries(run: ProgramRun) -> list[str]:
    (configmap,) = writers_of(run, "ConfigMap", KNOWN_HOSTS_CM)
    text = configmap.inputs["data"]["ssh_known_hosts"]
    return [line for line in text.splitlines() if line and not line.startswith("#")]


# --- object by object, under the identities the ConfigFile gave them ---------------------------


@pytest.mark.parametrize("mode", MODES)
def test_each_pinned_object_is_its_own_resource_in_argocd(mode: str) -> None:
    run = run_program(with_version(OLD), preview=MODES[mode])
    provider = run.named("cluster")
    registered = {(r.type, r.name): r for r in argocd_children(run)}
    for document in fixture_objects(OLD):
        name = document["metadata"]["name"]
        urn = config_file_child_urn(document)
        resource = registered[token(document), urn.split("::")[-1]]
        assert resource.custom and resource.provider == provider.urn
        metadata = resource.inputs["metadata"]
        assert metadata["name"] == name
        assert metadata.get("namespace") == (None if document["kind"] in CLUSTER_SCOPED else "argocd")
        if document["kind"] == "ConfigMap" and name == KNOWN_HOSTS_CM:
            continue  # ours; its data is the next test's subject
        assert resource.inputs["apiVersion"] == document["apiVersion"] and resource.inputs["kind"] == document["kind"]
        for key in set(document) - {"apiVersion", "kind", "metadata"}:
            assert resource.inputs[key] == document[key], f"{document['kind']} {name}: {key}"


def test_the_known_hosts_configmap_has_one_writer_and_no_patch() -> None:
    run = run_program(with_version(OLD))
    assert len(writers_of(run, "ConfigMap", KNOWN_HOSTS_CM)) == 1
    assert not [r for r in run.resources if "Patch" in r.type]
    assert not [r for r in run.resources if r.type == "kubernetes:yaml/v2:ConfigFile"]


def test_known_hosts_are_argo_cds_defaults_then_gitops_known_hosts() -> None:
    config = with_version(OLD)
    defaults = [
        line
        for document in fixture_objects(OLD)
        if document["metadata"]["name"] == KNOWN_HOSTS_CM
        for line in document["data"]["ssh_known_hosts"].splitlines()
        if line and not line.startswith("#")
    ]
    ours = f"git.example.org {EXAMPLE_HOST_KEY}"
    config["gitops"]["knownHosts"] = f"{ours}\n{defaults[1]}\n"  # one of ours is also a default
    assert known_hosts_entries(run_program(config)) == [*defaults, ours]


def test_an_existing_stack_keeps_every_argo_cd_object_through_an_alias() -> None:
    """The URNs a stack holds from the ConfigFile era (tests/program/fixtures/urns-single.txt, plus the
    ConfigFile's children, which mocks never showed) are each taken over by one resource: no delete."""
    recorded = {urn for urn in OLD_URNS.read_text().split() if "ArgoCD" in urn or "SealedSecretsKey" in urn}
    children = {config_file_child_urn(document) for document in fixture_objects(OLD)}
    run = run_program(with_version(OLD))
    matched = resolve_identities(run.resources, recorded | children)
    taken = [old for old in matched.values() if old is not None]
    assert len(taken) == len(set(taken)), "two resources claim one old URN"
    dropped = (recorded | children) - set(taken)
    # Only what owned nothing in the cluster goes: the ConfigFile component, and the patch that never applied.
    assert dropped == {
        f"{ARGOCD}$kubernetes:yaml/v2:ConfigFile::argocd-core",
        f"{ARGOCD}$kubernetes:core/v1:ConfigMapPatch::argocd-ssh-known-hosts",
    }
    for resource in run.resources:
        if matched[resource.urn] in children:
            assert matched[resource.urn] != resource.urn  # reached through the alias, not by chance


def test_crds_are_never_deleted_by_the_engine() -> None:
    run = run_program(with_version(OLD))
    crds = [r for r in run.resources if r.type == "kubernetes:apiextensions.k8s.io/v1:CustomResourceDefinition"]
    assert sorted(r.inputs["metadata"]["name"] for r in crds) == [
        "applications.argoproj.io",
        "applicationsets.argoproj.io",
        "appprojects.argoproj.io",
    ]
    assert all(r.retain_on_delete for r in crds)


@pytest.mark.parametrize("mode", MODES)
def test_secret_data_of_the_manifest_stays_secret(mode: str) -> None:
    run = run_program(with_version(OLD), preview=MODES[mode])
    (secret,) = [r for r in argocd_children(run) if r.name == "argocd-core:argocd/argocd-secret"]
    assert "data" in secret.secret_inputs
    assert "Zml4dHVyZS1zZWNyZXQ" not in secret.public_text()
    assert secret.inputs["data"] == {"fixture.key": "Zml4dHVyZS1zZWNyZXQtNzFjMg=="}


# --- an Argo CD upgrade ------------------------------------------------------------------------


def test_an_upgrade_updates_crds_in_place_keeps_our_hosts_and_creates_only_whats_new() -> None:
    config = with_version(OLD)
    ours = f"git.example.org {EXAMPLE_HOST_KEY}"
    before, after = run_program(config), run_program(with_version(NEW, config))
    old_urns = {r.urn for r in before.resources}
    matched = resolve_identities(after.resources, old_urns)

    def crds(run: ProgramRun) -> dict[str, Registered]:
        return {r.urn: r for r in run.resources if r.type.endswith(":CustomResourceDefinition")}

    assert crds(after).keys() == crds(before).keys(), "a CRD was renamed, added or dropped"
    for urn, crd in crds(after).items():
        assert matched[urn] == urn and crd.retain_on_delete
    # The schema change reaches the CRD as an update of the same resource.
    changed = [urn for urn in crds(after) if crds(after)[urn].inputs != crds(before)[urn].inputs]
    assert [urn.rsplit(":", 1)[-1] for urn in changed] == ["applications.argoproj.io"]

    creates = {r.type + " " + r.name for r in after.resources if matched[r.urn] is None}
    new_in_fixture = {
        token(d) + " argocd-core:argocd/" + d["metadata"]["name"]
        for d in fixture_objects(NEW)
        if (d["kind"], d["metadata"]["name"]) not in {(o["kind"], o["metadata"]["name"]) for o in fixture_objects(OLD)}
    }
    assert new_in_fixture == {"kubernetes:core/v1:ServiceAccount argocd-core:argocd/argocd-commit-server"}
    assert creates == new_in_fixture
    deletes = old_urns - {old for old in matched.values() if old}
    assert deletes == set()

    old_hosts, new_hosts = known_hosts_entries(before), known_hosts_entries(after)
    assert ours in old_hosts and ours in new_hosts
    assert old_hosts != new_hosts  # the new release's default keys came in


@pytest.mark.parametrize("version", [OLD, NEW])
def test_every_supported_version_runs(version: str) -> None:
    run = run_program(with_version(version))
    assert run.named("argocd-root-application")


# --- the root Application's own project --------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_the_root_application_lives_in_a_least_privilege_project_created_first(mode: str) -> None:
    config = with_version(OLD)
    run = run_program(config, preview=MODES[mode])
    project, root = run.named("argocd-root-project"), run.named("argocd-root-application")
    assert project.type == "kubernetes:argoproj.io/v1alpha1:AppProject"
    assert project.inputs["metadata"]["namespace"] == "argocd"
    assert root.inputs["spec"]["project"] == project.inputs["metadata"]["name"] != "default"
    spec = project.inputs["spec"]
    assert spec["sourceRepos"] == [config["gitops"]["repoUrl"]]
    assert spec["destinations"] == [{"server": "https://kubernetes.default.svc", "namespace": "argocd"}]
    # Cluster-scoped: Namespaces only, which users commit under apps/user for their apps.
    assert spec["clusterResourceWhitelist"] == [{"group": "", "kind": "Namespace"}]
    assert {(item["group"], item["kind"]) for item in spec["namespaceResourceWhitelist"]} == {
        ("argoproj.io", "Application"),
        ("argoproj.io", "AppProject"),
    }
    assert run.depends_on(root, project)
    crd = next(r for r in run.resources if r.name == "argocd-core:appprojects.argoproj.io")
    assert run.depends_on(project, crd)
    # The root waits for its hosts and credentials, else its first sync fails.
    assert run.depends_on(root, next(iter(writers_of(run, "ConfigMap", KNOWN_HOSTS_CM))))
    assert run.depends_on(root, run.named("argocd-repository"))


# --- deletes that need no API -------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_every_kubernetes_object_goes_with_the_cluster(mode: str) -> None:
    run = run_program(with_version(OLD), preview=MODES[mode])
    cluster_id = next(r for r in run.resources if r.name == "cluster-id" and r.custom)
    objects = kubernetes_objects(run)
    assert len(objects) >= len(fixture_objects(OLD)) + 5  # + namespace, repository, project, root, sealing key
    assert "kubernetes:core/v1:Secret" in {r.type for r in objects if r.name == "sealed-secrets-secret"}
    missing = [f"{r.type} {r.name}" for r in objects if r.deleted_with != cluster_id.urn]
    assert missing == []
    assert run.named("cluster").deleted_with is None  # the provider itself is not an object in the cluster


# --- refusals before anything is registered -----------------------------------------------------


def test_without_the_vendored_file_the_program_stops_before_any_resource(tmp_path: Path) -> None:
    empty = PinnedFiles(UPSTREAM_FIXTURE_PINS, tmp_path / "cache")
    with pytest.raises(
        pulumi.RunError, match=r"argocd-core v2\.13\.3 is not on this machine.*\./scripts/vendor"
    ) as refused:
        run_program(with_version(OLD), preview=True, upstream=empty)
    assert refused.value.program_run.resources == []  # type: ignore[attr-defined]


def test_an_altered_vendored_file_is_refused_before_any_resource(tmp_path: Path) -> None:
    store = PinnedFiles(UPSTREAM_FIXTURE_PINS, tmp_path / "cache")
    assert store.fetch(report=lambda _: None) == []
    cached = store.cached_path(store.pin("argocd-core", OLD))
    cached.write_text(cached.read_text().replace("argocd-repo-server", "argocd-evil-server"))
    with pytest.raises(pulumi.RunError, match="was altered after it was fetched") as refused:
        run_program(with_version(OLD), upstream=store)
    assert refused.value.program_run.resources == []  # type: ignore[attr-defined]


# --- Argo CD's own read-only credential --------------------------------------------------------

READ_KEY = "MARKER-ARGOCD-READ-ONLY-7e21"


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "Argo CD" in r.getMessage()]


@pytest.mark.parametrize("mode", MODES)
def test_reusing_the_write_key_warns_once_naming_the_key_to_set(mode: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    run_program(with_version(OLD), preview=MODES[mode])
    assert _warnings(caplog) == [
        "Argo CD reads the GitOps repository with the write credential (gitops.sshPrivateKey); "
        "give it a read-only one in gitops.argocdSshPrivateKey"
    ]


def test_reusing_the_https_login_warns_naming_argo_cds_keys(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    config = with_version(OLD)
    config["gitops"] = {"repoUrl": "https://git.example.org/ops/cluster.git", "username": "bot", "password": "pw"}
    run_program(config, preview=True)
    (warning,) = _warnings(caplog)
    assert "gitops.username/gitops.password" in warning and "gitops.argocdUsername and gitops.argocdPassword" in warning


@pytest.mark.parametrize("mode", MODES)
def test_a_read_only_key_goes_to_argo_cd_and_the_write_key_to_the_commit(
    mode: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    config = with_version(OLD)
    config["gitops"]["argocdSshPrivateKey"] = fake_private_key(READ_KEY)
    write_key = config["gitops"]["sshPrivateKey"]
    run = run_program(config, preview=MODES[mode])
    assert _warnings(caplog) == []
    repository = run.named("argocd-repository")
    assert "stringData" in repository.secret_inputs
    assert READ_KEY in repository.inputs["stringData"]["sshPrivateKey"]
    assert write_key.strip() not in json.dumps(repository.inputs)
    commit = [r for r in run.resources if r.type == "pulumi-python:dynamic:Resource" and "credentials" in r.inputs]
    assert commit, "the GitOps commit resource"
    for resource in commit:
        assert READ_KEY not in json.dumps(resource.inputs)
    for resource in run.resources:
        assert READ_KEY not in resource.public_text(), f"{resource.type} {resource.name}"


def test_the_fixture_store_is_the_default_of_the_harness() -> None:
    # Program tests never depend on what ./scripts/vendor left on this machine.
    assert fixture_upstream().pins_file == UPSTREAM_FIXTURE_PINS
    assert {v for v in fixture_upstream().versions("argocd-core")} == {OLD, NEW}
