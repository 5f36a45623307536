"""The parameters of a node's preflight check (components/scripts/preflight.sh): pure, no I/O.

pulumi-command runs a step again whenever its stdin changes, and a no-op `pulumi up` must change
nothing, so the parameters hold only what follows from the config: no timestamps, nothing that
depends on the order of `nodes`, and nothing about other nodes except, on the bootstrap server,
the other servers' addresses. Adding or removing a node therefore leaves every other node's
preflight as it was, but for the bootstrap server's when servers change. No secret is among them.
"""

from __future__ import annotations

from components.config import PREFLIGHT_CHECKS, HarborConfig, Node
from components.render.k3s import API_PORT
from components.render.nftables import TABLE_NAME

# What k3s binds on every node: kubelet (10250, its health 10248), kube-proxy (metrics 10249,
# health 10256), containerd's streaming server (10010) and the local load balancer or API (6444).
_NODE_TCP = (6444, 10010, 10248, 10249, 10250, 10256)
# What a server binds besides: the supervisor and API (6443), controller-manager (10257),
# cloud-controller-manager (10258), scheduler (10259).
_SERVER_TCP = (API_PORT, 10257, 10258, 10259)
# Embedded etcd: client, peer and metrics.
_ETCD_TCP = (2379, 2380, 2381)
# flannel's own UDP port per backend; host-gw needs none. Pods here are IPv4 only, so
# wireguard-native takes only its IPv4 port (51821 is its IPv6 one).
_FLANNEL_UDP = {"vxlan": (8472,), "wireguard-native": (51820,), "host-gw": ()}


def _ports(ports: set[int]) -> str:
    return ",".join(str(port) for port in sorted(ports))


def k3s_ports(config: HarborConfig, node: Node) -> tuple[str, str]:
    """The TCP and UDP ports k3s needs free on `node`, as comma lists."""
    tcp = set(_NODE_TCP)
    if node.role == "server":
        tcp |= set(_SERVER_TCP)
        if config.k3s.datastore == "etcd":
            tcp |= set(_ETCD_TCP)
    return _ports(tcp), _ports(set(_FLANNEL_UDP[config.k3s.flannel_backend]))


def is_bootstrap(config: HarborConfig, node: Node) -> bool:
    """Whether `node` is the server that starts the cluster (the others join it)."""
    return node.name == config.first_server.name


def peer_servers(config: HarborConfig, node: Node) -> list[str]:
    """For the bootstrap server, the other servers' cluster addresses, sorted by name; else none.

    Only the bootstrap check reads them, so the other nodes' parameters (and so their preflight
    steps) stay the same when a server is added or removed.
    """
    if not is_bootstrap(config, node):
        return []
    others = sorted((server for server in config.servers if server.name != node.name), key=lambda n: n.name)
    return [config.node_address(server) for server in others]


def preflight_skip(config: HarborConfig, node: Node) -> list[str]:
    """`preflight.skip` and the node's `preflightSkip`, once each, in the order the checks run."""
    wanted = set(config.preflight.skip) | set(node.preflight_skip)
    return [check for check in PREFLIGHT_CHECKS if check in wanted]


def preflight_env(config: HarborConfig, node: Node) -> dict[str, str]:
    """The HARBOR_* parameters of `preflight.sh check` on `node`; the same config gives the same text."""
    tcp, udp = k3s_ports(config, node)
    mesh = config.mesh
    return {
        "HARBOR_NODE_NAME": node.name,
        "HARBOR_K3S_ROLE": node.role,
        "HARBOR_K3S_BOOTSTRAP": "true" if is_bootstrap(config, node) else "false",
        "HARBOR_K3S_VERSION": config.k3s.version,
        "HARBOR_K3S_SECRETS_ENCRYPTION": "true" if config.k3s.secrets_encryption else "false",
        "HARBOR_K3S_TCP_PORTS": tcp,
        "HARBOR_K3S_UDP_PORTS": udp,
        "HARBOR_MESH_ENABLED": "true" if mesh.enabled else "false",
        "HARBOR_MESH_PORT": str(mesh.listen_port),
        "HARBOR_MESH_INTERFACE": mesh.interface,
        "HARBOR_MESH_MTU": str(mesh.mtu),
        # What peers dial: the MTU check looks at the interface that holds it, else the default route.
        "HARBOR_MESH_ENDPOINT": node.public_endpoint,
        "HARBOR_PEER_SERVERS": ",".join(peer_servers(config, node)),
        "HARBOR_PREFLIGHT_SKIP": ",".join(preflight_skip(config, node)),
        "HARBOR_NFT_TABLE": TABLE_NAME,
    }
