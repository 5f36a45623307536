"""registries.yaml, joins through a registration address, and the reinstall verb on booted nodes.

Three nodes: n1 the server, n2 and n3 agents, the k3s stand-in (it says so). Each step is a config
change applied with `up`: the real `pulumi up` when the engine's tools are built, else the replay
(tests/testbed/conftest.py `engine_cluster`). A restart is read from systemd: a unit's
InvocationID changes exactly when it starts again.

The registration address is what a user would run: a DNS name (an /etc/hosts line on the agents)
for n1's mesh address, on port 7443, where a small TCP forwarder on n1 (our stand-in for a load
balancer) passes connections to the API on 127.0.0.1:6443 and logs each client's address. An
agent that joined through it shows in that log; one that talks to the server directly does not.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from tests.harness import ProgramRun, run_program
from tests.helpers import command_env
from tests.testbed.conftest import engine_cluster, heartbeat
from tests.testbed.nodes import Testbed, call_in_netns
from tests.testbed.stack import MESH_BASE, stack_config
from tests.testbed.stack_engine import StackEngine

pytestmark = pytest.mark.testbed

NODES = ["n1", "n2", "n3"]
AGENTS = ["n2", "n3"]
UNITS = {"n1": "k3s", "n2": "k3s-agent", "n3": "k3s-agent"}
REGISTRIES_FILE = "/etc/rancher/k3s/registries.yaml"
REGISTRY_FILES = "/etc/rancher/k3s/space-harbor-registries"
FORWARDER_LOG = "/root/shtb-registration-lb.log"
REGISTRATION_NAME = "api.harbor.test"
REGISTRATION_PORT = 7443
PASSWORD = "MARKER-TESTBED-REGISTRY-PASSWORD-61e0"
CA_TEXT = "-----BEGIN CERTIFICATE-----\nTESTBED-REGISTRY-CA\n-----END CERTIFICATE-----\n"
FORWARDER_UNIT = "shtb-registration-lb"
FORWARDER = f"""
import socket, threading

def pipe(source, sink):
    try:
        while True:
            data = source.recv(65536)
            if not data:
                break
            sink.sendall(data)
    except OSError:
        pass
    finally:
        for end in (source, sink):
            try:
                end.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

listener = socket.create_server(("0.0.0.0", {REGISTRATION_PORT}))
while True:
    client, (address, _port) = listener.accept()
    with open("{FORWARDER_LOG}", "a") as log:
        log.write(address + "\\n")
    try:
        upstream = socket.create_connection(("127.0.0.1", 6443), timeout=5)
    except OSError:
        client.close()
        continue
    upstream.settimeout(None)
    for ends in ((client, upstream), (upstream, client)):
        threading.Thread(target=pipe, args=ends, daemon=True).start()
"""


def registries(endpoint: str) -> dict[str, Any]:
    return {
        "mirrors": {"docker.io": {"endpoint": [endpoint]}},
        "configs": {
            "mirror.harbor.test:5000": {
                "auth": {"username": "puller", "password": PASSWORD},
                "tls": {"caFile": CA_TEXT},
            }
        },
    }


def invocations(tb: Testbed) -> dict[str, str]:
    """Each node's k3s unit start: InvocationID changes exactly when the unit starts again."""
    found = {}
    for name in NODES:
        unit = UNITS[name]
        state, invocation = tb.ssh(
            name, f"systemctl show -p ActiveState --value {unit}; systemctl show -p InvocationID --value {unit}"
        ).stdout.split()
        assert state == "active", f"{name}: {unit} is {state}"
        found[name] = invocation
    return found


def restarted(tb: Testbed, before: dict[str, str]) -> set[str]:
    after = invocations(tb)
    return {name for name in NODES if after[name] != before[name]}


def program(tb: Testbed, config: dict[str, Any]) -> ProgramRun:
    """The program under mocks: what it renders for `config` (not what any engine did with it)."""
    return call_in_netns(tb.ctl, run_program, config)


def through_forwarder(tb: Testbed) -> set[str]:
    """The addresses that connected through the registration forwarder since its log was emptied."""
    return set(tb.ssh("n1", f"cat {FORWARDER_LOG} 2>/dev/null || true").stdout.split())


def mesh_of(tb: Testbed, name: str) -> str:
    return f"{MESH_BASE}{tb.nodes[name].index}"


def with_k3s(config: dict[str, Any], **settings: Any) -> dict[str, Any]:
    changed = copy.deepcopy(config)
    changed["k3s"] = {**changed["k3s"], **copy.deepcopy(settings)}
    for key, value in settings.items():
        if value is None:
            del changed["k3s"][key]
    return changed


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StackEngine]:
    for cluster in engine_cluster(NODES, tmp_path_factory.mktemp("k3s-ops"), git=False):
        yield from with_forwarder(cluster)


def with_forwarder(cluster: StackEngine) -> Iterator[StackEngine]:
    tb = cluster.tb
    n1_mesh = f"{MESH_BASE}{tb.nodes['n1'].index}"
    for name in NODES:
        tb.ssh(name, f"echo '{n1_mesh} {REGISTRATION_NAME}' >>/etc/hosts")
    tb.ssh("n1", f"cat >/root/{FORWARDER_UNIT}.py", input=FORWARDER)
    tb.ssh("n1", f"systemd-run --quiet --unit={FORWARDER_UNIT} python3 /root/{FORWARDER_UNIT}.py")
    config = stack_config(tb)
    config["k3s"] |= {
        "registries": registries("https://mirror.harbor.test:5000"),
        "registrationAddress": f"{REGISTRATION_NAME}:{REGISTRATION_PORT}",
    }
    try:
        cluster.up(config)
        yield cluster
    finally:
        tb.ssh("n1", f"systemctl stop {FORWARDER_UNIT}", check=False)


def test_day_one_writes_registries_0600_on_every_node_and_agents_join_through_the_address(cluster: StackEngine) -> None:
    tb = cluster.tb
    run = program(tb, cluster.config)
    wanted = command_env(run.named("n1-k3s"))["HARBOR_K3S_REGISTRIES"]
    for name in NODES:
        listing = tb.ssh(name, f"stat -c '%a %U %n' {REGISTRIES_FILE} {REGISTRY_FILES}/*/*").stdout.split("\n")
        assert listing[:2] == [
            f"600 root {REGISTRIES_FILE}",
            f"600 root {REGISTRY_FILES}/mirror.harbor.test_5000/ca.crt",
        ], name
        text = tb.ssh(name, f"cat {REGISTRIES_FILE}").stdout
        assert text == wanted, name
        document = yaml.safe_load(text)
        assert document["configs"]["mirror.harbor.test:5000"]["tls"]["ca_file"] == (
            f"{REGISTRY_FILES}/mirror.harbor.test_5000/ca.crt"
        )
        assert tb.ssh(name, f"cat {REGISTRY_FILES}/mirror.harbor.test_5000/ca.crt").stdout == CA_TEXT
    print(f"\nn2:{REGISTRIES_FILE} (0600):\n" + wanted.replace(PASSWORD, "<password>"))

    # The server's certificate names the address; the agents joined through it, via the forwarder.
    server = yaml.safe_load(tb.ssh("n1", "cat /etc/rancher/k3s/config.yaml").stdout)
    assert REGISTRATION_NAME in server["tls-san"] and "server" not in server
    for name in AGENTS:
        agent = yaml.safe_load(tb.ssh(name, "cat /etc/rancher/k3s/config.yaml").stdout)
        assert agent["server"] == f"https://{REGISTRATION_NAME}:{REGISTRATION_PORT}"
    joined = through_forwarder(tb)
    assert {mesh_of(tb, name) for name in AGENTS} <= joined, f"not every agent came through the forwarder: {joined}"


def test_a_registries_change_restarts_k3s_only_where_the_file_changed(cluster: StackEngine) -> None:
    tb = cluster.tb
    changed = with_k3s(cluster.config, registries=registries("https://mirror2.harbor.test:5000"))
    # The operator tried the new mirror on n2 by hand first: its file already holds the new bytes.
    new_text = command_env(program(tb, changed).named("n2-k3s"))["HARBOR_K3S_REGISTRIES"]
    tb.ssh("n2", f"umask 077; cat >{REGISTRIES_FILE}", input=new_text)
    before = invocations(tb)
    report = cluster.up(changed)
    # Every node's k3s step ran its update; only n1's and n3's file changed, and only they restarted.
    assert {f"{name}-k3s" for name in NODES} <= set(report.updates)
    assert restarted(tb, before) == {"n1", "n3"}
    assert report.result("n2-k3s").stdout.strip().endswith("reconfigure: unchanged")
    for name in ("n1", "n3"):
        assert f"registries.yaml changed: restarting {UNITS[name]}" in report.result(f"{name}-k3s").stderr
    for name in NODES:
        assert tb.ssh(name, f"cat {REGISTRIES_FILE}").stdout == new_text
        assert PASSWORD not in report.result(f"{name}-k3s").stdout + report.result(f"{name}-k3s").stderr


def test_a_reinstall_reruns_the_installer_on_that_node_and_keeps_its_config_and_data(cluster: StackEngine) -> None:
    tb = cluster.tb
    kept = "/etc/rancher/k3s/config.yaml /etc/rancher/k3s/registries.yaml /var/lib/rancher/k3s/agent/shtb-data"
    tb.ssh("n2", "mkdir -p /var/lib/rancher/k3s/agent && echo node-data >/var/lib/rancher/k3s/agent/shtb-data")
    # The installer writes the killall script on every run: its absence afterwards would mean it never ran.
    tb.ssh("n2", "rm /usr/local/bin/k3s-killall.sh")
    # An uninstall that ran would leave this mark (the installer rewrites the script afterwards).
    tb.ssh("n2", "sed -i '2i touch /root/shtb-uninstall-ran' /usr/local/bin/k3s-agent-uninstall.sh")
    files = tb.ssh("n2", f"sha256sum {kept}").stdout
    before = invocations(tb)
    config = copy.deepcopy(cluster.config)
    next(node for node in config["nodes"] if node["name"] == "n2")["reinstall"] = 1
    report = cluster.up(config)
    assert {u for u in report.updates if not u.endswith("-preflight")} == {"n2-k3s", "n2-upgrade"}
    assert report.replaces == [] and report.deletes == []
    reinstall = report.result("n2-k3s")
    assert "reinstall 1 (was 0): rerunning the k3s installer at" in reinstall.stderr
    assert "k3s install stand-in" in reinstall.stderr
    assert "running /usr/local/bin/k3s-agent-uninstall.sh" not in reinstall.stderr  # what k3s.sh uninstall logs
    assert tb.ssh("n2", "test -e /root/shtb-uninstall-ran", check=False).returncode != 0
    assert "already installed" in report.result("n2-upgrade").stderr
    assert tb.ssh("n2", "test -x /usr/local/bin/k3s-killall.sh", check=False).returncode == 0
    # Same config, same registries, the node's data still there (an uninstall removes all three).
    assert tb.ssh("n2", f"sha256sum {kept}").stdout == files
    assert tb.ssh("n2", "cat /etc/rancher/k3s/.space-harbor-reinstall").stdout == "1\n"
    assert restarted(tb, before) == {"n2"}
    tb.ssh("n1", "k3s kubectl wait --for=condition=Ready node/n2 --timeout=30s")
    # Raised once, reinstalled once: the next up has nothing to do on n2.
    assert not {u for u in cluster.up(config).updates if u.startswith("n2-")}


def test_without_registries_the_files_go_and_k3s_restarts_on_every_node(cluster: StackEngine) -> None:
    tb = cluster.tb
    before = invocations(tb)
    report = cluster.up(with_k3s(cluster.config, registries=None))
    assert restarted(tb, before) == set(NODES)
    for name in NODES:
        assert f"{REGISTRIES_FILE} removed: k3s.registries is not set" in report.result(f"{name}-k3s").stderr
        left = tb.ssh(name, f"ls -d {REGISTRIES_FILE} {REGISTRY_FILES} 2>/dev/null", check=False).stdout
        assert left == "", f"{name}: {left}"


def test_dropping_the_registration_address_restarts_the_server_not_the_joined_agents(cluster: StackEngine) -> None:
    """The agents' `server:` changes back to n1's mesh address; k3s reads it only to join, so they
    keep running; the server restarts, because its certificate's names (tls-san) changed."""
    tb = cluster.tb
    before = invocations(tb)
    report = cluster.up(with_k3s(cluster.config, registrationAddress=None))
    assert {"n1-k3s", "n2-k3s", "n3-k3s"} <= set(report.updates)
    assert restarted(tb, before) == {"n1"}
    n1_mesh = f"{MESH_BASE}{tb.nodes['n1'].index}"
    for name in AGENTS:
        assert "only the server: line of config.yaml changed" in report.result(f"{name}-k3s").stderr
        agent = yaml.safe_load(tb.ssh(name, "cat /etc/rancher/k3s/config.yaml").stdout)
        assert agent["server"] == f"https://{n1_mesh}:6443"
    # The agents stay registered (their heartbeats keep going) while the server came back.
    tb.ssh("n1", "k3s kubectl wait --for=condition=Ready node/n2 node/n3 --timeout=60s")
    # At its next restart an agent talks to the new address, directly: it checks in again, and
    # never through the forwarder.
    tb.ssh("n3", "systemctl restart k3s-agent")
    tb.ssh("n1", f": > {FORWARDER_LOG}")
    restarted_at = time.time()
    deadline = time.monotonic() + 40
    while heartbeat(tb, "n3") <= restarted_at + 1:
        assert time.monotonic() < deadline, "n3 did not check in with the server after its restart"
        time.sleep(1)
    assert mesh_of(tb, "n3") not in through_forwarder(tb)
