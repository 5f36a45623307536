"""Argo CD Core's pinned core-install.yaml, object by object: pure functions between the pinned text and resources.

Each object becomes its own Kubernetes resource (components/argocd.py), named and typed exactly as
the `kubernetes:yaml/v2:ConfigFile` that applied the file before had named and typed its children,
so that an existing stack takes them over in place through an alias:

- type: `kubernetes:<group, or core>/<version>:<Kind>`, pulumi-kubernetes's token;
- name: `<prefix>:<namespace>/<name>` for a namespaced object, `<prefix>:<name>` for a cluster-scoped
  one, the prefix being the ConfigFile's name. The ConfigFile gave namespace-less namespaced objects
  its provider's default namespace, `argocd`, which is the namespace they now get explicitly.

`argocd-ssh-known-hosts-cm` is not among the core objects: Space Harbor owns it (its data is Argo
CD's default hosts of the pinned file plus gitops.knownHosts, components/render/gitops.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import yaml

from components.render.gitops import ARGOCD_NAMESPACE, KNOWN_HOSTS_CONFIGMAP, KNOWN_HOSTS_KEY, known_hosts_lines

# The name the ConfigFile had, which prefixed its children's names: part of their identity.
CONFIG_FILE_NAME = "argocd-core"
CONFIG_FILE_TYPE = "kubernetes:yaml/v2:ConfigFile"

# The scope of every kind Space Harbor knows how to name. A kind outside both sets stops the run:
# guessing its scope wrong would give it a new name, which the engine treats as delete + create.
CLUSTER_SCOPED_KINDS = frozenset(
    {
        "APIService",
        "ClusterRole",
        "ClusterRoleBinding",
        "CustomResourceDefinition",
        "MutatingWebhookConfiguration",
        "Namespace",
        "PriorityClass",
        "ValidatingWebhookConfiguration",
    }
)
NAMESPACED_KINDS = frozenset(
    {
        "ConfigMap",
        "CronJob",
        "DaemonSet",
        "Deployment",
        "HorizontalPodAutoscaler",
        "Ingress",
        "Job",
        "NetworkPolicy",
        "PersistentVolumeClaim",
        "PodDisruptionBudget",
        "Role",
        "RoleBinding",
        "Secret",
        "Service",
        "ServiceAccount",
        "StatefulSet",
    }
)


class CoreManifestError(ValueError):
    """The pinned core-install.yaml holds something Space Harbor cannot register faithfully."""


@dataclass(frozen=True)
class CoreObject:
    """One object of core-install.yaml, as the resource that applies it."""

    type_token: str
    resource_name: str
    namespaced: bool
    body: dict[str, Any]  # the object as applied: camelCase, `metadata.namespace` set when namespaced

    @property
    def kind(self) -> str:
        return str(self.body["kind"])

    @property
    def name(self) -> str:
        return str(self.body["metadata"]["name"])

    @property
    def is_crd(self) -> bool:
        return self.kind == "CustomResourceDefinition"


@dataclass(frozen=True)
class CoreManifest:
    version: str
    objects: tuple[CoreObject, ...]  # every object but the known-hosts ConfigMap, in file order
    default_known_hosts: tuple[str, ...]  # the host lines Argo CD ships, comments and blanks dropped


def type_token(api_version: str, kind: str) -> str:
    group, _, version = api_version.rpartition("/")
    return f"kubernetes:{group or 'core'}/{version}:{kind}"


def resource_name(name: str, namespace: str | None) -> str:
    return f"{CONFIG_FILE_NAME}:{namespace}/{name}" if namespace else f"{CONFIG_FILE_NAME}:{name}"


def _load_documents(text: str) -> list[dict[str, Any]]:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml parses the 1.3 MB file ~8x faster
    documents = [doc for doc in yaml.load_all(text, Loader=loader) if doc is not None]
    for i, document in enumerate(documents):
        if not isinstance(document, dict) or not document.get("kind") or not document.get("apiVersion"):
            raise CoreManifestError(f"document {i} is not a Kubernetes object with apiVersion and kind")
        if not (document.get("metadata") or {}).get("name"):
            raise CoreManifestError(f"document {i} ({document['kind']}) has no metadata.name")
    return documents


def _core_object(document: dict[str, Any]) -> CoreObject:
    kind = str(document["kind"])
    body = document  # freshly parsed, ours to change
    metadata = body["metadata"]
    if kind in CLUSTER_SCOPED_KINDS:
        namespace = None
    elif kind in NAMESPACED_KINDS:
        namespace = metadata.get("namespace") or ARGOCD_NAMESPACE
        if namespace != ARGOCD_NAMESPACE:
            raise CoreManifestError(f"{kind} {metadata['name']} is in namespace {namespace}, not {ARGOCD_NAMESPACE}")
        metadata["namespace"] = namespace
    else:
        raise CoreManifestError(f"{kind} {metadata['name']}: unknown kind, so its scope (and resource name) is unknown")
    return CoreObject(
        type_token(str(body["apiVersion"]), kind), resource_name(metadata["name"], namespace), bool(namespace), body
    )


def parse_core_manifest(version: str, text: str) -> CoreManifest:
    """The objects of a pinned core-install.yaml, ready to register, and Argo CD's default known hosts."""
    objects: list[CoreObject] = []
    defaults: list[str] | None = None
    seen: set[tuple[str, str]] = set()  # a URN is unique by type and name
    for document in _load_documents(text):
        if document["kind"] == "ConfigMap" and document["metadata"]["name"] == KNOWN_HOSTS_CONFIGMAP:
            defaults = known_hosts_lines(str((document.get("data") or {}).get(KNOWN_HOSTS_KEY, "")))
            continue
        core = _core_object(document)
        if (core.type_token, core.resource_name) in seen:
            raise CoreManifestError(f"{core.kind} {core.name} appears twice")
        seen.add((core.type_token, core.resource_name))
        objects.append(core)
    if defaults is None:
        raise CoreManifestError(f"no ConfigMap {KNOWN_HOSTS_CONFIGMAP}: is this Argo CD's core-install.yaml?")
    return CoreManifest(version, tuple(objects), tuple(defaults))


# The StatefulSet of Argo CD's application controller: what applies every synced object.
APPLICATION_CONTROLLER = "argocd-application-controller"


def application_controller_username(core: CoreManifest) -> str:
    """The API username of the application controller: its StatefulSet's ServiceAccount in `argocd`."""
    for item in core.objects:
        if item.kind == "StatefulSet" and item.name == APPLICATION_CONTROLLER:
            account = item.body["spec"]["template"]["spec"].get("serviceAccountName")
            if not account:
                raise CoreManifestError(f"StatefulSet {APPLICATION_CONTROLLER} names no serviceAccountName")
            return f"system:serviceaccount:{ARGOCD_NAMESPACE}:{account}"
    raise CoreManifestError(f"no StatefulSet {APPLICATION_CONTROLLER}: is this Argo CD's core-install.yaml?")
