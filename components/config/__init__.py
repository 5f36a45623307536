"""The stack config of Space Harbor: one typed model, validated before any resource exists.

DESIGN §2 is the contract. Keys are camelCase in `Pulumi.<stack>.yaml` and snake_case here.
`load_config` turns raw config values into a `HarborConfig` or raises one `ConfigError` whose
every line names a key path (`nodes[2].meshAddress: ...`).

    cluster.py   the sections of the cluster: ssh, nodes, mesh, firewall, decommission, preflight
    k3s.py       the k3s section: version, datastore, API access, air gap, registries
    gitops.py    the sections of the GitOps repository and Argo CD
    model.py     the whole model; `components` comes from the platform components' own modules
                 (components/platform/)
    checks.py    the checks that span sections
    loading.py   raw values -> model, and the refusal's key paths
"""

from __future__ import annotations

from components.config.cluster import (
    CLUSTER_ONLY_PORTS,
    FLANNEL_WIREGUARD_PORTS,
    PREFLIGHT_CHECKS,
    PREFLIGHT_REQUIRED,
    SKIPPABLE_PREFLIGHT_CHECKS,
    Bastion,
    Decommission,
    Firewall,
    Mesh,
    Node,
    Operator,
    Preflight,
    SshDefaults,
)
from components.config.gitops import ARGOCD_CORE_FILE, DEFAULT_ARGOCD_VERSION, ArgoCD, GitOps
from components.config.k3s import DEFAULT_K3S_VERSION, MANAGED_K3S_FLAGS, EtcdSnapshots, K3s, Registries
from components.config.loading import PROJECT, TOP_LEVEL_KEYS, load_config, read_pulumi_config
from components.config.model import Components, HarborConfig
from components.schema import ConfigError

__all__ = [
    "ARGOCD_CORE_FILE",
    "CLUSTER_ONLY_PORTS",
    "DEFAULT_ARGOCD_VERSION",
    "DEFAULT_K3S_VERSION",
    "FLANNEL_WIREGUARD_PORTS",
    "MANAGED_K3S_FLAGS",
    "PREFLIGHT_CHECKS",
    "PREFLIGHT_REQUIRED",
    "PROJECT",
    "SKIPPABLE_PREFLIGHT_CHECKS",
    "TOP_LEVEL_KEYS",
    "ArgoCD",
    "Bastion",
    "Components",
    "ConfigError",
    "Decommission",
    "EtcdSnapshots",
    "Firewall",
    "GitOps",
    "HarborConfig",
    "K3s",
    "Mesh",
    "Node",
    "Operator",
    "Preflight",
    "Registries",
    "SshDefaults",
    "load_config",
    "read_pulumi_config",
]
