"""Argo CD Core's pinned manifest, object by object (components/render/argocd.py).

The fixtures in tests/fixtures/upstream are our own files shaped like core-install.yaml. The
expected names follow pulumi-kubernetes's rule for the children of a yaml/v2 ConfigFile
(`<ConfigFile name>:<namespace>/<name>`, or `<ConfigFile name>:<name>` when cluster-scoped), with
the namespace the ConfigFile's provider defaulted to, `argocd`.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from components.render.argocd import CoreManifestError, parse_core_manifest, type_token

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "upstream"


def fixture_text(version: str) -> str:
    return (FIXTURES / f"argocd-core-{version}.yaml").read_text()


def test_every_object_but_the_known_hosts_is_named_as_the_config_file_named_it() -> None:
    manifest = parse_core_manifest("v2.13.3", fixture_text("v2.13.3"))
    identities = [(item.type_token, item.resource_name) for item in manifest.objects]
    assert identities == [
        ("kubernetes:apiextensions.k8s.io/v1:CustomResourceDefinition", "argocd-core:applications.argoproj.io"),
        ("kubernetes:apiextensions.k8s.io/v1:CustomResourceDefinition", "argocd-core:applicationsets.argoproj.io"),
        ("kubernetes:apiextensions.k8s.io/v1:CustomResourceDefinition", "argocd-core:appprojects.argoproj.io"),
        ("kubernetes:core/v1:ServiceAccount", "argocd-core:argocd/argocd-application-controller"),
        ("kubernetes:rbac.authorization.k8s.io/v1:Role", "argocd-core:argocd/argocd-application-controller"),
        ("kubernetes:rbac.authorization.k8s.io/v1:ClusterRole", "argocd-core:argocd-application-controller"),
        ("kubernetes:rbac.authorization.k8s.io/v1:RoleBinding", "argocd-core:argocd/argocd-application-controller"),
        ("kubernetes:rbac.authorization.k8s.io/v1:ClusterRoleBinding", "argocd-core:argocd-application-controller"),
        ("kubernetes:core/v1:ConfigMap", "argocd-core:argocd/argocd-cm"),
        ("kubernetes:core/v1:Secret", "argocd-core:argocd/argocd-secret"),
        ("kubernetes:core/v1:Service", "argocd-core:argocd/argocd-repo-server"),
        ("kubernetes:apps/v1:Deployment", "argocd-core:argocd/argocd-repo-server"),
        ("kubernetes:apps/v1:StatefulSet", "argocd-core:argocd/argocd-application-controller"),
        ("kubernetes:networking.k8s.io/v1:NetworkPolicy", "argocd-core:argocd/argocd-repo-server-network-policy"),
    ]


def test_namespaced_objects_get_argocd_explicitly_and_the_rest_of_the_object_as_written() -> None:
    manifest = parse_core_manifest("v2.13.3", fixture_text("v2.13.3"))
    written = {
        (doc["kind"], doc["metadata"]["name"]): doc for doc in yaml.safe_load_all(fixture_text("v2.13.3")) if doc
    }
    for item in manifest.objects:
        original = written[item.kind, item.name]
        if item.namespaced:
            assert item.body["metadata"] == original["metadata"] | {"namespace": "argocd"}
        else:
            assert "namespace" not in item.body["metadata"]
        assert {k: v for k, v in item.body.items() if k != "metadata"} == {
            k: v for k, v in original.items() if k != "metadata"
        }
    crds = [item for item in manifest.objects if item.is_crd]
    assert [item.name for item in crds] == [
        "applications.argoproj.io",
        "applicationsets.argoproj.io",
        "appprojects.argoproj.io",
    ]


def test_argo_cds_default_known_hosts_are_its_host_lines_without_comments() -> None:
    for version in ("v2.13.3", "v2.14.21"):
        manifest = parse_core_manifest(version, fixture_text(version))
        assert not any(item.name == "argocd-ssh-known-hosts-cm" for item in manifest.objects)
        assert len(manifest.default_known_hosts) == 2
        assert all(line.startswith("git.fixture-") for line in manifest.default_known_hosts)
    older = parse_core_manifest("v2.13.3", fixture_text("v2.13.3")).default_known_hosts
    newer = parse_core_manifest("v2.14.21", fixture_text("v2.14.21")).default_known_hosts
    assert older[0] == newer[0] and older[1] != newer[1]  # the fixture rotates one default key


@pytest.mark.parametrize(
    ("api_version", "kind", "token"),
    [
        ("v1", "ConfigMap", "kubernetes:core/v1:ConfigMap"),
        ("apps/v1", "Deployment", "kubernetes:apps/v1:Deployment"),
        (
            "apiextensions.k8s.io/v1",
            "CustomResourceDefinition",
            "kubernetes:apiextensions.k8s.io/v1:CustomResourceDefinition",
        ),
    ],
)
def test_type_tokens_are_pulumi_kubernetes_ones(api_version: str, kind: str, token: str) -> None:
    assert type_token(api_version, kind) == token


def doc(kind: str, name: str | None, api_version: str = "v1", **metadata: str) -> str:
    """One YAML document of a manifest."""
    meta = ({"name": name} if name else {"labels": {}}) | metadata
    return "---\n" + yaml.safe_dump({"apiVersion": api_version, "kind": kind, "metadata": meta})


KNOWN_HOSTS = doc("ConfigMap", "argocd-ssh-known-hosts-cm") + "data:\n  ssh_known_hosts: |\n    h ssh-ed25519 AAAA\n"


@pytest.mark.parametrize(
    ("extra", "problem"),
    [
        (doc("Widget", "w"), "Widget w: unknown kind"),
        (doc("ConfigMap", "c", namespace="kube-system"), "in namespace kube-system"),
        (doc("ConfigMap", None), "has no metadata.name"),
        ("- just a list\n", "is not a Kubernetes object"),
        (doc("ConfigMap", "c") + doc("ConfigMap", "c"), "ConfigMap c appears twice"),
    ],
)
def test_what_cannot_be_named_faithfully_is_refused(extra: str, problem: str) -> None:
    with pytest.raises(CoreManifestError, match=problem):
        parse_core_manifest("v0.0.1", extra + KNOWN_HOSTS)


def test_a_manifest_without_the_known_hosts_configmap_is_refused() -> None:
    with pytest.raises(CoreManifestError, match="no ConfigMap argocd-ssh-known-hosts-cm"):
        parse_core_manifest("v0.0.1", doc("ConfigMap", "argocd-cm"))


def test_a_service_account_and_a_role_may_share_a_name() -> None:
    text = doc("ServiceAccount", "x") + doc("Role", "x", "rbac.authorization.k8s.io/v1")
    manifest = parse_core_manifest("v0.0.1", text + KNOWN_HOSTS)
    assert [item.resource_name for item in manifest.objects] == ["argocd-core:argocd/x", "argocd-core:argocd/x"]
