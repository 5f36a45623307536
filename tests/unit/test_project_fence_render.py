"""The project fence's admission policies (components/render/project_fence.py), as data.

What the real API server makes of them (the CEL compiled and type-checked against Argo CD's CRDs,
the refusals, the controller's status writes) is the real tier's subject; here: whose writes they
judge, and that the platform's objects they let through are exactly those of the GitOps tree.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml

from components import upstream
from components.config import load_config
from components.platform import REGISTRY
from components.render.admission import render_binding
from components.render.gitops import render_root_application, render_tree
from components.render.project_fence import (
    APPLICATIONS_POLICY,
    PROJECTS_POLICY,
    ProjectFenceArgs,
    cel_literal,
    project_fence_args,
    render_applications_policy,
    render_projects_policy,
)
from tests.conftest import base_config
from tests.unit.test_platform_render import BACKUP_TOKEN, SMTP_PASSWORD, TELEGRAF_KEY, TOKEN_MARKER, full_raw

CONTROLLER = "system:serviceaccount:argocd:argocd-application-controller"
CONFIGS = {"minimal": lambda: base_config(agents=1), "all-components": full_raw}


def args_for(raw: dict[str, Any]) -> ProjectFenceArgs:
    return project_fence_args(load_config(raw), CONTROLLER)


def tree_objects(raw: dict[str, Any], kind: str, folder: str) -> dict[str, dict[str, Any]]:
    """The `kind` objects the GitOps tree holds under cluster/<folder>/, by name, as committed."""
    found: dict[str, dict[str, Any]] = {}
    for path, text in render_tree(load_config(raw)).items():
        if not path.startswith(f"cluster/{folder}/") or not path.endswith(".yaml"):
            continue
        for document in yaml.safe_load_all(text):
            if isinstance(document, dict) and document.get("kind") == kind:
                found[document["metadata"]["name"]] = document
    return found


def variable(policy: dict[str, Any], name: str) -> str:
    return next(v["expression"] for v in policy["spec"]["variables"] if v["name"] == name)


def from_cel(literal: str) -> Any:
    """A literal of `cel_literal` read back: JSON's spelling of scalars is Python's, once true, false and
    null are named, and dyn() is the identity."""
    return eval(literal, {"__builtins__": {}, "dyn": lambda x: x, "true": True, "false": False, "null": None})  # noqa: S307


@pytest.mark.parametrize("policy", [render_applications_policy, render_projects_policy])
def test_each_policy_judges_creates_and_updates_by_the_controller_only(policy: Any) -> None:
    rendered = policy(args_for(base_config(agents=1)))
    (rule,) = rendered["spec"]["matchConstraints"]["resourceRules"]
    assert rule["apiGroups"] == ["argoproj.io"] and rule["operations"] == ["CREATE", "UPDATE"]
    assert rule["resources"] == (["applications"] if policy is render_applications_policy else ["appprojects"])
    (condition,) = rendered["spec"]["matchConditions"]
    assert condition["expression"] == f'request.userInfo.username == "{CONTROLLER}"'
    assert rendered["spec"]["failurePolicy"] == "Fail"


@pytest.mark.parametrize("raw", CONFIGS.values(), ids=CONFIGS.keys())
def test_the_platform_applications_let_through_are_the_tree_s_and_the_root_exactly(raw: Any) -> None:
    """A platform Application missing here would be refused to the root's sync; one rendered otherwise, too."""
    in_tree = tree_objects(raw(), "Application", "apps/platform")
    assert in_tree, "the tree has no platform Application"
    root = render_root_application(load_config(raw()))
    expected = {name: app["spec"] for name, app in in_tree.items()} | {root["metadata"]["name"]: root["spec"]}
    policy = render_applications_policy(args_for(raw()))
    assert from_cel(variable(policy, "rendered")) == expected


@pytest.mark.parametrize("raw", CONFIGS.values(), ids=CONFIGS.keys())
def test_the_projects_let_through_are_the_tree_s_exactly(raw: Any) -> None:
    in_tree = tree_objects(raw(), "AppProject", "apps/projects")
    assert {"infrastructure", "applications"} <= set(in_tree)
    policy = render_projects_policy(args_for(raw()))
    assert from_cel(variable(policy, "rendered")) == {name: project["spec"] for name, project in in_tree.items()}


def test_a_disabled_component_s_name_is_not_the_platform_s() -> None:
    """A user's Application named like a component this stack leaves off gets a user's project like any other."""
    minimal = args_for(base_config(agents=1))
    disabled = {component.name for component in REGISTRY} - set(minimal.platform_applications)
    assert "longhorn" in disabled and "backup" in disabled
    assert "longhorn" in args_for(full_raw()).platform_applications


def test_users_projects_are_applications_and_with_the_backup_component_backups() -> None:
    assert args_for(base_config(agents=1)).user_projects == ("applications",)
    assert set(args_for(full_raw()).user_projects) == {"applications", "backups"}
    (_, by_project, _) = render_applications_policy(args_for(full_raw()))["spec"]["validations"]
    assert 'object.spec.project in ["applications", "backups"]' in by_project["expression"]
    # Without the backup component, no Application may name `backups`: a user could not bring that project either.
    assert "backups" not in args_for(base_config(agents=1)).platform_projects


def test_the_refusals_say_what_to_change_and_where() -> None:
    args = args_for(base_config(agents=1))
    same_name, by_project, operation = render_applications_policy(args)["spec"]["validations"]
    assert "an Application under cluster/apps/user must name project applications" in by_project["message"]
    assert "spec.project" in by_project["message"]
    assert "' names project ' + object.spec.project" in by_project["messageExpression"]
    assert "give yours another name in cluster/apps/user" in same_name["message"]
    assert "remove the operation from its file in cluster/apps/user" in operation["message"]
    (project,) = render_projects_policy(args)["spec"]["validations"]
    assert "remove it from cluster/apps/user" in project["message"]
    assert "(infrastructure, applications)" in project["message"]


def test_writes_that_keep_the_spec_pass_the_name_and_project_rules() -> None:
    """Status, syncs, finalizers: how the controller finishes deleting an Application this run no longer names."""
    policy = render_applications_policy(args_for(base_config(agents=1)))
    assert variable(policy, "specKept") == "request.operation == 'UPDATE' && object.spec == oldObject.spec"
    same_name, by_project, operation = policy["spec"]["validations"]
    assert same_name["expression"].startswith("variables.specKept || ")
    assert by_project["expression"].startswith("variables.specKept || ")
    # ...but an operation is judged whatever the spec: it may name sources of its own.
    assert "specKept" not in operation["expression"]
    runs = variable(policy, "runsItsSpec")
    for field in ("manifests", "source", "sources"):
        assert f"has(object.operation.sync.{field})" in runs


def test_no_secret_of_the_stack_reaches_the_policies() -> None:
    """The policies are plain objects in state and in the cluster; the tree they copy holds no secret."""
    args = args_for(full_raw())
    text = json.dumps([render_applications_policy(args), render_projects_policy(args)])
    for marker in (TOKEN_MARKER, SMTP_PASSWORD, BACKUP_TOKEN, TELEGRAF_KEY):
        assert marker not in text


def test_cel_literals_wrap_every_member_in_dyn_and_keep_the_value() -> None:
    value = {"a": [1, "two", {"x": None, "y": True}], "b": 2.5, 'quote"d': "line\nbreak \u00e9"}
    literal = cel_literal(value)
    assert from_cel(literal) == value
    assert literal.startswith('{"a": dyn([dyn(1), dyn("two"), dyn({"x": dyn(null), "y": dyn(true)})])')


def test_each_binding_denies_with_its_policy() -> None:
    args = args_for(base_config(agents=1))
    for policy, name in (
        (render_applications_policy(args), APPLICATIONS_POLICY),
        (render_projects_policy(args), PROJECTS_POLICY),
    ):
        binding = render_binding(policy)
        assert policy["metadata"]["name"] == binding["metadata"]["name"] == name
        assert binding["spec"] == {"policyName": name, "validationActions": ["Deny"]}


def schema_problems(value: Any, schema: dict[str, Any], path: str) -> list[str]:
    """What the API server would prune or refuse in `value` under a CRD's structural schema: a field
    the schema does not declare (pruned silently), a value of another type, a null."""
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return []
    if value is None:
        return [] if schema.get("nullable") else [f"{path}: null"]
    if schema.get("x-kubernetes-int-or-string"):
        return [] if isinstance(value, int | str) and not isinstance(value, bool) else [f"{path}: {value!r}"]
    kind = schema.get("type")
    if kind == "object" or isinstance(value, dict):
        if not isinstance(value, dict):
            return [f"{path}: {value!r} is not an object"]
        found = []
        for key, item in value.items():
            declared = (schema.get("properties") or {}).get(key)
            extra = schema.get("additionalProperties")
            if declared is None and isinstance(extra, dict):
                declared = extra
            if declared is None and extra is not True:
                found.append(f"{path}.{key}: not in the schema (pruned)")
            elif declared is not None:
                found += schema_problems(item, declared, f"{path}.{key}")
        return found
    if kind == "array":
        if not isinstance(value, list):
            return [f"{path}: {value!r} is not an array"]
        return [
            p for i, item in enumerate(value) for p in schema_problems(item, schema.get("items", {}), f"{path}[{i}]")
        ]
    types = {"string": str, "integer": int, "boolean": bool, "number": int | float}
    if kind in types and (not isinstance(value, types[kind]) or (kind != "boolean" and isinstance(value, bool))):
        return [f"{path}: {value!r} is not a {kind}"]
    return []


def upstream_spec_schemas(version: str) -> dict[str, dict[str, Any]]:
    """Kind -> the spec schema of upstream's Argo CD CRD, from the vendored core-install.yaml."""
    schemas = {}
    for document in yaml.safe_load_all(upstream.read_pinned("argocd-core", version)):
        if isinstance(document, dict) and document.get("kind") == "CustomResourceDefinition":
            (served,) = [v for v in document["spec"]["versions"] if v.get("storage")]
            schemas[document["spec"]["names"]["kind"]] = served["schema"]["openAPIV3Schema"]["properties"]["spec"]
    return schemas


@pytest.mark.vendored
@pytest.mark.parametrize("version", upstream.pinned_versions("argocd-core"))
@pytest.mark.parametrize("raw", CONFIGS.values(), ids=CONFIGS.keys())
def test_upstream_s_schema_stores_each_platform_spec_as_the_fence_compares_it(raw: Any, version: str) -> None:
    """The fence compares the stored spec with the rendered one: a field upstream's CRD prunes, or a value
    it stores as another type, would make the API server refuse the platform's own Applications."""
    schemas = upstream_spec_schemas(version)
    args = args_for(raw())
    for kind, specs in (("Application", args.platform_applications), ("AppProject", args.platform_projects)):
        for name, spec in specs.items():
            assert schema_problems(spec, schemas[kind], f"{kind} {name}: spec") == []
        # The check sees what the API server would prune.
        name, spec = next(iter(specs.items()))
        assert schema_problems({**spec, "extra": 1}, schemas[kind], "spec") == [
            "spec.extra: not in the schema (pruned)"
        ]
