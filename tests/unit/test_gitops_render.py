"""The app-of-apps tree and the Argo CD objects pointing at it (components/render/gitops.py)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from components.config import HarborConfig, load_config
from components.platform import REGISTRY
from components.render.gitops import (
    create_only_paths,
    render_known_hosts_configmap,
    render_projects,
    render_repository_secret,
    render_root_application,
    render_root_project,
    render_tree,
)
from components.render.manifests import child_sync_policy
from tests.conftest import EXAMPLE_HOST_KEY, GIT_KEY_MARKER, base_config, fake_private_key

KUBERNETES = "1.31"
PASSWORD = "MARKER-GIT-PASSWORD-1d9e"
READ_ONLY_KEY = "MARKER-ARGOCD-READ-KEY-5b0a"
READ_ONLY_PASSWORD = "MARKER-ARGOCD-READ-TOKEN-c3f1"


def ssh_config(**gitops: Any) -> HarborConfig:
    raw = base_config()
    raw["gitops"] |= gitops
    return load_config(raw)


def https_config(**gitops: Any) -> HarborConfig:
    raw = base_config()
    raw["gitops"] = {
        "repoUrl": "https://git.example.org/ops/cluster.git",
        "username": "harbor-bot",
        "password": PASSWORD,
    } | gitops
    return load_config(raw)


def projects(config: HarborConfig) -> dict[str, dict[str, Any]]:
    tree = render_tree(config)
    path = config.gitops.path
    return {
        name: yaml.safe_load(tree[f"{path}/apps/projects/{name}.yaml"]) for name in ("infrastructure", "applications")
    }


# --- the tree ----------------------------------------------------------------------------------


def test_tree_has_the_documented_layout() -> None:
    tree = sorted(render_tree(ssh_config()))
    # The platform's Applications and folders are tests/unit/test_platform_render.py's subject.
    platform = [path for path in tree if path.startswith(("cluster/apps/platform/", "cluster/components/"))]
    assert [path for path in tree if path not in platform] == [
        "cluster/README.md",
        "cluster/apps/projects/applications.yaml",
        "cluster/apps/projects/infrastructure.yaml",
        "cluster/apps/user/README.md",
    ]
    # traefik, sealed-secrets and infracheck are on by default
    assert [path for path in platform if path.startswith("cluster/apps/")] == [
        "cluster/apps/platform/infracheck.yaml",
        "cluster/apps/platform/sealed-secrets.yaml",
        "cluster/apps/platform/traefik.yaml",
    ]
    assert create_only_paths(ssh_config()) == {"cluster/apps/user/README.md"}


def test_tree_follows_gitops_path() -> None:
    config = ssh_config(path="platform/harbor/")
    tree = render_tree(config)
    assert all(path.startswith("platform/harbor/") for path in tree)
    assert create_only_paths(config) <= set(tree)
    assert "`platform/harbor/apps/user/`" in tree["platform/harbor/README.md"]


@pytest.mark.parametrize("make", [ssh_config, https_config])
def test_every_yaml_file_parses_and_every_file_is_text(make) -> None:
    tree = render_tree(make())
    for path, content in tree.items():
        assert isinstance(content, str) and content.endswith("\n"), path
        if path.endswith(".yaml"):
            documents = [doc for doc in yaml.safe_load_all(content) if doc is not None]
            assert len(documents) == 1, path
            assert content.startswith("# Managed by Space Harbor")
            if "/apps/" in path:
                # what the root Application syncs: Argo CD's own objects only
                assert documents[0]["apiVersion"] == "argoproj.io/v1alpha1"
                assert documents[0]["metadata"]["namespace"] == "argocd"


def test_readme_lists_exactly_the_owned_files() -> None:
    config = ssh_config()
    tree = render_tree(config)
    readme = tree["cluster/README.md"]
    listed = {line[3:-1] for line in readme.splitlines() if line.startswith("- `")}
    assert listed == set(tree) - create_only_paths(config)
    assert "gitops.overwriteManualChanges" in readme
    assert "branch `main`" in readme


def test_tree_is_deterministic_and_holds_no_secret() -> None:
    for make in (ssh_config, https_config):
        assert render_tree(make()) == render_tree(make())
        text = "".join(render_tree(make()).values())
        assert GIT_KEY_MARKER not in text and PASSWORD not in text


def test_user_readme_example_fits_the_applications_project() -> None:
    readme = render_tree(ssh_config())["cluster/apps/user/README.md"]
    example = readme.split("```yaml\n", 1)[1].split("```", 1)[0]
    namespace, application = yaml.safe_load_all(example)
    assert namespace["kind"] == "Namespace"
    assert application["spec"]["project"] == "applications"
    assert "CreateNamespace=true" not in str(application.get("spec", {}).get("syncPolicy"))


def test_sync_note_follows_auto_sync() -> None:
    assert "sync on click" in render_tree(ssh_config())["cluster/README.md"]
    assert "sync automatically too" in render_tree(ssh_config(autoSync=True))["cluster/README.md"]
    assert child_sync_policy(ssh_config()) == {}
    assert child_sync_policy(ssh_config(autoSync=True)) == {"automated": {"prune": True, "selfHeal": True}}


# --- the projects ------------------------------------------------------------------------------


def test_infrastructure_project_may_do_anything_in_cluster() -> None:
    spec = projects(ssh_config())["infrastructure"]["spec"]
    assert spec["clusterResourceWhitelist"] == [{"group": "*", "kind": "*"}]
    assert spec["destinations"] == [{"server": "https://kubernetes.default.svc", "namespace": "*"}]
    assert "namespaceResourceBlacklist" not in spec


def test_applications_project_is_namespaced_and_fenced() -> None:
    project = projects(ssh_config())["applications"]
    assert project["metadata"]["name"] == "applications"
    spec = project["spec"]
    # no cluster-scoped resource at all, Namespaces included
    assert spec["clusterResourceWhitelist"] == []
    assert "clusterResourceBlacklist" not in spec
    blacklist = {(item["group"], item["kind"]) for item in spec["namespaceResourceBlacklist"]}
    assert blacklist == {
        ("", "ResourceQuota"),
        ("", "LimitRange"),
        ("networking.k8s.io", "NetworkPolicy"),
        ("rbac.authorization.k8s.io", "Role"),
        ("rbac.authorization.k8s.io", "RoleBinding"),
    }
    assert "namespaceResourceWhitelist" not in spec
    namespaces = [d["namespace"] for d in spec["destinations"]]
    assert namespaces[-1] == "*"
    assert {"!kube-system", "!kube-public", "!kube-node-lease", "!argocd", "!default"} <= set(namespaces)
    assert all(d["server"] == "https://kubernetes.default.svc" for d in spec["destinations"])


def test_applications_project_denies_every_platform_namespace_enabled_or_not() -> None:
    # Read from the registry, not from a list here: a component added later is fenced off too.
    for config in (ssh_config(), load_config(_every_component())):
        denied = {d["namespace"][1:] for d in projects(config)["applications"]["spec"]["destinations"][:-1]}
        for component in REGISTRY:
            assert component.namespace in denied, component.name
        for namespace in ("traefik", "longhorn-system", "smtp", "backup", "telegraf", "infracheck", "kube-system"):
            assert namespace in denied


def _every_component() -> dict[str, Any]:
    raw = base_config(agents=1)
    raw["components"]["sealedSecrets"] = {"enabled": True}
    raw["components"]["backup"] = {
        "enabled": True,
        "schedule": "30 2 * * *",
        "repositoryUrl": "https://backups.example.org/",
        "collectionId": "harbor",
        "token": "a-token",
    }
    return raw


def test_backups_project_lets_users_commit_scheduled_backups_and_nothing_else() -> None:
    assert "backups" not in render_projects(ssh_config())
    project = yaml.safe_load(render_projects(load_config(_every_component()))["backups"])
    spec = project["spec"]
    assert spec["destinations"] == [{"server": "https://kubernetes.default.svc", "namespace": "backup"}]
    assert spec["clusterResourceWhitelist"] == []
    assert {(item["group"], item["kind"]) for item in spec["namespaceResourceWhitelist"]} == {
        ("riotkit.org", "ScheduledBackup"),
        ("bitnami.com", "SealedSecret"),
    }


def _appproject_schema(version: str) -> dict[str, Any]:
    path = Path(__file__).resolve().parents[1] / "fixtures" / "upstream" / f"argocd-core-{version}.yaml"
    (crd,) = [
        doc
        for doc in yaml.safe_load_all(path.read_text())
        if doc
        and doc.get("kind") == "CustomResourceDefinition"
        and doc["metadata"]["name"] == "appprojects.argoproj.io"
    ]
    (served,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1alpha1"]
    return _strict(served["schema"]["openAPIV3Schema"])


def _strict(schema: dict[str, Any]) -> dict[str, Any]:
    """The CRD's schema, refusing fields it does not name: the API server would prune them silently,
    and a pruned `namespaceResourceBlacklist` (say, misspelt) is a fence gone without a word."""
    schema = dict(schema)
    if "properties" in schema and "additionalProperties" not in schema:
        if not schema.get("x-kubernetes-preserve-unknown-fields"):
            schema["additionalProperties"] = False
        schema["properties"] = {key: _strict(value) for key, value in schema["properties"].items()}
    if isinstance(schema.get("items"), dict):
        schema["items"] = _strict(schema["items"])
    return schema


@pytest.mark.parametrize("version", ["v2.13.3", "v2.14.21"])
def test_every_project_is_valid_against_the_pinned_appproject_crd(version: str) -> None:
    schema = _appproject_schema(version)
    rendered = render_projects(load_config(_every_component()))
    assert set(rendered) == {"infrastructure", "applications", "backups"}
    for text in rendered.values():
        jsonschema.validate(yaml.safe_load(text), schema)
    # the check can fail: a field the CRD does not know (misspelt), or a kind entry without its group
    for wrong in ({"namespaceResourceBlackList": []}, {"namespaceResourceBlacklist": [{"kind": "Role"}]}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate({"metadata": {}, "spec": wrong}, schema)


# --- root Application --------------------------------------------------------------------------


@pytest.mark.parametrize(("make", "url"), [(ssh_config, "git@git.example.org:ops/cluster.git"), (https_config, None)])
def test_root_application_reads_apps_recursively(make, url) -> None:
    config = make(branch="production", path="k8s/harbor")
    app = render_root_application(config)
    assert (app["apiVersion"], app["kind"]) == ("argoproj.io/v1alpha1", "Application")
    assert app["metadata"]["namespace"] == "argocd"
    # Core has no API server to create `default`: the root lives in Space Harbor's own project.
    assert app["spec"]["project"] == render_root_project(config)["metadata"]["name"] == "space-harbor-root"
    assert app["spec"]["source"] == {
        "repoURL": url or "https://git.example.org/ops/cluster.git",
        "targetRevision": "production",
        "path": "k8s/harbor/apps",
        "directory": {"recurse": True},
    }
    assert app["spec"]["destination"] == {"server": "https://kubernetes.default.svc", "namespace": "argocd"}
    assert app["spec"]["syncPolicy"]["automated"] == {"prune": True, "selfHeal": True}
    # the root follows git by itself whatever autoSync says; autoSync is for the children
    assert render_root_application(make(autoSync=True))["spec"]["syncPolicy"] == app["spec"]["syncPolicy"]


def test_root_application_is_fresh_each_call() -> None:
    first = render_root_application(ssh_config())
    first["spec"]["source"]["path"] = "mutated"
    assert render_root_application(ssh_config())["spec"]["source"]["path"] == "cluster/apps"


@pytest.mark.parametrize("make", [ssh_config, https_config])
def test_root_project_admits_only_the_repo_argo_cd_objects_in_argocd_and_namespaces(make) -> None:
    config = make()
    project = render_root_project(config)
    assert (project["apiVersion"], project["kind"]) == ("argoproj.io/v1alpha1", "AppProject")
    assert project["metadata"]["namespace"] == "argocd"
    spec = project["spec"]
    assert spec["sourceRepos"] == [config.gitops.repo_url]
    assert spec["destinations"] == [{"server": "https://kubernetes.default.svc", "namespace": "argocd"}]
    # The one cluster-scoped kind: users commit their apps' Namespaces under apps/user (user README).
    assert spec["clusterResourceWhitelist"] == [{"group": "", "kind": "Namespace"}]
    assert spec["namespaceResourceWhitelist"] == [
        {"group": "argoproj.io", "kind": "Application"},
        {"group": "argoproj.io", "kind": "AppProject"},
    ]
    assert "*" not in yaml.safe_dump(spec)
    assert set(spec) <= {
        "description",
        "sourceRepos",
        "destinations",
        "clusterResourceWhitelist",
        "namespaceResourceWhitelist",
    }


# --- repository Secret and known hosts ---------------------------------------------------------


def test_repository_secret_for_ssh() -> None:
    secret = render_repository_secret(ssh_config())
    assert secret["metadata"]["namespace"] == "argocd"
    assert secret["metadata"]["labels"]["argocd.argoproj.io/secret-type"] == "repository"
    data = secret["stringData"]
    assert data["type"] == "git"
    assert data["url"] == "git@git.example.org:ops/cluster.git"
    assert GIT_KEY_MARKER in data["sshPrivateKey"] and data["sshPrivateKey"].endswith("\n")
    assert "username" not in data and "password" not in data
    assert "data" not in secret
    kubernetes_validate.validate(secret, KUBERNETES, strict=True)


def test_repository_secret_for_https() -> None:
    secret = render_repository_secret(https_config())
    data = secret["stringData"]
    assert (data["type"], data["url"]) == ("git", "https://git.example.org/ops/cluster.git")
    assert (data["username"], data["password"]) == ("harbor-bot", PASSWORD)
    assert "sshPrivateKey" not in data
    kubernetes_validate.validate(secret, KUBERNETES, strict=True)


def test_secret_values_appear_only_under_string_data() -> None:
    for make in (ssh_config, https_config):
        secret = copy.deepcopy(render_repository_secret(make()))
        del secret["stringData"]
        assert GIT_KEY_MARKER not in str(secret) and PASSWORD not in str(secret)


def test_repository_secret_prefers_argo_cds_own_ssh_key() -> None:
    secret = render_repository_secret(ssh_config(argocdSshPrivateKey=fake_private_key(READ_ONLY_KEY)))
    key = secret["stringData"]["sshPrivateKey"]
    assert READ_ONLY_KEY in key and GIT_KEY_MARKER not in key and key.endswith("\n")


def test_repository_secret_prefers_argo_cds_own_login() -> None:
    secret = render_repository_secret(https_config(argocdUsername="reader", argocdPassword=READ_ONLY_PASSWORD))
    data = secret["stringData"]
    assert (data["username"], data["password"]) == ("reader", READ_ONLY_PASSWORD)
    assert PASSWORD not in str(secret)
    kubernetes_validate.validate(secret, KUBERNETES, strict=True)


ARGOCD_DEFAULTS = [f"github.com {EXAMPLE_HOST_KEY}", "gitlab.example ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDefaultTwo"]


def test_known_hosts_configmap_keeps_argo_cds_defaults_then_ours() -> None:
    lines = f"  git.example.org {EXAMPLE_HOST_KEY}\n\n# a comment\n[git.example.org]:2222 {EXAMPLE_HOST_KEY}  "
    configmap = render_known_hosts_configmap(ssh_config(knownHosts=lines), ARGOCD_DEFAULTS)
    assert configmap["metadata"] == {
        "name": "argocd-ssh-known-hosts-cm",
        "namespace": "argocd",
        "labels": {"app.kubernetes.io/name": "argocd-ssh-known-hosts-cm", "app.kubernetes.io/part-of": "argocd"},
    }
    text = configmap["data"]["ssh_known_hosts"]
    entries = [line for line in text.splitlines() if not line.startswith("#")]
    assert entries == [
        *ARGOCD_DEFAULTS,
        f"git.example.org {EXAMPLE_HOST_KEY}",
        f"[git.example.org]:2222 {EXAMPLE_HOST_KEY}",
    ]
    assert text.endswith("\n")
    kubernetes_validate.validate(configmap, KUBERNETES, strict=True)


def test_known_hosts_lists_a_host_once_when_ours_repeats_a_default() -> None:
    ours = f"{ARGOCD_DEFAULTS[0]}\ngit.example.org {EXAMPLE_HOST_KEY}\ngit.example.org {EXAMPLE_HOST_KEY}"
    text = render_known_hosts_configmap(ssh_config(knownHosts=ours), ARGOCD_DEFAULTS)["data"]["ssh_known_hosts"]
    entries = [line for line in text.splitlines() if not line.startswith("#")]
    assert entries == [*ARGOCD_DEFAULTS, f"git.example.org {EXAMPLE_HOST_KEY}"]


def test_https_keeps_argo_cds_default_known_hosts_only() -> None:
    # HTTPS has no host key to pin, but Argo CD's defaults stay for the users' own SSH apps.
    text = render_known_hosts_configmap(https_config(), ARGOCD_DEFAULTS)["data"]["ssh_known_hosts"]
    assert [line for line in text.splitlines() if not line.startswith("#")] == ARGOCD_DEFAULTS


def test_kubernetes_validate_catches_a_broken_secret() -> None:
    """The schema check above is real: a wrong shape fails it."""
    secret = render_repository_secret(ssh_config())
    secret["stringData"]["port"] = 22
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(secret, KUBERNETES, strict=True)
