"""Shared stack configs for the tests: small, realistic, and every secret a unique marker."""

from __future__ import annotations

import copy
import hashlib
import os
import sys
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.helpers import FakeK3s  # noqa: E402 (needs the project root on sys.path)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--vendored",
        action="store_true",
        help="also run the `vendored` checks against the real upstream files ./scripts/vendor fetched "
        "(they fail when a file is missing); CI has no network to fetch them, so they are left out by default",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Deselected, not skipped: a check that cannot run here is not counted at all.
    if config.getoption("--vendored"):
        return
    left_out = [item for item in items if item.get_closest_marker("vendored")]
    if left_out:
        config.hook.pytest_deselected(items=left_out)
        items[:] = [item for item in items if not item.get_closest_marker("vendored")]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    # As root, ./scripts/test has installed everything the testbed needs (CI runs it so): a testbed
    # test that skips there hides a missing install step, so it fails with the skip's reason.
    outcome = yield
    report = outcome.get_result()
    if report.when == "call":
        # Which engine drove the test's stack (tests/testbed/engine.py StackEngine), for the summary.
        kinds = {getattr(value, "engine_kind", None) for value in getattr(item, "funcargs", {}).values()}
        for kind in sorted(k for k in kinds if isinstance(k, str)):
            report.user_properties.append(("engine", kind))
    if report.skipped and os.geteuid() == 0 and item.get_closest_marker("testbed") is not None:
        report.outcome = "failed"
        report.longrepr = f"a testbed test skipped as root: {report.longrepr}"


def pytest_terminal_summary(terminalreporter: Any) -> None:
    # CI's last lines say whether the real-engine tier ran, and how it went (./scripts/test).
    outcomes: dict[str, int] = {}
    for kind in ("passed", "failed", "error", "skipped"):
        for report in terminalreporter.stats.get(kind, []):
            counted = report.when == "call" or (report.when == "setup" and report.outcome != "passed")
            if counted and "realengine" in getattr(report, "keywords", {}):
                outcomes[report.outcome] = outcomes.get(report.outcome, 0) + 1
    engines: dict[str, int] = {}
    for kind in ("passed", "failed"):
        for report in terminalreporter.stats.get(kind, []):
            for key, value in getattr(report, "user_properties", []):
                if key == "engine" and report.when == "call":
                    engines[value] = engines.get(value, 0) + 1
    if outcomes:
        counts = ", ".join(f"{count} {outcome}" for outcome, count in sorted(outcomes.items()))
        terminalreporter.write_line(f"real-engine tier ran: {counts} (the real pulumi CLI of ./scripts/engine)")
    elif terminalreporter.config.getoption("markexpr", "") != "not realengine":
        terminalreporter.write_line("real-engine tier: no test of it ran in this session")
    if engines:
        terminalreporter.write_line(
            f"testbed tests on either engine: {engines.get('real', 0)} under the real engine, "
            f"{engines.get('replay', 0)} under the replay (tests/testbed/engine.py)"
        )


# Unique markers: a leak test searches for them anywhere they must not be.
SSH_KEY_MARKER = "MARKER-SSH-KEY-6f1c"
GIT_KEY_MARKER = "MARKER-GIT-KEY-93ab"
TOKEN_MARKER = "MARKER-K3S-TOKEN-2d7e-0f9a6c31b8e45d72"  # as long and varied as a real token
EXAMPLE_HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"


def _key_of(seed: str) -> Ed25519PrivateKey:
    # Derived from the seed, so that a stack built twice has the same keys (a changed key is a change).
    return Ed25519PrivateKey.from_private_bytes(hashlib.sha256(seed.encode()).digest())


def fake_private_key(marker: str) -> str:
    """A real, unencrypted private key (the config refuses anything else), with `marker` on a line
    after it, where every SSH client's parser stops reading: a leak test searches for the marker."""
    pem = _key_of(marker).private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()).decode()
    return f"{pem}{marker}\n"


def fake_host_key(name: str) -> str:
    """A node's SSH host key pin, `ssh-ed25519 AAAA...`, the same for the same name."""
    return _key_of(f"host-key-{name}").public_key().public_bytes(Encoding.OpenSSH, PublicFormat.OpenSSH).decode()


def pinned(node: dict[str, Any]) -> dict[str, Any]:
    """A `nodes` entry with its SSH host key pinned, as every node of a stack must be."""
    return {**node, "sshHostKey": fake_host_key(node["name"])}


def base_config(agents: int = 0) -> dict[str, Any]:
    """One server plus `agents` agents, mesh and firewall on, every required key set, every node pinned."""
    nodes = [{"name": "server-1", "role": "server", "host": "192.0.2.10", "meshAddress": "10.160.0.1"}]
    nodes += [
        {"name": f"agent-{i}", "role": "agent", "host": f"192.0.2.{20 + i}", "meshAddress": f"10.160.1.{i}"}
        for i in range(1, agents + 1)
    ]
    for node in nodes:
        node["sshHostKey"] = fake_host_key(node["name"])
    return {
        "domain": "example.org",
        "sshPrivateKey": fake_private_key(SSH_KEY_MARKER),
        "nodes": nodes,
        "gitops": {
            "repoUrl": "git@git.example.org:ops/cluster.git",
            "sshPrivateKey": fake_private_key(GIT_KEY_MARKER),
            "knownHosts": f"git.example.org {EXAMPLE_HOST_KEY}",
        },
        "components": {
            "traefik": {"acmeEmail": "ops@example.org"},
            "infracheck": {"host": "health.example.org"},
        },
    }


def etcd_config() -> dict[str, Any]:
    config = base_config(agents=1)
    config["nodes"] = [
        {
            "name": f"server-{i}",
            "role": "server",
            "host": f"192.0.2.{10 + i}",
            "meshAddress": f"10.160.0.{i}",
            "sshHostKey": fake_host_key(f"server-{i}"),
        }
        for i in range(1, 4)
    ] + config["nodes"][1:]
    config["k3s"] = {"datastore": "etcd", "firstServer": "server-1"}
    return config


def mesh_off_config() -> dict[str, Any]:
    config = base_config(agents=2)
    for i, node in enumerate(config["nodes"]):
        del node["meshAddress"]
        node["privateAddress"] = f"172.16.0.{10 + i}"
    config["mesh"] = {"enabled": False}
    config["k3s"] = {"flannelBackend": "wireguard-native"}
    return config


STACKS = {
    "single": lambda: base_config(agents=0),
    "server-3-agents": lambda: base_config(agents=3),
    "mesh-off": mesh_off_config,
    "etcd-3-servers": etcd_config,
}


@pytest.fixture
def config_dict() -> dict[str, Any]:
    return copy.deepcopy(base_config(agents=1))


@pytest.fixture
def fake_k3s(tmp_path: Path) -> FakeK3s:
    """An empty cluster behind a fake `k3s kubectl`, for k3s-lifecycle.sh (tests/helpers.py)."""
    return FakeK3s(tmp_path)
