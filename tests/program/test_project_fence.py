"""The project fence under mocks: what the engine registers, with which provider, and what waits for it.

Two policies and their bindings, in-cluster objects like the Pod Security fence's: applied by the
stack's Kubernetes provider, gone with the cluster id. The commit waits for them (the fence names the
commit's platform objects exactly), and so does the root Application.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import yaml

from tests.conftest import base_config
from tests.harness import STACK, ProgramRun, Registered, run_program
from tests.unit.test_platform_render import full_raw
from tests.unit.test_project_fence_render import from_cel

MODES = {"preview": True, "up": False}
FENCE = f"urn:pulumi:{STACK}::space-harbor::space-harbor:index:ProjectFence::project-fence"
CONFIGS = {"minimal": lambda: base_config(agents=1), "all-components": full_raw}


def fence_objects(run: ProgramRun) -> dict[str, Registered]:
    return {r.name: r for r in run.resources if r.custom and r.parent == FENCE}


def rendered(policy: Registered) -> dict[str, Any]:
    expression = next(v["expression"] for v in policy.inputs["spec"]["variables"] if v["name"] == "rendered")
    return from_cel(expression)


def committed(run: ProgramRun, kind: str) -> dict[str, dict[str, Any]]:
    """The `kind` objects under <path>/apps of the tree the program hands the commit, by name."""
    (tree,) = [r for r in run.resources if r.custom and "files" in r.inputs and "credentials" in r.inputs]
    found: dict[str, dict[str, Any]] = {}
    for path, text in tree.inputs["files"].items():
        if path.startswith("cluster/apps/") and path.endswith(".yaml"):
            for document in yaml.safe_load_all(text):
                if isinstance(document, dict) and document.get("kind") == kind:
                    found[document["metadata"]["name"]] = document
    return found


@pytest.mark.parametrize("mode", MODES)
def test_policies_and_bindings_are_applied_by_the_cluster_provider_and_go_with_the_cluster(mode: str) -> None:
    run = run_program(base_config(agents=1), preview=MODES[mode])
    objects = fence_objects(run)
    assert set(objects) == {
        f"project-fence-{kind}-{part}" for kind in ("applications", "projects") for part in ("policy", "binding")
    }
    for resource in objects.values():
        assert resource.provider == run.named("cluster").urn
        assert resource.deleted_with == run.named("cluster-id").urn
    for kind in ("applications", "projects"):
        policy, binding = objects[f"project-fence-{kind}-policy"], objects[f"project-fence-{kind}-binding"]
        assert policy.type == "kubernetes:admissionregistration.k8s.io/v1:ValidatingAdmissionPolicy"
        assert binding.inputs["spec"] == {
            "policyName": policy.inputs["metadata"]["name"],
            "validationActions": ["Deny"],
        }
        assert run.depends_on(binding, policy)


def test_the_commit_and_the_root_application_wait_for_the_fence() -> None:
    run = run_program(base_config(agents=1))
    root = run.named("argocd-root-application")
    (tree,) = [r for r in run.resources if r.custom and "files" in r.inputs and "credentials" in r.inputs]
    objects = fence_objects(run)
    assert len(objects) == 4, objects
    for resource in objects.values():
        assert run.depends_on(tree, resource), resource.name
        assert run.depends_on(root, resource), resource.name


@pytest.mark.parametrize("raw", CONFIGS.values(), ids=CONFIGS.keys())
def test_the_fence_lets_through_the_committed_platform_objects_and_the_registered_root(
    raw: Callable[[], dict[str, Any]],
) -> None:
    run = run_program(raw())
    root = run.named("argocd-root-application")
    applications = rendered(fence_objects(run)["project-fence-applications-policy"])
    platform = {name: app for name, app in committed(run, "Application").items()}
    assert platform, "the commit holds no Application"
    expected = {name: app["spec"] for name, app in platform.items()}
    expected[root.inputs["metadata"]["name"]] = root.inputs["spec"]
    assert applications == expected
    projects = rendered(fence_objects(run)["project-fence-projects-policy"])
    assert projects == {name: project["spec"] for name, project in committed(run, "AppProject").items()}


def test_the_controller_judged_is_the_pinned_argo_cds() -> None:
    run = run_program(base_config(agents=1))
    for resource in fence_objects(run).values():
        if resource.type.endswith(":ValidatingAdmissionPolicy"):
            (condition,) = resource.inputs["spec"]["matchConditions"]
            assert condition["expression"] == (
                'request.userInfo.username == "system:serviceaccount:argocd:argocd-application-controller"'
            )
