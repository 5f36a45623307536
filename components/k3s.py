"""K3sServer and K3sAgent: config.yaml-driven installs, joins, upgrades and the decommission order.

Per joined node there are three commands. Their dependencies give both orders:

  node-object  (on the first server)  create: check the API   update: prepare-upgrade (drain)
                                                               delete: delete the Node object
  install      (on the node)          create/update: install k3s from config.yaml
                                                               delete: uninstall
  registered   (on the first server)  create/update: reconcile (Ready, version, labels, taints,
                                                     uncordon)  delete: drain

Pulumi runs creates and updates in dependency order and deletes in the reverse, so a version
change drains, upgrades and uncordons each node in turn, and a removed node is drained,
uninstalled and then deleted from the API (DESIGN §3.4). Which node waits for which comes from
`upgrade_waits`: servers one at a time, then agents `k3s.upgradeConcurrency` at a time.
"""

from __future__ import annotations

from typing import ClassVar

import pulumi

from components.config import HarborConfig, Node
from components.remote import node_command
from components.render.k3s import render_config_yaml


def _install(
    config: HarborConfig,
    node: Node,
    token: pulumi.Input[str],
    parent: pulumi.Resource,
    depends_on: list[pulumi.Resource],
) -> pulumi.Resource:
    """The k3s install on `node`, from a config.yaml that carries the token (so stdin is secret)."""
    config_yaml = pulumi.Output.from_input(token).apply(lambda value: render_config_yaml(config, node, value))
    return node_command(
        f"{node.name}-k3s",
        config,
        node,
        "k3s.sh",
        create="install",
        delete="uninstall",
        env={
            "HARBOR_K3S_ROLE": node.role,
            "HARBOR_K3S_VERSION": config.k3s.version,
            "HARBOR_K3S_CONFIG": config_yaml,
            "HARBOR_K3S_AIRGAP": "true" if config.k3s.airgap else "false",
        },
        secret=True,
        # Create-then-delete would uninstall what the new install just put on the same host.
        opts=pulumi.ResourceOptions(parent=parent, depends_on=depends_on, delete_before_replace=True),
    )


def _on_first_server(
    name: str,
    config: HarborConfig,
    env: dict[str, pulumi.Input[str]],
    opts: pulumi.ResourceOptions,
    *,
    create: str,
    delete: str | None,
    update: str | None = None,
) -> pulumi.Resource:
    """A k3s-lifecycle.sh step; it runs on the first server, whose kubectl reaches the API locally."""
    return node_command(
        name,
        config,
        config.first_server,
        "k3s-lifecycle.sh",
        create=create,
        update=update,
        delete=delete,
        env=env,
        secret=False,
        opts=opts,
    )


def _lifecycle_env(config: HarborConfig, node: Node) -> dict[str, pulumi.Input[str]]:
    return {
        "HARBOR_NODE_NAME": node.name,
        "HARBOR_K3S_VERSION": config.k3s.version,
        "HARBOR_DRAIN_TIMEOUT": str(config.decommission.drain_timeout_seconds),
        "HARBOR_FORCE": "true" if config.decommission.force else "false",
    }


def _reconcile_env(config: HarborConfig, node: Node) -> dict[str, pulumi.Input[str]]:
    """What `reconcile` makes true of the Node object: its labels and taints, one a line."""
    return {
        **_lifecycle_env(config, node),
        "HARBOR_NODE_LABELS": "\n".join(f"{key}={value}" for key, value in sorted(node.labels.items())),
        "HARBOR_NODE_TAINTS": "\n".join(node.taints),
    }


def drain_departed_nodes(config: HarborConfig) -> pulumi.Resource:
    """A step on the first server that drains nodes removed from the stack, before anything else.

    Pulumi runs the updates of the remaining nodes (their meshes and firewalls drop the removed
    peer) before the deletes of the removed node's resources. A drain at delete time would find
    the node cut off from the API and its pods stuck terminating, so the other nodes' mesh and
    firewall wait for this step, which drains it while it is still connected. The removed node's
    own `registered` delete then finds it drained.
    """
    env: dict[str, pulumi.Input[str]] = {
        "HARBOR_CLUSTER_NODES": "\n".join(node.name for node in config.nodes),
        "HARBOR_DRAIN_TIMEOUT": str(config.decommission.drain_timeout_seconds),
        "HARBOR_FORCE": "true" if config.decommission.force else "false",
    }
    return _on_first_server(
        "cluster-departures", config, env, pulumi.ResourceOptions(), create="drain-departed", delete=None
    )


def upgrade_waits(config: HarborConfig) -> dict[str, list[str]]:
    """For each joined node, the nodes whose `registered` step it waits for before its own steps.

    Servers go one at a time after the first, so etcd keeps quorum; agents go after every server,
    at most `k3s.upgradeConcurrency` at once. The same order holds on day 1, which is what k3s
    asks for joining servers; for agents it bounds how many join at once.
    """
    waits: dict[str, list[str]] = {}
    previous = config.first_server.name
    for server in config.servers[1:]:
        waits[server.name] = [previous]
        previous = server.name
    last_server = previous
    window = config.k3s.upgrade_concurrency
    agents = config.agents
    for index, agent in enumerate(agents):
        waits[agent.name] = [last_server] + ([agents[index - window].name] if index >= window else [])
    return waits


def _registered(
    config: HarborConfig, node: Node, parent: pulumi.Resource, install: pulumi.Resource, delete: str | None
) -> pulumi.Resource:
    """The step on the first server that makes `node`'s Node object match the stack."""
    return _on_first_server(
        f"{node.name}-registered",
        config,
        _reconcile_env(config, node),
        pulumi.ResourceOptions(parent=parent, depends_on=[install]),
        create="reconcile",
        delete=delete,
    )


class _JoinedNode(pulumi.ComponentResource):
    """A node that joins an existing server: its Node object, its install, its registration."""

    pulumi_type: ClassVar[str]
    install: pulumi.Resource
    registered: pulumi.Resource

    def __init__(
        self,
        name: str,
        config: HarborConfig,
        node: Node,
        token: pulumi.Input[str],
        after: list[pulumi.Resource],
        depends_on: list[pulumi.Resource],
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        """`after`: the `registered` steps of the nodes this one waits for (see `upgrade_waits`)."""
        super().__init__(self.pulumi_type, name, None, opts)
        node_object = _on_first_server(
            f"{node.name}-node-object",
            config,
            _lifecycle_env(config, node),
            # On delete the Node object goes before the node's own mesh and firewall (DESIGN §3.4).
            pulumi.ResourceOptions(parent=self, depends_on=[*after, *depends_on]),
            create="node-object",
            update="prepare-upgrade",
            delete="delete-node",
        )
        self.install = _install(config, node, token, self, [node_object, *depends_on])
        self.registered = _registered(config, node, self, self.install, delete="drain")
        self.register_outputs({})


class K3sServer(pulumi.ComponentResource):
    """The first server bootstraps the cluster and hands back its kubeconfig."""

    install: pulumi.Resource
    registered: pulumi.Resource
    raw_kubeconfig: pulumi.Output[str]
    token: pulumi.Output[str]

    def __init__(
        self,
        name: str,
        config: HarborConfig,
        node: Node,
        token: pulumi.Input[str],
        depends_on: list[pulumi.Resource],
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__("space-harbor:index:K3sServer", name, None, opts)
        self.install = _install(config, node, token, self, depends_on)
        read = node_command(
            f"{node.name}-kubeconfig",
            config,
            node,
            "k3s.sh",
            create="kubeconfig",
            delete=None,
            env={},
            secret=False,
            prints_secret=True,
            opts=pulumi.ResourceOptions(parent=self, depends_on=[self.install]),
        )
        # Nothing to undo on delete: the whole cluster goes with the first server.
        self.registered = _registered(config, node, self, self.install, delete=None)
        self.raw_kubeconfig = pulumi.Output.secret(read.stdout)
        self.token = pulumi.Output.secret(token)
        self.register_outputs({"kubeconfig": self.raw_kubeconfig, "token": self.token})


class K3sJoinedServer(_JoinedNode):
    """Another embedded-etcd server that joins the first one over the mesh."""

    pulumi_type = "space-harbor:index:K3sJoinedServer"


class K3sAgent(_JoinedNode):
    """A worker that joins the first server over the mesh."""

    pulumi_type = "space-harbor:index:K3sAgent"
