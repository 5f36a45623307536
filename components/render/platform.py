"""The platform components in the GitOps tree: pure functions, config -> {repo path: text}.

For every enabled component (components/platform/, one module each) Space Harbor writes, under
`gitops.path`:

    apps/platform/<name>.yaml         its Argo CD Application (project `infrastructure`), synced by the root
    components/<name>/*.yaml          the plain manifests beside its chart: Namespace, NetworkPolicies,
                                      IngressRoute, ConfigMaps, and the SealedSecrets the caller adds

Each Application has two sources (Argo CD multi-source): the pinned Helm chart with `helm.valuesObject`
rendered from stack config, and `<gitops.path>/components/<name>` of the cluster repo at `gitops.branch`.
Chart coordinates and versions live in one place, `manifests/gitops/versions.yaml`.

Secrets never enter the tree. `secret_specs(config)` says which Secrets the components need and
where their SealedSecret files go; the chart values only name those Secrets. The caller seals the
specs and hands the files to `render_tree(config, sealed=...)` (components/render/gitops.py).

Network: every component's pods start from a default-deny NetworkPolicy (ingress and egress) and get
only the openings its module lists. In a namespace of its own the deny selects every pod; in
`kube-system` (Sealed Secrets, where kubeseal looks for it) it selects the controller's pods only, since
a namespace-wide deny there would cut CoreDNS and the rest of k3s off.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import yaml

from components.config import HarborConfig
from components.platform.base import COMPONENTS_DIR, Component, Opening, SecretSpec, chart_refs, labels
from components.render.manifests import HEADER, child_sync_policy, dump, load_template, repo_path

__all__ = [
    "SecretSpec",
    "chart_refs",
    "merge_sealed",
    "node_packages",
    "readme_components",
    "render_application",
    "render_manifests",
    "render_platform",
    "secret_specs",
]

APPS_DIR = "apps/platform"


def component_dir(config: HarborConfig, name: str) -> str:
    """`<gitops.path>/components/<name>`: the second source of the component's Application."""
    return repo_path(config, f"{COMPONENTS_DIR}/{name}")


def application_path(config: HarborConfig, name: str) -> str:
    return repo_path(config, f"{APPS_DIR}/{name}.yaml")


def _network_policy(name: str, namespace: str, selector: dict[str, Any], opening: Opening | None) -> dict[str, Any]:
    spec: dict[str, Any] = {"podSelector": selector}
    if opening is None:
        # No rules at all: nothing in, nothing out, for the selected pods.
        spec["policyTypes"] = ["Ingress", "Egress"]
    else:
        kinds = (("Ingress", opening.ingress), ("Egress", opening.egress))
        spec["policyTypes"] = [kind for kind, rules in kinds if rules]
        if opening.ingress:
            spec["ingress"] = list(opening.ingress)
        if opening.egress:
            spec["egress"] = list(opening.egress)
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": name, "namespace": namespace, "labels": labels()},
        "spec": spec,
    }


# --- rendering -----------------------------------------------------------------------------------


def secret_specs(config: HarborConfig) -> list[SecretSpec]:
    """Every Secret the enabled components need, for the caller to seal. Sorted by path."""
    context = config.platform_context()
    specs = [
        spec
        for component in config.enabled_components()
        for spec in component.secrets(config.component_settings(component), context)
    ]
    return sorted(specs, key=lambda spec: spec.path)


def node_packages(config: HarborConfig) -> list[str]:
    """The Debian packages the enabled components need on every node, sorted, each once."""
    return sorted({package for component in config.enabled_components() for package in component.node_packages})


def render_application(config: HarborConfig, component: Component) -> dict[str, Any]:
    """The component's Argo CD Application: the pinned chart plus its folder of the cluster repo."""
    ref = component.chart
    chart: dict[str, Any] = {"repoURL": ref.repo_url}
    if ref.chart is not None:
        chart["chart"] = ref.chart
    else:
        chart["path"] = ref.path
    chart["targetRevision"] = ref.version
    values = component.values(config.component_settings(component), config.platform_context())
    chart["helm"] = {"releaseName": component.release, "valuesObject": values}
    manifests = {
        "repoURL": config.gitops.repo_url,
        "targetRevision": config.gitops.branch,
        "path": component_dir(config, component.name),
    }
    app = load_template("component-application.yaml")
    app["metadata"]["name"] = component.name
    app["spec"]["sources"] = [chart, manifests]
    app["spec"]["destination"]["namespace"] = component.namespace
    options = app["spec"]["syncPolicy"]["syncOptions"] + list(component.sync_options)
    app["spec"]["syncPolicy"] = {**child_sync_policy(config), "syncOptions": options}
    return app


def render_manifests(config: HarborConfig, component: Component) -> dict[str, dict[str, Any]]:
    """The plain manifests of components/<name>/, file name -> object."""
    settings, context = config.component_settings(component), config.platform_context()
    objects: list[dict[str, Any]] = []
    if component.own_namespace:
        objects.append(
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": component.namespace, "labels": labels()}}
        )
    selector = dict(component.pod_selector)
    objects.append(_network_policy(component.policy_name("default-deny"), component.namespace, selector, None))
    for opening in component.openings(settings, context):
        name = component.policy_name(opening.name)
        objects.append(_network_policy(name, component.namespace, selector, opening))
    objects += component.manifests(settings, context)
    files: dict[str, dict[str, Any]] = {}
    for obj in objects:
        kind, name = obj["kind"].lower(), obj["metadata"]["name"]
        filename = "namespace.yaml" if kind == "namespace" else f"{kind}-{name}.yaml"
        assert filename not in files, f"{component.name}: two objects for {filename}"
        files[filename] = obj
    return files


def render_platform(config: HarborConfig) -> dict[str, str]:
    """The Applications and component folders of every enabled component, repo path -> text."""
    tree: dict[str, str] = {}
    for component in config.enabled_components():
        tree[application_path(config, component.name)] = dump(render_application(config, component))
        for filename, obj in render_manifests(config, component).items():
            tree[f"{component_dir(config, component.name)}/{filename}"] = dump(obj)
    return tree


def merge_sealed(config: HarborConfig, sealed: Mapping[str, str]) -> dict[str, str]:
    """The caller's SealedSecret files, checked: each at a path of `secret_specs`, each one SealedSecret."""
    specs = {spec.path: spec for spec in secret_specs(config)}
    files: dict[str, str] = {}
    for path, text in sealed.items():
        spec = specs.get(path)
        if spec is None:
            raise ValueError(f"{path}: no enabled component needs a sealed Secret there")
        documents = [doc for doc in yaml.safe_load_all(text) if doc is not None]
        if len(documents) != 1 or documents[0].get("kind") != "SealedSecret":
            # Never let a plain Secret (or anything else) into the tree through this door.
            raise ValueError(f"{path}: is not one SealedSecret")
        metadata = documents[0].get("metadata", {})
        if (metadata.get("namespace"), metadata.get("name")) != (spec.namespace, spec.name):
            sealed_for = f"{metadata.get('namespace')}/{metadata.get('name')}"
            raise ValueError(f"{path}: seals {sealed_for}, not {spec.namespace}/{spec.name}")
        files[path] = text if text.startswith(HEADER) else HEADER + text
    return files


def readme_components(config: HarborConfig) -> str:
    """The generated README's table of enabled components and the notes an operator needs."""
    enabled = config.enabled_components()
    if not enabled:
        return "No platform component is enabled."
    rows = ["| component | chart | version | namespace |", "|---|---|---|---|"]
    for component in enabled:
        ref = component.chart
        chart = ref.chart if ref.chart is not None else f"{ref.repo_url} `{ref.path}`"
        rows.append(f"| `{component.name}` | {chart} | `{ref.version}` | `{component.namespace}` |")
    context = config.platform_context()
    notes = [note for component in enabled if (note := component.readme(config.component_settings(component), context))]
    return "\n".join(rows) + ("\n\n" + "\n\n".join(notes) if notes else "")
