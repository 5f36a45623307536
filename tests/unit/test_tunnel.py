"""The API tunnel as a process of its own: loopback only, outlives its starter, reused, bounded.

No SSH happens here (the tunnel dials only when a client connects, and these tests connect to
nothing behind it); tests/testbed/test_testbed.py forwards real API traffic through it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from components import tunnel
from components.tunnel import SshTarget, ensure_tunnel, running_tunnel, stop_tunnel
from tests.helpers import free_port

# A documentation address (TEST-NET-1): never dialled, since no client reaches the remote side.
TARGET = SshTarget(host="192.0.2.10", port=22, user="root", private_key="MARKER-TUNNEL-KEY-7c1d", host_key=None)
OTHER = SshTarget(host="192.0.2.11", port=22, user="root", private_key="MARKER-TUNNEL-KEY-7c1d", host_key=None)


@pytest.fixture
def runtime(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    """A private state folder and a free port; every tunnel a test started is stopped after it."""
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    port = free_port()
    yield port
    stop_tunnel(port)


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


def test_the_tunnel_listens_on_loopback_only_and_outlives_its_starter(runtime: int) -> None:
    port = runtime
    # Started from a child process that then exits, as the program does after `pulumi up`.
    starter = textwrap.dedent(
        f"""
        import json, sys
        from components.tunnel import SshTarget, ensure_tunnel
        print(ensure_tunnel(SshTarget(**json.loads(sys.argv[1])), {port}))
        """
    )
    target = json.dumps(TARGET.__dict__)
    result = subprocess.run(
        [sys.executable, "-c", starter, target],
        capture_output=True,
        text=True,
        cwd=Path(tunnel.__file__).parent.parent,
        env={**os.environ, "PYTHONPATH": str(Path(tunnel.__file__).parent.parent)},
        timeout=60,
        check=True,
    )
    assert result.stdout.strip() == "started"
    record = running_tunnel(port)
    assert record is not None, "the tunnel died with the process that started it"
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
    assert ensure_tunnel(TARGET, port) == "started"
    first = running_tunnel(port)
    assert ensure_tunnel(TARGET, port) == "reused"
    assert running_tunnel(port) == first
    # The first server changed: the old tunnel goes, a new one forwards to the new server.
    assert ensure_tunnel(OTHER, port) == "started"
    second = running_tunnel(port)
    assert second is not None and first is not None
    assert second["pid"] != first["pid"] and second["host"] == "192.0.2.11"
    assert not Path(f"/proc/{first['pid']}").exists() or b"zombie" in Path(f"/proc/{first['pid']}/status").read_bytes()


def test_a_port_held_by_something_else_is_left_alone_with_a_warning(runtime: int) -> None:
    port = runtime
    warnings: list[str] = []
    with socket.create_server(("127.0.0.1", port)):
        assert ensure_tunnel(TARGET, port, warn=warnings.append) == "foreign"
    assert warnings == [f"127.0.0.1:{port} is in use; assuming it is already a tunnel to 192.0.2.10:6443"]
    assert running_tunnel(port) is None


def test_an_idle_tunnel_exits_on_its_own(runtime: int) -> None:
    port = runtime
    pid = tunnel.start_tunnel(TARGET, port, idle_seconds=1)
    deadline = time.monotonic() + 15
    while running_tunnel(port) is not None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert running_tunnel(port) is None, f"tunnel {pid} is still running after being idle"
    assert listening(port) == set()


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
    assert ensure_tunnel(TARGET, port) == "started"
    direct = running_tunnel(port)
    # The first server moved behind a bastion: the old tunnel goes, a new one takes the new route.
    assert ensure_tunnel(BEHIND, port) == "started"
    record = running_tunnel(port)
    assert record is not None and direct is not None and record["pid"] != direct["pid"]
    assert ensure_tunnel(BEHIND, port) == "reused"
    cmdline = Path(f"/proc/{record['pid']}/cmdline").read_bytes()
    state = Path(os.environ["XDG_RUNTIME_DIR"]) / "space-harbor" / f"tunnel-{port}.json"
    for secret in (b"MARKER-TUNNEL-KEY", b"MARKER-BASTION-KEY"):
        assert secret not in cmdline and secret not in state.read_bytes()
    log = (Path(os.environ["XDG_RUNTIME_DIR"]) / "space-harbor" / f"tunnel-{port}.log").read_text()
    assert f"127.0.0.1:{port} -> root@192.0.2.10:22 via jump@198.51.100.5:2222 -> 127.0.0.1:6443" in log
