"""The node firewall: one nftables table of Space Harbor's own, rendered as text. Pure, no I/O.

Three base chains, because translated traffic never reaches `input`: kube-proxy's NodePorts and
the CNI's hostPorts (Traefik's 80/443, klipper's LoadBalancer ports) are DNAT'ed in prerouting
and then pass `forward` to the pod.

- `prerouting` (filter, priority dstnat - 10: after conntrack, before any DNAT) sees every packet
  with its original destination. From an untrusted interface it drops what is addressed to this
  node on any port but SSH, the mesh port and `firewall.publicTcpPorts`, and what is addressed
  straight at the pod or service network.
- `forward` (policy accept) drops connections from untrusted interfaces that go out to pods,
  flannel or the mesh, unless they were translated from an open port (`ct original proto-dst`:
  prerouting filters ports for the node's own addresses only, and a Service's externalIP is not
  one), and operators' traffic through a node. Operators count only on the mesh interface.
- `input` (policy drop) keeps the node's own ports private, as it always did.

Every base chain on a hook must accept a packet for it to pass, and k3s, flannel and kube-proxy
keep tables of their own; so `prerouting` and `forward` accept by policy and only drop explicitly.

Order inside a chain matters, because a packet stops at the first verdict:
  1. SSH on this node's own sshd ports (`nodes[i].sshListenPorts`): first in every chain that
     could drop it, so no later rule (not even `ct state invalid`) can lock the operator out.
     `forward` never carries a packet to the node's own sshd, so it has no such rule.
  2. established/related, loopback, ICMP/ICMPv6 (neighbour discovery, PMTU), DHCP replies.
  3. operators (`mesh.operators`, laptops on the mesh): the API port and SSH of the nodes, ping;
     nothing else, not kubelet, etcd, VXLAN, NodePorts or pods. WireGuard's cryptokey routing
     pins each peer to its AllowedIPs, so inside the mesh an operator's address is not spoofable.
  4. trusted interfaces: the mesh (when on) and the CNI/flannel interfaces get everything.
  5. mesh off only: the other nodes' addresses, for exactly what k3s and the flannel backend need
     between nodes (kubelet; the API and etcd on servers; VXLAN or flannel's WireGuard ports);
     with host-gw, pod traffic of other nodes arrives on the NIC, so pod-to-pod is admitted there.
  6. the world-facing ports: the mesh's UDP port and `firewall.publicTcpPorts`.
  7. the drops: everything else from an untrusted interface (prerouting, forward); the protected
     ports with counters, then the policy (input).

DNS names: nftables resolves a name once, when the file is loaded (at boot, possibly before DNS
works), and a failed lookup fails the whole table. The firewall therefore holds literal
addresses only: with the mesh off and the firewall on, every other node's cluster address
(`privateAddress`, else `host`) must be an IP address; the config model refuses a name, with the
key path to fix, before any resource exists.
"""

from __future__ import annotations

import ipaddress

from components.config import HarborConfig, Node

TABLE_NAME = "space_harbor"

API_PORT = "6443"
KUBELET_PORT = "10250"
ETCD_PORTS = "2379-2380"
VXLAN_PORT = "8472"
# flannel's wireguard-native backend hard-codes these (IPv4 and IPv6 tunnels).
FLANNEL_WIREGUARD_PORTS = "51820-51821"
# k3s API, kubelet, embedded etcd (client, peer).
PROTECTED_TCP = (API_PORT, KUBELET_PORT, ETCD_PORTS)
# flannel vxlan, flannel wireguard-native (IPv4, IPv6).
PROTECTED_UDP = (VXLAN_PORT, FLANNEL_WIREGUARD_PORTS)
# Interfaces whose traffic is cluster-internal: pods (cni0) and flannel's own tunnels.
CNI_INTERFACES = ("cni0", "flannel-v6.1", "flannel-wg", "flannel-wg-v6", "flannel.1")
# After conntrack (-200), before kube-proxy's and the CNI portmap's DNAT (dstnat, -100).
PREROUTING_PRIORITY = "dstnat - 10"
LOCAL = "fib daddr type local"

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def _set(name: str, kind: str, elements: list[str]) -> list[str]:
    return [
        f"\tset {name} {{",
        f"\t\ttype {kind}",
        "\t\tflags interval",
        f"\t\telements = {{ {', '.join(elements)} }}",
        "\t}",
        "",
    ]


def _anonymous(items: list[str] | tuple[str, ...]) -> str:
    return items[0] if len(items) == 1 else "{ " + ", ".join(items) + " }"


def _sorted_networks(networks: list[ipaddress.IPv4Network] | list[ipaddress.IPv6Network]) -> list[str]:
    """Sorted, without networks inside others: nft refuses overlapping interval elements.

    Adjacent networks stay separate (10.42.0.0/16 and 10.43.0.0/16, not 10.42.0.0/15), so the
    live ruleset still shows the configured values.
    """
    unique = sorted(set(networks))
    kept = [net for net in unique if not any(net != other and net.subnet_of(other) for other in unique)]  # type: ignore[arg-type]
    return [str(net) for net in kept]


def _host_sets(prefix: str, addresses: list[Address]) -> dict[str, list[str]]:
    """`<prefix>_v4` / `<prefix>_v6` -> elements, for the families that have addresses."""
    v4 = [ipaddress.IPv4Network(a) for a in addresses if isinstance(a, ipaddress.IPv4Address)]
    v6 = [ipaddress.IPv6Network(a) for a in addresses if isinstance(a, ipaddress.IPv6Address)]
    found = {}
    if v4:
        found[f"{prefix}_v4"] = _sorted_networks(v4)
    if v6:
        found[f"{prefix}_v6"] = _sorted_networks(v6)
    return found


def _saddr(set_name: str) -> str:
    return f"{'ip' if set_name.endswith('_v4') else 'ip6'} saddr @{set_name}"


def _peer_rules(config: HarborConfig, node: Node, sets: dict[str, list[str]]) -> list[str]:
    """Mesh off: what the other nodes may reach here, by their (spoofable) source address.

    Only what k3s and the flannel backend need between nodes. Pods of other nodes reach this
    node's ports masqueraded to their node's address (flannel's ipMasq), so no pod source is needed.
    """
    rules = []
    backend = config.k3s.flannel_backend
    for peers in (name for name in sets if name.startswith("peers_")):
        source = _saddr(peers)
        rules.append(f'{source} tcp dport {KUBELET_PORT} accept comment "kubelet: the other nodes"')
        if node.role == "server":
            rules.append(f'{source} tcp dport {API_PORT} accept comment "k3s API and supervisor: the other nodes"')
        if backend == "vxlan":
            rules.append(f'{source} udp dport {VXLAN_PORT} accept comment "flannel vxlan: the other nodes"')
        elif backend == "wireguard-native":
            rules.append(
                f'{source} udp dport {FLANNEL_WIREGUARD_PORTS} accept comment "flannel wireguard: the other nodes"'
            )
    for servers in (name for name in sets if name.startswith("servers_")):
        rules.append(f'{_saddr(servers)} tcp dport {ETCD_PORTS} accept comment "etcd: the other servers"')
    return rules


def _host_gw_rules(config: HarborConfig, sets: dict[str, list[str]]) -> list[str]:
    """Mesh off with host-gw: other nodes route pod traffic over the NIC, unencapsulated.

    Pods of other nodes arrive with their pod address; a node's own processes (the API server
    reaching a webhook pod) with the node's address.
    """
    if config.mesh.enabled or config.k3s.flannel_backend != "host-gw":
        return []
    pods = str(config.k3s.cluster_cidr)
    rules = [f'ip saddr {pods} ip daddr {pods} accept comment "host-gw: pods of the other nodes"']
    if "peers_v4" in sets:
        rules.append(f'ip saddr @peers_v4 ip daddr {pods} accept comment "host-gw: the other nodes, to pods"')
    return rules


def _local(rule: str) -> str:
    return f"{LOCAL} {rule}"


def _chain(name: str, header: str, rules: list[str]) -> list[str]:
    return [f"\tchain {name} {{", f"\t\t{header}", *[f"\t\t{rule}" if rule else "" for rule in rules], "\t}"]


def render_nftables(config: HarborConfig, node: Node) -> str:
    """The complete `table inet space_harbor { ... }` for `node`; the same input gives the same text."""
    mesh = config.mesh
    ssh_ports = [str(port) for port in sorted(set(config.ssh_listen_ports(node)))]
    ssh = f"tcp dport {_anonymous(ssh_ports)} accept"

    interfaces = list(CNI_INTERFACES)
    if mesh.enabled:
        # Trust by interface only. A mesh or pod source address is trivially spoofed on the public
        # link, and flannel's VXLAN (8472/udp) would accept such packets unauthenticated.
        interfaces.append(mesh.interface)
    trusted_if = _anonymous(sorted(f'"{name}"' for name in interfaces))

    sets: dict[str, list[str]] = {
        "cluster_v4": _sorted_networks([config.k3s.cluster_cidr, config.k3s.service_cidr]),
    }
    if mesh.enabled:
        sets |= _host_sets("operators", [op.mesh_address for op in mesh.operators])
    else:
        others = [n for n in config.nodes if n.name != node.name]
        sets |= _host_sets("peers", [ipaddress.ip_address(config.node_address(n)) for n in others])
        if node.role == "server":
            sets |= _host_sets(
                "servers", [ipaddress.ip_address(config.node_address(n)) for n in others if n.role == "server"]
            )
    operators = "operators_v4" in sets
    peer_rules = _peer_rules(config, node, sets)
    host_gw = _host_gw_rules(config, sets)

    public = [str(port) for port in sorted(set(config.firewall.public_tcp_ports) - set(config.ssh_listen_ports(node)))]
    world = []
    if mesh.enabled:
        world.append(f'udp dport {mesh.listen_port} accept comment "wireguard mesh"')
    if public:
        world.append(f'tcp dport {_anonymous(public)} accept comment "firewall.publicTcpPorts"')
    icmp = "meta l4proto { icmp, ipv6-icmp } accept"
    dhcp = [
        "meta nfproto ipv4 udp sport 67 udp dport 68 accept",
        "meta nfproto ipv6 udp sport 547 udp dport 546 accept",
    ]

    prerouting = [
        "",
        "# SSH first: nothing below may ever lock the operator out.",
        _local(f'{ssh} comment "ssh"'),
        "",
        "ct state established,related accept",
        'iif "lo" accept',
        "# ICMP and ICMPv6 to this node: ping, path-MTU discovery, IPv6 neighbour discovery.",
        _local(icmp),
    ]
    # Operators arrive through the mesh: their address alone, spoofable on the public link, is not enough.
    from_operator = f'iifname "{mesh.interface}" ip saddr @operators_v4' if operators else ""
    if operators:
        prerouting += [
            "# Operators: the API and SSH (above) of this node, nothing else, not even a NodePort.",
            _local(f'{from_operator} tcp dport {API_PORT} accept comment "operators: the API"'),
            'ip saddr @operators_v4 counter drop comment "operators: anything else"',
        ]
    prerouting += ["", "# Trusted interfaces: the mesh, pods and flannel.", f"iifname {trusted_if} accept"]
    if peer_rules:
        prerouting += ["# The other nodes, by address (mesh off).", *(_local(rule) for rule in peer_rules)]
    prerouting += host_gw
    prerouting += [
        "# DHCP and DHCPv6 replies, for nodes whose address is leased.",
        *(_local(rule) for rule in dhcp),
        "",
        "# Open to the world, on their original port: translated traffic (NodePorts, hostPorts) included.",
        *(_local(rule) for rule in world),
        "",
        f'{LOCAL} counter drop comment "to this node, untrusted, on a port that is not open"',
        'ip daddr @cluster_v4 counter drop comment "at pods or services, untrusted"',
    ]

    forward = [
        "",
        "ct state established,related accept",
    ]
    if operators:
        forward.append('ip saddr @operators_v4 counter drop comment "operators: no pods or services through a node"')
    forward += ["# Trusted interfaces: the mesh, pods and flannel.", f"iifname {trusted_if} accept"]
    # Translated traffic from untrusted interfaces passes only on an open original port: prerouting
    # filters ports for the node's own addresses only, and a DNAT of an address the node does not
    # hold (a Service's externalIPs, a LoadBalancer IP) would otherwise open every port of it.
    translated: list[str] = []
    if public:
        open_port = f"meta l4proto tcp ct original proto-dst {_anonymous(public)}"
        translated.append(f'ct status dnat {open_port} accept comment "translated: an open port"')
    forward += host_gw
    forward += [
        "# Translated (NodePorts, hostPorts, externalIPs): only from an open original port.",
        *translated,
        f'oifname {trusted_if} counter drop comment "to pods, flannel or the mesh, untrusted"',
    ]

    input_ = [
        "",
        "# SSH first: nothing below may ever lock the operator out.",
        f'{ssh} comment "ssh"',
        "",
        "ct state established,related accept",
        "ct state invalid drop",
        'iif "lo" accept',
        "# ICMP and ICMPv6: ping, path-MTU discovery, IPv6 neighbour and router discovery.",
        icmp,
    ]
    if operators:
        input_ += [
            "# Operators: the API and SSH (above), nothing else.",
            f'{from_operator} tcp dport {API_PORT} accept comment "operators: the API"',
            'ip saddr @operators_v4 counter drop comment "operators: anything else"',
        ]
    input_ += [
        "# DHCP and DHCPv6 replies, for nodes whose address is leased.",
        *dhcp,
        "",
        "# Trusted interfaces: the mesh, pods and flannel; everything is open to them.",
        f"iifname {trusted_if} accept",
    ]
    if peer_rules:
        input_ += ["# The other nodes, by address (mesh off).", *peer_rules]
    input_ += [
        "# Translated to this node (a host-network endpoint): only from an open original port.",
        *translated,
        "",
        "# Open to the world.",
        *world,
        "",
        "# API, kubelet, etcd and flannel: only the sources above reach them.",
        f'tcp dport {_anonymous(PROTECTED_TCP)} counter drop comment "k3s api, kubelet, etcd: untrusted source"',
        f'udp dport {_anonymous(PROTECTED_UDP)} counter drop comment "flannel: untrusted source"',
        'counter comment "dropped by policy"',
    ]

    lines = [
        f"# Space Harbor node firewall for {node.name}. Managed by Pulumi; local edits are overwritten.",
        f"table inet {TABLE_NAME} {{",
    ]
    for name, elements in sets.items():
        lines += _set(name, "ipv4_addr" if name.endswith("_v4") else "ipv6_addr", elements)
    lines += _chain(
        "prerouting", f"type filter hook prerouting priority {PREROUTING_PRIORITY}; policy accept;", prerouting
    )
    lines.append("")
    lines += _chain("forward", "type filter hook forward priority filter; policy accept;", forward)
    lines.append("")
    lines += _chain("input", "type filter hook input priority filter; policy drop;", input_)
    lines.append("}")
    return "\n".join(lines) + "\n"
