"""Nodes behind a bastion, on real hosts: a node whose sshd answers only the bastion (issue 13, feature 2).

Three booted nodes: n1 (the server) and n2 (an agent) are the stack, `jump` is the bastion, a
node that is not in the stack and has a login key of its own that the other nodes refuse. The
test fences n1's sshd with an nftables table in n1's own namespace: port 22 answers the bastion's
address only, so from the controller (where the program's commands and the tunnel dial from) n1
is reachable through the bastion or not at all. Every step the program runs on n1, and every step
it runs on the first server for any node, goes through the bastion; n2 starts with
`bastion: false`, dialled directly.

The tests share one stack and run in file order; each `up` is the real `pulumi up` when the
engine's tools are built, else the replay (tests/testbed/conftest.py `engine_cluster`). The steps:
a wrong pin refused; day 1 through the bastion; the API tunnel through it (the program's own,
and the `ssh -J` command of the `apiTunnel` output); n2 moved behind the bastion, an update of
each of its steps that changes nothing; n2 removed from a stack that no longer has a bastion,
deleted through the bastion stored with its steps, and not at all while the bastion is down.
"""

from __future__ import annotations

import dataclasses
import os
import shlex
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from components.remote import DIAL_ERROR_LIMIT
from components.tunnel import SshTarget, ensure_tunnel, stop_tunnel
from tests.harness import ProgramRun
from tests.testbed.conftest import engine_cluster, mesh_pings, snapshot, snapshot_changes, standin_server
from tests.testbed.netprobe import fetch_api
from tests.testbed.nodes import Testbed, call_in_netns
from tests.testbed.runner import CommandFailed
from tests.testbed.stack import MESH_INTERFACE, program, stack_config
from tests.testbed.stack_engine import EngineFailed, StackEngine

pytestmark = pytest.mark.testbed

NODES = ["n1", "n2"]
BASTION = "jump"
# A node's steps that run on the first server; every other step of a node runs on the node itself.
ON_FIRST_SERVER = ("node-object", "drain", "uncordon", "registered")
# Its steps that do something on an update (`shipped` makes its staging directory again, which is
# idempotent); the copies do not (pulumi-command copies again only for a new file or path, not for
# a new connection).
ACTING_ON_UPDATE = ("preflight", "mesh", "firewall", "shipped", "k3s", "upgrade")


@dataclasses.dataclass
class BastionStack:
    tb: Testbed
    bastion_key: str
    cluster: StackEngine

    @property
    def engine_kind(self) -> str:
        return self.cluster.engine_kind

    @property
    def bastion(self) -> Any:
        return self.tb.nodes[BASTION]

    def config(self, *, n2_direct: bool = True, bastion: bool = True, nodes: list[str] = NODES) -> dict[str, Any]:
        """The stack: `ssh.bastion` is the jump node with its own key and pin; n2 may opt out."""
        config = stack_config(self.tb, node_names=nodes)
        if bastion:
            config["ssh"] = {
                "bastion": {
                    "host": self.bastion.address,
                    "privateKey": self.bastion_key,
                    "hostKey": self.bastion.host_key,
                }
            }
            for entry in config["nodes"]:
                if entry["name"] == "n2" and n2_direct:
                    entry["bastion"] = False
        return config

    def run_of(self, config: dict[str, Any]) -> ProgramRun:
        run, runner = program(self.tb, config)
        runner.close()
        return run


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BastionStack]:
    for cluster in engine_cluster(NODES, tmp_path_factory.mktemp("bastion"), git=False):
        tb = cluster.tb
        try:
            tb.add_nodes([BASTION], stage_k3s=False)
            key = tb.make_bastion(BASTION)
            yield BastionStack(tb, key, cluster)
        finally:
            for name in NODES:
                if name in tb.nodes:
                    tb.unfence_ssh(name)


def api_answered(tb: Testbed, answer: bytes) -> bool:
    """Whether `answer` (to a plain `GET /`) came from n1's API server: the stand-in's own answers
    200; the real kube-apiserver, which speaks only TLS, says so in plain HTTP."""
    if standin_server(tb):
        return b"200" in answer.split(b"\r\n", 1)[0] and b"k3s stand-in API server" in answer
    return b"Client sent an HTTP request to an HTTPS server" in answer


def journal_cursor(tb: Testbed, node: str) -> str:
    """Where `node`'s journal ends now (read without SSH): `accepted_logins` reads what comes after.

    `--sync` first, so that the logins of what ran before are on disk ahead of the cursor.
    """
    tb.node_exec(node, ["journalctl", "--sync"])
    out = tb.node_exec(node, ["journalctl", "--no-pager", "-q", "-n", "1", "--show-cursor"]).stdout
    return out.strip().splitlines()[-1].removeprefix("-- cursor: ")


def accepted_logins(tb: Testbed, node: str, after: str) -> list[str]:
    """The source addresses of the logins sshd on `node` accepted after the journal cursor `after`.

    By the syslog identifier sshd names itself with: journald reads `_COMM` from /proc, and a
    short session's process may be gone before it does.
    """
    tb.node_exec(node, ["journalctl", "--sync"])
    argv = ["journalctl", "--no-pager", "-q", "-o", "cat", f"--after-cursor={after}", "SYSLOG_IDENTIFIER=sshd"]
    out = tb.node_exec(node, argv).stdout
    return [line.split(" from ", 1)[1].split()[0] for line in out.splitlines() if line.startswith("Accepted publickey")]


def status(result_stdout: str) -> str:
    """The last line every node script prints: `space-harbor: <script> <action>: changed|unchanged|ok`."""
    return result_stdout.strip().splitlines()[-1]


# --- 1. the fence --------------------------------------------------------------------------------


def test_the_fenced_node_answers_ssh_only_from_the_bastion(stack: BastionStack) -> None:
    tb = stack.tb
    n1 = tb.nodes["n1"]
    assert tb.tcp_open_from_ctl(n1.address, 22), "n1 is unreachable before the fence: the test proves nothing"
    tb.fence_ssh("n1", BASTION)
    assert not tb.tcp_open_from_ctl(n1.address, 22), "the controller still reaches n1's sshd"
    assert tb.ssh(BASTION, f"nc -z -w3 {n1.address} 22", check=False).returncode == 0, "the bastion cannot reach n1"
    assert tb.ssh("n1", "hostname").stdout.strip() == "n1"  # through the bastion
    # The bastion takes only its own key, and the nodes do not take it.
    assert tb.ctl_exec([*tb.ssh_argv(stack.bastion.address), "true"]).returncode == 255
    bastion_key = tb.bastion_keys[BASTION][0]
    assert tb.ctl_exec([*tb.ssh_argv(tb.nodes["n2"].address, key_file=bastion_key), "true"]).returncode == 255


# --- 2. a wrong pin is refused before anything runs -----------------------------------------------


def test_a_wrong_host_key_of_the_bastion_or_of_the_node_behind_it_is_refused(stack: BastionStack) -> None:
    tb = stack.tb
    mark = journal_cursor(tb, BASTION)
    wrong_bastion = stack.config()
    # Another host's key: what a machine in the middle of the bastion's address would present.
    wrong_bastion["ssh"]["bastion"]["hostKey"] = tb.nodes["n2"].host_key
    _, runner = program(tb, wrong_bastion)
    try:
        assert runner.by_name["n1-preflight"].inputs["connection"]["proxy"]["hostKey"] == tb.nodes["n2"].host_key
        with pytest.raises(CommandFailed) as refused:
            runner.run_one("n1-preflight")
    finally:
        runner.close()
    result = refused.value.result
    assert result.dial_failed and result.bastion_failed, str(refused.value)
    assert result.dials == DIAL_ERROR_LIMIT + 1
    assert "Host key verification failed" in result.stderr
    # The key was never offered: ssh checks the host key first.
    assert accepted_logins(tb, BASTION, mark) == []

    wrong_node = stack.config()
    wrong_node["nodes"][0]["sshHostKey"] = tb.nodes["n2"].host_key  # n1 pinned to n2's key
    mark = journal_cursor(tb, "n1")
    _, runner = program(tb, wrong_node)
    try:
        with pytest.raises(CommandFailed) as refused:
            runner.run_one("n1-preflight")
    finally:
        runner.close()
    result = refused.value.result
    # Through the bastion (which let us in) to a node that is not the pinned one: refused.
    assert result.dial_failed and not result.bastion_failed, str(refused.value)
    assert "through bastion" in str(refused.value)
    assert "Host key verification failed" in result.stderr
    assert accepted_logins(tb, "n1", mark) == []


# --- 3. day 1 through the bastion ------------------------------------------------------------------


def test_day_one_runs_every_step_of_the_fenced_node_through_the_bastion(stack: BastionStack) -> None:
    tb = stack.tb
    n1, jump = tb.nodes["n1"], stack.bastion
    mark = journal_cursor(tb, "n1")
    report = stack.cluster.up(stack.config())
    ran = {r.name: r for r in report.results if r.command}
    hosts = {name: r.host for name, r in ran.items()}
    through = sorted(name for name, r in ran.items() if r.bastion == jump.address)
    # Every command that dialled n1 (its own steps and the first server's steps for every node)
    # went through the bastion; n2 (bastion: false) was dialled directly.
    assert through == sorted(name for name, host in hosts.items() if host == n1.address)
    assert {f"n1-{step}" for step in ("preflight", "mesh", "firewall", "k3s")} <= set(through)
    assert {"n2-node-object", "n2-registered", "api-credential"} <= set(through)
    assert all(ran[f"n2-{step}"].bastion is None for step in ("preflight", "mesh", "firewall", "k3s"))

    # n1's sshd saw every session arrive from the bastion's address, and as many as were run there.
    logins = accepted_logins(tb, "n1", mark)
    assert set(logins) == {jump.address}, logins
    assert len(logins) >= len(through)

    # What those steps did, on n1 itself.
    config = yaml.safe_load(tb.ssh("n1", "cat /etc/rancher/k3s/config.yaml").stdout)
    assert config["node-ip"] == "10.160.0.1"
    assert tb.ssh("n1", "systemctl is-active k3s").stdout.strip() == "active"
    assert "table inet space_harbor" in tb.ssh("n1", "nft list tables").stdout
    assert mesh_pings(tb, "n1", "n2") and mesh_pings(tb, "n2", "n1")
    assert "n2" in tb.ssh("n1", "k3s kubectl get nodes -o name").stdout
    # The program's firewall keeps SSH open on n1 (first in its chains), and the fence still
    # keeps the controller out: the bastion is still the only way in.
    assert not tb.tcp_open_from_ctl(n1.address, 22)
    assert tb.ssh("n1", "true").returncode == 0


# --- 4. the API tunnel through the bastion ---------------------------------------------------------


def test_the_programs_api_tunnel_goes_through_the_bastion(stack: BastionStack, tmp_path: Path) -> None:
    tb = stack.tb
    assert stack.cluster.config, "day 1 did not run first"
    n1, jump = tb.nodes["n1"], stack.bastion
    assert not tb.tcp_open_from_ctl(n1.address, 6443)
    # The tunnel the program asks for (under mocks, which open none); the one a real `up` left
    # listening on the same port is stopped first.
    [(target, port)] = stack.run_of(stack.cluster.config).tunnels
    stack.cluster.stop_tunnels()
    assert target.bastion is not None and (target.bastion.host, target.bastion.host_key) == (
        jump.address,
        jump.host_key,
    )
    assert target.bastion.private_key == stack.bastion_key and target.private_key == tb.client_key

    def through(tunnel_target: SshTarget, local_port: int) -> bytes:
        assert ensure_tunnel(tunnel_target, local_port, stack="space-harbor/testbed") == "started"
        try:
            return fetch_api(local_port)
        finally:
            stop_tunnel(local_port)

    os.environ["XDG_RUNTIME_DIR"] = str(tmp_path)
    try:
        answer = call_in_netns(tb.ctl, through, target, port)
        assert api_answered(tb, answer), answer
        # A wrong pin of the bastion: the tunnel must not go through that host at all.
        wrong = dataclasses.replace(
            target, bastion=dataclasses.replace(target.bastion, host_key=tb.nodes["n2"].host_key)
        )
        assert call_in_netns(tb.ctl, through, wrong, port + 1) == b""
    finally:
        del os.environ["XDG_RUNTIME_DIR"]


def test_the_ssh_command_of_the_api_tunnel_output_opens_it_by_hand(stack: BastionStack, tmp_path: Path) -> None:
    """What a user runs from the `apiTunnel` output, with their keys and its knownHosts lines."""
    tb = stack.tb
    assert stack.cluster.config, "day 1 did not run first"
    output = stack.cluster.outputs()["apiTunnel"]
    stack.cluster.stop_tunnels()
    known = tmp_path / "known_hosts"
    known.write_text("\n".join(output["knownHosts"]) + "\n")
    # The user's own ssh config: both keys, the pins from the output, nothing else.
    ssh_config = tmp_path / "ssh_config"
    ssh_config.write_text(
        "Host *\n"
        f"  IdentityFile {tb.key_file}\n"
        f"  IdentityFile {tb.bastion_keys[BASTION][0]}\n"
        "  IdentitiesOnly yes\n"
        f"  UserKnownHostsFile {known}\n"
        "  StrictHostKeyChecking yes\n"
        "  BatchMode yes\n"
        "  ExitOnForwardFailure yes\n"
    )
    argv = shlex.split(output["sshCommand"])
    assert argv[0] == "ssh" and "-J" in argv
    process = subprocess.Popen(
        ["ip", "netns", "exec", tb.ctl, "ssh", "-F", str(ssh_config), *argv[1:]],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        port = int(output["localPort"])
        deadline = time.monotonic() + 20
        answer = b""
        while time.monotonic() < deadline and process.poll() is None:
            try:
                answer = call_in_netns(tb.ctl, fetch_api, port)
                break
            except OSError:
                time.sleep(0.2)
        assert process.poll() is None, f"ssh exited: {process.stderr.read() if process.stderr else ''}"
        assert api_answered(tb, answer), answer
    finally:
        process.terminate()
        process.wait(timeout=10)


# --- 5. a bastion added to a running node ----------------------------------------------------------


def test_a_bastion_added_to_a_running_node_updates_its_steps_and_changes_nothing(stack: BastionStack) -> None:
    """A change of `connection` is an update: pulumi-command runs each step's update (or create) again,
    now through the bastion. The scripts are idempotent, so the node is left exactly as it was."""
    tb = stack.tb
    tb.fence_ssh("n2", BASTION)
    # After the fence (the test's own table): what is compared is what the program's steps do.
    before = snapshot(tb, "n2")
    config = stack.config(n2_direct=False)
    run = stack.run_of(config)  # the program's steps (under mocks), to know which are n2's
    report = stack.cluster.up(config)
    on_n2 = {r.name for r in run.resources if r.name.startswith("n2-") and r.type.startswith("command:")}
    own = on_n2 - {f"n2-{step}" for step in ON_FIRST_SERVER}
    assert {"n2-shipped", "n2-k3s"} < own and any(
        r.type.endswith("CopyToRemote") and r.name in own for r in run.resources
    )
    # Only n2's own steps changed (their connection); the first server's steps for n2 did not.
    # (and n2's drift record, whose read goes through the bastion now; it dials nobody on update)
    assert sorted(u for u in report.updates if u != "n2-drift") == sorted(own), report.updates
    assert "n2-drift" in report.updates
    assert not report.creates and not report.replaces and not report.deletes
    ran = {r.name: r for r in report.results if r.command}
    assert sorted(ran) == sorted(f"n2-{step}" for step in ACTING_ON_UPDATE)
    for name, result in ran.items():
        assert result.bastion == stack.bastion.address, name
        assert status(result.stdout).endswith((": unchanged", ": ok")), f"{name}: {status(result.stdout)}"
    assert status(ran["n2-k3s"].stdout) == "space-harbor: k3s.sh reconfigure: unchanged"
    assert status(ran["n2-upgrade"].stdout) == "space-harbor: k3s.sh upgrade: unchanged"
    problems = snapshot_changes(before, snapshot(tb, "n2"))
    assert not problems, problems


# --- 6. deletes go with the stored connection ----------------------------------------------------


def test_a_removed_node_is_deleted_through_the_bastion_stored_with_its_steps(stack: BastionStack) -> None:
    """The stack drops the bastion and n2 at once. n1 is reachable directly again and is updated so;
    n2's steps are deleted with the connection stored at their last update: through the bastion,
    which must still be there. With the bastion down those deletes fail and n2 keeps everything."""
    tb = stack.tb
    tb.unfence_ssh("n1")
    config = stack.config(bastion=False, nodes=["n1"])
    without = stack.run_of(config)
    stored = stack.cluster.stored_inputs("n2-k3s")["connection"]
    assert stored["proxy"]["host"] == stack.bastion.address
    assert "proxy" not in without.named("n1-k3s").inputs["connection"]

    tb.stop_sshd(BASTION)
    try:
        with pytest.raises(EngineFailed) as failed:
            stack.cluster.up(config)
        report = failed.value.report
        dead = [r for r in report.results if r.name in report.failures]
        assert dead and all(r.dial_failed and r.bastion_failed for r in dead), [r.name for r in dead]
        # n1's own steps went direct (updated) before the deletes; n2 is untouched.
        assert all(r.bastion is None for r in report.results if r.name.startswith("n1-"))
        assert tb.node_exec("n2", ["systemctl", "is-active", "k3s-agent"], check=False).stdout.strip() == "active"
    finally:
        tb.start_sshd(BASTION)

    report = stack.cluster.up(config)
    deleted = {r.name: r for r in report.results if r.action == "delete" and r.command}
    assert {"n2-k3s", "n2-mesh", "n2-firewall"} <= set(deleted)
    assert all(r.bastion == stack.bastion.address for r in deleted.values())
    assert tb.node_exec("n2", ["systemctl", "is-active", "k3s-agent"], check=False).stdout.strip() != "active"
    links = tb.node_exec("n2", ["ip", "-o", "link", "show"]).stdout
    assert MESH_INTERFACE not in links
    assert "space_harbor" not in tb.node_exec("n2", ["nft", "list", "tables"]).stdout
    assert "n2" not in tb.ssh("n1", "k3s kubectl get nodes -o name").stdout
