"""The node firewall ruleset: what it opens, to whom, in which order; and that nft accepts it."""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from components.config import ConfigError, HarborConfig, Node, load_config
from components.render.nftables import TABLE_NAME, render_nftables
from tests.conftest import STACKS, base_config, fake_private_key, mesh_off_config

ROOT = Path(__file__).resolve().parents[2]


def _render(raw: dict, node_name: str) -> tuple[HarborConfig, Node, str]:
    config = load_config(raw)
    node = next(n for n in config.nodes if n.name == node_name)
    return config, node, render_nftables(config, node)


def _rules(text: str, chain: str = "input") -> list[str]:
    """The statements of one chain, in order (its header first), without comments and blank lines."""
    match = re.search(rf"^\tchain {chain} {{\n(?P<body>.*?)^\t}}$", text, re.S | re.M)
    assert match, f"chain {chain} is missing:\n{text}"
    rules = [line.strip() for line in match["body"].splitlines()]
    return [rule for rule in rules if rule and not rule.startswith("#")]


def _input_rules(text: str) -> list[str]:
    return _rules(text, "input")


def _index(rules: list[str], pattern: str) -> int:
    matches = [i for i, rule in enumerate(rules) if re.search(pattern, rule)]
    assert matches, f"no rule matches {pattern!r}:\n" + "\n".join(rules)
    return matches[0]


def _absent(rules: list[str], pattern: str) -> None:
    found = [rule for rule in rules if re.search(pattern, rule)]
    assert not found, f"{pattern!r} matches {found}"


def _set_elements(text: str, name: str) -> list[str]:
    match = re.search(rf"set {name} {{.*?elements = {{ (?P<items>[^}}]*) }}", text, re.S)
    assert match, f"set {name} is missing"
    return match["items"].split(", ")


def _with_operator(raw: dict) -> dict:
    raw["mesh"] = {**raw.get("mesh", {}), "operators": [{"name": "laptop", "meshAddress": "10.175.0.9"}]}
    return raw


def _mesh_off(backend: str) -> dict:
    raw = mesh_off_config()
    raw["k3s"] = {"flannelBackend": backend}
    return raw


CHAINS = ("prerouting", "forward", "input")


def test_one_table_of_our_own_with_three_base_chains() -> None:
    _, _, text = _render(base_config(agents=1), "server-1")
    assert re.findall(r"^table .*$", text, re.M) == [f"table inet {TABLE_NAME} {{"]
    assert re.findall(r"^\tchain (\S+) {", text, re.M) == ["prerouting", "forward", "input"]
    # Filtering before DNAT (kube-proxy and the CNI portmap translate at dstnat, -100): the
    # original port decides. prerouting and forward share their hooks with k3s's own tables, where
    # every base chain must accept a packet, so they accept by policy and drop explicitly.
    assert _rules(text, "prerouting")[0] == "type filter hook prerouting priority dstnat - 10; policy accept;"
    assert _rules(text, "forward")[0] == "type filter hook forward priority filter; policy accept;"
    assert _rules(text, "input")[0] == "type filter hook input priority filter; policy drop;"
    assert "flush" not in text


def test_ssh_is_the_first_rule_of_every_chain_that_sees_it() -> None:
    raw = base_config(agents=1)
    raw["ssh"] = {"port": 2222}
    _, _, text = _render(_with_operator(raw), "server-1")
    for chain, pattern in (
        ("prerouting", r"^fib daddr type local tcp dport 2222 accept"),
        ("input", r"^tcp dport 2222 accept"),
    ):
        rules = _rules(text, chain)
        assert _index(rules, pattern) == 1, chain
        assert not any(re.search(r"dport (\{[^}]*)?\b22\b", rule) for rule in rules), "the default port was opened too"
    # forward never carries a packet to the node's own sshd; it drops nothing addressed to the node.
    _absent(_rules(text, "forward"), r"dport|fib daddr type local")


def test_ssh_listen_ports_are_what_opens_when_a_nat_forwards_the_dialled_port() -> None:
    raw = base_config(agents=1)
    # Pulumi dials 2201 at a NAT that forwards to the agent's sshd on 22 and 2022.
    raw["nodes"][1] |= {"sshPort": 2201, "sshListenPorts": [2022, 22]}
    config, agent, agent_text = _render(_with_operator(raw), "agent-1")
    _, _, server_text = _render(_with_operator(raw), "server-1")
    assert config.ssh_listen_ports(agent) == [2022, 22]
    assert config.ssh_listen_ports(config.first_server) == [22]
    for chain in ("prerouting", "input"):
        assert re.search(r"tcp dport \{ 22, 2022 \} accept", _rules(agent_text, chain)[1]), chain
        assert re.search(r"tcp dport 22 accept", _rules(server_text, chain)[1]), chain
        _absent(_rules(agent_text, chain), r"\b2201\b")


def test_the_example_stack_keeps_the_nated_node_s_own_sshd_open() -> None:
    document = yaml.safe_load((ROOT / "examples" / "tour.yaml").read_text())
    raw = {key.split(":", 1)[1]: value for key, value in document["config"].items()}
    raw["sshPrivateKey"] = raw["gitops"]["sshPrivateKey"] = fake_private_key("x")
    _, node, text = _render(raw, "harbor-3")
    assert node.ssh_port == 2222
    for chain in ("prerouting", "input"):
        assert re.search(r"tcp dport 22 accept", _rules(text, chain)[1]), chain
        _absent(_rules(text, chain), r"\b2222\b")


def test_basics_are_accepted_before_the_protected_drops() -> None:
    _, _, text = _render(base_config(agents=1), "server-1")
    rules = _input_rules(text)
    protected = _index(rules, r"dport \{ 6443, 10250, 2379-2380 \} counter drop")
    for pattern in (
        r"^ct state established,related accept",
        r'^iif "lo" accept',
        r"icmp, ipv6-icmp \} accept",
        r"udp sport 67 udp dport 68 accept",
        r"udp sport 547 udp dport 546 accept",
    ):
        assert _index(rules, pattern) < protected, pattern
    prerouting = _rules(text, "prerouting")
    drop = _index(prerouting, r"^fib daddr type local counter drop")
    for pattern in (
        r"^ct state established,related accept",
        r'^iif "lo" accept',
        r"^fib daddr type local meta l4proto \{ icmp, ipv6-icmp \} accept",
        r"udp sport 67 udp dport 68 accept",
        r"udp sport 547 udp dport 546 accept",
    ):
        assert _index(prerouting, pattern) < drop, pattern


def test_mesh_on_trusts_the_mesh_and_opens_its_port_and_the_public_ports() -> None:
    raw = base_config(agents=1)
    raw["mesh"] = {"listenPort": 51999, "interface": "wg-test"}
    raw["firewall"] = {"publicTcpPorts": [443, 80, 8443]}
    _, _, text = _render(raw, "agent-1")
    rules = _input_rules(text)
    protected_tcp = _index(rules, r"^tcp dport \{ 6443, 10250, 2379-2380 \} counter drop")
    protected_udp = _index(rules, r"^udp dport \{ 8472, 51820-51821 \} counter drop")
    trusted_if = _index(rules, r'^iifname \{.*"wg-test".*\} accept')
    mesh_port = _index(rules, r"^udp dport 51999 accept")
    public = _index(rules, r"^tcp dport \{ 80, 443, 8443 \} accept")
    # Trusted sources pass before the protected ports are dropped for everyone else.
    assert trusted_if < min(protected_tcp, protected_udp)
    assert max(mesh_port, public) < protected_tcp
    for name in ("cni0", "flannel.1", "flannel-wg"):
        assert f'"{name}"' in rules[trusted_if]
    # With the mesh on, trust goes by interface only: a mesh or pod source address arriving on the
    # public link is spoofed (VXLAN on 8472/udp is unauthenticated), so no address is trusted.
    assert "saddr" not in text
    # The last statement counts what the drop policy then drops.
    assert rules[-1].startswith("counter")


def test_prerouting_drops_what_untrusted_interfaces_address_to_the_node_before_any_dnat() -> None:
    raw = base_config(agents=1)
    raw["firewall"] = {"publicTcpPorts": [443, 80, 30443]}
    _, _, text = _render(raw, "agent-1")
    rules = _rules(text, "prerouting")
    trusted_if = _index(rules, r'^iifname \{.*"wg-harbor".*\} accept')
    mesh_port = _index(rules, r"^fib daddr type local udp dport 51871 accept")
    public = _index(rules, r"^fib daddr type local tcp dport \{ 80, 443, 30443 \} accept")
    local_drop = _index(rules, r"^fib daddr type local counter drop")
    cluster_drop = _index(rules, r"^ip daddr @cluster_v4 counter drop")
    assert max(trusted_if, mesh_port, public) < local_drop < cluster_drop == len(rules) - 1
    # Pods and services, routed straight at from outside, are dropped: their set holds both.
    assert _set_elements(text, "cluster_v4") == ["10.42.0.0/16", "10.43.0.0/16"]
    # Nothing is accepted for untrusted sources that is not addressed to the node itself.
    for rule in rules[1:trusted_if]:
        if rule.endswith("accept") or "accept comment" in rule:
            assert rule.startswith("fib daddr type local") or rule in (
                "ct state established,related accept",
                'iif "lo" accept',
            ), rule


def test_forward_drops_untranslated_traffic_from_untrusted_interfaces_only() -> None:
    _, _, text = _render(base_config(agents=1), "agent-1")
    rules = _rules(text, "forward")
    established = _index(rules, r"^ct state established,related accept$")
    trusted_if = _index(rules, r'^iifname \{.*"cni0".*"wg-harbor".*\} accept$')
    translated = _index(rules, r"^ct status dnat meta l4proto tcp ct original proto-dst \{ 80, 443 \} accept")
    drop = _index(rules, r'^oifname \{.*"cni0".*"flannel.1".*"wg-harbor".*\} counter drop')
    assert established < trusted_if < translated < drop == len(rules) - 1
    # Only traffic that goes out to pods, flannel or the mesh is dropped: a node's own routing
    # (a Docker bridge going out to the internet, say) is none of this table's business.
    assert len([rule for rule in rules if "drop" in rule]) == 1
    # No translated traffic at all passes from untrusted interfaces when no port is public.
    raw = base_config(agents=1)
    raw["firewall"] = {"publicTcpPorts": []}
    _, _, closed = _render(raw, "agent-1")
    assert not any("ct status dnat" in rule for chain in ("forward", "input") for rule in _rules(closed, chain))


def test_operators_count_only_through_the_mesh_interface() -> None:
    _, _, text = _render(_with_operator(base_config(agents=1)), "agent-1")
    for chain in ("prerouting", "input"):
        accepts = [rule for rule in _rules(text, chain) if "@operators_v4" in rule and "accept" in rule]
        assert accepts and all('iifname "wg-harbor" ip saddr @operators_v4' in rule for rule in accepts), accepts


def test_operators_reach_the_api_and_ssh_and_nothing_else() -> None:
    raw = _with_operator(base_config(agents=1))
    raw["mesh"]["operators"].append({"name": "second", "meshAddress": "10.175.0.3"})
    _, _, text = _render(raw, "agent-1")
    assert _set_elements(text, "operators_v4") == ["10.175.0.3/32", "10.175.0.9/32"]
    for chain in CHAINS:
        rules = _rules(text, chain)
        drop = _index(rules, r"^ip saddr @operators_v4 counter drop")
        # Before the mesh interface is trusted: operators arrive on it too.
        assert drop < _index(rules, r'^iifname \{.*"wg-harbor".*\} accept'), chain
        accepts = [rule for rule in rules[:drop] if "@operators_v4" in rule]
        if chain == "forward":
            # No pods and no services through a node.
            assert accepts == [], chain
        else:
            # The API (SSH is accepted for everyone before), addressed to the node itself.
            assert len(accepts) == 1 and re.search(r"tcp dport 6443 accept", accepts[0]), (chain, accepts)
            assert _index(rules, r"tcp dport 22 accept") < drop
        # Established replies, and ICMP to the node in prerouting and input, are not theirs to lose.
        assert _index(rules, r"^ct state established,related accept") < drop


def test_no_operators_no_operator_rules() -> None:
    _, _, text = _render(base_config(agents=1), "server-1")
    assert "operators" not in text


def test_protected_ports_are_never_opened_to_the_world() -> None:
    raw = base_config(agents=1)
    raw["firewall"] = {"publicTcpPorts": [80, 443]}
    _, _, text = _render(raw, "server-1")
    for chain in CHAINS:
        accepts = [rule for rule in _rules(text, chain) if rule.endswith("accept") or "accept comment" in rule]
        for rule in accepts:
            for port in ("6443", "10250", "2379", "8472", "51820"):
                if port in rule:
                    assert "@operators_v4" in rule or "@peers" in rule or "@servers" in rule, rule


def test_mesh_off_trusts_interfaces_and_the_other_nodes_only_for_what_they_need() -> None:
    config, node, text = _render(mesh_off_config(), "agent-1")
    others = [config.node_address(n) for n in config.nodes if n.name != node.name]
    assert others == ["172.16.0.10", "172.16.0.12"]
    assert _set_elements(text, "peers_v4") == ["172.16.0.10/32", "172.16.0.12/32"]
    # An agent has no other servers to hear etcd from.
    assert "servers_v4" not in text
    # Its own address, a mesh interface and the mesh port have no business here.
    assert "172.16.0.11" not in text
    assert "wg-harbor" not in text
    assert "51871" not in text
    for chain in ("prerouting", "input"):
        rules = _rules(text, chain)
        peers = [rule for rule in rules if "@peers_v4" in rule]
        # Each peer rule names its port: no source address is trusted for everything.
        assert all(re.search(r"dport \S+ accept", rule) for rule in peers), peers
        ports = sorted(re.search(r"(tcp|udp) dport (\S+)", rule).group(0) for rule in peers)  # type: ignore[union-attr]
        # wireguard-native: kubelet for the servers' API (an agent serves no API), flannel's ports.
        assert ports == ["tcp dport 10250", "udp dport 51820-51821"], (chain, ports)
        # The pod network is trusted by interface (cni0, flannel), never by its spoofable source.
        _absent(rules, r"saddr 10\.42\.")
        assert _index(
            rules, r'^iifname \{ "cni0", "flannel-v6.1", "flannel-wg", "flannel-wg-v6", "flannel.1" \} accept'
        )


@pytest.mark.parametrize(
    ("backend", "flannel"),
    [("vxlan", "udp dport 8472"), ("wireguard-native", "udp dport 51820-51821"), ("host-gw", None)],
)
def test_mesh_off_peers_reach_the_backend_port_and_the_server_api(backend: str, flannel: str | None) -> None:
    raw = _mesh_off(backend)
    raw["k3s"] |= {"datastore": "etcd", "firstServer": "server-1"}
    raw["nodes"][1]["role"] = "server"  # server-1, agent-1 as a server, agent-2 an agent
    raw["nodes"][2]["role"] = "server"
    raw["nodes"][2]["name"] = "server-3"
    _, _, server = _render(raw, "server-1")
    assert _set_elements(server, "servers_v4") == ["172.16.0.11/32", "172.16.0.12/32"]
    for chain in ("prerouting", "input"):
        rules = _rules(server, chain)
        expected = {"@peers_v4 tcp dport 10250", "@peers_v4 tcp dport 6443", "@servers_v4 tcp dport 2379-2380"}
        if flannel:
            expected.add(f"@peers_v4 {flannel}")
        found = {
            re.search(r"@\w+ (fib daddr type local )?(tcp|udp) dport \S+", rule)
            .group(0)
            .replace("fib daddr type local ", "")  # type: ignore[union-attr]
            for rule in rules
            if re.search(r"@(peers|servers)_v4 .*dport", rule)
        }
        assert found == expected, (chain, found)
        if chain == "prerouting":
            # Only what is addressed to this node; at pods, the host-gw rules below decide.
            assert all("fib daddr type local" in rule for rule in rules if "dport" in rule and "@" in rule)


def test_mesh_off_host_gw_admits_pod_to_pod_traffic_from_the_nic_and_only_there() -> None:
    for backend in ("vxlan", "wireguard-native"):
        _, _, text = _render(_mesh_off(backend), "agent-1")
        assert "ip daddr 10.42.0.0/16 accept" not in text, backend
    _, _, text = _render(_mesh_off("host-gw"), "agent-1")
    for chain in ("prerouting", "forward"):
        rules = _rules(text, chain)
        pods = _index(rules, r'^ip saddr 10\.42\.0\.0/16 ip daddr 10\.42\.0\.0/16 accept comment "host-gw')
        nodes = _index(rules, r"^ip saddr @peers_v4 ip daddr 10\.42\.0\.0/16 accept")
        last_drop = _index(rules, r"counter drop")
        assert max(pods, nodes) < last_drop, chain
    # A pod source address never opens the node's own ports, not even with host-gw.
    _absent(_input_rules(text), r"10\.42\.")


def test_mesh_off_ipv6_private_addresses_get_their_own_set() -> None:
    raw = mesh_off_config()
    raw["nodes"][0]["privateAddress"] = "fd00::10"
    _, _, text = _render(raw, "agent-1")
    assert _set_elements(text, "peers_v6") == ["fd00::10/128"]
    assert 'ip6 saddr @peers_v6 tcp dport 10250 accept comment "kubelet: the other nodes"' in _input_rules(text)


def test_mesh_off_the_mesh_port_may_be_public() -> None:
    raw = mesh_off_config()
    raw["firewall"] = {"publicTcpPorts": [443, 51871]}
    _, _, text = _render(raw, "agent-1")
    assert 'tcp dport { 443, 51871 } accept comment "firewall.publicTcpPorts"' in _input_rules(text)


def test_mesh_off_dns_names_are_refused_before_rendering() -> None:
    raw = mesh_off_config()
    raw["nodes"][0]["privateAddress"] = "server-1.internal.example.org"
    with pytest.raises(ConfigError, match=r"nodes\[0\]\.privateAddress: 'server-1\.internal\.example\.org' is a DNS"):
        _render(raw, "agent-1")
    # Without a privateAddress the host is the cluster address, and the message names that key.
    raw = mesh_off_config()
    del raw["nodes"][2]["privateAddress"]
    raw["nodes"][2]["host"] = "agent-2.example.org"
    with pytest.raises(ConfigError, match=r"nodes\[2\]\.host: "):
        _render(raw, "agent-1")


def _variants() -> dict[str, dict]:
    """Every stack of the shared configs, plus the shapes that add rules of their own."""
    found = {name: factory() for name, factory in STACKS.items()}
    ssh = base_config(agents=1)
    ssh["nodes"][1] |= {"sshPort": 2201, "sshListenPorts": [22, 2022]}
    found["operators-ssh-ports"] = _with_operator(ssh)
    for backend in ("vxlan", "host-gw", "wireguard-native"):
        raw = _mesh_off(backend)
        raw["k3s"] |= {"datastore": "etcd", "firstServer": "server-1"}
        raw["nodes"][1]["role"] = raw["nodes"][2]["role"] = "server"
        found[f"mesh-off-{backend}-etcd"] = raw
    v6 = mesh_off_config()
    v6["nodes"][0]["privateAddress"] = "fd00::10"
    found["mesh-off-ipv6-peer"] = v6
    return found


def test_rendering_is_deterministic() -> None:
    for raw in _variants().values():
        config = load_config(copy.deepcopy(raw))
        for node in config.nodes:
            assert render_nftables(config, node) == render_nftables(load_config(copy.deepcopy(raw)), node)


# --- nft itself ----------------------------------------------------------------------------------

NFT = shutil.which("nft") or ("/usr/sbin/nft" if os.path.exists("/usr/sbin/nft") else None)
needs_nft_root = pytest.mark.skipif(
    NFT is None or os.geteuid() != 0 or shutil.which("unshare") is None,
    reason="needs root, unshare and nft (apt package nftables) to load rules in a private network namespace",
)


def _all_rulesets() -> list[tuple[str, str]]:
    found = []
    for stack, raw in _variants().items():
        config = load_config(raw)
        found += [(f"{stack}/{node.name}", render_nftables(config, node)) for node in config.nodes]
    return found


@needs_nft_root
@pytest.mark.parametrize(("name", "text"), _all_rulesets(), ids=[name for name, _ in _all_rulesets()])
def test_nft_accepts_the_ruleset(tmp_path: Path, name: str, text: str) -> None:
    path = tmp_path / "ruleset.nft"
    path.write_text(text)
    # -c checks against the kernel without committing, in a namespace of our own anyway.
    result = subprocess.run(
        ["unshare", "--net", NFT, "-c", "-f", str(path)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, f"{name}: {result.stderr}"


@needs_nft_root
def test_loaded_chains_run_before_dnat_and_at_filter(tmp_path: Path) -> None:
    """The priorities as the kernel holds them: prerouting must come before kube-proxy's dstnat (-100)."""
    _, _, text = _render(_with_operator(base_config(agents=1)), "agent-1")
    path = tmp_path / "ruleset.nft"
    path.write_text(text)
    result = subprocess.run(
        ["unshare", "--net", "sh", "-c", f'{NFT} -f "$1" && {NFT} -j list table inet {TABLE_NAME}', "sh", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    chains = {
        item["chain"]["name"]: (item["chain"]["hook"], item["chain"]["prio"], item["chain"]["policy"])
        for item in json.loads(result.stdout)["nftables"]
        if "chain" in item
    }
    assert chains == {
        "prerouting": ("prerouting", -110, "accept"),
        "forward": ("forward", 0, "accept"),
        "input": ("input", 0, "drop"),
    }


_PROBE = textwrap.dedent(
    """
    import json, socket, sys, threading
    results = {}
    def probe(source, target, port):
        s = socket.socket()
        s.settimeout(1.5)
        key = f"{source}->{target}:{port}"
        try:
            s.bind((source, 0))
            s.connect((target, port))
            results[key] = "open"
        except OSError:
            results[key] = "blocked"
        finally:
            s.close()
    # All at once: each blocked probe waits out its timeout.
    threads = [threading.Thread(target=probe, args=tuple(p)) for p in json.loads(sys.argv[1])]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(json.dumps(results))
    """
)

_LISTEN = textwrap.dedent(
    """
    import socket, sys, threading, time
    for port in map(int, sys.argv[1:]):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("0.0.0.0", port))
        s.listen(16)
        threading.Thread(target=lambda s=s: [s.accept()[0].close() for _ in iter(int, 1)], daemon=True).start()
    print("listening", flush=True)
    time.sleep(120)
    """
)


@needs_nft_root
def test_loaded_ruleset_lets_ssh_and_public_ports_in_and_keeps_the_api_private(tmp_path: Path) -> None:
    """Real packets between two network namespaces that this test makes and removes."""
    raw = base_config(agents=1)
    raw["ssh"] = {"port": 2222}
    config, node, text = _render(raw, "server-1")
    (tmp_path / "ruleset.nft").write_text(text)
    (tmp_path / "probe.py").write_text(_PROBE)
    (tmp_path / "listen.py").write_text(_LISTEN)
    public, mesh_node, mesh_peer = "192.168.77.1", "10.160.0.1", "10.160.0.2"
    probes = [
        ["192.168.77.2", public, 2222],  # ssh from anywhere
        ["192.168.77.2", public, 443],  # public port
        ["192.168.77.2", public, 6443],  # API from the internet: dropped
        ["192.168.77.2", public, 10250],  # kubelet from the internet: dropped
        ["192.168.77.2", public, 8080],  # anything else: dropped by policy
        [mesh_peer, mesh_node, 6443],  # API through the mesh interface: trusted
        [mesh_peer, mesh_node, 10250],
        [mesh_peer, public, 6443],  # a mesh source address arriving on the public link: spoofed, dropped
    ]
    # The node's side of the second link carries the mesh interface's name, which is what the
    # firewall trusts; the peer's mesh address is also usable as a (spoofed) source on the public link.
    script = textwrap.dedent(
        f"""
        set -eu
        mount -t tmpfs tmpfs /run
        ip netns add node
        ip netns add outside
        ip link add v-node netns node type veth peer name v-out netns outside
        ip link add wg-harbor netns node type veth peer name v-mesh netns outside
        ip -n node addr add 192.168.77.1/24 dev v-node
        ip -n node addr add {mesh_node}/12 dev wg-harbor
        ip -n outside addr add 192.168.77.2/24 dev v-out
        ip -n outside addr add {mesh_peer}/12 dev v-mesh
        for ns in node outside; do ip -n $ns link set lo up; done
        ip -n node link set v-node up
        ip -n node link set wg-harbor up
        ip -n outside link set v-out up
        ip -n outside link set v-mesh up
        ip netns exec node sysctl -qw net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.v-node.rp_filter=0
        ip netns exec node {NFT} -f {tmp_path}/ruleset.nft
        ip netns exec node {sys.executable} {tmp_path}/listen.py 2222 443 6443 10250 8080 > {tmp_path}/listen.log &
        for _ in $(seq 50); do grep -q listening {tmp_path}/listen.log && break; sleep 0.1; done
        ip netns exec outside {sys.executable} {tmp_path}/probe.py '{json.dumps(probes)}'
        """
    )
    result = subprocess.run(
        ["unshare", "--net", "--mount", "--pid", "--fork", "--propagation", "private", "bash", "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    assert seen == {
        "192.168.77.2->192.168.77.1:2222": "open",
        "192.168.77.2->192.168.77.1:443": "open",
        "192.168.77.2->192.168.77.1:6443": "blocked",
        "192.168.77.2->192.168.77.1:10250": "blocked",
        "192.168.77.2->192.168.77.1:8080": "blocked",
        "10.160.0.2->10.160.0.1:6443": "open",
        "10.160.0.2->10.160.0.1:10250": "open",
        "10.160.0.2->192.168.77.1:6443": "blocked",
    }
    assert config.ssh_port(node) == 2222


@needs_nft_root
def test_loaded_ruleset_filters_translated_traffic_and_operators(tmp_path: Path) -> None:
    """Real packets through a DNAT like kube-proxy's, in network namespaces this test makes and removes.

    `node` has a public link, a link named like the mesh interface, and a `cni0` bridge with a
    `pod` namespace behind it; a nat table of its own (as kube-proxy owns one) DNATs two
    NodePorts and a ClusterIP to the pod. `outside` is the internet on one link, and on the other
    a mesh peer (10.160.0.2) and an operator (10.175.0.9).
    """
    raw = _with_operator(base_config(agents=1))
    raw["firewall"] = {"publicTcpPorts": [443, 30443]}
    _, _, text = _render(raw, "server-1")
    (tmp_path / "ruleset.nft").write_text(text)
    (tmp_path / "probe.py").write_text(_PROBE)
    (tmp_path / "listen.py").write_text(_LISTEN)
    kube_proxy = textwrap.dedent(
        """
        table ip kube_proxy_standin {
            chain prerouting {
                type nat hook prerouting priority dstnat; policy accept;
                fib daddr type local tcp dport { 30080, 30443 } dnat to 10.42.1.10:8080
                ip daddr 10.43.0.10 tcp dport 80 dnat to 10.42.1.10:8080
                ip daddr 192.168.99.5 tcp dport { 443, 8080 } dnat to 10.42.1.10:8080
            }
        }
        """
    )
    (tmp_path / "kube-proxy.nft").write_text(kube_proxy)
    public, mesh_node, peer, operator, pod = "192.168.77.1", "10.160.0.1", "10.160.0.2", "10.175.0.9", "10.42.1.10"
    outside = [
        ["192.168.77.2", public, 30080],  # a NodePort that is not public: dropped before its DNAT
        ["192.168.77.2", public, 30443],  # a NodePort listed in publicTcpPorts
        ["192.168.77.2", pod, 8080],  # routed straight at the pod
        ["192.168.77.2", "10.43.0.10", 80],  # routed straight at a ClusterIP
        [peer, mesh_node, 30080],  # the NodePort across the mesh
        [peer, mesh_node, 10250],
        [operator, mesh_node, 6443],
        [operator, mesh_node, 22],
        [operator, mesh_node, 10250],
        [operator, mesh_node, 30080],
        [operator, public, 6443],  # an operator's address, spoofed on the public link
        ["192.168.77.2", "192.168.99.5", 443],  # a Service externalIP on a public port
        ["192.168.77.2", "192.168.99.5", 8080],  # the same externalIP on a port that is not public
    ]
    from_pod = [[pod, peer, 9000]]  # a pod reaches the mesh
    script = textwrap.dedent(
        f"""
        set -eu
        mount -t tmpfs tmpfs /run
        for ns in node outside pod; do ip netns add $ns; ip -n $ns link set lo up; done
        ip link add v-node netns node type veth peer name v-out netns outside
        ip link add wg-harbor netns node type veth peer name v-mesh netns outside
        ip link add v-pod netns node type veth peer name eth0 netns pod
        ip -n node link add cni0 type bridge
        ip -n node link set v-pod master cni0
        ip -n node addr add {public}/24 dev v-node
        ip -n node addr add {mesh_node}/12 dev wg-harbor
        ip -n node addr add 10.42.1.1/24 dev cni0
        ip -n outside addr add 192.168.77.2/24 dev v-out
        ip -n outside addr add {peer}/12 dev v-mesh
        ip -n outside addr add {operator}/32 dev v-mesh
        ip -n pod addr add {pod}/24 dev eth0
        for link in v-node wg-harbor v-pod cni0; do ip -n node link set $link up; done
        ip -n outside link set v-out up
        ip -n outside link set v-mesh up
        ip -n pod link set eth0 up
        ip -n pod route add default via 10.42.1.1
        ip -n outside route add 10.42.0.0/16 via {public}
        ip -n outside route add 10.43.0.0/16 via {public}
        ip -n outside route add 192.168.99.0/24 via {public}
        ip netns exec node sysctl -qw net.ipv4.ip_forward=1 net.ipv4.conf.all.rp_filter=0 \
            net.ipv4.conf.v-node.rp_filter=0
        ip netns exec node {NFT} -f {tmp_path}/kube-proxy.nft
        ip netns exec node {NFT} -f {tmp_path}/ruleset.nft
        ip netns exec node {sys.executable} {tmp_path}/listen.py 22 6443 10250 > {tmp_path}/node.log &
        ip netns exec pod {sys.executable} {tmp_path}/listen.py 8080 > {tmp_path}/pod.log &
        ip netns exec outside {sys.executable} {tmp_path}/listen.py 9000 > {tmp_path}/outside.log &
        for log in node pod outside; do
            for _ in $(seq 50); do grep -q listening {tmp_path}/$log.log && break; sleep 0.1; done
        done
        ip netns exec outside {sys.executable} {tmp_path}/probe.py '{json.dumps(outside)}'
        ip netns exec pod {sys.executable} {tmp_path}/probe.py '{json.dumps(from_pod)}'
        """
    )
    result = subprocess.run(
        ["unshare", "--net", "--mount", "--pid", "--fork", "--propagation", "private", "bash", "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    seen: dict[str, str] = {}
    for line in result.stdout.strip().splitlines()[-2:]:
        seen |= json.loads(line)
    assert seen == {
        "192.168.77.2->192.168.77.1:30080": "blocked",
        "192.168.77.2->192.168.77.1:30443": "open",
        "192.168.77.2->10.42.1.10:8080": "blocked",
        "192.168.77.2->10.43.0.10:80": "blocked",
        "10.160.0.2->10.160.0.1:30080": "open",
        "10.160.0.2->10.160.0.1:10250": "open",
        "10.175.0.9->10.160.0.1:6443": "open",
        "10.175.0.9->10.160.0.1:22": "open",
        "10.175.0.9->10.160.0.1:10250": "blocked",
        "10.175.0.9->10.160.0.1:30080": "blocked",
        "10.175.0.9->192.168.77.1:6443": "blocked",
        "192.168.77.2->192.168.99.5:443": "open",
        "192.168.77.2->192.168.99.5:8080": "blocked",
        "10.42.1.10->10.160.0.2:9000": "open",
    }
