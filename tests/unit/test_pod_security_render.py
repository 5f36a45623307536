"""The Pod Security fence's admission policy (components/render/pod_security.py), as data.

What the real API server makes of it (the CEL, the refusal, PodSecurity behind the label) is the
real tier's subject; here: who it matches, whom it exempts, and what the refusal tells an operator.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from components.config import load_config
from components.platform import REGISTRY
from components.render.admission import render_binding
from components.render.argocd import CoreManifestError, application_controller_username, parse_core_manifest
from components.render.platform import render_platform
from components.render.pod_security import (
    ENFORCE_LABEL,
    POLICY_NAME,
    exempt_namespaces,
    render_policy,
)
from tests.unit.test_platform_render import full_raw

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "upstream"
CONTROLLER = "system:serviceaccount:argocd:argocd-application-controller"


def condition(policy: dict, name: str) -> str:
    return next(c["expression"] for c in policy["spec"]["matchConditions"] if c["name"] == name)


@pytest.mark.parametrize("version", ["v2.13.3", "v2.14.21"])
def test_the_controller_username_is_read_from_the_pinned_manifest(version: str) -> None:
    core = parse_core_manifest(version, (FIXTURES / f"argocd-core-{version}.yaml").read_text())
    assert application_controller_username(core) == CONTROLLER


def test_a_manifest_without_the_controller_stops_the_run() -> None:
    text = (FIXTURES / "argocd-core-v2.13.3.yaml").read_text()
    without = text.replace("kind: StatefulSet", "kind: Deployment")
    core = parse_core_manifest("v2.13.3", without)
    with pytest.raises(CoreManifestError, match="no StatefulSet argocd-application-controller"):
        application_controller_username(core)


def test_it_matches_namespace_creates_and_updates_by_the_controller_only() -> None:
    policy = render_policy(CONTROLLER)
    assert policy["apiVersion"] == "admissionregistration.k8s.io/v1"
    (rule,) = policy["spec"]["matchConstraints"]["resourceRules"]
    assert rule == {
        "apiGroups": [""],
        "apiVersions": ["v1"],
        "operations": ["CREATE", "UPDATE"],
        "resources": ["namespaces"],
    }
    assert condition(policy, "applied-by-argocd") == f'request.userInfo.username == "{CONTROLLER}"'
    assert policy["spec"]["failurePolicy"] == "Fail"


def test_the_exempt_names_are_every_platform_namespace_and_argocd() -> None:
    expected = {"argocd", *(component.namespace for component in REGISTRY)}
    assert set(exempt_namespaces()) == expected
    # Spelled out once, so that a component that moved or lost its namespace shows here.
    assert expected >= {"argocd", "traefik", "kube-system", "longhorn-system", "smtp", "backup", "telegraf"}
    expression = condition(render_policy(CONTROLLER), "not-exempt")
    for namespace in expected:
        assert f'"{namespace}"' in expression, namespace
    assert '"default"' not in expression  # no user app may use it; the fence does not open it either


def test_the_refusal_names_the_label_and_both_levels() -> None:
    (validation,) = render_policy(CONTROLLER)["spec"]["validations"]
    for text in (validation["message"], validation["messageExpression"]):
        assert ENFORCE_LABEL in text and "restricted" in text and "baseline" in text
    assert "managedNamespaceMetadata" in validation["message"]
    assert validation["expression"] == 'variables.level in ["restricted", "baseline"]'


def test_the_binding_denies() -> None:
    binding = render_binding(render_policy(CONTROLLER))
    assert binding["spec"] == {"policyName": POLICY_NAME, "validationActions": ["Deny"]}
    assert binding["metadata"]["name"] == render_policy(CONTROLLER)["metadata"]["name"] == POLICY_NAME


def test_every_namespace_the_platform_s_tree_holds_is_exempt() -> None:
    """A platform component whose namespace the fence did not exempt would fail its own sync."""
    tree = render_platform(load_config(full_raw()))
    namespaces = {
        document["metadata"]["name"]
        for text in tree.values()
        for document in yaml.safe_load_all(text)
        if isinstance(document, dict) and document.get("kind") == "Namespace"
    }
    destinations = {
        document["spec"]["destination"]["namespace"]
        for text in tree.values()
        for document in yaml.safe_load_all(text)
        if isinstance(document, dict) and document.get("kind") == "Application"
    }
    assert namespaces and destinations
    assert namespaces | destinations <= set(exempt_namespaces())
