"""The testbed runner's own rules, without nodes: dial retries as pulumi-command does them, and what a
run does when a command fails (as `pulumi up`, and `pulumi up --continue-on-error`). No root needed.

The SSH client is replaced by a script (through `ssh_prefix`) that plays a scenario: dials that
fail, a dial that succeeds, a session that breaks after the dial.
"""

from __future__ import annotations

import itertools
import shlex
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from components.remote import DIAL_ERROR_LIMIT, PER_DIAL_TIMEOUT
from tests.testbed.runner import (
    COMMAND_TYPE,
    PROVIDER_DIAL_ERROR_LIMIT,
    PROVIDER_PER_DIAL_TIMEOUT,
    RETRY_MAX_DELAY_S,
    CommandFailed,
    CommandResult,
    DialPolicy,
    RunFailed,
    Runner,
)

# Both fake ssh clients: count the dials in the state file and take this dial's step from the plan.
_FAKE_SSH_DIAL = r"""
import pathlib, sys
state = pathlib.Path(sys.argv[1])
plan = state.with_suffix(".plan").read_text().split()
dials = int(state.read_text()) + 1 if state.exists() else 1
state.write_text(str(dials))
sys.stdin.read()
step = plan[min(dials, len(plan)) - 1]
"""
FAKE_SSH = (
    _FAKE_SSH_DIAL
    + r"""if step == "refuse":
    print("ssh: connect to host 192.0.2.1 port 22: Connection refused", file=sys.stderr)
    sys.exit(255)
print('Authenticated to 192.0.2.1 ([192.0.2.1]:22) using "publickey".', file=sys.stderr)
if step == "cut":
    print("Connection to 192.0.2.1 closed by remote host.", file=sys.stderr)
    sys.exit(255)
print("space-harbor: fake.sh apply: changed")
print("a line of the script's own stderr", file=sys.stderr)
print("Transferred: sent 3540, received 3336 bytes, in 0.1 seconds", file=sys.stderr)
print("Bytes per second: sent 65844.9, received 62050.5", file=sys.stderr)
sys.exit(int(step))
"""
)


@dataclass
class Fake:
    """What the runner reads of a Registered resource."""

    name: str
    dependencies: set[str] = field(default_factory=set)
    connection: dict[str, Any] = field(default_factory=dict)
    type: str = COMMAND_TYPE
    parent: str | None = None

    @property
    def urn(self) -> str:
        return f"urn:{self.name}"

    @property
    def inputs(self) -> dict[str, Any]:
        connection = {"host": "192.0.2.1", "privateKey": "not a key", **self.connection}
        return {"create": "bash -s -- apply", "delete": "bash -s -- remove", "stdin": "", "connection": connection}


def fake_runner(tmp_path: Path, plan: str, **connection: Any) -> tuple[Runner, Path]:
    script = tmp_path / "fake_ssh.py"
    script.write_text(FAKE_SSH)
    state = tmp_path / "dials"
    state.with_suffix(".plan").write_text(plan)
    prefix = [sys.executable, str(script), str(state)]
    return Runner([Fake("n1-mesh", connection=connection)], ssh_prefix=prefix, workdir=tmp_path), state


# --- dialing -----------------------------------------------------------------------------------


def test_the_dial_policy_is_pulumi_commands() -> None:
    assert DialPolicy.from_connection({}) == DialPolicy(PROVIDER_DIAL_ERROR_LIMIT, PROVIDER_PER_DIAL_TIMEOUT)
    program = DialPolicy.from_connection({"dialErrorLimit": DIAL_ERROR_LIMIT, "perDialTimeout": PER_DIAL_TIMEOUT})
    assert program == DialPolicy(DIAL_ERROR_LIMIT, PER_DIAL_TIMEOUT)
    # The provider fails once dials > dialErrorLimit: one first dial plus that many retries.
    assert program.max_dials == DIAL_ERROR_LIMIT + 1
    assert DialPolicy(-1, 0).max_dials is None
    waits = list(itertools.islice(program.delays(), 12))
    assert waits[:3] == pytest.approx([0.1, 0.15, 0.225])
    assert max(waits) == RETRY_MAX_DELAY_S and waits == sorted(waits)
    bound = program.give_up_within(handshake_s=0)
    assert bound == pytest.approx(program.max_dials * PER_DIAL_TIMEOUT + sum(waits[:DIAL_ERROR_LIMIT]))


def test_failed_dials_are_retried_then_the_command_runs(tmp_path: Path) -> None:
    runner, state = fake_runner(tmp_path, "refuse refuse 0", dialErrorLimit=DIAL_ERROR_LIMIT)
    result = runner.run_one("n1-mesh")
    assert result.returncode == 0 and result.dials == 3 and not result.dial_failed
    assert state.read_text() == "3"
    # ssh's own chatter is gone; the script's stderr stays.
    assert result.stderr == "a line of the script's own stderr\n"


def test_a_host_that_never_answers_fails_after_the_dial_limit(tmp_path: Path) -> None:
    runner, state = fake_runner(tmp_path, "refuse", dialErrorLimit=DIAL_ERROR_LIMIT)
    started = time.monotonic()
    with pytest.raises(CommandFailed) as info:
        runner.run_one("n1-mesh")
    result = info.value.result
    assert result.dial_failed and result.dials == DIAL_ERROR_LIMIT + 1
    assert state.read_text() == str(DIAL_ERROR_LIMIT + 1)
    assert time.monotonic() - started >= sum(itertools.islice(DialPolicy(DIAL_ERROR_LIMIT, 0).delays(), 6)) - 0.05
    assert "create of n1-mesh on 192.0.2.1 could not dial: 7 dials failed" in str(info.value)
    assert "Connection refused" in str(info.value)


def test_a_session_cut_after_the_dial_is_not_retried(tmp_path: Path) -> None:
    runner, state = fake_runner(tmp_path, "cut 0", dialErrorLimit=DIAL_ERROR_LIMIT)
    with pytest.raises(CommandFailed) as info:
        runner.run_one("n1-mesh")
    result = info.value.result
    assert result.returncode == 255 and not result.dial_failed and result.dials == 1
    assert state.read_text() == "1", "the runner ran a command again after its session broke"
    assert "closed by remote host" in result.stderr


# --- through a bastion (pulumi-command's `proxy`) ----------------------------------------------

# The outer ssh and its ProxyCommand share stderr: the bastion's ssh logs its own address, the
# node's says "(via proxy)". Steps: `bastion` refused by the bastion, `node` the bastion let us in
# but the node did not, `cut` a session that broke after both, a number an exit status.
FAKE_PROXIED_SSH = (
    _FAKE_SSH_DIAL
    + r"""if step == "bastion":
    print("ssh: connect to host 198.51.100.5 port 2222: Connection refused", file=sys.stderr)
    sys.exit(255)
print('Authenticated to 198.51.100.5 ([198.51.100.5]:2222) using "publickey".', file=sys.stderr)
if step == "node":
    print("Host key verification failed.", file=sys.stderr)
    sys.exit(255)
print('Authenticated to 192.0.2.1 (via proxy) using "publickey".', file=sys.stderr)
if step == "cut":
    sys.exit(255)
print("space-harbor: fake.sh apply: unchanged")
sys.exit(int(step))
"""
)
PROXY = {
    "host": "198.51.100.5",
    "port": 2222,
    "user": "jump",
    "privateKey": "the bastion's key",
    "hostKey": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl",
    "perDialTimeout": 7,
}


def proxied_runner(tmp_path: Path, plan: str, *, proxy_limit: int, node_limit: int) -> tuple[Runner, Path]:
    script = tmp_path / "fake_ssh.py"
    script.write_text(FAKE_PROXIED_SSH)
    state = tmp_path / "dials"
    state.with_suffix(".plan").write_text(plan)
    connection = {"dialErrorLimit": node_limit, "proxy": {**PROXY, "dialErrorLimit": proxy_limit}}
    fake = Fake("n1-mesh", connection=connection)
    return Runner([fake], ssh_prefix=[sys.executable, str(script), str(state)], workdir=tmp_path), state


def _option(argv: list[str], name: str) -> list[str]:
    """The values of `-o NAME=value` options in an ssh argv."""
    pairs = itertools.pairwise(argv)
    return [value.split("=", 1)[1] for flag, value in pairs if flag == "-o" and value.startswith(f"{name}=")]


def test_a_proxy_connection_dials_the_bastion_with_its_own_key_user_and_pin(tmp_path: Path) -> None:
    runner, _ = proxied_runner(tmp_path, "0", proxy_limit=2, node_limit=2)
    conn = runner.by_name["n1-mesh"].inputs["connection"]
    argv = runner._ssh_argv("n1-mesh", conn, {}, DialPolicy.from_connection(conn))
    [command] = _option(argv, "ProxyCommand")
    jump = shlex.split(command)
    assert jump[0] == "ssh" and jump[-3:] == ["-W", "%h:%p", "jump@198.51.100.5"]
    assert jump[jump.index("-p") + 1] == "2222"
    assert Path(jump[jump.index("-i") + 1]).read_text() == "the bastion's key\n"
    [known] = _option(jump, "UserKnownHostsFile")
    assert Path(known).read_text() == f"[198.51.100.5]:2222 {PROXY['hostKey']}\n"
    assert _option(jump, "StrictHostKeyChecking") == ["yes"] and _option(jump, "ConnectTimeout") == ["7"]
    # The node itself: its own key, and no timeout through the bastion (pulumi-command sets none).
    assert Path(argv[argv.index("-i") + 1]).read_text() == "not a key\n"
    assert _option(argv, "ConnectTimeout") == []
    assert argv[-1] == "root@192.0.2.1"


def test_failed_dials_count_against_the_hop_that_failed(tmp_path: Path) -> None:
    runner, state = proxied_runner(tmp_path, "bastion node bastion node 0", proxy_limit=2, node_limit=2)
    result = runner.run_one("n1-mesh")
    # Two failures of each hop, each under its limit of 2 retries: the fifth dial runs the command.
    assert result.returncode == 0 and result.dials == 5 and not result.dial_failed
    assert state.read_text() == "5"
    assert result.bastion == "198.51.100.5"
    assert result.stderr == ""  # both hops' "Authenticated" lines are ssh chatter


def test_a_bastion_that_never_answers_fails_at_its_own_limit(tmp_path: Path) -> None:
    runner, state = proxied_runner(tmp_path, "bastion", proxy_limit=2, node_limit=6)
    with pytest.raises(CommandFailed) as info:
        runner.run_one("n1-mesh")
    result = info.value.result
    assert result.dial_failed and result.bastion_failed and result.dials == 3
    assert state.read_text() == "3"
    assert "could not dial: 3 dials failed (at bastion 198.51.100.5)" in str(info.value)


def test_a_node_refused_behind_the_bastion_fails_at_the_nodes_limit(tmp_path: Path) -> None:
    runner, state = proxied_runner(tmp_path, "node", proxy_limit=6, node_limit=1)
    with pytest.raises(CommandFailed) as info:
        runner.run_one("n1-mesh")
    result = info.value.result
    assert result.dial_failed and not result.bastion_failed and result.dials == 2
    assert state.read_text() == "2"
    assert "(through bastion 198.51.100.5)" in str(info.value)
    assert "Host key verification failed." in result.stderr


def test_a_session_cut_behind_the_bastion_is_not_retried(tmp_path: Path) -> None:
    runner, state = proxied_runner(tmp_path, "cut 0", proxy_limit=6, node_limit=6)
    with pytest.raises(CommandFailed) as info:
        runner.run_one("n1-mesh")
    assert not info.value.result.dial_failed and state.read_text() == "1"


# --- a failing command in a run ------------------------------------------------------------------


class Scripted(Runner):
    """A runner whose commands sleep and fail as told, and which records what started when."""

    def __init__(self, resources: list[Fake], seconds: dict[str, float], failing: set[str]) -> None:
        super().__init__(resources)
        self.seconds = seconds
        self.failing = failing
        self.started: list[str] = []
        self._started_lock = threading.Lock()

    def run_one(self, name: str, action: str = "create") -> CommandResult:
        with self._started_lock:
            self.started.append(name)
        time.sleep(self.seconds.get(name, 0.0))
        now = time.time()
        code = 1 if name in self.failing else 0
        result = CommandResult(name, action, "192.0.2.1", "bash -s -- apply", code, "", "", 0.0, now, now)
        if code:
            raise CommandFailed(result)
        return result


def graph() -> list[Fake]:
    """a-mesh and b-mesh independent; a-k3s needs a-mesh; b-k3s needs b-mesh; c-late starts late."""
    return [
        Fake("a-mesh"),
        Fake("b-mesh"),
        Fake("a-k3s", {"urn:a-mesh"}),
        Fake("b-k3s", {"urn:b-mesh"}),
        Fake("b-registered", {"urn:b-k3s"}),
        Fake("c-late", {"urn:b-registered"}),
    ]


def test_by_default_a_failure_lets_running_commands_finish_and_starts_no_new_one() -> None:
    runner = Scripted(graph(), {"a-mesh": 0.0, "b-mesh": 0.3}, failing={"a-mesh"})
    with runner, pytest.raises(RunFailed) as info:
        runner.apply()
    error = info.value
    assert [r.name for r in error.failures] == ["a-mesh"]
    # b-mesh was running when a-mesh failed: it finished. Nothing started after the failure.
    assert sorted(runner.started) == ["a-mesh", "b-mesh"]
    assert {r.name for r in error.results if r.returncode == 0} == {"b-mesh"}
    assert error.not_run == ["a-k3s", "b-k3s", "b-registered", "c-late"]
    assert "1 command(s) failed: a-mesh on 192.0.2.1" in str(error)


def test_continue_on_error_runs_every_independent_command_and_skips_the_dependents() -> None:
    runner = Scripted(graph(), {"a-mesh": 0.0, "b-mesh": 0.3}, failing={"a-mesh", "b-registered"})
    with runner, pytest.raises(RunFailed) as info:
        runner.apply(continue_on_error=True)
    error = info.value
    assert sorted(r.name for r in error.failures) == ["a-mesh", "b-registered"]
    assert {r.name for r in error.results if r.returncode == 0} == {"b-mesh", "b-k3s"}
    assert error.not_run == ["a-k3s", "c-late"]
    message = str(error)
    assert "a-mesh on 192.0.2.1" in message and "b-registered on 192.0.2.1" in message
    assert "not run (they depend on a failed command, or the run stopped): a-k3s, c-late" in message


def test_a_clean_run_returns_every_result_in_dependency_order() -> None:
    with Scripted(graph(), {}, failing=set()) as runner:
        results = runner.apply()
    order = [r.name for r in results]
    assert sorted(order) == sorted(f.name for f in graph())
    edges = [("a-mesh", "a-k3s"), ("b-mesh", "b-k3s"), ("b-k3s", "b-registered"), ("b-registered", "c-late")]
    for before, after in edges:
        assert order.index(before) < order.index(after)
