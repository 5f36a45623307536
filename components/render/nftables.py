"""The node firewall: one nftables table of Space Harbor's own, rendered as text. Pure, no I/O.

The table only filters the `input` hook. Forwarding belongs to k3s (flannel, kube-proxy and the
network-policy controller write their own tables), so no `forward` chain is declared here.

Order inside the input chain matters, because a packet stops at the first verdict:
  1. SSH on this node's port: always first, so no later rule (not even `ct state invalid`) can
     lock the operator out.
  2. established/related, loopback, ICMP/ICMPv6 (neighbour discovery, PMTU), DHCP replies.
  3. trusted sources: the mesh and CNI interfaces; only while the mesh is off, also the pod
     network and the other nodes' private addresses (by source address, which a mesh never needs).
  4. the world-facing ports: the mesh's UDP port and `firewall.publicTcpPorts`.
  5. the protected ports (API, kubelet, etcd, flannel), dropped with counters for everyone else,
     then the chain policy drops the rest (counted).

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

# k3s API, kubelet, embedded etcd (client, peer).
PROTECTED_TCP = ("6443", "10250", "2379-2380")
# flannel vxlan, flannel wireguard-native (IPv4, IPv6).
PROTECTED_UDP = ("8472", "51820-51821")
# Interfaces whose traffic is cluster-internal: pods (cni0) and flannel's own tunnels.
CNI_INTERFACES = ("cni0", "flannel-v6.1", "flannel-wg", "flannel-wg-v6", "flannel.1")


def _peer_addresses(config: HarborConfig, node: Node) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """The other nodes' cluster addresses; the config model has refused DNS names here already."""
    return [ipaddress.ip_address(config.node_address(other)) for other in config.nodes if other.name != node.name]


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


def render_nftables(config: HarborConfig, node: Node) -> str:
    """The complete `table inet space_harbor { ... }` for `node`; the same input gives the same text."""
    ssh_port = config.ssh_port(node)
    mesh = config.mesh

    v4: list[ipaddress.IPv4Network] = []
    v6: list[ipaddress.IPv6Network] = []
    interfaces = list(CNI_INTERFACES)
    if mesh.enabled:
        # Trust by interface only. A mesh or pod source address is trivially spoofed on the public
        # link, and flannel's VXLAN (8472/udp) would accept such packets unauthenticated.
        interfaces.append(mesh.interface)
    else:
        # Without the mesh, peers and (host-gw) pods of other nodes arrive on the ordinary NIC.
        v4.append(config.k3s.cluster_cidr)
        for address in _peer_addresses(config, node):
            if isinstance(address, ipaddress.IPv4Address):
                v4.append(ipaddress.IPv4Network(address))
            else:
                v6.append(ipaddress.IPv6Network(address))

    lines = [
        f"# Space Harbor node firewall for {node.name}. Managed by Pulumi; local edits are overwritten.",
        f"table inet {TABLE_NAME} {{",
    ]
    if v4:
        lines += _set("trusted_v4", "ipv4_addr", _sorted_networks(v4))
    if v6:
        lines += _set("trusted_v6", "ipv6_addr", _sorted_networks(v6))

    quoted_interfaces = sorted(f'"{name}"' for name in interfaces)
    rules = [
        "type filter hook input priority 0; policy drop;",
        "",
        "# SSH first: nothing below may ever lock the operator out.",
        f'tcp dport {ssh_port} accept comment "ssh"',
        "",
        "ct state established,related accept",
        "ct state invalid drop",
        'iif "lo" accept',
        "# ICMP and ICMPv6: ping, path-MTU discovery, IPv6 neighbour and router discovery.",
        "meta l4proto { icmp, ipv6-icmp } accept",
        "# DHCP and DHCPv6 replies, for nodes whose address is leased.",
        "meta nfproto ipv4 udp sport 67 udp dport 68 accept",
        "meta nfproto ipv6 udp sport 547 udp dport 546 accept",
        "",
        "# Trusted: the mesh, pods, services and flannel; everything is open to them.",
        f"iifname {_anonymous(quoted_interfaces)} accept",
    ]
    if v4:
        rules.append("ip saddr @trusted_v4 accept")
    if v6:
        rules.append("ip6 saddr @trusted_v6 accept")
    rules.append("")
    rules.append("# Open to the world.")
    if mesh.enabled:
        rules.append(f'udp dport {mesh.listen_port} accept comment "wireguard mesh"')
    public = [str(port) for port in sorted(set(config.firewall.public_tcp_ports) - {ssh_port})]
    if public:
        rules.append(f'tcp dport {_anonymous(public)} accept comment "firewall.publicTcpPorts"')
    rules += [
        "",
        "# API, kubelet, etcd and flannel: only the trusted sources above reach them.",
        f'tcp dport {_anonymous(PROTECTED_TCP)} counter drop comment "k3s api, kubelet, etcd: untrusted source"',
        f'udp dport {_anonymous(PROTECTED_UDP)} counter drop comment "flannel: untrusted source"',
        'counter comment "dropped by policy"',
    ]
    lines.append("\tchain input {")
    lines += [f"\t\t{rule}" if rule else "" for rule in rules]
    lines += ["\t}", "}"]
    return "\n".join(lines) + "\n"
