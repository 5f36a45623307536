"""The API tunnel as a process of its own: loopback only, outlives its starter, reused, bounded,
one per stack, and fenced off from every other process and user of the machine.

Where a connection must go through, the tunnel dials a loopback SSH server (tests/fake_sshd.py);
elsewhere it dials nothing, since no client reaches its remote side.
tests/testbed/test_testbed.py forwards real API traffic through it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import paramiko
import pytest

from components import tunnel
from components.access import DERIVED_TUNNEL_PORTS, api_tunnel_port, stack_identity
from components.config import load_config
from components.tunnel import (
    INHERITED_ENVIRONMENT,
    Limits,
    SshTarget,
    TunnelError,
    ensure_tunnel,
    running_tunnel,
    stop_tunnel,
)
from tests.fake_sshd import FakeSshd, ask
from tests.helpers import free_tunnel_port

ROOT = Path(tunnel.__file__).resolve().parent.parent
# A documentation address (TEST-NET-1): never dialled, since no client reaches the remote side.
TARGET = SshTarget(host="192.0.2.10", port=22, user="root", private_key="MARKER-TUNNEL-KEY-7c1d", host_key=None)
OTHER = SshTarget(host="192.0.2.11", port=22, user="root", private_key="MARKER-TUNNEL-KEY-7c1d", host_key=None)
PROD = "space-harbor/prod"
STAGING = "space-harbor/staging"
NOBODY = 65534


@pytest.fixture
def runtime(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    """A private state folder and a free port; every tunnel a test started is stopped after it."""
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    port = free_tunnel_port()
    yield port
    stop_tunnel(port)


@pytest.fixture
def sshd() -> Iterator[Callable[[str], FakeSshd]]:
    """Loopback SSH servers, each with an API that names itself; all closed after the test."""
    servers: list[FakeSshd] = []

    def make(name: str) -> FakeSshd:
        servers.append(FakeSshd(name))
        return servers[-1]

    yield make
    for server in servers:
        server.close()


def listening(port: int) -> set[str]:
    """Local addresses of listening TCP sockets on `port`, from the kernel's own tables."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.split(":")
            if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                found.add(address)
    return found


def alive(pid: int) -> bool:
    try:
        return b"zombie" not in Path(f"/proc/{pid}/status").read_bytes()
    except FileNotFoundError:
        return False


def wait_for(condition: Callable[[], bool], seconds: float = 15) -> bool:
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.1)
    return condition()


def log_text(port: int) -> str:
    return (Path(os.environ["XDG_RUNTIME_DIR"]) / "space-harbor" / f"tunnel-{port}.log").read_text()


# The project's interpreter may sit under a directory only root can enter (a pyenv in /root); the
# system's one of the same version runs the same code with the same packages, for any user.
_SYSTEM_PYTHON = Path(f"/usr/bin/python3.{sys.version_info.minor}")
NOBODY_PYTHON = str(_SYSTEM_PYTHON) if _SYSTEM_PYTHON.exists() else sys.executable
_SITE_PACKAGES = str(Path(paramiko.__file__).parent.parent)


def run_as_nobody(code: str, env: dict[str, str], *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Python `code` as another local user (root's tests only: that takes setpriv)."""
    return subprocess.run(
        ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", NOBODY_PYTHON, "-c", code, *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**env, "PYTHONPATH": f"{ROOT}:{_SITE_PACKAGES}", "PYTHONDONTWRITEBYTECODE": "1"},
        timeout=timeout,
    )


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="acting as a second local user needs root (setpriv)")


def test_the_tunnel_listens_on_loopback_only_and_outlives_its_starter(runtime: int) -> None:
    port = runtime
    # Started from a child process that then exits, as the program does after `pulumi up`.
    starter = textwrap.dedent(
        f"""
        import json, sys
        from components.tunnel import SshTarget, ensure_tunnel
        print(ensure_tunnel(SshTarget(**json.loads(sys.argv[1])), {port}, stack="{PROD}"))
        """
    )
    target = json.dumps(TARGET.__dict__)
    result = subprocess.run(
        [sys.executable, "-c", starter, target],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=60,
        check=True,
    )
    assert result.stdout.strip() == "started"
    record = running_tunnel(port)
    assert record is not None, "the tunnel died with the process that started it"
    assert record["stack"] == PROD
    # Loopback (127.0.0.1, 0100007F in the kernel's byte order) and nothing else: not 0.0.0.0,
    # not a public or mesh address, not IPv6.
    assert listening(port) == {"0100007F"}
    # The key is in the process's memory only: not on its command line, not in its state file.
    cmdline = Path(f"/proc/{record['pid']}/cmdline").read_bytes()
    assert b"MARKER-TUNNEL-KEY" not in cmdline
    state = Path(os.environ["XDG_RUNTIME_DIR"]) / "space-harbor" / f"tunnel-{port}.json"
    assert "MARKER-TUNNEL-KEY" not in state.read_text()
    assert state.stat().st_mode & 0o077 == 0


def test_a_running_tunnel_to_the_same_target_is_reused_and_another_target_replaces_it(runtime: int) -> None:
    port = runtime
    assert ensure_tunnel(TARGET, port, stack=PROD) == "started"
    first = running_tunnel(port)
    assert ensure_tunnel(TARGET, port, stack=PROD) == "reused"
    # scripts/kubeconfig reads the key back with `pulumi config get`, which ends it with a newline.
    assert ensure_tunnel(dataclasses.replace(TARGET, private_key=TARGET.private_key + "\n"), port, stack=PROD) == (
        "reused"
    )
    assert running_tunnel(port) == first
    # The first server changed, within the same stack: the old tunnel goes, a new one forwards there.
    assert ensure_tunnel(OTHER, port, stack=PROD) == "started"
    second = running_tunnel(port)
    assert second is not None and first is not None
    assert second["pid"] != first["pid"] and second["host"] == "192.0.2.11"
    assert not alive(first["pid"])


def test_a_port_held_by_another_program_is_refused_naming_the_key_and_the_holder(runtime: int) -> None:
    port = runtime
    with socket.create_server(("127.0.0.1", port)), pytest.raises(TunnelError) as refused:
        ensure_tunnel(TARGET, port, stack=PROD)
    message = str(refused.value)
    assert message.startswith(f"k3s.tunnelPort: 127.0.0.1:{port} is held by ")
    # This test's own process holds it: named by pid and program, never by its command line.
    assert f"process {os.getpid()} (" in message
    assert running_tunnel(port) is None


def test_a_port_a_closed_tunnel_just_served_is_free_again(runtime: int) -> None:
    """A tunnel (or `ssh -L`) that closed a connection first leaves that connection in TIME_WAIT on
    the port for a minute; the next `pulumi up` must still take the port, as its listener can."""
    port = runtime
    with socket.create_server(("127.0.0.1", port)) as listener, socket.create_connection(("127.0.0.1", port)) as client:
        served, _ = listener.accept()
        served.close()  # the listening side closes first: its end waits in TIME_WAIT
        client.recv(1)
    tunnel.check_tunnel_port(TARGET, port, PROD)
    with socket.create_server(("127.0.0.1", port)):
        pass  # the tunnel's own listener binds there too


def test_an_idle_tunnel_exits_on_its_own(runtime: int) -> None:
    port = runtime
    pid = tunnel.start_tunnel(TARGET, port, PROD, Limits(idle_seconds=1))
    assert wait_for(lambda: running_tunnel(port) is None), f"tunnel {pid} is still running after being idle"
    assert listening(port) == set()


# --- several stacks on one machine -----------------------------------------------------------------


def test_each_stack_has_a_port_of_its_own_the_same_on_every_run(config_dict: dict) -> None:
    config = load_config(config_dict)
    staging, prod = (api_tunnel_port(config, stack_identity("space-harbor", s)) for s in ("staging", "prod"))
    assert staging != prod
    assert {staging, prod} <= set(DERIVED_TUNNEL_PORTS)
    # Stable: nothing random, nothing kept on this machine; another project's `prod` is another stack.
    assert api_tunnel_port(load_config(config_dict), stack_identity("space-harbor", "prod")) == prod
    assert api_tunnel_port(config, stack_identity("other-project", "prod")) != prod
    # `k3s.tunnelPort` still decides when it is set.
    config_dict["k3s"] = {**config_dict.get("k3s", {}), "tunnelPort": 16443}
    assert api_tunnel_port(load_config(config_dict), stack_identity("space-harbor", "prod")) == 16443


def test_two_stacks_side_by_side_each_reach_their_own_server(
    runtime: int, sshd: Callable[[str], FakeSshd], config_dict: dict
) -> None:
    """`pulumi up` of staging, then of prod: both tunnels stay, each goes to its own cluster."""
    config = load_config(config_dict)
    servers = {stack: sshd(stack) for stack in (STAGING, PROD)}
    ports = {stack: api_tunnel_port(config, stack) for stack in servers}
    try:
        for stack, server in servers.items():
            assert ensure_tunnel(server.target(), ports[stack], stack=stack) == "started"
        for stack in servers:
            record = running_tunnel(ports[stack])
            assert record is not None and record["stack"] == stack
            assert ask(ports[stack]) == f"api of {stack}\n".encode()
    finally:
        for port in ports.values():
            stop_tunnel(port)


def test_a_stack_never_stops_another_stacks_tunnel(runtime: int) -> None:
    """Two stacks given one port: the second is refused, naming the first; the first keeps running."""
    port = runtime
    assert ensure_tunnel(TARGET, port, stack=STAGING) == "started"
    staging = running_tunnel(port)
    assert staging is not None
    with pytest.raises(TunnelError) as refused:
        ensure_tunnel(OTHER, port, stack=PROD)
    assert str(refused.value) == (
        f"k3s.tunnelPort: 127.0.0.1:{port} is held by the API tunnel of stack {STAGING} "
        f"(pid {staging['pid']}, to 192.0.2.10), not by this stack's API tunnel; "
        "stop it, or give this stack another port with k3s.tunnelPort"
    )
    # Even to the same server: a tunnel serves one stack.
    with pytest.raises(TunnelError):
        ensure_tunnel(TARGET, port, stack=PROD)
    assert running_tunnel(port) == staging and alive(staging["pid"])


RACER = textwrap.dedent(
    """
    import json, sys, time
    from pathlib import Path
    from components.tunnel import SshTarget, ensure_tunnel, running_tunnel
    target, port, go = SshTarget.from_dict(json.loads(sys.argv[1])), int(sys.argv[2]), Path(sys.argv[3])
    while not go.exists():
        time.sleep(0.001)
    outcome = ensure_tunnel(target, port, stack="space-harbor/prod")
    print(json.dumps({"outcome": outcome, "pid": running_tunnel(port)["pid"]}))
    """
)


def test_two_runs_of_one_stack_at_once_end_with_one_tunnel_and_both_succeed(runtime: int, tmp_path: Path) -> None:
    port = runtime
    go = tmp_path / "go"
    racers = [
        subprocess.Popen(
            [sys.executable, "-c", RACER, json.dumps(dataclasses.asdict(TARGET)), str(port), str(go)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        for _ in range(2)
    ]
    time.sleep(1)  # both are importing and waiting for the word; the race itself is not slept away
    go.touch()
    results = [racer.communicate(timeout=60) for racer in racers]
    assert [racer.returncode for racer in racers] == [0, 0], [err for _, err in results]
    answers = [json.loads(out) for out, _ in results]
    assert sorted(a["outcome"] for a in answers) == ["reused", "started"]
    assert answers[0]["pid"] == answers[1]["pid"]
    assert listening(port) == {"0100007F"}


def test_a_tunnel_near_the_end_of_its_lifetime_is_started_anew(runtime: int) -> None:
    port = runtime
    short = Limits(lifetime_seconds=tunnel.REUSE_MARGIN_SECONDS - 60)
    assert ensure_tunnel(TARGET, port, stack=PROD, limits=short) == "started"
    old = running_tunnel(port)
    warnings: list[str] = []
    assert ensure_tunnel(TARGET, port, stack=PROD, warn=warnings.append) == "started"
    new = running_tunnel(port)
    assert old is not None and new is not None and new["pid"] != old["pid"]
    assert len(warnings) == 1 and "starting it anew" in warnings[0]
    assert ensure_tunnel(TARGET, port, stack=PROD) == "reused"


# --- what the tunnel holds, and whom it serves -------------------------------------------------------

SECRET_ENVIRONMENT = {
    # What the language host hands the program: every stack secret, decrypted.
    "PULUMI_CONFIG": json.dumps({"space-harbor:sshPrivateKey": "MARKER-ENV-CONFIG-51aa"}),
    "PULUMI_CONFIG_SECRET_KEYS": '["space-harbor:sshPrivateKey"]',
    "PULUMI_CONFIG_PASSPHRASE": "MARKER-ENV-PASSPHRASE-51aa",
    "AWS_SECRET_ACCESS_KEY": "MARKER-ENV-CLOUD-51aa",
}
STARTER = textwrap.dedent(
    """
    import json, sys
    from components.tunnel import SshTarget, ensure_tunnel, running_tunnel
    ensure_tunnel(SshTarget.from_dict(json.loads(sys.argv[1])), int(sys.argv[2]), stack="space-harbor/prod")
    print(running_tunnel(int(sys.argv[2]))["pid"])
    """
)


def test_the_tunnel_inherits_no_secret_from_the_program_and_is_not_dumpable(runtime: int) -> None:
    port = runtime
    env = {**os.environ, **SECRET_ENVIRONMENT}
    if os.geteuid() == 0:
        # Root may read any process; the tunnel runs as another user here, so that one of that
        # user's own processes is what tries to read it.
        state = Path(tempfile.mkdtemp(prefix="harbor-tunnel-"))
        os.chown(state, NOBODY, NOBODY)
        env |= {"XDG_RUNTIME_DIR": str(state), "HOME": str(state)}
        starter = run_as_nobody(STARTER, env, json.dumps(dataclasses.asdict(TARGET)), str(port))
    else:
        state = None
        starter = subprocess.run(
            [sys.executable, "-c", STARTER, json.dumps(dataclasses.asdict(TARGET)), str(port)],
            capture_output=True,
            text=True,
            cwd=ROOT,
            env={**env, "PYTHONPATH": str(ROOT)},
            timeout=60,
        )
    assert starter.returncode == 0, starter.stderr
    pid = int(starter.stdout)
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes() if os.geteuid() == 0 else None
        if environ is not None:
            names = {item.split(b"=", 1)[0].decode() for item in environ.split(b"\0") if item}
            assert names <= {*INHERITED_ENVIRONMENT, "PYTHONPATH"}, names
            assert b"MARKER-ENV" not in environ and b"PULUMI" not in environ
        # Not dumpable: /proc/<pid>/environ and mem are root's, so the user's other processes
        # (which Yama does not stop from reading environ) cannot read them.
        reader = "import sys; open(f'/proc/{sys.argv[1]}/environ', 'rb').read()"
        if os.geteuid() == 0:
            assert os.stat(f"/proc/{pid}/environ").st_uid == 0
            assert f"Uid:\t{NOBODY}" in Path(f"/proc/{pid}/status").read_text()
            attempt = run_as_nobody(reader, env, str(pid))
        else:
            attempt = subprocess.run([sys.executable, "-c", reader, str(pid)], capture_output=True, text=True)
        assert attempt.returncode != 0 and "PermissionError" in attempt.stderr, attempt.stderr
    finally:
        os.kill(pid, 15)
        wait_for(lambda: not alive(pid))
        if state is not None:
            shutil.rmtree(state, ignore_errors=True)


CLIENT = textwrap.dedent(
    """
    import socket, sys
    with socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=15) as client:
        print(repr(client.recv(4096)))
    """
)


@needs_root
def test_another_local_user_is_refused(runtime: int, sshd: Callable[[str], FakeSshd]) -> None:
    port = runtime
    assert ensure_tunnel(sshd("prod").target(), port, stack=PROD) == "started"
    assert ask(port) == b"api of prod\n"
    other = run_as_nobody(CLIENT, dict(os.environ), str(port))
    assert other.returncode == 0, other.stderr
    assert other.stdout.strip() == "b''", "another user's connection reached the API"
    assert wait_for(lambda: f"refused a connection of uid {NOBODY}" in log_text(port))
    assert ask(port) == b"api of prod\n"  # and the operator is still served


def test_an_idle_connection_is_closed(runtime: int, sshd: Callable[[str], FakeSshd]) -> None:
    port = runtime
    # Long enough that a loaded machine's slow first answer is not mistaken for idleness.
    tunnel.start_tunnel(sshd("prod").target(), port, PROD, Limits(connection_idle_seconds=5))
    with socket.create_connection(("127.0.0.1", port), timeout=15) as client:
        assert client.recv(4096) == b"api of prod\n"
        client.sendall(b"ping\n")
        assert client.recv(4096) == b"ping\n"
        started = time.monotonic()
        assert client.recv(4096) == b"", "the tunnel kept an idle connection open"
        assert time.monotonic() - started < 20
    assert "closed a connection idle for 5s" in log_text(port)
    assert running_tunnel(port) is not None  # the connection went, the tunnel stays


def test_the_lifetime_ends_the_tunnel_even_with_a_busy_connection(
    runtime: int, sshd: Callable[[str], FakeSshd]
) -> None:
    port = runtime
    pid = tunnel.start_tunnel(sshd("prod").target(), port, PROD, Limits(lifetime_seconds=3))
    with socket.create_connection(("127.0.0.1", port), timeout=15) as client:
        assert client.recv(4096) == b"api of prod\n"
        deadline = time.monotonic() + 15
        while alive(pid) and time.monotonic() < deadline:
            with contextlib.suppress(OSError):  # the tunnel closing it is the point
                client.sendall(b"keepalive\n")
            time.sleep(0.2)
    assert not alive(pid), "an open, busy connection kept the tunnel beyond its lifetime"
    assert running_tunnel(port) is None and listening(port) == set()
    assert "its lifetime: closing" in log_text(port)


def test_connections_beyond_the_cap_are_refused(runtime: int, sshd: Callable[[str], FakeSshd]) -> None:
    port = runtime
    tunnel.start_tunnel(sshd("prod").target(), port, PROD, Limits(max_connections=2))
    first, second = (socket.create_connection(("127.0.0.1", port), timeout=15) for _ in range(2))
    try:
        assert first.recv(4096) == b"api of prod\n" and second.recv(4096) == b"api of prod\n"
        assert ask(port) == b"", "a third connection was served beyond the cap of two"
        assert "refused a connection: 2 are open already" in log_text(port)
    finally:
        first.close()
        second.close()
    assert wait_for(lambda: ask(port) == b"api of prod\n")  # a place came free


# --- the state directory ----------------------------------------------------------------------------


def test_a_state_directory_writable_by_others_is_refused(runtime: int) -> None:
    port = runtime
    state = Path(os.environ["XDG_RUNTIME_DIR"]) / "space-harbor"
    state.mkdir(mode=0o700)
    state.chmod(0o777)
    with pytest.raises(TunnelError, match=r"state directory .*space-harbor is writable by others \(mode 777\)"):
        ensure_tunnel(TARGET, port, stack=PROD)
    assert listening(port) == set()
    state.chmod(0o700)
    assert running_tunnel(port) is None


@needs_root
def test_a_state_directory_of_another_user_is_refused(runtime: int) -> None:
    port = runtime
    state = Path(os.environ["XDG_RUNTIME_DIR"]) / "space-harbor"
    state.mkdir(mode=0o700)
    os.chown(state, NOBODY, NOBODY)
    with pytest.raises(TunnelError, match=rf"space-harbor belongs to uid {NOBODY}, not to you \(uid 0\)"):
        ensure_tunnel(TARGET, port, stack=PROD)
    assert listening(port) == set()
    os.chown(state, 0, 0)


# --- behind a bastion ------------------------------------------------------------------------------

BASTION = SshTarget(host="198.51.100.5", port=2222, user="jump", private_key="MARKER-BASTION-KEY-3a9e", host_key=None)
BEHIND = dataclasses.replace(TARGET, bastion=BASTION)


def test_a_target_behind_a_bastion_travels_whole_and_names_its_route() -> None:
    # What `start_tunnel` writes to the process's stdin, and what the process reads back.
    assert SshTarget.from_dict(json.loads(json.dumps(dataclasses.asdict(BEHIND)))) == BEHIND
    assert SshTarget.from_dict(json.loads(json.dumps(dataclasses.asdict(TARGET)))) == TARGET
    assert BEHIND.describe() == "root@192.0.2.10:22 via jump@198.51.100.5:2222"
    # Each hop of the route counts: another bastion, or another pin of it, is another tunnel.
    repinned = dataclasses.replace(
        BASTION, host_key="ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"
    )
    fingerprints = {t.fingerprint() for t in (TARGET, BEHIND, dataclasses.replace(TARGET, bastion=repinned))}
    assert len(fingerprints) == 3
    for target in (TARGET, BEHIND):
        assert "MARKER" not in target.describe()


def test_a_bastion_replaces_a_running_tunnel_and_its_key_stays_in_memory(runtime: int) -> None:
    port = runtime
    assert ensure_tunnel(TARGET, port, stack=PROD) == "started"
    direct = running_tunnel(port)
    # The first server moved behind a bastion: the old tunnel goes, a new one takes the new route.
    assert ensure_tunnel(BEHIND, port, stack=PROD) == "started"
    record = running_tunnel(port)
    assert record is not None and direct is not None and record["pid"] != direct["pid"]
    assert ensure_tunnel(BEHIND, port, stack=PROD) == "reused"
    cmdline = Path(f"/proc/{record['pid']}/cmdline").read_bytes()
    state = Path(os.environ["XDG_RUNTIME_DIR"]) / "space-harbor" / f"tunnel-{port}.json"
    for secret in (b"MARKER-TUNNEL-KEY", b"MARKER-BASTION-KEY"):
        assert secret not in cmdline and secret not in state.read_bytes()
    # Written before the tunnel said `ready`, so it is there as soon as ensure_tunnel returns.
    assert f"127.0.0.1:{port} -> root@192.0.2.10:22 via jump@198.51.100.5:2222 -> 127.0.0.1:6443" in log_text(port)
