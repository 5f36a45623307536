"""The parameters of the preflight check (components/scripts/preflight.sh): a pure function, no I/O."""

from __future__ import annotations

from components.config import HarborConfig, Node


def preflight_env(config: HarborConfig, node: Node) -> dict[str, str]:
    """What the node is expected to be; nothing that changes between two runs of the same config."""
    return {
        "HARBOR_NODE_NAME": node.name,
        "HARBOR_K3S_ROLE": node.role,
        "HARBOR_K3S_BOOTSTRAP": "true" if node.name == config.first_server.name else "false",
        "HARBOR_K3S_VERSION": config.k3s.version,
    }
