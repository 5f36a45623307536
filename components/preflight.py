"""NodePreflight: the read-only check every node passes before anything is installed anywhere.

One `preflight.sh check` per node (components/scripts/preflight.sh, its parameters from
components/render/preflight.py); the mesh, firewall and k3s steps of every node wait for all of
them, so one node that fails stops the run before any node has changed.
"""

from __future__ import annotations

import pulumi

from components.config import HarborConfig
from components.remote import disarmed_command, node_command
from components.render.preflight import preflight_env


class NodePreflight(pulumi.ComponentResource):
    """One read-only check per node; every other step on every node waits for all of them."""

    def __init__(
        self,
        name: str,
        config: HarborConfig,
        forget: list[str],
        after: list[pulumi.Resource],
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        """`after`: the cluster's id, which every step that is deleted with it must follow."""
        super().__init__("space-harbor:index:NodePreflight", name, None, opts)
        self.checks = {
            node.name: node_command(
                f"{node.name}-preflight",
                config,
                node,
                "preflight.sh",
                create="check",
                delete=None,
                env=preflight_env(config, node),
                secret=False,
                opts=pulumi.ResourceOptions(parent=self, depends_on=after),
            )
            for node in config.nodes
        }
        for node_name in forget:
            disarmed_command(f"{node_name}-preflight", node_name, pulumi.ResourceOptions(parent=self))
        self.register_outputs({})
