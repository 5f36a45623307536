"""The node firewall ruleset: what it opens, to whom, in which order; and that nft accepts it."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from components.config import ConfigError, HarborConfig, Node, load_config
from components.render.nftables import TABLE_NAME, render_nftables
from tests.conftest import STACKS, base_config, mesh_off_config


def _render(raw: dict, node_name: str) -> tuple[HarborConfig, Node, str]:
    config = load_config(raw)
    node = next(n for n in config.nodes if n.name == node_name)
    return config, node, render_nftables(config, node)


def _input_rules(text: str) -> list[str]:
    """The statements of the input chain, in order, without comments and blank lines."""
    body = text.split("chain input {", 1)[1]
    rules = [line.strip() for line in body.splitlines()]
    return [rule for rule in rules if rule and not rule.startswith("#") and rule != "}"]


def _index(rules: list[str], pattern: str) -> int:
    matches = [i for i, rule in enumerate(rules) if re.search(pattern, rule)]
    assert matches, f"no rule matches {pattern!r}:\n" + "\n".join(rules)
    return matches[0]


def _set_elements(text: str, name: str) -> list[str]:
    match = re.search(rf"set {name} {{.*?elements = {{ (?P<items>[^}}]*) }}", text, re.S)
    assert match, f"set {name} is missing"
    return match["items"].split(", ")


def test_one_table_of_our_own_and_only_the_input_hook() -> None:
    _, _, text = _render(base_config(agents=1), "server-1")
    assert re.findall(r"^table .*$", text, re.M) == [f"table inet {TABLE_NAME} {{"]
    assert "type filter hook input priority 0; policy drop;" in text
    # k3s owns forwarding: a forward chain with policy drop here would cut pod traffic.
    assert "hook forward" not in text
    assert "flush" not in text


def test_ssh_is_the_first_rule_and_nothing_drops_before_it() -> None:
    raw = base_config(agents=1)
    raw["ssh"] = {"port": 2222}
    _, _, text = _render(raw, "server-1")
    rules = _input_rules(text)
    assert rules[0].startswith("type filter hook input")
    ssh = _index(rules, r"^tcp dport 2222 accept")
    assert ssh == 1
    # The chain header names the policy; the first statement that can drop comes after SSH.
    assert _index(rules[1:], r"\bdrop\b") + 1 > ssh
    assert not any(re.search(r"dport (\{[^}]*)?\b22\b", rule) for rule in rules), "the default port was opened too"


def test_per_node_ssh_port_override() -> None:
    raw = base_config(agents=1)
    raw["nodes"][1]["sshPort"] = 2201
    _, _, server = _render(raw, "server-1")
    _, _, agent = _render(raw, "agent-1")
    assert _input_rules(server)[1].startswith("tcp dport 22 accept")
    assert _input_rules(agent)[1].startswith("tcp dport 2201 accept")


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
    # public link is spoofed (VXLAN on 8472/udp is unauthenticated), so no address set is trusted.
    assert "trusted_v4" not in text
    assert "saddr" not in text
    # The last statement counts what the drop policy then drops.
    assert rules[-1].startswith("counter")


def test_protected_ports_are_never_opened_to_the_world() -> None:
    raw = base_config(agents=1)
    raw["firewall"] = {"publicTcpPorts": [80, 443]}
    _, _, text = _render(raw, "server-1")
    accepts = [rule for rule in _input_rules(text) if rule.endswith("accept") or "accept comment" in rule]
    for rule in accepts:
        for port in ("6443", "10250", "2379", "8472", "51820"):
            assert port not in rule, rule


def test_mesh_off_trusts_the_other_nodes_private_addresses() -> None:
    config, node, text = _render(mesh_off_config(), "agent-1")
    elements = _set_elements(text, "trusted_v4")
    others = [config.node_address(n) for n in config.nodes if n.name != node.name]
    assert others == ["172.16.0.10", "172.16.0.12"]
    assert elements == ["10.42.0.0/16", "172.16.0.10/32", "172.16.0.12/32"]
    # Its own address, a mesh interface and the mesh port have no business here.
    assert "172.16.0.11" not in text
    assert "wg-harbor" not in text
    assert "51871" not in text


def test_mesh_off_ipv6_private_addresses_get_their_own_set() -> None:
    raw = mesh_off_config()
    raw["nodes"][0]["privateAddress"] = "fd00::10"
    _, _, text = _render(raw, "agent-1")
    assert _set_elements(text, "trusted_v6") == ["fd00::10/128"]
    assert "ip6 saddr @trusted_v6 accept" in _input_rules(text)


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


def test_rendering_is_deterministic() -> None:
    for factory in STACKS.values():
        config = load_config(factory())
        for node in config.nodes:
            assert render_nftables(config, node) == render_nftables(load_config(factory()), node)


# --- nft itself ----------------------------------------------------------------------------------

NFT = shutil.which("nft") or ("/usr/sbin/nft" if os.path.exists("/usr/sbin/nft") else None)
needs_nft_root = pytest.mark.skipif(
    NFT is None or os.geteuid() != 0 or shutil.which("unshare") is None,
    reason="needs root, unshare and nft (apt package nftables) to load rules in a private network namespace",
)


def _all_rulesets() -> list[tuple[str, str]]:
    found = []
    for stack, factory in STACKS.items():
        config = load_config(factory())
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


_PROBE = textwrap.dedent(
    """
    import json, socket, sys
    results = {}
    for source, target, port in json.loads(sys.argv[1]):
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
