"""What every platform component module is made of: its section, its Component, and shared pieces.

A component module (components/platform/<name>.py) holds a `Settings` section (its keys under
`components.<key>`), pure functions of `(settings, context)` for its Helm values, NetworkPolicy
openings, plain manifests, secrets to seal, cross-checks and README paragraph, and one
`COMPONENT` that names them. `Context` is all a component may know of the rest of the stack;
the config model builds it (components/config/model.py), and the tree renderer
(components/render/platform.py) turns a Component into files.
"""

from __future__ import annotations

import ipaddress
import types
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import yaml
from pydantic.alias_generators import to_snake

from components.schema import ConfigModel

# The one place chart versions are pinned; a component's entry is keyed by its `name`.
VERSIONS = Path(__file__).resolve().parents[2] / "manifests" / "gitops" / "versions.yaml"
KUBE_SYSTEM = "kube-system"
COMPONENTS_DIR = "components"
KUBELET_PORT = 10250
API_PORT = 6443  # k3s's API port, as components/render/k3s.py has it (which builds on the config)
# A custom resource whose CRD another component brings (IngressRoute: Traefik; SealedSecret: Sealed
# Secrets) would fail the dry run until that component has synced.
CRD_PENDING = "SkipDryRunOnMissingResource=true"

Rule = dict[str, Any]


class Section(ConfigModel):
    """A component's keys under `components.<key>`; every component can be switched on and off."""

    enabled: bool = False


@dataclass(frozen=True)
class Context:
    """What a platform component may know of the rest of the stack, read off the validated config."""

    domain: str | None
    node_names: tuple[str, ...]  # in the order of `nodes`
    first_server: str  # the server that bootstraps the cluster
    node_addresses: tuple[str, ...]  # where cluster traffic reaches each node, in the order of `nodes`
    server_addresses: tuple[str, ...]  # the same for the servers, by name
    service_cidr: ipaddress.IPv4Network
    gitops_path: str
    enabled: frozenset[str]  # config keys of the enabled components


@dataclass(frozen=True)
class SecretSpec:
    """One Secret a component needs. `data` is plaintext from config, only ever handed to the sealer."""

    component: str
    namespace: str
    name: str
    path: str  # repo-relative path of the SealedSecret file, under <gitops.path>/components/<component>/
    data: Mapping[str, str] = field(repr=False, hash=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "data", types.MappingProxyType(dict(self.data)))


@dataclass(frozen=True)
class Opening:
    """One NetworkPolicy beside the default deny: `name` and its ingress and/or egress rules."""

    name: str
    ingress: tuple[Rule, ...] = ()
    egress: tuple[Rule, ...] = ()


@dataclass(frozen=True)
class ChartRef:
    """Where a component's chart comes from, pinned."""

    repo_url: str
    version: str
    chart: str | None = None  # from a chart repository
    path: str | None = None  # or from a folder of a git repository


@cache
def chart_refs() -> dict[str, ChartRef]:
    """manifests/gitops/versions.yaml: component name -> pinned chart."""
    document = yaml.safe_load(VERSIONS.read_text(encoding="utf-8"))
    refs = {}
    for name, entry in document.items():
        refs[name] = ChartRef(
            repo_url=entry["repoURL"], version=str(entry["version"]), chart=entry.get("chart"), path=entry.get("path")
        )
        assert (refs[name].chart is None) != (refs[name].path is None), f"{name}: give chart or path"
    return refs


def _nothing(_settings: Any, _context: Context) -> list[Any]:
    return []


def _no_check(_settings: Any, _context: Context) -> None:
    return None


def _no_readme(_settings: Any, _context: Context) -> str | None:
    return None


@dataclass(frozen=True)
class Component:
    """A platform component: its config section, where it runs, and how its files follow its settings.

    Every function takes the component's own settings and the `Context`; the tree renderer calls
    them only while the component is enabled.
    """

    name: str  # Application name, folder name, key in versions.yaml
    key: str  # its section under `components` in stack config (camelCase)
    settings: type[Section]
    namespace: str
    release: str  # Helm release name; the charts derive pod labels and Service names from it
    values: Callable[[Any, Context], dict[str, Any]]
    openings: Callable[[Any, Context], list[Opening]]
    manifests: Callable[[Any, Context], list[dict[str, Any]]] = _nothing
    secrets: Callable[[Any, Context], list[SecretSpec]] = _nothing
    # Cross-checks against the rest of the stack; raises ValueError("<key path>: ...").
    check: Callable[[Any, Context], None] = _no_check
    # Its paragraph in the generated README (Markdown), if an operator needs one.
    readme: Callable[[Any, Context], str | None] = _no_readme
    # Debian packages every node needs while the component is enabled (components/scripts/k3s.sh).
    node_packages: tuple[str, ...] = ()
    # Pods the policies select; {} = the whole namespace (only in a namespace of its own).
    pod_selector: Mapping[str, Any] = field(default_factory=dict)
    sync_options: tuple[str, ...] = ()

    @property
    def field_name(self) -> str:
        """Its attribute on the config's `components` section: `key` in snake_case."""
        return to_snake(self.key)

    @property
    def chart(self) -> ChartRef:
        return chart_refs()[self.name]

    @property
    def own_namespace(self) -> bool:
        return self.namespace != KUBE_SYSTEM

    def policy_name(self, base: str) -> str:
        # In a shared namespace the component's name keeps its policies apart from others'.
        return base if self.own_namespace else f"{self.name}-{base}"


# --- pieces the components share -------------------------------------------------------------


def labels() -> dict[str, str]:
    return {"app.kubernetes.io/managed-by": "space-harbor"}


def resources(cpu: str, memory: str, cpu_limit: str, memory_limit: str) -> dict[str, Any]:
    return {"requests": {"cpu": cpu, "memory": memory}, "limits": {"cpu": cpu_limit, "memory": memory_limit}}


def secret_path(context: Context, component: str, name: str) -> str:
    return f"{context.gitops_path}/{COMPONENTS_DIR}/{component}/sealedsecret-{name}.yaml"


def pem(text: str | None) -> str:
    return (text or "").strip() + "\n"


def tcp(*ports: int) -> list[dict[str, Any]]:
    return [{"protocol": "TCP", "port": port} for port in ports]


def ip_peers(addresses: tuple[str, ...] | list[str]) -> list[dict[str, Any]] | None:
    """ipBlock peers for these addresses, or None when one is a DNS name (ipBlock needs an IP)."""
    peers = []
    for address in addresses:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return None
        peers.append({"ipBlock": {"cidr": f"{ip}/{ip.max_prefixlen}"}})
    return peers


def dns_egress() -> Rule:
    return {
        "to": [
            {
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": KUBE_SYSTEM}},
                "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
            }
        ],
        "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}],
    }


def api_egress(context: Context) -> list[Rule]:
    """The API server: kube-proxy turns kubernetes.default (first service IP, 443) into a server's node IP
    on 6443 before the policy sees the packet, so the policy must allow the latter; the former is kept for
    network-policy engines that look before the translation."""
    service_ip = next(context.service_cidr.hosts())
    servers = ip_peers(context.server_addresses)
    api: Rule = {"ports": tcp(API_PORT)}
    if servers is not None:
        api = {"to": servers, **api}
    return [{"to": [{"ipBlock": {"cidr": f"{service_ip}/32"}}], "ports": tcp(443)}, api]


def kubelet_egress(context: Context) -> Rule:
    nodes = ip_peers(context.node_addresses)
    rule: Rule = {"ports": tcp(KUBELET_PORT)}
    return {"to": nodes, **rule} if nodes is not None else rule
