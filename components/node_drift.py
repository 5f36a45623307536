"""NodeDrift: each node's drift record (components/drift.py), and the repair parameters of its steps.

The record of a node holds fingerprints of what its k3s, mesh and firewall steps apply, so it is
built from the same renderers. Its `repair` counters go back into those steps' stdin
(`HARBOR_REPAIR`), so the steps depend on the records: a record is created (dialling nobody)
before the node's steps run, and its expectations are the stack's intent, checked against the
node by the next refresh. The mesh keys its expectations need are made by the mesh component,
which also builds the steps, so the steps take their parameters as deferred outputs
(`RepairInputs`) that the records resolve once they exist.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import pulumi

from components.config import HarborConfig, Node
from components.drift import NodeDriftRecord
from components.render.drift import MeshExpectation, expectations, repair_parameter
from components.render.k3s import optional_install_parameters, render_config_yaml
from components.render.nftables import TABLE_NAME, render_nftables
from components.render.wireguard import mesh_peers

NODE_DRIFT_TYPE = "space-harbor:index:NodeDrift"


def read_connection(config: HarborConfig, node: Node) -> dict[str, Any]:
    """What a read needs to reach `node`, as the steps dial it (components/remote.py): keys included."""
    bastion = config.bastion(node)
    return {
        "host": node.host,
        "port": config.ssh_port(node),
        "user": config.ssh_user(node),
        "private_key": config.ssh_key(node).get_secret_value(),
        "host_key": node.ssh_host_key,
        "bastion": (
            {
                "host": bastion.host,
                "port": bastion.port,
                "user": bastion.user,
                "private_key": bastion.private_key.get_secret_value() if bastion.private_key else None,
                "host_key": bastion.host_key,
            }
            if bastion is not None
            else None
        ),
    }


def node_expectations(
    config: HarborConfig,
    node: Node,
    server_token: pulumi.Input[str],
    agent_token: pulumi.Input[str],
    mesh_config: pulumi.Input[str] | None,
    public_keys: pulumi.Input[Mapping[str, str]] | None,
) -> pulumi.Output[dict[str, Any]]:
    """The node's `expected`: fingerprints only, so not secret, though made from secrets."""
    registries = optional_install_parameters(config, node).get("HARBOR_K3S_REGISTRIES")

    def build(args: list[Any]) -> dict[str, Any]:
        server, agent, wg_config, keys = args
        mesh = None
        if config.mesh.enabled and wg_config is not None and keys is not None:
            mesh = MeshExpectation(
                interface=config.mesh.interface,
                wg_config=wg_config,
                public_key=keys[node.name],
                listen_port=config.mesh.listen_port,
                peers={
                    peer.name: (peer.public_key, peer.allowed_ip)
                    for peer in mesh_peers(config, keys)
                    if peer.name != node.name
                },
            )
        return expectations(
            node=node.name,
            role=node.role,
            config_yaml=render_config_yaml(config, node, server_token=server, agent_token=agent),
            registries_yaml=registries,
            version=config.k3s.version,
            mesh=mesh,
            nft_table=TABLE_NAME if config.firewall.enabled else None,
            nft_ruleset=render_nftables(config, node) if config.firewall.enabled else None,
        )

    built = pulumi.Output.all(server_token, agent_token, mesh_config, public_keys).apply(build)
    return pulumi.Output.unsecret(built)


class RepairInputs:
    """The steps' HARBOR_REPAIR parameters, handed out before the drift records exist."""

    def __init__(self, nodes: Iterable[str]) -> None:
        self._deferred = {name: pulumi.deferred_output() for name in nodes}
        self._resolved = False

    def parameter(self, node: str, step: str) -> pulumi.Output[str | None]:
        counters: pulumi.Output[Any] = self._deferred[node][0]
        return counters.apply(lambda values: repair_parameter((values or {}).get(step)))

    def resolve(self, records: Mapping[str, NodeDriftRecord]) -> None:
        for name, (_, resolve) in self._deferred.items():
            resolve(records[name].repair)
        self._resolved = True


class NodeDrift(pulumi.ComponentResource):
    """One drift record per node; `pulumi refresh` reads them, `pulumi up` repairs what they found."""

    records: dict[str, NodeDriftRecord]

    def __init__(
        self,
        name: str,
        config: HarborConfig,
        expected: Mapping[str, pulumi.Input[dict[str, Any]]],
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__(NODE_DRIFT_TYPE, name, None, opts)
        self.records = {
            node.name: NodeDriftRecord(
                f"{node.name}-drift",
                {
                    "node": node.name,
                    "connection": pulumi.Output.secret(read_connection(config, node)),
                    "expected": expected[node.name],
                },
                pulumi.ResourceOptions(parent=self),
            )
            for node in config.nodes
        }
        self.register_outputs({})
