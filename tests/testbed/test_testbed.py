"""The program's own remote commands, run over real SSH on booted Debian nodes (issue 3).

The tests share one 4-node testbed plus a git server and run in file order, each building on
the state the previous one left (mesh -> firewall -> add/remove a node -> k3s -> re-run ->
uninstall -> GitOps commit). Every one of them asserts on the real hosts.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any

import pytest
import yaml

from tests.helpers import nft_table
from tests.testbed.conftest import inventory, snapshot, snapshot_changes
from tests.testbed.netprobe import fetch_api
from tests.testbed.nodes import CTL_ADDRESS, GIT_REPO, KEPT_INSTALLER, STANDIN_INSTALLER, Testbed, call_in_netns
from tests.testbed.runner import Runner
from tests.testbed.stack import MESH_BASE, MESH_INTERFACE, names, program, stack_config

pytestmark = pytest.mark.testbed

NODES = ["n1", "n2", "n3", "n4"]
SERVER = "n1"
AGENTS = ["n2", "n3", "n4"]
HANDSHAKE_FRESH_S = 180
K3S_PATHS_TO_CLEAR = ("/etc/rancher/k3s", "/var/lib/rancher/k3s")


class Stack:
    """The current program run for the module's testbed and its runner."""

    def __init__(self, tb: Testbed) -> None:
        self.tb = tb
        self.config = stack_config(tb)
        self.run, self.runner = program(tb, self.config)
        self.before_k3s: dict[str, set[str]] = {}

    def mesh_address(self, name: str) -> str:
        return f"{MESH_BASE}{self.tb.nodes[name].index}"


@pytest.fixture(scope="module")
def stack(testbed4: Testbed) -> Stack:
    return Stack(testbed4)


def wg_dump(tb: Testbed, node: str) -> tuple[dict[str, str], dict[str, dict[str, Any]]]:
    """`wg show <if> dump`: the interface line and each peer (handshake, rx, tx)."""
    lines = tb.ssh(node, f"wg show {MESH_INTERFACE} dump").stdout.splitlines()
    iface = dict(zip(["private", "public", "port", "fwmark"], lines[0].split("\t"), strict=False))
    peers = {}
    for line in lines[1:]:
        key, _psk, endpoint, allowed, handshake, rx, tx, _keepalive = line.split("\t")
        peers[key] = {
            "endpoint": endpoint,
            "allowed": allowed,
            "handshake": int(handshake),
            "rx": int(rx),
            "tx": int(tx),
        }
    return iface, peers


def node_now(tb: Testbed, node: str) -> int:
    return int(tb.ssh(node, "date +%s").stdout.strip())


def ping_all(stack: Stack, nodes: list[str], *, within: float = 30) -> None:
    """Every node pings every other node's mesh address through the WireGuard interface."""
    tb = stack.tb
    deadline = time.monotonic() + within
    for source in nodes:
        for target in nodes:
            if target == source:
                continue
            address = stack.mesh_address(target)
            while True:
                result = tb.ssh(source, f"ping -c1 -W2 -I {MESH_INTERFACE} {address}", check=False)
                if result.returncode == 0:
                    break
                assert time.monotonic() < deadline, f"{source} cannot ping {target} at {address}: {result.stdout}"
                time.sleep(0.5)


def interface_identity(tb: Testbed, node: str) -> str:
    """ifindex of the mesh interface and the wireguard-go pid serving it: both change on a bounce."""
    out = tb.ssh(node, f"cat /sys/class/net/{MESH_INTERFACE}/ifindex; pgrep -x wireguard-go || true").stdout
    return " ".join(out.split())


def assert_ssh_reachable(tb: Testbed, nodes: list[str]) -> None:
    for name in nodes:
        assert tb.tcp_open_from_ctl(tb.nodes[name].address, 22), f"SSH port of {name} closed from outside"
        tb.ssh(name, "true")


# --- 1. the mesh forms ------------------------------------------------------------------------


def test_mesh_forms(stack: Stack) -> None:
    tb = stack.tb
    stack.runner.apply(names(stack.runner, "-mesh", "-firewall"))
    ping_all(stack, NODES)
    keys = stack.run.outputs["meshPublicKeys"]
    for name in NODES:
        iface, peers = wg_dump(tb, name)
        assert iface["public"] == keys[name]
        assert sorted(peers) == sorted(keys[n] for n in NODES if n != name), f"{name} peers"
        now = node_now(tb, name)
        for key, peer in peers.items():
            assert peer["handshake"] > 0, f"{name}: no handshake with {key}"
            assert now - peer["handshake"] < HANDSHAKE_FRESH_S, f"{name}: stale handshake with {key}"
            assert peer["rx"] > 0 and peer["tx"] > 0
    # The pings went through WireGuard: each node's mesh address is on the interface.
    for name in NODES:
        addresses = tb.ssh(name, f"ip -4 -o addr show dev {MESH_INTERFACE}").stdout
        assert f"{stack.mesh_address(name)}/" in addresses


# --- 4. the firewall keeps the API private ----------------------------------------------------

LISTEN = (
    "for port in 6443 10250; do "
    'if ! ss -Hltn "sport = :$port" | grep -q .; then '
    "systemd-run --quiet --unit=harbor-testbed-listen-$port python3 -m http.server --bind 0.0.0.0 $port; fi; done; "
    "for i in $(seq 50); do ss -Hltn 'sport = :6443' | grep -q . && ss -Hltn 'sport = :10250' | grep -q . && exit 0; "
    "sleep 0.1; done; exit 1"
)
UNLISTEN = "systemctl stop harbor-testbed-listen-6443 harbor-testbed-listen-10250 2>/dev/null || true"


def test_firewall_keeps_api_private(stack: Stack) -> None:
    tb = stack.tb
    firewalls = names(stack.runner, "-firewall")
    assert len(firewalls) == len(NODES)
    stack.runner.apply(firewalls)
    assert_ssh_reachable(tb, NODES)
    for name in NODES:
        tb.ssh(name, LISTEN)
    try:
        for name in NODES:
            node = tb.nodes[name]
            for port in (6443, 10250):
                # A listener is there (the peer check below proves it), yet the outside sees nothing.
                assert not tb.tcp_open_from_ctl(node.address, port), f"{name}:{port} open from {CTL_ADDRESS}"
            assert tb.tcp_open_from_ctl(node.address, 22)
            for peer in NODES:
                if peer == name:
                    continue
                for port in (6443, 10250):
                    probe = tb.ssh(peer, f"nc -z -w3 {stack.mesh_address(name)} {port}", check=False)
                    assert probe.returncode == 0, f"{name}:{port} closed from mesh peer {peer}"
        # The firewall is really on: the table exists and names the API port.
        for name in NODES:
            ruleset = tb.ssh(name, "nft list ruleset").stdout
            assert "6443" in ruleset and "10250" in ruleset, f"{name}: no API rule in\n{ruleset}"
        # A second apply of every firewall keeps SSH open too. (Only the firewalls: the preflight
        # they follow would rightly refuse the stand-in listeners holding k3s's ports.)
        stack.runner.apply(firewalls, with_dependencies=False)
        assert_ssh_reachable(tb, NODES)
    finally:
        for name in NODES:
            tb.ssh(name, UNLISTEN, check=False)


# --- 3. a node joins with wg syncconf, and leaves no trace ------------------------------------


def test_node_added_and_removed(stack: Stack) -> None:
    tb = stack.tb
    ping_all(stack, NODES)
    before_identity = {n: interface_identity(tb, n) for n in NODES}
    before_peers = {n: wg_dump(tb, n)[1] for n in NODES}

    tb.add_nodes(["n5"])
    grown = [*NODES, "n5"]
    config5 = stack_config(tb)
    run5, runner5 = program(tb, config5)
    runner5.apply(names(runner5, "-mesh", "-firewall"))
    assert_ssh_reachable(tb, grown)
    ping_all(stack, grown)
    keys5 = run5.outputs["meshPublicKeys"]
    for name in NODES:
        # No bounce: same interface, same wireguard-go process, counters and sessions kept.
        assert interface_identity(tb, name) == before_identity[name], f"{name}: {MESH_INTERFACE} was recreated"
        _, peers = wg_dump(tb, name)
        assert keys5["n5"] in peers, f"{name} has no peer for n5"
        for key, old in before_peers[name].items():
            assert peers[key]["handshake"] >= old["handshake"] > 0, f"{name}: handshake with {key} reset"
            assert peers[key]["rx"] >= old["rx"] and peers[key]["tx"] >= old["tx"], f"{name}: counters of {key} reset"

    # Remove n5: the others get the 4-node config (updates), n5's own commands run their delete.
    n5 = tb.nodes["n5"]
    config4 = stack_config(tb, node_names=NODES)
    run4, runner4 = program(tb, config4)
    runner4.apply(names(runner4, "-mesh", "-firewall"))
    runner5.delete_only(names(runner5, "-mesh", "-firewall", nodes=["n5"]))
    assert_ssh_reachable(tb, NODES)
    traces = (keys5["n5"], f"{MESH_BASE}{n5.index}", n5.address)
    for name in NODES:
        assert interface_identity(tb, name) == before_identity[name], f"{name}: {MESH_INTERFACE} was recreated"
        peers = tb.ssh(name, f"wg show {MESH_INTERFACE} peers").stdout
        assert keys5["n5"] not in peers
        files = tb.ssh(name, f"cat /etc/wireguard/{MESH_INTERFACE}.conf; nft list ruleset").stdout
        for trace in traces:
            assert trace not in files, f"{name} still mentions n5 ({trace})"
    assert tb.ssh("n5", f"ip link show {MESH_INTERFACE}", check=False).returncode != 0, "n5 kept its interface"
    assert tb.ssh("n5", f"test -e /etc/wireguard/{MESH_INTERFACE}.conf", check=False).returncode != 0
    enabled = tb.ssh("n5", f"systemctl is-enabled wg-quick@{MESH_INTERFACE}", check=False).stdout.strip()
    assert enabled != "enabled", "n5 still starts the mesh at boot"
    table = nft_table(runner5.by_name["n5-firewall"].inputs["stdin"])
    assert table not in tb.ssh("n5", "nft list tables").stdout, f"n5 kept nft table {table}"
    tb.remove_node("n5")
    ping_all(stack, NODES)
    stack.run, stack.runner = run4, runner4


# --- 5. k3s: config.yaml, air-gap install, join over the mesh ---------------------------------


def test_k3s_installs_air_gapped_and_joins_over_the_mesh(stack: Stack) -> None:
    tb = stack.tb
    stack.before_k3s = {n: inventory(tb, n) for n in NODES}
    results = stack.runner.apply()
    by_name = {r.name: r for r in results}

    server_mesh = stack.mesh_address(SERVER)
    server_cfg = yaml.safe_load(tb.ssh(SERVER, "cat /etc/rancher/k3s/config.yaml").stdout)
    assert server_cfg["node-ip"] == server_mesh
    assert server_cfg["advertise-address"] == server_mesh
    assert server_cfg["flannel-iface"] == MESH_INTERFACE
    assert server_mesh in server_cfg["tls-san"]
    assert {"traefik", "servicelb"} <= set(server_cfg["disable"])
    assert "server" not in server_cfg
    assert tb.ssh(SERVER, "stat -c %a /etc/rancher/k3s/config.yaml").stdout.strip() == "600"

    # Installed by the air-gap path: the pre-placed binary, through the installer the program
    # shipped (the test pin is the stand-in's; its unit says so), as a running service.
    unit = tb.ssh(SERVER, "cat /etc/systemd/system/k3s.service").stdout
    assert "STAND-IN" in unit and "ExecStart=/usr/local/bin/k3s server" in unit
    assert tb.ssh(SERVER, "systemctl is-active k3s").stdout.strip() == "active"
    assert tb.ssh(SERVER, "test -x /usr/local/bin/k3s-uninstall.sh", check=False).returncode == 0
    shipped = stack.runner.by_name[f"{SERVER}-ship-installer"].inputs["remotePath"]
    kept = tb.ssh(SERVER, f"stat -c '%a %U' {KEPT_INSTALLER}; sha256sum {KEPT_INSTALLER} {shipped}").stdout.split()
    standin_sha = hashlib.sha256(STANDIN_INSTALLER.read_bytes()).hexdigest()
    assert kept == ["700", "root", standin_sha, KEPT_INSTALLER, standin_sha, shipped]
    token = tb.ssh(SERVER, "cat /var/lib/rancher/k3s/server/token").stdout.strip()
    raw_token = token.rsplit("::server:", 1)[-1]
    agent_token = server_cfg["agent-token"]
    assert agent_token != raw_token

    # The stack's own credential: a ServiceAccount token kubeconfig, which does not expire.
    credential = yaml.safe_load(by_name["api-credential"].stdout)
    assert credential["users"][0]["user"]["token"].startswith("stand-in-token-")
    assert credential["clusters"][0]["cluster"]["certificate-authority-data"]

    registered = {}
    for agent in AGENTS:
        cfg = yaml.safe_load(tb.ssh(agent, "cat /etc/rancher/k3s/config.yaml").stdout)
        assert cfg["server"] == f"https://{server_mesh}:6443", f"{agent} joins {cfg.get('server')}"
        # An agent holds the agent token and nothing that would let it act as a server.
        assert cfg["token"] == agent_token, f"{agent} has another token"
        assert raw_token not in tb.ssh(agent, "cat /etc/rancher/k3s/config.yaml").stdout
        assert cfg["node-ip"] == stack.mesh_address(agent)
        assert cfg["flannel-iface"] == MESH_INTERFACE
        assert tb.ssh(agent, "systemctl is-active k3s-agent").stdout.strip() == "active"
        assert "ExecStart=/usr/local/bin/k3s agent" in tb.ssh(agent, "cat /etc/systemd/system/k3s-agent.service").stdout
        record = yaml.safe_load(tb.ssh(SERVER, f"cat /var/lib/rancher/k3s/standin/nodes/{agent}.json").stdout)
        registered[agent] = record
        # The stand-in server saw the agent's registration arrive from its mesh address, with the token.
        assert record["registered_from"] == stack.mesh_address(agent), record
        assert record["server_url"] == f"https://{server_mesh}:6443"
    nodes = tb.ssh(SERVER, "k3s kubectl get nodes -o name").stdout.split()
    assert sorted(nodes) == sorted(f"node/{n}" for n in NODES)


# --- 2. re-runs are no-ops ----------------------------------------------------------------------


def test_api_tunnel_reaches_the_private_api(stack: Stack, tmp_path) -> None:
    """The tunnel process `pulumi up` starts, from the controller outside the mesh, to the server's API.

    6443 is closed to the controller by the firewall; through the tunnel the stand-in API answers,
    also after the process that started the tunnel has returned (deletes run after the program).
    A pinned host key of another node makes the tunnel refuse the server.
    """
    import os

    from components.tunnel import SshTarget, ensure_tunnel, stop_tunnel

    tb = stack.tb
    server = tb.nodes[SERVER]
    assert not tb.tcp_open_from_ctl(server.address, 6443), "the API is reachable without the tunnel"
    os.environ["XDG_RUNTIME_DIR"] = str(tmp_path)

    def fetch(host_key: str, port: int) -> bytes:
        target = SshTarget(server.address, 22, "root", tb.client_key, host_key)
        # Started and left running, as the program leaves it when it exits.
        assert ensure_tunnel(target, port, stack="space-harbor/testbed") == "started"
        try:
            return fetch_api(port)
        finally:
            stop_tunnel(port)

    try:
        answer = call_in_netns(tb.ctl, fetch, server.host_key, 16443)
        assert b"200" in answer.split(b"\r\n", 1)[0], answer
        assert b"k3s stand-in API server" in answer
        # A wrong pin: the tunnel must not talk to this server at all.
        assert call_in_netns(tb.ctl, fetch, tb.nodes["n2"].host_key, 16444) == b""
    finally:
        del os.environ["XDG_RUNTIME_DIR"]


def test_rerun_is_a_noop(stack: Stack) -> None:
    tb = stack.tb
    before = {n: snapshot(tb, n) for n in NODES}
    results = stack.runner.apply()
    assert len(results) == len(stack.runner.commands)
    changed = [r.name for r in results if ": changed" in r.stdout]
    assert not changed, f"a second run reported changes: {changed}"
    problems = {n: snapshot_changes(before[n], snapshot(tb, n)) for n in NODES}
    assert not any(problems.values()), problems
    assert {k for k in before[SERVER].units if k.startswith("k3s")} == {"k3s.service"}


# --- 5b. the delete path uninstalls what install made -----------------------------------------


def test_k3s_uninstall_removes_what_install_made(stack: Stack) -> None:
    tb = stack.tb
    runner: Runner = stack.runner
    assert stack.before_k3s, "the install test did not run first"
    # Decommission one agent: drain (server) -> uninstall (node) -> delete node object (server).
    agent = AGENTS[-1]
    decommission = [n for n in runner.by_name if n.startswith(f"{agent}-") and not n.endswith(("-mesh", "-firewall"))]
    results = runner.delete_only(decommission)
    order = [r.name for r in sorted(results, key=lambda r: r.started) if r.command]
    assert order[:2] == [f"{agent}-registered", f"{agent}-k3s"], order
    # after the uninstall: the Node object, and the staged copies of what the program shipped
    assert sorted(order[2:]) == [f"{agent}-node-object", f"{agent}-shipped"], order
    assert tb.ssh(SERVER, f"k3s kubectl get node {agent}", check=False).returncode != 0
    # Then the rest of k3s, as `pulumi destroy` would (mesh and firewall stay; the cluster id's guard
    # is deleted with the cluster id, so a destroy skips its refusing delete).
    k3s_commands = [
        n
        for n in runner.by_name
        if not n.endswith(("-mesh", "-firewall")) and n not in decommission and n != "cluster-id-guard"
    ]
    runner.delete_only(k3s_commands)
    for name in NODES:
        left = inventory(tb, name) - stack.before_k3s[name]
        assert not left, f"{name}: install left {sorted(left)}"
        out = tb.ssh(name, "systemctl is-active k3s k3s-agent; ss -Hltn 'sport = :6443 or sport = :10250'", check=False)
        assert "active\n" not in out.stdout.replace("inactive", ""), out.stdout
        assert ":6443" not in out.stdout and ":10250" not in out.stdout, out.stdout
        assert tb.ssh(name, f"ls -d {' '.join(K3S_PATHS_TO_CLEAR)} 2>/dev/null", check=False).stdout == ""
    assert_ssh_reachable(tb, NODES)


# --- 6. the GitOps commit reaches the git server over SSH -------------------------------------


def test_gitops_commit_over_ssh(stack: Stack) -> None:
    from components.gitops import GitTreeProvider

    tb = stack.tb
    assert tb.git is not None
    dynamic = [r for r in stack.run.resources if r.type == "pulumi-python:dynamic:Resource"]
    assert dynamic, "the program registered no dynamic resource"
    resource = dynamic[0] if len(dynamic) == 1 else next(r for r in dynamic if "gitops" in r.name)
    inputs = {k: v for k, v in resource.inputs.items() if k != "__provider"}

    def head() -> tuple[str, int]:
        out = tb.ssh("git", f"git -C {GIT_REPO} rev-parse main; git -C {GIT_REPO} rev-list --count main").stdout.split()
        return out[0], int(out[1])

    start, count = head()
    provider = GitTreeProvider()
    created = call_in_netns(tb.ctl, provider.create, inputs)
    after, after_count = head()
    assert after != start and after_count == count + 1, "the first apply made no (or more than one) commit"
    tree = tb.ssh("git", f"git -C {GIT_REPO} ls-tree -r --name-only main").stdout.split()
    path = stack.config["gitops"].get("path", "cluster")
    assert f"{path}/README.md" in tree, tree
    assert any(f.startswith(f"{path}/apps/") for f in tree), tree

    call_in_netns(tb.ctl, provider.update, created.id, created.outs, inputs)
    assert head() == (after, after_count), "a second apply with no change made a new commit"
