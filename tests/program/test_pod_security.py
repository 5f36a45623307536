"""The Pod Security fence under mocks: what the engine registers, with which provider, and when it goes.

The policy and its binding are in-cluster objects like Argo CD's: the stack's Kubernetes provider
applies them, and they go with the cluster id (a destroy then drops them without an API call). They
are in before the root Application, whose sync is the first thing Argo CD applies.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from components.platform import REGISTRY
from tests.conftest import base_config
from tests.harness import STACK, ProgramRun, Registered, run_program
from tests.unit.test_platform_render import full_raw

MODES = {"preview": True, "up": False}
FENCE = f"urn:pulumi:{STACK}::space-harbor::space-harbor:index:PodSecurityFence::pod-security"


def fence_objects(run: ProgramRun) -> dict[str, Registered]:
    return {r.type.rsplit(":", 1)[-1]: r for r in run.resources if r.custom and r.parent == FENCE}


@pytest.mark.parametrize("mode", MODES)
def test_policy_and_binding_are_applied_by_the_cluster_provider_and_go_with_the_cluster(mode: str) -> None:
    run = run_program(base_config(agents=1), preview=MODES[mode])
    objects = fence_objects(run)
    assert set(objects) == {"ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"}
    policy, binding = objects["ValidatingAdmissionPolicy"], objects["ValidatingAdmissionPolicyBinding"]
    assert policy.type == "kubernetes:admissionregistration.k8s.io/v1:ValidatingAdmissionPolicy"
    assert binding.type == "kubernetes:admissionregistration.k8s.io/v1:ValidatingAdmissionPolicyBinding"
    for resource in objects.values():
        assert resource.provider == run.named("cluster").urn
        assert resource.deleted_with == run.named("cluster-id").urn
    assert binding.inputs["spec"]["policyName"] == policy.inputs["metadata"]["name"]
    assert binding.inputs["spec"]["validationActions"] == ["Deny"]
    assert run.depends_on(binding, policy)


def test_the_root_application_waits_for_the_fence() -> None:
    run = run_program(base_config(agents=1))
    root = run.named("argocd-root-application")
    objects = fence_objects(run)
    assert len(objects) == 2, objects
    for resource in objects.values():
        assert run.depends_on(root, resource), resource.type


@pytest.mark.parametrize("raw", [lambda: base_config(agents=1), full_raw], ids=["minimal", "all-components"])
def test_the_exempt_namespaces_are_the_registry_s_platform_namespaces_and_argocd(
    raw: Callable[[], dict[str, Any]],
) -> None:
    run = run_program(raw())
    (condition,) = [
        c["expression"]
        for c in fence_objects(run)["ValidatingAdmissionPolicy"].inputs["spec"]["matchConditions"]
        if c["name"] == "not-exempt"
    ]
    listed = condition.removeprefix("!(object.metadata.name in [").removesuffix("])")
    exempt = {name.strip().strip('"') for name in listed.split(",")}
    # Every component's namespace, enabled or not, as the AppProject's deny list: one may be enabled later.
    assert exempt == {component.namespace for component in REGISTRY} | {"argocd"}


def test_the_controller_matched_is_the_pinned_argo_cds() -> None:
    run = run_program(base_config(agents=1))
    conditions = fence_objects(run)["ValidatingAdmissionPolicy"].inputs["spec"]["matchConditions"]
    assert conditions[0]["expression"] == (
        'request.userInfo.username == "system:serviceaccount:argocd:argocd-application-controller"'
    )
