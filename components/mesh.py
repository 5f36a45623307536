"""WireGuardMesh: one key and one applied wg-quick config per node, operators as extra peers."""

from __future__ import annotations

from collections.abc import Mapping

import pulumi
import pulumi_random as random

from components.config import HarborConfig
from components.remote import disarmed_command, node_command
from components.render.wireguard import mesh_peers, public_key, render_node_config, render_operator_config

WG_KEY_BYTES = 32


class WireGuardMesh(pulumi.ComponentResource):
    """Full mesh between the nodes. Private keys live only in state (secret), public keys derive."""

    public_keys: pulumi.Output[dict[str, str]]
    applied: dict[str, pulumi.Resource]
    operator_configs: pulumi.Output[dict[str, str]]

    def __init__(
        self,
        name: str,
        config: HarborConfig,
        forget: list[str] | None = None,
        after: list[pulumi.Resource] | None = None,
        opts: pulumi.ResourceOptions | None = None,
        repair: Mapping[str, pulumi.Input[str | None]] | None = None,
    ) -> None:
        """`after`: what every node's mesh command waits for (the drain of removed nodes).

        `forget`: nodes that left the stack unreachable; their mesh steps stay, disarmed.
        `repair`: per node, HARBOR_REPAIR for its step (None until a refresh found its mesh drifted).
        """
        super().__init__("space-harbor:index:WireGuardMesh", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        # RandomBytes keeps 32 random bytes as a secret in state; X25519 clamps them into a key.
        private_keys = {
            node.name: random.RandomBytes(f"{node.name}-wg-key", length=WG_KEY_BYTES, opts=child).base64
            for node in config.nodes
        }
        operator_keys = {
            op.name: random.RandomBytes(f"{op.name}-wg-key", length=WG_KEY_BYTES, opts=child).base64
            for op in config.mesh.operators
            if op.public_key is None
        }
        derived = {name: key.apply(public_key) for name, key in {**private_keys, **operator_keys}.items()}
        given = {op.name: op.public_key for op in config.mesh.operators if op.public_key is not None}
        # A public key is no secret, though derived from one.
        self.public_keys = pulumi.Output.unsecret(pulumi.Output.all(**derived).apply(lambda keys: {**keys, **given}))
        peers = self.public_keys.apply(lambda keys: mesh_peers(config, keys))

        self.applied = {}
        # Each node's wg-quick file (secret: it holds the key); the drift record keeps its sha256.
        self.node_configs: dict[str, pulumi.Output[str]] = {}
        for node in config.nodes:
            wg_config = pulumi.Output.all(private_keys[node.name], peers).apply(
                lambda args, node_name=node.name: render_node_config(config, node_name, args[0], args[1])
            )
            self.node_configs[node.name] = wg_config
            env: dict[str, pulumi.Input[str | None]] = {
                "HARBOR_WG_INTERFACE": config.mesh.interface,
                "HARBOR_WG_CONFIG": wg_config,
            }
            if repair is not None:
                env["HARBOR_REPAIR"] = repair[node.name]
            self.applied[node.name] = node_command(
                f"{node.name}-mesh",
                config,
                node,
                "mesh.sh",
                create="apply",
                delete="remove",
                env=env,
                secret=True,
                opts=pulumi.ResourceOptions(parent=self, depends_on=after or []),
            )

        for node_name in forget or []:
            disarmed_command(f"{node_name}-mesh", node_name, pulumi.ResourceOptions(parent=self))

        configs = {
            op.name: pulumi.Output.all(operator_keys.get(op.name), peers).apply(
                lambda args, op_name=op.name: render_operator_config(config, op_name, args[0], args[1])
            )
            for op in config.mesh.operators
        }
        self.operator_configs = pulumi.Output.secret(pulumi.Output.all(**configs))
        self.register_outputs({"publicKeys": self.public_keys, "operatorConfigs": self.operator_configs})
