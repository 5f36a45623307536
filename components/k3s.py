"""K3sServer and K3sAgent: config.yaml-driven installs, joins, and the decommission order.

Per joined node there are three commands whose dependencies give the delete order that
DESIGN §3.4 asks for. Pulumi deletes dependents first, so:
  registered (server: wait-ready / drain)  ->  install (node: install / uninstall)
  ->  node-object (server: - / delete-node).
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


def _lifecycle_env(config: HarborConfig, node: Node) -> dict[str, pulumi.Input[str]]:
    return {
        "HARBOR_NODE_NAME": node.name,
        "HARBOR_DRAIN_TIMEOUT": str(config.decommission.drain_timeout_seconds),
        "HARBOR_FORCE": "true" if config.decommission.force else "false",
    }


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
        first_server: K3sServer,
        depends_on: list[pulumi.Resource],
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__(self.pulumi_type, name, None, opts)

        def on_server(kind: str, create: str, delete: str, after: pulumi.Resource) -> pulumi.Resource:
            """A lifecycle step for this node that runs on the first server."""
            return node_command(
                f"{node.name}-{kind}",
                config,
                config.first_server,
                "k3s-lifecycle.sh",
                create=create,
                delete=delete,
                env=_lifecycle_env(config, node),
                secret=False,
                opts=pulumi.ResourceOptions(parent=self, depends_on=[after]),
            )

        node_object = on_server("node-object", "node-object", "delete-node", after=first_server.install)
        self.install = _install(config, node, token, self, [node_object, *depends_on])
        self.registered = on_server("registered", "wait-ready", "drain", after=self.install)
        self.register_outputs({})


class K3sServer(pulumi.ComponentResource):
    """The first server bootstraps the cluster and hands back its kubeconfig."""

    install: pulumi.Resource
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
        self.raw_kubeconfig = pulumi.Output.secret(read.stdout)
        self.token = pulumi.Output.secret(token)
        self.register_outputs({"kubeconfig": self.raw_kubeconfig, "token": self.token})


class K3sJoinedServer(_JoinedNode):
    """Another embedded-etcd server that joins the first one over the mesh."""

    pulumi_type = "space-harbor:index:K3sJoinedServer"


class K3sAgent(_JoinedNode):
    """A worker that joins the first server over the mesh."""

    pulumi_type = "space-harbor:index:K3sAgent"
