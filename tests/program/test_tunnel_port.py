"""The program and its stack's own tunnel port: a port held by another stack's tunnel, or by
another program, stops `pulumi up` (and preview) before any resource is registered."""

from __future__ import annotations

import socket
from pathlib import Path

import pulumi
import pytest

from components.tunnel import SshTarget, check_tunnel_port, ensure_tunnel, stop_tunnel
from tests.conftest import base_config
from tests.harness import run_program
from tests.helpers import free_tunnel_port


def _refusal(config: dict, preview: bool) -> str:
    with pytest.raises(pulumi.RunError) as refused:
        run_program(config, preview=preview, tunnel_port_check=check_tunnel_port)
    assert refused.value.program_run.resources == []  # type: ignore[attr-defined]
    return str(refused.value)


@pytest.mark.parametrize("preview", [True, False], ids=["preview", "up"])
def test_a_port_held_by_another_program_stops_the_run_before_any_resource(
    preview: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    port = free_tunnel_port()
    config = base_config()
    config["k3s"] = {"tunnelPort": port}
    with socket.create_server(("127.0.0.1", port)):
        message = _refusal(config, preview)
    assert message.startswith(f"k3s.tunnelPort: 127.0.0.1:{port} is held by process "), message


def test_another_stacks_tunnel_on_the_port_stops_the_run_and_keeps_running(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    port = free_tunnel_port()
    config = base_config()
    config["k3s"] = {"tunnelPort": port}
    staging = SshTarget("192.0.2.20", 22, "root", "MARKER-STAGING-KEY", None)
    try:
        assert ensure_tunnel(staging, port, stack="space-harbor/staging") == "started"
        message = _refusal(config, preview=False)
        assert "is held by the API tunnel of stack space-harbor/staging (pid " in message
        # This stack's own tunnel on its port is no obstacle (the run replaces or reuses it).
        stop_tunnel(port)
        assert ensure_tunnel(staging, port, stack="space-harbor/test") == "started"
        run_program(config, tunnel_port_check=check_tunnel_port)
    finally:
        stop_tunnel(port)
