"""The whole stack config as one model: its sections, the platform components' sections, the checks.

`components` is made from the registry of platform components (components/platform/): one
section per component, each the component's own `Settings`. The cross-section checks run after
every section is valid, in the order below (components/config/checks.py).
"""

from __future__ import annotations

from functools import partial
from typing import Any

from pydantic import BaseModel, Field, SecretStr, create_model, model_validator
from pydantic.alias_generators import to_camel

import components.config.checks as checks
from components.config.cluster import Bastion, Decommission, Firewall, Mesh, Node, Preflight, SshDefaults
from components.config.gitops import ArgoCD, GitOps
from components.config.k3s import K3s
from components.platform import REGISTRY
from components.platform.base import Component, Context, Section
from components.schema import ConfigModel, Host, Problems, SshPrivateKey, collect


def _components_section() -> type[ConfigModel]:
    fields: dict[str, Any] = {}
    for component in REGISTRY:
        assert to_camel(component.field_name) == component.key, f"{component.key}: not a camelCase config key"
        fields[component.field_name] = (component.settings, component.settings())
    return create_model("Components", __base__=ConfigModel, **fields)


# `components.<key>`: one section per platform component, in registry order.
Components = _components_section()


class HarborConfig(ConfigModel):
    domain: Host | None = None
    ssh_private_key: SshPrivateKey
    ssh: SshDefaults = SshDefaults()
    nodes: list[Node] = Field(min_length=1)
    mesh: Mesh = Mesh()
    k3s: K3s = K3s()
    firewall: Firewall = Firewall()
    argocd: ArgoCD = ArgoCD()
    gitops: GitOps
    components: Components = Components()  # type: ignore[valid-type]
    decommission: Decommission = Decommission()
    preflight: Preflight = Preflight()

    @property
    def servers(self) -> list[Node]:
        return [node for node in self.nodes if node.role == "server"]

    @property
    def agents(self) -> list[Node]:
        return [node for node in self.nodes if node.role == "agent"]

    @property
    def first_server(self) -> Node:
        """The server that bootstraps the cluster: `k3s.firstServer`, or the only server."""
        name = self.k3s.first_server or self.servers[0].name
        return next(node for node in self.nodes if node.name == name)

    def node_address(self, node: Node) -> str:
        """Where cluster traffic for `node` goes: its mesh address, or its private one."""
        if self.mesh.enabled:
            assert node.mesh_address is not None  # checked by checks.mesh_addresses
            return str(node.mesh_address)
        return node.cluster_address

    def ssh_user(self, node: Node) -> str:
        return node.ssh_user or self.ssh.user

    def ssh_port(self, node: Node) -> int:
        return node.ssh_port or self.ssh.port

    def ssh_listen_ports(self, node: Node) -> list[int]:
        """The ports sshd listens on at the node, which the firewall opens before anything else."""
        return list(node.ssh_listen_ports) if node.ssh_listen_ports else [self.ssh_port(node)]

    def ssh_key(self, node: Node) -> SecretStr:
        return node.ssh_private_key or self.ssh_private_key

    def bastion(self, node: Node) -> Bastion | None:
        """The jump host in front of `node`, every default filled in; None when it is dialled directly.

        The node's own `bastion` replaces `ssh.bastion` as a whole (a field left out is not taken
        from the other); `false` turns it off for the node. User and key default to the stack's.
        """
        if node.bastion is False:
            return None
        chosen = node.bastion or self.ssh.bastion
        if chosen is None:
            return None
        return chosen.model_copy(
            update={"user": chosen.user or self.ssh.user, "private_key": chosen.private_key or self.ssh_private_key}
        )

    def bastion_key_config(self, node: Node) -> str:
        """The stack config key that holds the key for `node`'s bastion (for `pulumi config get --path`)."""
        if isinstance(node.bastion, Bastion):
            if node.bastion.private_key is not None:
                return f"nodes[{self.nodes.index(node)}].bastion.privateKey"
        elif node.bastion is None and self.ssh.bastion is not None and self.ssh.bastion.private_key is not None:
            return "ssh.bastion.privateKey"
        return "sshPrivateKey"

    def component_settings(self, component: Component) -> Section:
        """A platform component's own section of `components`."""
        section: Section = getattr(self.components, component.field_name)
        return section

    def enabled_components(self) -> list[Component]:
        return [component for component in REGISTRY if self.component_settings(component).enabled]

    def platform_context(self) -> Context:
        """What the platform components may know of the rest of the stack."""
        return Context(
            domain=self.domain,
            node_names=tuple(node.name for node in self.nodes),
            first_server=self.first_server.name,
            node_addresses=tuple(self.node_address(node) for node in self.nodes),
            server_addresses=tuple(self.node_address(n) for n in sorted(self.servers, key=lambda n: n.name)),
            service_cidr=self.k3s.service_cidr,
            gitops_path=self.gitops.path,
            enabled=frozenset(component.key for component in self.enabled_components()),
        )

    def secret_values(self) -> list[str]:
        """Every secret the config holds, for leak checks."""
        found: list[str] = []

        def walk(value: object) -> None:
            if isinstance(value, SecretStr):
                if value.get_secret_value():
                    found.append(value.get_secret_value())
            elif isinstance(value, BaseModel):
                for field in type(value).model_fields:
                    walk(getattr(value, field))
            elif isinstance(value, list | tuple):
                for item in value:
                    walk(item)
            elif isinstance(value, dict):
                for item in value.values():
                    walk(item)

        walk(self)
        return found

    # Cross-section checks. Every one runs, so that one run names every problem (each line starts
    # with its key path); the platform components' checks need a first server and every node's
    # address, so they run only once the checks those rest on have passed.

    @model_validator(mode="after")
    def _cross_section(self) -> HarborConfig:
        foundation = collect(
            partial(checks.unique_names, self.nodes, self.mesh.operators, self.ssh_port),
            partial(checks.server_count, self.servers, self.k3s),
            partial(checks.mesh_addresses, self.nodes, self.mesh),
        )
        problems = foundation + collect(
            partial(checks.host_keys_pinned, self.nodes, self.ssh, self.bastion),
            partial(checks.bastions, self.nodes, self.ssh, self.ssh_port),
            partial(checks.forgotten_nodes, self.nodes, self.decommission),
            partial(checks.networks, self.nodes, self.mesh, self.k3s, self.firewall),
            partial(checks.public_ports, self.firewall, self.mesh),
            partial(checks.registries, self.k3s),
            partial(checks.token_strength, self.k3s),
            partial(checks.registration_address, self.nodes, self.mesh, self.firewall, self.k3s),
            partial(checks.etcd_snapshots, self.k3s),
        )
        if not foundation:
            problems += collect(lambda: checks.platform_components(self.components, self.platform_context()))
        if problems:
            raise Problems(problems)
        return self
