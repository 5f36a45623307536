"""The app-of-apps tree Space Harbor commits, and the Argo CD objects that point at it: pure functions.

The templates live in `manifests/gitops/`; these functions load them and fill in the config.

Layout under `gitops.path` (default `cluster`):

    <path>/README.md                          generated: the layout and the files Space Harbor owns
    <path>/apps/projects/infrastructure.yaml  AppProject for the platform components
    <path>/apps/projects/applications.yaml    AppProject for user workloads (namespaced, fenced off the platform)
    <path>/apps/projects/backups.yaml         AppProject for users' ScheduledBackups (with the backup component)
    <path>/apps/user/README.md                written once if missing, then the user's
    <path>/apps/platform/<name>.yaml          one Application per enabled platform component
    <path>/components/<name>/                 the plain manifests beside its chart, SealedSecrets included

The platform part is components/render/platform.py.

The root Application (created by Pulumi in the cluster, not committed) syncs `<path>/apps`
recursively, in an AppProject of its own (also created by Pulumi: Argo CD Core has no API server,
and the API server is what creates the `default` project). It syncs automatically, with prune and
self-heal: the set of Application and AppProject objects follows git without a click. What the
child Applications deploy syncs on click unless `gitops.autoSync` is true
(`manifests.child_sync_policy`).
"""

from __future__ import annotations

import string
from collections.abc import Iterable, Mapping
from typing import Any

from components.config import HarborConfig
from components.platform import REGISTRY
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
ROOT_PROJECT = "space-harbor-root"
REPOSITORY_SECRET = "space-harbor-repository"  # noqa: S105 (a name, not a password)
KNOWN_HOSTS_CONFIGMAP = "argocd-ssh-known-hosts-cm"
KNOWN_HOSTS_KEY = "ssh_known_hosts"
# The label every platform Application carries (manifests/gitops/component-application.yaml).
PART_OF_LABEL = "app.kubernetes.io/part-of"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
# What the root Application may create in argocd: the Applications and AppProjects under <path>/apps.
ROOT_PROJECT_KINDS = ("Application", "AppProject")

README = "README.md"
PROJECTS = {
    "infrastructure": "apps/projects/infrastructure.yaml",
    "applications": "apps/projects/applications.yaml",
    "backups": "apps/projects/backups.yaml",
}
# The projects meant for users' Applications (workloads; ScheduledBackups); `infrastructure` is the platform's.
USER_PROJECTS = frozenset({"applications", "backups"})
# Namespaces no user Application may deploy into, beside every platform component's.
SYSTEM_NAMESPACES = ("kube-system", "kube-public", "kube-node-lease", ARGOCD_NAMESPACE, "default")
# The component whose namespace gets a project of its own for users' ScheduledBackups.
BACKUP_COMPONENT = "backup"
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
    if config.gitops.sync_on_apply:
        return (
            "The platform's own Applications sync on click (`gitops.autoSync` is false), and every "
            "`pulumi up` that commits here syncs those that are out of sync (`gitops.syncOnApply`)."
        )
    return (
        "The platform's own Applications then sync on click (`gitops.autoSync` is false; set it to "
        "true to sync them automatically)."
    )


def fenced_namespaces() -> list[str]:
    """The system's namespaces and every platform component's (enabled or not: one may be enabled later)."""
    platform = sorted({component.namespace for component in REGISTRY} - set(SYSTEM_NAMESPACES))
    return [*SYSTEM_NAMESPACES, *platform]


def _applications_project() -> dict[str, Any]:
    project = load_template("project-applications.yaml")
    destinations = project["spec"]["destinations"]
    allow = destinations[-1]
    assert allow["namespace"] == "*", "the template's allow entry must stay last"
    project["spec"]["destinations"] = [
        {"server": IN_CLUSTER, "namespace": f"!{namespace}"} for namespace in fenced_namespaces()
    ] + [allow]
    return project


def project_objects(config: HarborConfig) -> dict[str, dict[str, Any]]:
    """The AppProjects under <path>/apps/projects/ by name: the platform's, users' and (with backup) users' backups."""
    projects = {
        "infrastructure": load_template("project-infrastructure.yaml"),
        "applications": _applications_project(),
    }
    backup = next((c for c in config.enabled_components() if c.name == BACKUP_COMPONENT), None)
    if backup is not None:
        project = load_template("project-backups.yaml")
        project["spec"]["destinations"] = [{"server": IN_CLUSTER, "namespace": backup.namespace}]
        projects["backups"] = project
    return projects


def render_projects(config: HarborConfig) -> dict[str, str]:
    """The AppProjects under <path>/apps/projects/, as committed, by name."""
    return {name: dump(project) for name, project in project_objects(config).items()}


def user_projects(config: HarborConfig) -> list[str]:
    """The projects of this stack that users' Applications may name: those of USER_PROJECTS it renders."""
    return [name for name in project_objects(config) if name in USER_PROJECTS]


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
        root=ROOT_APPLICATION,
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
    app["spec"]["project"] = ROOT_PROJECT
    app["spec"]["source"] = {
        "repoURL": config.gitops.repo_url,
        "targetRevision": config.gitops.branch,
        "path": apps_path(config),
        "directory": {"recurse": True},
    }
    app["spec"]["destination"] = {"server": IN_CLUSTER, "namespace": ARGOCD_NAMESPACE}
    return app


def platform_applications_selector() -> str:
    """The label selector of the platform's own Applications, from their template: what syncOnApply syncs."""
    labels = load_template("component-application.yaml")["metadata"]["labels"]
    return ",".join(f"{key}={labels[key]}" for key in (PART_OF_LABEL, MANAGED_BY_LABEL))


def platform_application_names(config: HarborConfig) -> list[str]:
    """The names of this stack's platform Applications (components/render/platform.py names them so)."""
    return sorted(component.name for component in config.enabled_components())


def render_root_project(config: HarborConfig) -> dict[str, Any]:
    """The root Application's AppProject: the cluster repo only; Applications, AppProjects (in `argocd`), Namespaces."""
    project = load_template("root-project.yaml")
    project["metadata"]["name"] = ROOT_PROJECT
    project["metadata"]["namespace"] = ARGOCD_NAMESPACE
    project["spec"]["sourceRepos"] = [config.gitops.repo_url]
    project["spec"]["destinations"] = [{"server": IN_CLUSTER, "namespace": ARGOCD_NAMESPACE}]
    # The one cluster-scoped kind <path>/apps holds: the plain Namespaces of users' apps, which their
    # project `applications` may not create (apps/user/README.md says to commit them there).
    project["spec"]["clusterResourceWhitelist"] = [{"group": "", "kind": "Namespace"}]
    project["spec"]["namespaceResourceWhitelist"] = [
        {"group": "argoproj.io", "kind": kind} for kind in ROOT_PROJECT_KINDS
    ]
    return project


def render_repository_secret(config: HarborConfig) -> dict[str, Any]:
    """Argo CD's repository Secret, with Argo CD's own credential (gitops.argocd*, else the write one).

    `stringData` holds the credentials: the caller marks it secret.
    """
    gitops = config.gitops
    secret = load_template("repository-secret.yaml")
    secret["metadata"]["name"] = REPOSITORY_SECRET
    secret["metadata"]["namespace"] = ARGOCD_NAMESPACE
    data: dict[str, str] = {"type": "git", "name": ROOT_APPLICATION, "url": gitops.repo_url}
    if gitops.uses_ssh:
        key = gitops.argocd_ssh_key.get_secret_value()
        data["sshPrivateKey"] = key if key.endswith("\n") else key + "\n"
    else:
        username, password = gitops.argocd_login
        data["username"] = username
        data["password"] = password.get_secret_value()
    secret["stringData"] = data
    return secret


def known_hosts_text(config: HarborConfig) -> str | None:
    """gitops.knownHosts normalised: one entry a line, no blank lines, a final newline."""
    raw = config.gitops.known_hosts
    if raw is None:
        return None
    lines = [line.strip() for line in raw.splitlines() if line.strip()]
    return "\n".join(lines) + "\n" if lines else None


def known_hosts_lines(text: str) -> list[str]:
    """The entries of a known_hosts text: stripped, without comments or blank lines."""
    return [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]


def render_known_hosts_configmap(config: HarborConfig, argocd_defaults: Iterable[str]) -> dict[str, Any]:
    """Argo CD's `argocd-ssh-known-hosts-cm`, owned by Space Harbor alone.

    Its `ssh_known_hosts` is Argo CD's default host lines of the pinned release, then gitops.knownHosts,
    each entry once: our hosts stay through an Argo CD version change, and Argo CD keeps its defaults.
    """
    ours = known_hosts_lines(config.gitops.known_hosts or "")
    lines = list(dict.fromkeys([*argocd_defaults, *ours]))
    configmap = load_template("known-hosts-configmap.yaml")
    configmap["metadata"]["name"] = KNOWN_HOSTS_CONFIGMAP
    configmap["metadata"]["namespace"] = ARGOCD_NAMESPACE
    header = "# Managed by Space Harbor: Argo CD's default hosts, then gitops.knownHosts.\n"
    configmap["data"] = {KNOWN_HOSTS_KEY: header + "".join(f"{line}\n" for line in lines)}
    return configmap
