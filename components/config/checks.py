"""Checks that span sections of the stack config. Each raises ValueError with the key path first.

components/config/model.py runs them in this order once every section is valid on its own, and
`load_config` keeps the message as it is; the first check that fails is the one reported.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Sequence
from functools import partial

from components.config.cluster import (
    CLUSTER_ONLY_PORTS,
    Bastion,
    Decommission,
    Firewall,
    Mesh,
    Node,
    Operator,
    SshDefaults,
)
from components.config.k3s import K3s
from components.platform import REGISTRY
from components.platform.base import Context
from components.schema import ConfigModel, Ipv4, Problems, collect, key_segment, split_host_port

# The order the sealing check named these components in before each had a module of its own;
# components added since follow in registry order.
_SEALING_MESSAGE_ORDER = ("smtp", "telegraf", "backup")


def unique_names(nodes: Sequence[Node], operators: Sequence[Operator], ssh_port: Callable[[Node], int]) -> None:
    seen: dict[str, str] = {}
    for i, node in enumerate(nodes):
        if node.name in seen:
            raise ValueError(f"nodes[{i}].name: {node.name!r} is already used by {seen[node.name]}")
        seen[node.name] = f"nodes[{nodes.index(node)}]"
    for i, operator in enumerate(operators):
        if operator.name in seen:
            raise ValueError(f"mesh.operators[{i}].name: {operator.name!r} is already used by {seen[operator.name]}")
        seen[operator.name] = f"mesh.operators[{i}]"
    hosts: dict[tuple[str, int], int] = {}
    for i, node in enumerate(nodes):
        key = (node.host, ssh_port(node))
        if key in hosts:
            raise ValueError(f"nodes[{i}].host: {node.host}:{key[1]} is already nodes[{hosts[key]}]")
        hosts[key] = i


def bastions(nodes: Sequence[Node], ssh: SshDefaults, ssh_port: Callable[[Node], int]) -> None:
    """A node is not its own bastion: dialling it through itself needs it reachable directly anyway.

    Most often the stack-wide bastion is one of the nodes (the one with a public address): that
    node then needs `bastion: false`.
    """
    for i, node in enumerate(nodes):
        if node.bastion is False:
            continue
        bastion: Bastion | None = node.bastion or ssh.bastion
        if bastion is None or (bastion.host, bastion.port) != (node.host, ssh_port(node)):
            continue
        if node.bastion is not None:
            raise ValueError(
                f"nodes[{i}].bastion.host: {bastion.host}:{bastion.port} is nodes[{i}] ({node.name}) itself; "
                "a node cannot be its own bastion"
            )
        raise ValueError(
            f"ssh.bastion.host: {bastion.host}:{bastion.port} is nodes[{i}] ({node.name}) itself; "
            f"set nodes[{i}].bastion to false to dial it directly"
        )


def host_keys_pinned(nodes: Sequence[Node], ssh: SshDefaults, bastion: Callable[[Node], Bastion | None]) -> None:
    """Every node is dialled with its host key pinned, unless the stack opts out.

    Unpinned, pulumi-command checks no host key at all (not even on first use), and the node's
    scripts carry its WireGuard private key and its k3s token: whoever answers at its address
    would receive them. Every unpinned node is named at once, with the command that reads its key.
    """
    if ssh.allow_unpinned_host_keys:
        return
    lines = []
    for i, node in enumerate(nodes):
        if node.ssh_host_key is not None:
            continue
        jump = bastion(node)
        where = f" (on the bastion {jump.host}, which reaches it)" if jump is not None else ""
        lines.append(
            f"nodes[{i}].sshHostKey: is required: pin {node.name}'s SSH host key, the output of "
            f"`ssh-keyscan -t ed25519 {node.host} 2>/dev/null | cut -d' ' -f2-`{where}, e.g. "
            f"pulumi config set --path 'nodes[{i}].sshHostKey' 'ssh-ed25519 AAAA...'; or set "
            "ssh.allowUnpinnedHostKeys to true to dial unpinned nodes without any host-key check"
        )
    if lines:
        raise Problems(lines)


def server_count(servers: Sequence[Node], k3s: K3s) -> None:
    count = len(servers)
    if k3s.datastore == "sqlite" and count != 1:
        raise ValueError(
            f"nodes: k3s.datastore sqlite needs exactly one server, found {count}; "
            "set k3s.datastore to etcd for 3 or 5 servers"
        )
    if k3s.datastore == "etcd" and count not in (1, 3, 5):
        raise ValueError(f"nodes: embedded etcd needs 1, 3 or 5 servers for quorum, found {count}")
    first = k3s.first_server
    if first is None and count > 1:
        raise ValueError(
            f"k3s.firstServer: is required with {count} servers: name the server that bootstrapped the "
            f"cluster (version 0.0 bootstrapped with the first server listed: {servers[0].name!r}; "
            "for a new cluster, any of them)"
        )
    if first is not None and first not in [node.name for node in servers]:
        raise ValueError(f"k3s.firstServer: {first!r} is not a server in nodes; servers: {[n.name for n in servers]}")


def forgotten_nodes(nodes: Sequence[Node], decommission: Decommission) -> None:
    names = {node.name for node in nodes}
    for i, name in enumerate(decommission.forget):
        if name in names:
            raise ValueError(
                f"decommission.forget[{i}]: {name!r} is still in nodes; remove it from nodes to decommission "
                "it, and list it here only when it cannot be reached"
            )


def mesh_addresses(nodes: Sequence[Node], mesh: Mesh) -> None:
    if not mesh.enabled:
        for i, node in enumerate(nodes):
            if node.mesh_address is not None:
                raise ValueError(f"nodes[{i}].meshAddress: is set but mesh.enabled is false")
        if mesh.operators:
            raise ValueError("mesh.operators: operators need the mesh; set mesh.enabled to true")
        return
    usable = (mesh.cidr.network_address, mesh.cidr.broadcast_address)
    taken: dict[Ipv4, str] = {}
    members: list[tuple[str, Ipv4 | None]] = [
        (f"nodes[{i}].meshAddress", node.mesh_address) for i, node in enumerate(nodes)
    ] + [(f"mesh.operators[{i}].meshAddress", op.mesh_address) for i, op in enumerate(mesh.operators)]
    missing = [f"{path}: is required while mesh.enabled is true" for path, address in members if address is None]
    if missing:
        raise Problems(missing)
    for path, address in members:
        assert address is not None
        if address not in mesh.cidr:
            raise ValueError(f"{path}: {address} is outside mesh.cidr {mesh.cidr}")
        if mesh.cidr.prefixlen < 31 and address in usable:
            raise ValueError(f"{path}: {address} is the network or broadcast address of {mesh.cidr}")
        if address in taken:
            raise ValueError(f"{path}: {address} is already used by {taken[address]}")
        taken[address] = path.rsplit(".", 1)[0]


def networks(nodes: Sequence[Node], mesh: Mesh, k3s: K3s, firewall: Firewall) -> None:
    cidrs = [("k3s.clusterCidr", k3s.cluster_cidr), ("k3s.serviceCidr", k3s.service_cidr)]
    if mesh.enabled:
        cidrs.append(("mesh.cidr", mesh.cidr))
    for i, (path, net) in enumerate(cidrs):
        for other_path, other in cidrs[i + 1 :]:
            if net.overlaps(other):
                raise ValueError(f"{path}: {net} overlaps {other_path} {other}")
    if k3s.flannel_backend == "wireguard-native" and mesh.enabled:
        raise ValueError(
            "k3s.flannelBackend: wireguard-native would tunnel inside the mesh; "
            "use vxlan with the mesh, or set mesh.enabled to false"
        )
    if firewall.enabled and not mesh.enabled:
        # nftables resolves names once at load time and fails the whole table if DNS is down.
        for i, node in enumerate(nodes):
            try:
                ipaddress.ip_address(node.cluster_address)
            except ValueError:
                key = "privateAddress" if node.private_address else "host"
                raise ValueError(
                    f"nodes[{i}].{key}: {node.cluster_address!r} is a DNS name, but with mesh.enabled false "
                    "the firewall admits cluster traffic by IP address; set privateAddress to an IP"
                ) from None
    if k3s.api_access == "mesh" and not mesh.enabled:
        raise ValueError("k3s.apiAccess: mesh needs mesh.enabled true; use ssh-tunnel")


def public_ports(firewall: Firewall, mesh: Mesh) -> None:
    reach = "the mesh" if mesh.enabled else "the other nodes"
    for i, port in enumerate(firewall.public_tcp_ports):
        path = f"firewall.publicTcpPorts[{i}]"
        if port in CLUSTER_ONLY_PORTS:
            hint = "; reach it through the SSH tunnel or as a mesh operator" if port == 6443 else ""
            raise ValueError(f"{path}: {port} is {CLUSTER_ONLY_PORTS[port]}, which answers only {reach}{hint}")
        if mesh.enabled and port == mesh.listen_port:
            raise ValueError(f"{path}: {port} is mesh.listenPort, which is opened for WireGuard on UDP already")


def platform_components(components: ConfigModel, context: Context) -> None:
    """Each enabled component's own cross-checks, in registry order, then the sealing they need."""
    enabled = [(c, getattr(components, c.field_name)) for c in REGISTRY if getattr(components, c.field_name).enabled]
    problems = collect(*(partial(component.check, settings, context) for component, settings in enabled))
    if problems:
        raise Problems(problems)
    # A component with a Secret gets it as a SealedSecret; a plain Secret never enters git.
    sealed = [component.key for component, settings in enabled if component.secrets(settings, context)]
    sealed.sort(key=lambda key: (*_SEALING_MESSAGE_ORDER, key).index(key))
    sealing = next(c for c in REGISTRY if c.name == "sealed-secrets")
    if sealed and sealing.key not in context.enabled:
        raise ValueError(
            f"components.{sealing.key}.enabled: must be true for {', '.join(sealed)}, "
            "whose secrets reach the cluster as SealedSecrets"
        )


def etcd_snapshots(k3s: K3s) -> None:
    snapshots = k3s.etcd_snapshots
    if snapshots is None:
        return
    if k3s.datastore != "etcd":
        raise ValueError("k3s.etcdSnapshots: needs k3s.datastore etcd")
    if snapshots.s3_bucket and (snapshots.s3_access_key is None or snapshots.s3_secret_key is None):
        raise ValueError("k3s.etcdSnapshots.s3AccessKey and s3SecretKey: are required with s3Bucket")


def registries(k3s: K3s) -> None:
    """Each registry's login is one complete method, and a client certificate comes with its key."""
    if k3s.registries is None:
        return
    for registry, settings in k3s.registries.configs.items():
        path = f"k3s.registries.configs{key_segment(registry)}"
        auth = settings.auth
        if auth is not None:
            if auth.username is not None and auth.password is None:
                raise ValueError(f"{path}.auth.password: is required with username")
            if auth.password is not None and auth.username is None:
                raise ValueError(f"{path}.auth.username: is required with password")
            methods = [
                name
                for name, given in (
                    ("username/password", auth.username is not None),
                    ("auth", auth.auth is not None),
                    ("identityToken", auth.identity_token is not None),
                )
                if given
            ]
            if len(methods) != 1:
                found = " and ".join(methods) if methods else "none"
                raise ValueError(
                    f"{path}.auth: give exactly one of username and password, auth, or identityToken (found {found})"
                )
        tls = settings.tls
        if tls is not None and (tls.cert_file is None) != (tls.key_file is None):
            missing, given = ("keyFile", "certFile") if tls.key_file is None else ("certFile", "keyFile")
            raise ValueError(f"{path}.tls.{missing}: is required with {given}")
    for arg in k3s.extra_args:
        if arg.split("=", 1)[0] == "--private-registry":
            raise ValueError(
                f"k3s.extraArgs: {arg!r} would make the servers read another file than the registries.yaml "
                "that k3s.registries writes; remove it"
            )


def registration_address(nodes: Sequence[Node], mesh: Mesh, firewall: Firewall, k3s: K3s) -> None:
    """An address given as an IP must be one joining nodes can reach on the servers' API port."""
    if k3s.registration_address is None or not mesh.enabled:
        return
    host, _ = split_host_port(k3s.registration_address)
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return  # a DNS name: what it resolves to is the user's; the README says what it must be
    members = {node.mesh_address for node in nodes if node.role == "server"}
    members |= {operator.mesh_address for operator in mesh.operators}
    path = "k3s.registrationAddress"
    if address in members:
        return
    if address in mesh.cidr:
        raise ValueError(
            f"{path}: {address} is inside mesh.cidr but is no server's or operator's meshAddress; "
            "the mesh routes only its members' own addresses"
        )
    if firewall.enabled:
        raise ValueError(
            f"{path}: {address} is outside the mesh, and the servers' firewalls admit the API port only over "
            "the mesh; use a DNS name whose records are the servers' mesh addresses, or the meshAddress of "
            "an operator that runs your load balancer"
        )


# k3s derives the key of its bootstrap data (the cluster CA keys, in etcd and in every etcd
# snapshot, also on S3) from the server token, and the server token is cluster admin on the API.
# k3s's own tokens are 32 random hex characters; a shorter or repetitive one can be guessed offline
# from a snapshot.
MIN_TOKEN_LENGTH = 32
MIN_TOKEN_DISTINCT = 10


def token_strength(k3s: K3s) -> None:
    """A token set by hand is at least as strong as one k3s or pulumi-random would make; never echoed."""
    if k3s.allow_weak_tokens:
        return
    for key, token in (("k3s.token", k3s.token), ("k3s.agentToken", k3s.agent_token)):
        if token is None:
            continue
        # A full token (K10<ca hash>::server:<secret>) is judged by its secret part.
        secret = token.get_secret_value().rsplit("::", 1)[-1].split(":", 1)[-1]
        if len(secret) < MIN_TOKEN_LENGTH or len(set(secret)) < MIN_TOKEN_DISTINCT:
            raise ValueError(
                f"{key}: is too weak ({len(secret)} characters, {len(set(secret))} different); it protects the"
                f" cluster's CA keys in every etcd snapshot, so use at least {MIN_TOKEN_LENGTH} random"
                " characters (openssl rand -hex 32), or leave it unset to have one generated. A cluster"
                " that already runs with it can keep it with k3s.allowWeakTokens: true until it is rotated"
                " (k3s token rotate)"
            )
