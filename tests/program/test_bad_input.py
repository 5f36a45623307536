"""Malformed stack config is refused by the program itself: one error naming the key path,
and not a single resource registered before it."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest

from tests.conftest import GIT_KEY_MARKER, SSH_KEY_MARKER, base_config, fake_private_key, pinned
from tests.harness import run_program
from tests.helpers import assert_refused_before_any_resource

Mutation = Callable[[dict[str, Any]], None]


def _set(path: str, value: Any) -> Mutation:
    """Set a dotted path like `mesh.listenPort` or `nodes.1.meshAddress`."""

    def mutate(config: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        target: Any = config
        for part in parents:
            target = target[int(part)] if isinstance(target, list) else target.setdefault(part, {})
        if isinstance(target, list):
            target[int(last)] = value
        else:
            target[last] = value

    return mutate


def _drop(path: str) -> Mutation:
    def mutate(config: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        target: Any = config
        for part in parents:
            target = target[int(part)] if isinstance(target, list) else target[part]
        del target[last]

    return mutate


def _add_server(config: dict[str, Any]) -> None:
    config["nodes"].append(
        pinned({"name": "server-2", "role": "server", "host": "192.0.2.50", "meshAddress": "10.160.0.2"})
    )


def _etcd_two_servers(config: dict[str, Any]) -> None:
    _add_server(config)
    config["k3s"] = {"datastore": "etcd"}


def _etcd_three_servers_unnamed_first(config: dict[str, Any]) -> None:
    _add_server(config)
    config["nodes"].append(
        pinned({"name": "server-3", "role": "server", "host": "192.0.2.51", "meshAddress": "10.160.0.3"})
    )
    config["k3s"] = {"datastore": "etcd"}


def _mesh_off_api_via_mesh(config: dict[str, Any]) -> None:
    for node in config["nodes"]:
        del node["meshAddress"]
    config["mesh"] = {"enabled": False}
    config["k3s"] = {"apiAccess": "mesh"}


def _mesh_off_named_host(config: dict[str, Any]) -> None:
    for node in config["nodes"]:
        del node["meshAddress"]
    config["mesh"] = {"enabled": False}
    config["nodes"][1]["host"] = "agent-1.example.org"


def _public_custom_mesh_port(config: dict[str, Any]) -> None:
    config["mesh"] = {"listenPort": 51999}
    config["firewall"] = {"publicTcpPorts": [51999]}


def _mesh_off_public_kubelet(config: dict[str, Any]) -> None:
    for node in config["nodes"]:
        del node["meshAddress"]
    config["mesh"] = {"enabled": False}
    config["firewall"] = {"publicTcpPorts": [10250]}


def _https_without_password(config: dict[str, Any]) -> None:
    config["gitops"] = {"repoUrl": "https://git.example.org/ops/cluster.git", "username": "bot"}


def _https_with(**gitops: Any) -> Mutation:
    def mutate(config: dict[str, Any]) -> None:
        config["gitops"] = {
            "repoUrl": "https://git.example.org/ops/cluster.git",
            "username": "bot",
            "password": "write-token",
        } | gitops

    return mutate


CASES: list[tuple[str, Mutation, str]] = [
    ("no ssh key", _drop("sshPrivateKey"), "sshPrivateKey: is required"),
    ("no nodes", _set("nodes", []), "nodes: List should have at least 1 item"),
    ("nodes not a list", _set("nodes", "server-1"), "nodes: Input should be a valid list"),
    ("node without name", _drop("nodes.1.name"), "nodes[1].name: is required"),
    ("node name not DNS-1123", _set("nodes.1.name", "Agent_1"), "nodes[1].name: 'Agent_1' is not a DNS-1123"),
    ("duplicate node name", _set("nodes.1.name", "server-1"), "nodes[1].name: 'server-1' is already used"),
    ("unknown role", _set("nodes.1.role", "master"), "nodes[1].role: Input should be 'server' or 'agent'"),
    ("bad host", _set("nodes.1.host", "not a host!"), "nodes[1].host: 'not a host!' is neither"),
    ("duplicate host", _set("nodes.1.host", "192.0.2.10"), "nodes[1].host: 192.0.2.10:22 is already nodes[0]"),
    ("mesh address outside cidr", _set("nodes.1.meshAddress", "10.9.0.1"), "nodes[1].meshAddress: 10.9.0.1 is outside mesh.cidr 10.160.0.0/12"),
    ("duplicate mesh address", _set("nodes.1.meshAddress", "10.160.0.1"), "nodes[1].meshAddress: 10.160.0.1 is already used by nodes[0]"),
    ("mesh address not an IP", _set("nodes.1.meshAddress", "10.160.0.300"), "nodes[1].meshAddress: Input is not a valid IPv4 address"),
    ("mesh address missing", _drop("nodes.1.meshAddress"), "nodes[1].meshAddress: is required while mesh.enabled is true"),
    ("mesh network address", _set("nodes.1.meshAddress", "10.160.0.0"), "nodes[1].meshAddress: 10.160.0.0 is the network or broadcast"),
    ("bad mesh cidr", _set("mesh.cidr", "10.160.0.0/33"), "mesh.cidr: Input is not a valid IPv4 network"),
    ("flannel's port", _set("mesh.listenPort", 51820), "mesh.listenPort: 51820 is taken by flannel"),
    ("port out of range", _set("mesh.listenPort", 70000), "mesh.listenPort: 70000 is not a port"),
    ("interface name too long", _set("mesh.interface", "wireguard-harbor0"), "mesh.interface: 'wireguard-harbor0' is not an interface name"),
    ("negative keepalive", _set("mesh.persistentKeepalive", -1), "mesh.persistentKeepalive: Input should be greater than or equal to 0"),
    ("typo in a nested key", _set("mesh.listenport", 51871), "mesh.listenport: is not a known key"),
    ("unknown top-level key", _set("meshh", {}), "meshh: is not a known key of space-harbor"),
    ("operator outside cidr", _set("mesh.operators", [{"name": "laptop", "meshAddress": "192.168.1.5"}]), "mesh.operators[0].meshAddress: 192.168.1.5 is outside mesh.cidr"),
    ("operator key not 32 bytes", _set("mesh.operators", [{"name": "laptop", "meshAddress": "10.175.0.1", "publicKey": "c2hvcnQ="}]), "mesh.operators[0].publicKey: decodes to 5 bytes"),
    ("cluster cidr overlaps mesh", _set("k3s.clusterCidr", "10.160.0.0/16"), "k3s.clusterCidr: 10.160.0.0/16 overlaps mesh.cidr 10.160.0.0/12"),
    ("service cidr overlaps cluster cidr", _set("k3s.serviceCidr", "10.42.128.0/17"), "k3s.clusterCidr: 10.42.0.0/16 overlaps k3s.serviceCidr 10.42.128.0/17"),
    ("two servers on sqlite", _add_server, "nodes: k3s.datastore sqlite needs exactly one server, found 2"),
    ("two etcd servers", _etcd_two_servers, "nodes: embedded etcd needs 1, 3 or 5 servers for quorum, found 2"),
    ("k3s version format", _set("k3s.version", "latest"), "k3s.version: 'latest' is not a k3s release"),
    ("several servers, no first named", _etcd_three_servers_unnamed_first, "k3s.firstServer: is required with 3 servers"),
    ("first server is an agent", _set("k3s.firstServer", "agent-1"), "k3s.firstServer: 'agent-1' is not a server in nodes"),
    ("forget a node still listed", _set("decommission.forget", ["agent-1"]), "decommission.forget[0]: 'agent-1' is still in nodes"),
    ("forget a name that is no node name", _set("decommission.forget", ["Bad_Name"]), "decommission.forget: 'Bad_Name' is not a DNS-1123 label"),
    ("unknown flannel backend", _set("k3s.flannelBackend", "calico"), "k3s.flannelBackend: Input should be 'vxlan', 'host-gw' or 'wireguard-native'"),
    ("wireguard-native inside the mesh", _set("k3s.flannelBackend", "wireguard-native"), "k3s.flannelBackend: wireguard-native would tunnel inside the mesh"),
    ("api over a mesh that is off", _mesh_off_api_via_mesh, "k3s.apiAccess: mesh needs mesh.enabled true"),
    ("token on the command line", _set("k3s.extraArgs", ["--token=abc"]), "k3s.extraArgs: '--token=abc' would put a secret on the command line"),
    ("managed flag in extra args", _set("k3s.extraArgs", ["--node-ip=1.2.3.4"]), "k3s.extraArgs: --node-ip is set by Space Harbor"),
    ("tunnel port privileged", _set("k3s.tunnelPort", 443), "k3s.tunnelPort: Input should be greater than or equal to 1024"),
    ("argocd version format", _set("argocd.version", "2.13"), "argocd.version: '2.13' is not an Argo CD release"),
    ("public port zero", _set("firewall.publicTcpPorts", [80, 0]), "firewall.publicTcpPorts[1]: 0 is not a port"),
    ("public port twice", _set("firewall.publicTcpPorts", [443, 443]), "firewall.publicTcpPorts: [443, 443] lists a port twice"),
    ("public API port", _set("firewall.publicTcpPorts", [80, 443, 6443]), "firewall.publicTcpPorts[2]: 6443 is the Kubernetes API, which answers only the mesh; reach it through the SSH tunnel"),
    ("public kubelet port", _set("firewall.publicTcpPorts", [10250]), "firewall.publicTcpPorts[0]: 10250 is the kubelet API, which answers only the mesh"),
    ("public etcd client port", _set("firewall.publicTcpPorts", [2379]), "firewall.publicTcpPorts[0]: 2379 is etcd's client port, which answers only the mesh"),
    ("public etcd peer port", _set("firewall.publicTcpPorts", [443, 2380]), "firewall.publicTcpPorts[1]: 2380 is etcd's peer port, which answers only the mesh"),
    ("public vxlan port", _set("firewall.publicTcpPorts", [8472]), "firewall.publicTcpPorts[0]: 8472 is flannel's VXLAN port, which answers only the mesh"),
    ("public flannel wireguard port", _set("firewall.publicTcpPorts", [51820]), "firewall.publicTcpPorts[0]: 51820 is flannel's WireGuard port, which answers only the mesh"),
    ("public flannel wireguard v6 port", _set("firewall.publicTcpPorts", [51821]), "firewall.publicTcpPorts[0]: 51821 is flannel's WireGuard port (IPv6), which answers only the mesh"),
    ("public mesh port", _set("firewall.publicTcpPorts", [80, 51871]), "firewall.publicTcpPorts[1]: 51871 is mesh.listenPort, which is opened for WireGuard on UDP already"),
    ("public custom mesh port", _public_custom_mesh_port, "firewall.publicTcpPorts[0]: 51999 is mesh.listenPort, which is opened for WireGuard on UDP already"),
    ("mesh off, public kubelet port", _mesh_off_public_kubelet, "firewall.publicTcpPorts[0]: 10250 is the kubelet API, which answers only the other nodes"),
    ("ssh listen port zero", _set("nodes.1.sshListenPorts", [22, 0]), "nodes[1].sshListenPorts[1]: 0 is not a port"),
    ("ssh listen port too high", _set("nodes.1.sshListenPorts", [65536]), "nodes[1].sshListenPorts[0]: 65536 is not a port"),
    ("ssh listen port twice", _set("nodes.1.sshListenPorts", [22, 22]), "nodes[1].sshListenPorts: [22, 22] lists a port twice"),
    ("ssh listen ports empty", _set("nodes.1.sshListenPorts", []), "nodes[1].sshListenPorts: List should have at least 1 item"),
    ("ssh listen ports not a list", _set("nodes.1.sshListenPorts", 22), "nodes[1].sshListenPorts: Input should be a valid list"),
    ("ssh port not a number", _set("ssh.port", "ssh"), "ssh.port: Input should be a valid integer"),
    ("no gitops", _drop("gitops"), "gitops: is required"),
    ("git url", _set("gitops.repoUrl", "ftp://example.org/repo"), "gitops.repoUrl: 'ftp://example.org/repo' is not"),
    ("ssh url without key", _drop("gitops.sshPrivateKey"), "gitops.sshPrivateKey: is required for the SSH URL"),
    ("ssh url without host key", _drop("gitops.knownHosts"), "gitops.knownHosts: is required for an SSH URL"),
    ("https url without password", _https_without_password, "gitops.username and gitops.password: are required for the HTTPS URL"),
    ("gitops path escapes", _set("gitops.path", "../etc"), "gitops.path: '../etc' must be a relative folder"),
    ("traefik without e-mail", _drop("components.traefik.acmeEmail"), "components.traefik.acmeEmail: is required for Let's Encrypt"),
    ("traefik e-mail malformed", _set("components.traefik.acmeEmail", "ops"), "components.traefik.acmeEmail: 'ops' is not an e-mail address"),
    ("no domain", _drop("domain"), "domain: is required while components.traefik is enabled"),
    ("infracheck without host", _drop("components.infracheck.host"), "components.infracheck.host: is required while infracheck is enabled"),
    ("telegraf without its key", _set("components.telegraf", {"enabled": True, "centralAddress": "metrics.example.org:8094", "caCert": "ca", "tlsCert": "cert"}), "components.telegraf.tlsKey: is required while telegraf is enabled"),
    ("smtp without relay", _set("components.smtp", {"enabled": True}), "components.smtp.relayHost: is required while smtp is enabled"),
    ("k3s token too short", _set("k3s.token", "hunter2-hunter2"), "k3s.token: is too weak (15 characters, 8 different)"),
    ("k3s agent token repetitive", _set("k3s.agentToken", "ab" * 20), "k3s.agentToken: is too weak (40 characters, 2 different)"),
    ("k3s full token with a short secret", _set("k3s.token", "K10" + "a1b2c3d4e5f6" * 5 + "::server:short"), "k3s.token: is too weak (5 characters"),
    ("bad taint", _set("nodes.1.taints", ["gpu"]), "nodes[1].taints[0]: 'gpu' is not key[=value]:NoSchedule"),
    ("taint key that is a kubectl option", _set("nodes.1.taints", ["gpu:NoSchedule", "--kubeconfig=/tmp/x:NoSchedule"]), "nodes[1].taints[1]: '--kubeconfig=/tmp/x:NoSchedule': '--kubeconfig' is not a valid taint key"),
    ("taint key with a bad prefix", _set("nodes.1.taints", ["Example.com/gpu:NoExecute"]), "nodes[1].taints[0]: 'Example.com/gpu:NoExecute': 'Example.com/gpu' is not a valid taint key"),
    ("taint value that starts with a dash", _set("nodes.1.taints", ["gpu=-x:NoSchedule"]), "nodes[1].taints[0]: 'gpu=-x:NoSchedule': '-x' is not a valid taint value"),
    ("taint key too long", _set("nodes.1.taints", ["a" * 64 + ":NoSchedule"]), "is not a valid taint key"),
    ("bad label key", _set("nodes.1.labels", {"bad key": "x"}), "nodes[1].labels: 'bad key' is not a valid label key"),
    ("mesh off, firewall on, peer by name", _mesh_off_named_host, "nodes[1].host: 'agent-1.example.org' is a DNS name"),
    ("secret of the wrong type", _set("gitops.sshPrivateKey", 12345), "gitops.sshPrivateKey: Input should be a valid string"),
    ("preflight skip of an unknown check", _set("preflight.skip", ["swapp"]), "preflight.skip[0]: 'swapp' is not a preflight check; valid names: os, arch, cgroups, swap, ports, timeSync, hostname, mtu, bootstrap"),
    ("preflight skip not a list", _set("preflight.skip", "swap"), "preflight.skip: Input should be a valid list"),
    ("node skips the role check", _set("nodes.1.preflightSkip", ["role"]), "nodes[1].preflightSkip[0]: 'role' cannot be skipped"),
    ("node skips the secrets encryption check", _set("nodes.1.preflightSkip", ["mtu", "secretsEncryption"]), "nodes[1].preflightSkip[1]: 'secretsEncryption' cannot be skipped"),
    ("typo in the preflight section", _set("preflight.skips", ["swap"]), "preflight.skips: is not a known key"),
    ("secrets encryption not a bool", _set("k3s.secretsEncryption", "sometimes"), "k3s.secretsEncryption: Input should be a valid boolean"),
    ("argocd version not pinned", _set("argocd.version", "v2.12.0"), "argocd.version: v2.12.0 is not a supported Argo CD release; supported (pinned in manifests/upstream.yaml): v2.13.3, v2.14.21"),
    ("argocd login on an ssh url", _set("gitops.argocdUsername", "reader"), "gitops.argocdUsername: is for HTTPS URLs"),
    ("argocd ssh key on an https url", _https_with(argocdSshPrivateKey=fake_private_key("argocd")), "gitops.argocdSshPrivateKey: is for SSH URLs"),
    ("argocd username without password", _https_with(argocdUsername="reader"), "gitops.argocdPassword: is required with gitops.argocdUsername"),
    ("argocd password without username", _https_with(argocdPassword="read-token"), "gitops.argocdUsername: is required with gitops.argocdPassword"),
    ("argocd key empty", _set("gitops.argocdSshPrivateKey", "  "), "gitops.argocdSshPrivateKey: is empty"),
    ("argocd key of the wrong type", _set("gitops.argocdSshPrivateKey", 12345), "gitops.argocdSshPrivateKey: Input should be a valid string"),
]  # fmt: skip


@pytest.mark.parametrize(("mutate", "expected"), [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_refused_with_key_path_before_any_resource(mutate: Mutation, expected: str) -> None:
    config = copy.deepcopy(base_config(agents=1))
    mutate(config)
    assert_refused_before_any_resource(config, expected, secrets=(SSH_KEY_MARKER, GIT_KEY_MARKER))


def test_there_are_at_least_25_cases() -> None:
    assert len(CASES) >= 25
    assert len({case[0] for case in CASES}) == len(CASES)


def test_good_config_is_accepted() -> None:
    # The control for the cases above: without a mutation, the same config registers resources.
    run = run_program(base_config(agents=1), preview=True)
    assert run.resources


@pytest.mark.parametrize(
    "k3s",
    [
        {"token": "0f9a6c31b8e45d72a1b2c3d4e5f60718"},
        {"token": "K10" + "a1b2c3d4e5f6" * 5 + "::server:0f9a6c31b8e45d72a1b2c3d4e5f60718"},
        {"agentToken": "X7pQ-m2Lr9sT4vW8yZ1bN6cF3hJ5kD0a"},
        # a cluster that already runs with a short token keeps it, by saying so
        {"token": "hunter2", "allowWeakTokens": True},
    ],
)
def test_strong_tokens_and_the_opt_out_are_accepted(k3s: dict[str, Any]) -> None:
    config = base_config(agents=1)
    config["k3s"] = k3s
    assert run_program(config, preview=True).resources


def test_a_weak_token_is_refused_without_being_echoed() -> None:
    config = base_config(agents=1)
    config["k3s"] = {"token": "hunter2-hunter2"}
    assert_refused_before_any_resource(config, "k3s.token: is too weak", secrets=("hunter2",))
