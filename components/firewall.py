"""NodeFirewall: an nftables table of Space Harbor's own on one node."""

from __future__ import annotations

import pulumi

from components.config import HarborConfig, Node
from components.remote import disarmed_command, node_command
from components.render.nftables import TABLE_NAME, render_nftables


class NodeFirewall(pulumi.ComponentResource):
    """Keeps the API, kubelet, etcd and flannel private; never closes SSH."""

    applied: pulumi.Resource

    def __init__(
        self,
        name: str,
        config: HarborConfig,
        node: Node,
        after: list[pulumi.Resource] | None = None,
        opts: pulumi.ResourceOptions | None = None,
        repair: pulumi.Input[str | None] | None = None,
    ) -> None:
        """`after`: what the command waits for (the drain of removed nodes, see components/k3s.py).

        `repair`: HARBOR_REPAIR for the step (None until a refresh found the firewall drifted).
        """
        super().__init__("space-harbor:index:NodeFirewall", name, None, opts)
        env: dict[str, pulumi.Input[str | None]] = {
            "HARBOR_NFT_TABLE": TABLE_NAME,
            "HARBOR_NFT_RULESET": render_nftables(config, node),
        }
        if repair is not None:
            env["HARBOR_REPAIR"] = repair
        self.applied = node_command(
            f"{node.name}-firewall",
            config,
            node,
            "firewall.sh",
            create="apply",
            delete="remove",
            env=env,
            secret=False,
            opts=pulumi.ResourceOptions(parent=self, depends_on=after or []),
        )
        self.register_outputs({})


def forgotten_firewall(node_name: str) -> pulumi.Resource:
    """The firewall step of a node in `decommission.forget`: same identity, disarmed (see remote.py)."""
    component = pulumi.ComponentResource("space-harbor:index:NodeFirewall", f"{node_name}-firewall")
    disarmed_command(f"{node_name}-firewall", node_name, pulumi.ResourceOptions(parent=component))
    component.register_outputs({})
    return component
