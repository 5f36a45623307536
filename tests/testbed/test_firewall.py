"""The node firewall keeps its promise for real packets (issues 11.1, 11.4, 11.5, 13.4, 13.7).

Three booted nodes (n1 the server, n2 and n3 agents) get the program's own mesh and firewall
commands. On n2 stand-ins wire what k3s would: a pod behind `cni0`, and a nat table of its own
like kube-proxy's (NodePorts, host ports, a ClusterIP, all DNAT'ed to the pod). The controller
(192.168.77.2) is the internet; the other nodes are the mesh; a namespace on the bridge is an
operator's laptop with the wg-quick file the program outputs. Then the mesh is switched off
(host-gw, then vxlan) and the same nodes are probed by address, spoofed ones included.

Tests run in file order and share the nodes; each one removes what it added.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.harness import ProgramRun
from tests.testbed.conftest import booted_testbed, mesh_address, wait_mesh
from tests.testbed.netprobe import (
    Probe,
    extra_address,
    kube_proxy_standin,
    listening,
    nft_counter,
    operator_laptop,
    pod_on,
    probe_all,
    received,
    routes,
    send_udp,
)
from tests.testbed.nodes import CTL_ADDRESS, Testbed
from tests.testbed.runner import Runner
from tests.testbed.stack import MESH_BASE, names, program, stack_config

pytestmark = pytest.mark.testbed

NODES = ["n1", "n2", "n3"]
SERVER = "n1"
OPERATOR = {"name": "laptop", "meshAddress": f"{MESH_BASE}200"}
LAPTOP_ADDRESS = "192.168.77.4"
# 443 stands for Traefik's hostPort and a klipper LoadBalancer's port, 30443 for a NodePort; both
# are DNAT'ed to the pod below and listed here. 8443 (a LoadBalancer port) and 30080 (a NodePort)
# are DNAT'ed the same way and not listed.
PUBLIC = [80, 443, 30443]
CLUSTER_IP = "10.43.0.10"
POD_PORT = 8080
SPOOFED_POD_SOURCE = "10.42.99.5"


@dataclass
class Stack:
    tb: Testbed
    config: dict[str, Any]
    run: ProgramRun
    runner: Runner

    def node(self, name: str) -> Any:
        return self.tb.nodes[name]

    def mesh(self, name: str) -> str:
        return mesh_address(self.tb, name)

    def public(self, name: str) -> str:
        return self.tb.nodes[name].address


@pytest.fixture(scope="module")
def tb() -> Iterator[Testbed]:
    yield from booted_testbed(NODES, git=False)


@pytest.fixture(scope="module")
def stack(tb: Testbed) -> Stack:
    """The mesh and the firewall as the program makes them, with an operator and NodePorts listed public."""
    config = stack_config(tb, mesh={"operators": [OPERATOR]}, firewall={"publicTcpPorts": PUBLIC})
    run, runner = program(tb, config)
    runner.apply(names(runner, "-mesh", "-firewall"))
    wait_mesh(tb, NODES, within=60)
    return Stack(tb, config, run, runner)


def _kube_proxy_rules(pod_address: str) -> list[str]:
    target = f"{pod_address}:{POD_PORT}"
    return [
        # NodePorts and host ports: kube-proxy and the CNI portmap match local destinations.
        f"fib daddr type local tcp dport {{ 443, 8443, 30080, 30443 }} dnat to {target}",
        f"ip daddr {CLUSTER_IP} tcp dport 80 dnat to {target}",
    ]


@pytest.fixture
def pod(stack: Stack) -> Iterator[Any]:
    """A pod on n2 behind cni0, reachable through n2's NodePorts, host ports and a ClusterIP."""
    n2 = stack.node("n2")
    with pod_on(stack.tb, n2, 2) as made, kube_proxy_standin(n2, _kube_proxy_rules(made.address)):
        yield made


# --- mesh on: translated traffic ----------------------------------------------------------------


def test_translated_ports_answer_outside_only_when_public_and_the_mesh_always(stack: Stack, pod: Any) -> None:
    tb = stack.tb
    n2, n2_mesh = stack.public("n2"), stack.mesh("n2")
    banner = "pod-on-n2"
    # The controller routes at pods and services through n2, as a neighbour on its network could.
    outside_routes = [("10.42.0.0/16", n2), ("10.43.0.0/16", n2), ("10.160.0.0/12", n2)]
    dropped_before = nft_counter(stack.node("n2"), "prerouting", "to this node, untrusted, on a port that is not open")
    with (
        listening(pod.netns, tcp=[POD_PORT], banner=banner),
        listening(stack.node(SERVER).netns, tcp=[6443], banner="api-on-n1"),
        routes(tb.ctl, outside_routes),
    ):
        seen = probe_all(
            [
                Probe(tb.ctl, n2, 443, label="outside -> host port 443 (public)"),
                Probe(tb.ctl, n2, 30443, label="outside -> NodePort 30443 (public)"),
                Probe(tb.ctl, n2, 8443, label="outside -> LoadBalancer port 8443"),
                Probe(tb.ctl, n2, 30080, label="outside -> NodePort 30080"),
                Probe(tb.ctl, n2_mesh, 30080, label="outside -> NodePort 30080 at the mesh address"),
                Probe(tb.ctl, pod.address, POD_PORT, label="outside -> pod, routed"),
                Probe(tb.ctl, CLUSTER_IP, 80, label="outside -> ClusterIP, routed"),
                Probe(stack.node("n1").netns, n2_mesh, 30080, label="n1 -> NodePort 30080 over the mesh"),
                Probe(stack.node("n3").netns, n2_mesh, 8443, label="n3 -> LoadBalancer port 8443 over the mesh"),
                Probe(pod.netns, stack.mesh(SERVER), 6443, label="pod -> API on n1 over the mesh"),
            ]
        )
    assert seen == {
        "outside -> host port 443 (public)": banner,
        "outside -> NodePort 30443 (public)": banner,
        "outside -> LoadBalancer port 8443": "blocked",
        "outside -> NodePort 30080": "blocked",
        "outside -> NodePort 30080 at the mesh address": "blocked",
        "outside -> pod, routed": "blocked",
        "outside -> ClusterIP, routed": "blocked",
        "n1 -> NodePort 30080 over the mesh": banner,
        "n3 -> LoadBalancer port 8443 over the mesh": banner,
        "pod -> API on n1 over the mesh": "api-on-n1",
    }
    # Our prerouting chain dropped them, before kube-proxy's table could translate them.
    dropped = nft_counter(stack.node("n2"), "prerouting", "to this node, untrusted, on a port that is not open")
    assert dropped > dropped_before


def test_kubelet_answers_the_server_over_the_mesh_and_not_the_outside(stack: Stack) -> None:
    tb = stack.tb
    agents = ["n2", "n3"]
    with contextlib.ExitStack() as opened:
        for name in agents:
            opened.enter_context(listening(stack.node(name).netns, tcp=[10250], banner=f"kubelet-{name}"))
        probes = []
        for name in agents:
            probes += [
                Probe(stack.node(SERVER).netns, stack.mesh(name), 10250, label=f"server -> {name} kubelet, mesh"),
                Probe(tb.ctl, stack.public(name), 10250, label=f"outside -> {name} kubelet"),
            ]
        seen = probe_all(probes)
    for name in agents:
        assert seen[f"server -> {name} kubelet, mesh"] == f"kubelet-{name}"
        assert seen[f"outside -> {name} kubelet"] == "blocked"


# --- mesh on: an operator's laptop ----------------------------------------------------------------


def _curious_operator_config(stack: Stack, pod_subnet: str) -> str:
    """The program's wg-quick file for the operator, with n2's pod subnet added to n2's peer.

    The laptop's owner may route anything into their tunnel; the nodes must refuse what is not theirs.
    """
    text = stack.run.outputs["operatorConfigs"][OPERATOR["name"]]
    n2_key = stack.run.outputs["meshPublicKeys"]["n2"]
    marker = f"PublicKey = {n2_key}\nAllowedIPs = {stack.mesh('n2')}/32"
    assert marker in text, text
    return text.replace(marker, f"{marker}, {pod_subnet}")


def test_an_operator_reaches_the_api_and_ssh_of_every_node_and_nothing_else(stack: Stack, pod: Any) -> None:
    tb = stack.tb
    operator = str(OPERATOR["meshAddress"])
    with contextlib.ExitStack() as opened:
        listeners = {
            name: opened.enter_context(
                listening(stack.node(name).netns, tcp=[6443, 10250, 2379], udp=[8472], banner=name)
            )
            for name in NODES
        }
        pod_listener = opened.enter_context(listening(pod.netns, tcp=[POD_PORT], banner="pod-on-n2"))[f"tcp/{POD_PORT}"]
        laptop = opened.enter_context(operator_laptop(tb, _curious_operator_config(stack, pod.subnet), LAPTOP_ADDRESS))
        probes = []
        for name in NODES:
            target = stack.mesh(name)
            probes += [Probe(laptop.netns, target, port, label=f"{name}:{port}") for port in (6443, 22, 10250, 2379)]
        probes += [
            Probe(laptop.netns, stack.mesh("n2"), 30080, label="n2 NodePort 30080"),
            Probe(laptop.netns, pod.address, POD_PORT, label="pod through n2"),
        ]
        seen = probe_all(probes)
        for name in NODES:
            send_udp(laptop.netns, stack.mesh(name), 8472, f"vxlan-from-laptop-{name}".encode())
        vxlan = {name: received(listeners[name]["udp/8472"], f"vxlan-from-laptop-{name}".encode()) for name in NODES}
        # Control: the same datagram from a node over the mesh arrives.
        send_udp(stack.node(SERVER).netns, stack.mesh("n2"), 8472, b"vxlan-from-n1")
        assert received(listeners["n2"]["udp/8472"], b"vxlan-from-n1")
        pod_seen = list(pod_listener.seen)
    for name in NODES:
        assert seen[f"{name}:6443"] == name, f"the operator cannot reach the API on {name}"
        assert seen[f"{name}:22"].startswith("SSH-2.0-"), f"the operator cannot reach sshd on {name}"
        assert seen[f"{name}:10250"] == "blocked", f"the operator reaches the kubelet on {name}"
        assert seen[f"{name}:2379"] == "blocked", f"the operator reaches etcd's port on {name}"
        assert not vxlan[name], f"VXLAN from the operator arrived on {name}"
        # The API listener saw the operator's own mesh address: the packets came through the tunnel.
        assert [source for source, _ in listeners[name]["tcp/6443"].seen] == [operator]
    assert seen["n2 NodePort 30080"] == "blocked"
    assert seen["pod through n2"] == "blocked"
    assert pod_seen == []


def test_an_operators_address_spoofed_on_the_public_link_reaches_no_api(stack: Stack) -> None:
    """The operators' API rule names the mesh interface: their address alone, from outside, is nothing."""
    tb = stack.tb
    operator = str(OPERATOR["meshAddress"])
    n1 = stack.node(SERVER)
    with contextlib.ExitStack() as opened:
        opened.enter_context(listening(n1.netns, tcp=[6443], banner=SERVER))
        # The internet, sending from the operator's mesh address. n1's way back to it stands in for
        # a route the reply could take: a blind attacker needs none, a probe needs the answer.
        opened.enter_context(extra_address(tb.ctl, operator))
        opened.enter_context(routes(n1.netns, [(f"{operator}/32", CTL_ADDRESS)]))
        seen = probe_all(
            [
                Probe(tb.ctl, stack.public(SERVER), 6443, source=operator, label="spoofed operator -> API"),
                # Control: the spoofed source gets its answers where a port is open to all (sshd; any
                # other port is closed to an operator's address, from anywhere).
                Probe(tb.ctl, stack.public(SERVER), 22, source=operator, label="spoofed operator -> ssh"),
            ]
        )
    assert seen["spoofed operator -> ssh"].startswith("SSH-2.0-")
    assert seen["spoofed operator -> API"] == "blocked"


# --- netbase --------------------------------------------------------------------------------------


def test_firewall_installs_netbase_when_protocols_is_missing(stack: Stack) -> None:
    """nft resolves `ipv6-icmp` through /etc/protocols; slim images lack netbase, which ships it.

    The nodes have no network: apt installs from the packages debootstrap left in its cache.
    """
    tb = stack.tb
    node = "n3"
    command = f"{node}-firewall"
    # A slim image: no netbase at all. Control first: nft cannot load our table without the file.
    tb.ssh(node, "DEBIAN_FRONTEND=noninteractive apt-get purge -y -q netbase >/dev/null")
    try:
        assert tb.ssh(node, "test -e /etc/protocols", check=False).returncode != 0
        check = tb.ssh(node, "nft -c -f /etc/space-harbor/firewall.nft", check=False)
        assert check.returncode != 0 and "Could not resolve protocol name" in check.stderr, check.stderr
        (result,) = stack.runner.apply([command], with_dependencies=False)
        assert result.stdout.strip().splitlines()[-1] == "space-harbor: firewall.sh apply: changed"
        assert "installing netbase" in result.stderr
        assert tb.ssh(node, "dpkg-query -W -f='${Status}' netbase").stdout == "install ok installed"
        assert tb.ssh(node, "test -s /etc/protocols", check=False).returncode == 0
        assert "chain prerouting" in tb.ssh(node, "nft list table inet space_harbor").stdout

        # Installed, but the file deleted by hand: a plain reinstall would keep the conffile deleted.
        tb.ssh(node, "rm /etc/protocols")
        (result,) = stack.runner.apply([command], with_dependencies=False)
        assert "--force-confmiss netbase" in result.stderr
        assert tb.ssh(node, "test -s /etc/protocols", check=False).returncode == 0
        # Nothing missing any more: nothing installed, nothing changed.
        (result,) = stack.runner.apply([command], with_dependencies=False)
        assert result.stdout.strip().splitlines()[-1] == "space-harbor: firewall.sh apply: unchanged"
        assert "installing" not in result.stderr
    finally:
        tb.ssh(
            node,
            "test -e /etc/protocols || DEBIAN_FRONTEND=noninteractive apt-get install -y -q --reinstall "
            "-o Dpkg::Options::=--force-confmiss netbase >/dev/null",
            check=False,
        )


# --- mesh off ------------------------------------------------------------------------------------


def _mesh_off(stack: Stack, backend: str) -> tuple[ProgramRun, Runner]:
    nodes = [{k: v for k, v in node.items() if k != "meshAddress"} for node in stack.config["nodes"]]
    config = {
        **stack.config,
        "nodes": nodes,
        "mesh": {"enabled": False},
        "k3s": {**stack.config["k3s"], "flannelBackend": backend},
    }
    run, runner = program(stack.tb, config)
    runner.apply(names(runner, "-firewall"))
    return run, runner


@pytest.fixture
def pods_on_n1_and_n2(stack: Stack) -> Iterator[tuple[Any, Any]]:
    """Pods on n1 and n2, with the routes host-gw would give: each node's pod subnet via that node."""
    tb = stack.tb
    n1, n2 = stack.node("n1"), stack.node("n2")
    with (
        pod_on(tb, n1, 1) as pod1,
        pod_on(tb, n2, 2) as pod2,
        routes(n1.netns, [(pod2.subnet, n2.address)]),
        routes(n2.netns, [(pod1.subnet, n1.address)]),
    ):
        yield pod1, pod2


def test_mesh_off_host_gw_peers_reach_what_they_need_and_a_spoofed_pod_source_nothing(
    stack: Stack, pods_on_n1_and_n2: tuple[Any, Any]
) -> None:
    tb = stack.tb
    pod1, pod2 = pods_on_n1_and_n2
    _mesh_off(stack, "host-gw")
    n1, n2, n3 = (stack.node(name) for name in NODES)
    with contextlib.ExitStack() as opened:
        opened.enter_context(listening(pod2.netns, tcp=[POD_PORT], banner="pod-on-n2"))
        node_listeners = {
            node.name: opened.enter_context(
                listening(node.netns, tcp=[443, 6443, 10250, 2379], udp=[8472], banner=node.name)
            )
            for node in (n1, n2, n3)
        }
        # The internet, sending from a pod address. The nodes' way back to it stands in for a
        # real server's default route: a blind attacker needs none, a probe needs the answer.
        opened.enter_context(extra_address(tb.ctl, SPOOFED_POD_SOURCE))
        for node in (n1, n2):
            opened.enter_context(routes(node.netns, [(f"{SPOOFED_POD_SOURCE}/32", CTL_ADDRESS)]))
        seen = probe_all(
            [
                Probe(n2.netns, n1.address, 6443, label="agent n2 -> server API"),
                Probe(n1.netns, n2.address, 10250, label="server -> n2 kubelet"),
                Probe(n3.netns, n2.address, 10250, label="n3 -> n2 kubelet"),
                Probe(n2.netns, n1.address, 2379, label="agent n2 -> server etcd"),
                Probe(n2.netns, n3.address, 6443, label="n2 -> agent n3 API port"),
                Probe(pod1.netns, pod2.address, POD_PORT, label="pod on n1 -> pod on n2, host-gw"),
                Probe(n1.netns, pod2.address, POD_PORT, label="n1 -> pod on n2, host-gw"),
                Probe(tb.ctl, n1.address, 6443, label="outside -> server API"),
                Probe(tb.ctl, n2.address, 10250, label="outside -> n2 kubelet"),
                Probe(tb.ctl, n1.address, 6443, source=SPOOFED_POD_SOURCE, label="spoofed pod -> server API"),
                Probe(tb.ctl, n2.address, 10250, source=SPOOFED_POD_SOURCE, label="spoofed pod -> n2 kubelet"),
                # Control: the spoofed source gets its answers back, where a port is open to all.
                Probe(tb.ctl, n2.address, 443, source=SPOOFED_POD_SOURCE, label="spoofed pod -> n2 public port"),
            ]
        )
        send_udp(n1.netns, n2.address, 8472, b"vxlan-under-host-gw")
        vxlan_arrived = received(node_listeners["n2"]["udp/8472"], b"vxlan-under-host-gw")
    assert seen == {
        "agent n2 -> server API": "n1",
        "server -> n2 kubelet": "n2",
        "n3 -> n2 kubelet": "n2",
        "agent n2 -> server etcd": "blocked",
        "n2 -> agent n3 API port": "blocked",
        "pod on n1 -> pod on n2, host-gw": "pod-on-n2",
        "n1 -> pod on n2, host-gw": "pod-on-n2",
        "outside -> server API": "blocked",
        "outside -> n2 kubelet": "blocked",
        "spoofed pod -> server API": "blocked",
        "spoofed pod -> n2 kubelet": "blocked",
        "spoofed pod -> n2 public port": "n2",
    }
    # host-gw needs no flannel port between the nodes.
    assert not vxlan_arrived


def test_mesh_off_vxlan_admits_vxlan_from_the_peers_only(stack: Stack, pods_on_n1_and_n2: tuple[Any, Any]) -> None:
    tb = stack.tb
    pod1, pod2 = pods_on_n1_and_n2
    _mesh_off(stack, "vxlan")
    n1, n2 = stack.node("n1"), stack.node("n2")
    with (
        listening(n2.netns, udp=[8472]) as n2_listeners,
        listening(pod2.netns, tcp=[POD_PORT], banner="pod-on-n2"),
        extra_address(tb.ctl, SPOOFED_POD_SOURCE),
        routes(n2.netns, [(f"{SPOOFED_POD_SOURCE}/32", CTL_ADDRESS)]),
    ):
        vxlan = n2_listeners["udp/8472"]
        send_udp(tb.ctl, n2.address, 8472, b"from-outside")
        send_udp(tb.ctl, n2.address, 8472, b"from-a-spoofed-pod", source=SPOOFED_POD_SOURCE)
        send_udp(n1.netns, n2.address, 8472, b"from-n1")
        arrived = {
            payload: received(vxlan, payload) for payload in (b"from-n1", b"from-outside", b"from-a-spoofed-pod")
        }
        # With vxlan, pod traffic arrives decapsulated on flannel.1; pod addresses on the NIC are not admitted.
        seen = probe_all([Probe(pod1.netns, pod2.address, POD_PORT, label="pod on n1 -> pod on n2 over the NIC")])
    assert arrived == {b"from-n1": True, b"from-outside": False, b"from-a-spoofed-pod": False}
    assert seen == {"pod on n1 -> pod on n2 over the NIC": "blocked"}
    assert re.search(r"udp dport 8472 accept", tb.ssh("n2", "nft list chain inet space_harbor input").stdout)
