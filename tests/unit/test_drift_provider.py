"""The node drift provider's operations, called as the engine calls them (components/drift.py)."""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

import dill
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

import components.drift as drift
from components.drift import (
    NOT_READ,
    DriftReadError,
    NodeDriftProvider,
    drift_check,
    drift_diff,
    drift_read,
    recorded,
    ssh_read,
)
from components.render.drift import AS_APPLIED, zero_repair
from tests.conftest import EXAMPLE_HOST_KEY, SSH_KEY_MARKER, fake_private_key

EXPECTED = {
    "config.yaml": {"sha256": "a" * 64},
    "registries.yaml": {"sha256": None},
    "k3s-version": {"version": "v1.31.4+k3s1"},
    "k3s-service": {"unit": "k3s", "role": "server"},
}
CLEAN_FACTS = f"k3s.config {'a' * 64}\nk3s.registries absent no\nk3s.version v1.31.4+k3s1\nk3s.unit active enabled\n"


def real_key() -> str:
    key = Ed25519PrivateKey.generate()
    return key.private_bytes(Encoding.PEM, PrivateFormat.OpenSSH, NoEncryption()).decode()


def props(**extra: Any) -> dict[str, Any]:
    connection = {"host": "192.0.2.1", "port": 22, "user": "root", "private_key": fake_private_key(SSH_KEY_MARKER)}
    return {
        "node": "n1",
        "connection": connection | {"host_key": EXAMPLE_HOST_KEY, "bastion": None},
        "expected": EXPECTED,
        **extra,
    }


def test_create_records_what_was_applied_and_dials_nobody(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(drift, "ssh_read", lambda *_: pytest.fail("create dialled the node"))
    result = NodeDriftProvider().create(drift_check({}, props()))
    assert result.id == "drift:n1"
    assert result.outs["observed"] == dict.fromkeys(EXPECTED, AS_APPLIED)
    assert result.outs["repair"] == zero_repair()
    assert result.outs["reachable"] == NOT_READ


def test_a_clean_read_observes_everything_as_applied() -> None:
    state = recorded(drift_check({}, props()), None)
    outs, inputs = drift_read(state, read=lambda _connection, _payload: CLEAN_FACTS)
    assert outs["observed"] == dict.fromkeys(EXPECTED, AS_APPLIED)
    assert outs["reachable"] == "reachable"
    assert inputs["observed"] == outs["observed"]
    assert drift_diff(outs, drift_check(inputs, props())) == []


def test_a_read_that_finds_drift_shows_in_the_diff_and_bumps_only_its_step() -> None:
    state = recorded(drift_check({}, props()), None)
    facts = CLEAN_FACTS.replace("active enabled", "inactive enabled")
    outs, inputs = drift_read(state, read=lambda _connection, _payload: facts)
    assert outs["observed"]["k3s-service"] == "n1: k3s.service inactive"
    news = drift_check(inputs, props())
    assert news["repair"] == {"k3s": 1, "mesh": 0, "firewall": 0}
    assert news["observed"] == dict.fromkeys(EXPECTED, AS_APPLIED) and "reachable" not in news
    assert drift_diff(outs, news) == ["repair", "observed.k3s-service"]
    # The update puts the observation back to "as applied"; the next check bumps nothing more.
    after = NodeDriftProvider().update("drift:n1", outs, news).outs
    assert after["observed"] == dict.fromkeys(EXPECTED, AS_APPLIED)
    assert after["repair"] == {"k3s": 1, "mesh": 0, "firewall": 0}
    assert drift_check(after, props())["repair"] == after["repair"]
    assert drift_diff(after, drift_check(after, props())) == []


def test_an_unreachable_node_keeps_its_observations_and_says_why() -> None:
    state = recorded(drift_check({}, props()), None)

    def unreachable(_connection: Any, _payload: str) -> str:
        raise DriftReadError("cannot reach the node at 192.0.2.1:22: TimeoutError: timed out")

    outs, inputs = drift_read(state, read=unreachable)
    assert outs["reachable"] == "unreachable: cannot reach the node at 192.0.2.1:22: TimeoutError: timed out"
    assert outs["observed"] == state["observed"]
    assert drift_check(inputs, props())["repair"] == zero_repair()  # nothing repaired there
    assert drift_diff(outs, drift_check(inputs, props())) == []


def test_new_expectations_are_a_change_and_unknown_ones_too() -> None:
    state = recorded(drift_check({}, props()), None)
    changed = props(expected={**EXPECTED, "k3s-version": {"version": "v1.31.5+k3s1"}})
    assert drift_diff(state, drift_check(state, changed)) == ["expected"]

    class Unknown:  # what the SDK hands a provider for a value not known in preview
        pass

    assert drift_diff(state, drift_check(state, props(expected=Unknown()))) == ["expected"]


def test_read_payload_goes_on_stdin_and_carries_no_secret() -> None:
    seen: dict[str, Any] = {}

    def capture(connection: Any, payload: str) -> str:
        seen.update(connection=connection, payload=payload)
        return CLEAN_FACTS

    drift_read(recorded(drift_check({}, props()), None), read=capture)
    assert "HARBOR_K3S_ROLE=server" in seen["payload"]
    assert SSH_KEY_MARKER not in seen["payload"]
    assert SSH_KEY_MARKER in seen["connection"]["private_key"]


def test_delete_dials_nobody(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(drift, "ssh_read", lambda *_: pytest.fail("delete dialled the node"))
    NodeDriftProvider().delete("drift:n1", recorded(drift_check({}, props()), None))


def test_an_unpinned_node_is_not_dialled() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        server.settimeout(0.5)
        port = server.getsockname()[1]
        connection = props()["connection"] | {"host": "127.0.0.1", "port": port, "host_key": None}
        with pytest.raises(DriftReadError, match="host key is not pinned"):
            ssh_read(connection, "")
        with pytest.raises(TimeoutError):
            server.accept()


def test_a_node_that_refuses_is_unreachable_within_bounded_time() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed once the block ends: connections are refused
    connection = props()["connection"] | {"host": "127.0.0.1", "port": port, "private_key": real_key()}
    started = time.monotonic()
    with pytest.raises(DriftReadError, match=r"cannot reach the node at 127\.0\.0\.1") as error:
        ssh_read(connection, "")
    assert time.monotonic() - started < drift.DIAL_TIMEOUT
    assert "PRIVATE KEY" not in str(error.value)


def test_a_node_that_never_answers_times_out() -> None:
    """A listener that accepts and says nothing (no SSH banner): the dial gives up at its bound."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        accepted: list[socket.socket] = []
        threading.Thread(target=lambda: accepted.append(server.accept()[0]), daemon=True).start()
        connection = props()["connection"] | {
            "host": "127.0.0.1",
            "port": server.getsockname()[1],
            "private_key": real_key(),
        }
        started = time.monotonic()
        with pytest.raises(DriftReadError, match="cannot reach the node"):
            ssh_read(connection, "")
        assert time.monotonic() - started < drift.DIAL_TIMEOUT * 2
        for conn in accepted:
            conn.close()


def test_the_provider_pickles_by_reference_at_its_path() -> None:
    pickled = dill.dumps(NodeDriftProvider(), recurse=True)
    assert b"components.drift" in pickled and b"NodeDriftProvider" in pickled
    assert type(dill.loads(pickled)) is NodeDriftProvider  # noqa: S301 (our own bytes)
