"""The app-of-apps tree Space Harbor commits, and the Argo CD objects that point at it: pure functions.

The templates live in `manifests/gitops/`; these functions load them and fill in the config.

Layout under `gitops.path` (default `cluster`):

    <path>/README.md                          generated: the layout and the files Space Harbor owns
    <path>/apps/projects/infrastructure.yaml  AppProject for the platform components
    <path>/apps/projects/applications.yaml    AppProject for user workloads (namespaced only)
    <path>/apps/user/README.md                written once if missing, then the user's
    <path>/apps/platform/<name>.yaml          one Application per enabled platform component
    <path>/components/<name>/                 the plain manifests beside its chart, SealedSecrets included

The platform part is components/render/platform.py.

The root Application (created by Pulumi in the cluster, not committed) syncs `<path>/apps`
recursively. It syncs automatically, with prune and self-heal: the set of Application and
AppProject objects follows git without a click. What the child Applications deploy syncs on click
unless `gitops.autoSync` is true (`manifests.child_sync_policy`).
"""

from __future__ import annotations

import string
from collections.abc import Mapping
from typing import Any

from components.config import HarborConfig
from components.render.manifests import (
    dump,
    load_template,
    repo_path,
    template_text,
)
from components.render.platform import merge_sealed, render_platform

ARGOCD_NAMESPACE = "argocd"
IN_CLUSTER = "https://kubernetes.default.svc"
ROOT_APPLICATION = "space-harbor"
REPOSITORY_SECRET = "space-harbor-repository"  # noqa: S105 (a name, not a password)
KNOWN_HOSTS_CONFIGMAP = "argocd-ssh-known-hosts-cm"

README = "README.md"
PROJECTS = {
    "infrastructure": "apps/projects/infrastructure.yaml",
    "applications": "apps/projects/applications.yaml",
}
USER_README = "apps/user/README.md"
# Relative to gitops.path: written when missing, never rewritten, never removed.
CREATE_ONLY = frozenset({USER_README})


def apps_path(config: HarborConfig) -> str:
    return repo_path(config, "apps")


def create_only_paths(config: HarborConfig) -> frozenset[str]:
    return frozenset(repo_path(config, relative) for relative in CREATE_ONLY)


def _sync_note(config: HarborConfig) -> str:
    if config.gitops.auto_sync:
        return "The platform's own Applications sync automatically too (`gitops.autoSync` is true)."
    return (
        "The platform's own Applications then sync on click (`gitops.autoSync` is false; set it to "
        "true to sync them automatically)."
    )


def render_projects(config: HarborConfig) -> dict[str, str]:
    del config  # the projects do not depend on the config (yet); keep the signature of the others
    return {name: dump(load_template(f"project-{name}.yaml")) for name in PROJECTS}


def _render_readme(config: HarborConfig, owned: list[str]) -> str:
    from components.render.platform import readme_components  # platform.py builds on this module

    listing = "\n".join(f"- `{path}`" for path in sorted(owned))
    return string.Template(template_text("README.md.tmpl")).substitute(
        path=config.gitops.path,
        branch=config.gitops.branch,
        sync_note=_sync_note(config),
        components=readme_components(config),
        owned_files=listing,
    )


def _render_user_readme(config: HarborConfig) -> str:
    return string.Template(template_text("user-README.md.tmpl")).substitute(
        path=config.gitops.path,
        branch=config.gitops.branch,
        sync_note="Whether it syncs by itself is up to its own `syncPolicy`.",
    )


def render_tree(config: HarborConfig, sealed: Mapping[str, str] | None = None) -> dict[str, str]:
    """Every file Space Harbor writes, repo-relative path -> content, sorted by path.

    `sealed` maps the paths of `platform.secret_specs(config)` to their SealedSecret YAML, sealed by
    the caller; they join the tree (and the README's list of owned files). Anything else is refused.
    The paths in `create_only_paths(config)` are part of the tree; the provider writes those only when
    they are missing and never removes them.
    """
    tree: dict[str, str] = {}
    for name, content in render_projects(config).items():
        tree[repo_path(config, PROJECTS[name])] = content
    tree |= render_platform(config)
    tree |= merge_sealed(config, sealed or {})
    readme = repo_path(config, README)
    tree[repo_path(config, USER_README)] = _render_user_readme(config)
    owned = [path for path in tree if path not in create_only_paths(config)] + [readme]
    tree[readme] = _render_readme(config, owned)
    return dict(sorted(tree.items()))


# --- the objects Pulumi creates in the cluster (components/argocd.py) ------------------------


def render_root_application(config: HarborConfig) -> dict[str, Any]:
    """The app-of-apps root: `<path>/apps` of the cluster repo, recursively, into the cluster."""
    app = load_template("root-application.yaml")
    app["metadata"]["name"] = ROOT_APPLICATION
    app["metadata"]["namespace"] = ARGOCD_NAMESPACE
    app["spec"]["source"] = {
        "repoURL": config.gitops.repo_url,
        "targetRevision": config.gitops.branch,
        "path": apps_path(config),
        "directory": {"recurse": True},
    }
    app["spec"]["destination"] = {"server": IN_CLUSTER, "namespace": ARGOCD_NAMESPACE}
    return app


def render_repository_secret(config: HarborConfig) -> dict[str, Any]:
    """Argo CD's repository Secret. `stringData` holds the credentials: the caller marks it secret."""
    gitops = config.gitops
    secret = load_template("repository-secret.yaml")
    secret["metadata"]["name"] = REPOSITORY_SECRET
    secret["metadata"]["namespace"] = ARGOCD_NAMESPACE
    data: dict[str, str] = {"type": "git", "name": ROOT_APPLICATION, "url": gitops.repo_url}
    if gitops.uses_ssh:
        assert gitops.ssh_private_key is not None  # config validation requires it for SSH URLs
        key = gitops.ssh_private_key.get_secret_value()
        data["sshPrivateKey"] = key if key.endswith("\n") else key + "\n"
    else:
        assert gitops.username is not None and gitops.password is not None  # idem for HTTPS
        data["username"] = gitops.username
        data["password"] = gitops.password.get_secret_value()
    secret["stringData"] = data
    return secret


def known_hosts_text(config: HarborConfig) -> str | None:
    """gitops.knownHosts normalised: one entry a line, no blank lines, a final newline."""
    raw = config.gitops.known_hosts
    if raw is None:
        return None
    lines = [line.strip() for line in raw.splitlines() if line.strip()]
    return "\n".join(lines) + "\n" if lines else None


def render_known_hosts_configmap(config: HarborConfig) -> dict[str, Any] | None:
    """Argo CD's ssh_known_hosts with the git server's pinned keys, when gitops.knownHosts is set."""
    text = known_hosts_text(config)
    if text is None:
        return None
    configmap = load_template("known-hosts-configmap.yaml")
    configmap["metadata"]["name"] = KNOWN_HOSTS_CONFIGMAP
    configmap["metadata"]["namespace"] = ARGOCD_NAMESPACE
    configmap["data"] = {"ssh_known_hosts": text}
    return configmap
