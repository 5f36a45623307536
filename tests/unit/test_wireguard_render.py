"""WireGuard keys and wg-quick files."""

from __future__ import annotations

import base64
import configparser
import os
import shutil
import subprocess

import pytest

from components.config import load_config
from components.render.wireguard import mesh_peers, public_key, render_node_config, render_operator_config
from tests.conftest import base_config


def test_public_key_matches_rfc7748_vector() -> None:
    # RFC 7748 §6.1, Alice's key pair: an implementation-independent check of the derivation.
    private = bytes.fromhex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
    expected = bytes.fromhex("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")
    assert public_key(base64.b64encode(private).decode()) == base64.b64encode(expected).decode()


@pytest.mark.skipif(shutil.which("wg") is None, reason="wireguard-tools (wg) is not installed")
def test_public_key_matches_wg_pubkey_for_unclamped_random_keys() -> None:
    # RandomBytes gives unclamped bytes; wg clamps them the same way X25519 does.
    for _ in range(5):
        private = base64.b64encode(os.urandom(32)).decode()
        wg = subprocess.run(["wg", "pubkey"], input=private, capture_output=True, text=True, check=True)
        assert public_key(private) == wg.stdout.strip()


def _config(agents: int = 2, operators: list[dict[str, str]] | None = None):
    raw = base_config(agents=agents)
    raw["mesh"] = {"operators": operators or []}
    return load_config(raw)


def _keys(names: list[str]) -> dict[str, str]:
    return {name: base64.b64encode(name.encode().ljust(32, b"k")).decode() for name in names}


def _parse(text: str) -> tuple[dict[str, str], list[dict[str, str]]]:
    """Split a wg-quick file into its [Interface] and [Peer] sections."""
    interface: dict[str, str] = {}
    peers: list[dict[str, str]] = []
    current: dict[str, str] | None = None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line == "[Interface]":
            current = interface
        elif line == "[Peer]":
            current = {}
            peers.append(current)
        else:
            key, _, value = line.partition(" = ")
            assert current is not None, f"setting outside a section: {line}"
            current[key] = value
    return interface, peers


def test_node_config_lists_every_other_member_once() -> None:
    config = _config(agents=2, operators=[{"name": "laptop", "meshAddress": "10.175.0.9"}])
    keys = _keys(["server-1", "agent-1", "agent-2", "laptop"])
    peers = mesh_peers(config, keys)
    text = render_node_config(config, "agent-1", "PRIVATE", peers)
    interface, sections = _parse(text)
    assert interface == {
        "Address": "10.160.1.1/12",
        "ListenPort": "51871",
        "MTU": "1420",
        "PrivateKey": "PRIVATE",
    }
    by_ip = {peer["AllowedIPs"]: peer for peer in sections}
    assert set(by_ip) == {"10.160.0.1/32", "10.160.1.2/32", "10.175.0.9/32"}
    assert by_ip["10.160.0.1/32"]["Endpoint"] == "192.0.2.10:51871"
    assert by_ip["10.160.0.1/32"]["PublicKey"] == keys["server-1"]
    # Operators dial in from behind NAT; nodes never dial them.
    assert "Endpoint" not in by_ip["10.175.0.9/32"]
    assert all(peer["PersistentKeepalive"] == "25" for peer in sections)


def test_endpoint_override_and_ipv6_brackets() -> None:
    raw = base_config(agents=1)
    raw["nodes"][1]["endpoint"] = "2001:db8::20"
    raw["nodes"][0]["endpoint"] = "server-1.example.org"
    config = load_config(raw)
    peers = {peer.name: peer for peer in mesh_peers(config, _keys(["server-1", "agent-1"]))}
    assert peers["agent-1"].endpoint == "[2001:db8::20]:51871"
    assert peers["server-1"].endpoint == "server-1.example.org:51871"


def test_keepalive_zero_leaves_it_out() -> None:
    raw = base_config(agents=1)
    raw["mesh"] = {"persistentKeepalive": 0}
    config = load_config(raw)
    text = render_node_config(config, "server-1", "P", mesh_peers(config, _keys(["server-1", "agent-1"])))
    assert "PersistentKeepalive" not in text


def test_operator_config_reaches_every_node_and_no_other_operator() -> None:
    operators = [{"name": "alice", "meshAddress": "10.175.0.1"}, {"name": "bob", "meshAddress": "10.175.0.2"}]
    config = _config(agents=1, operators=operators)
    peers = mesh_peers(config, _keys(["server-1", "agent-1", "alice", "bob"]))
    interface, sections = _parse(render_operator_config(config, "alice", "ALICE-PRIVATE", peers))
    assert interface["Address"] == "10.175.0.1/32"
    assert interface["PrivateKey"] == "ALICE-PRIVATE"
    assert "ListenPort" not in interface
    assert sorted(peer["AllowedIPs"] for peer in sections) == ["10.160.0.1/32", "10.160.1.1/32"]
    assert all(peer["Endpoint"].endswith(":51871") for peer in sections)


def test_rendered_file_is_valid_ini_for_wg_quick() -> None:
    config = _config(agents=1)
    text = render_node_config(config, "server-1", "P", mesh_peers(config, _keys(["server-1", "agent-1"])))
    parser = configparser.ConfigParser(strict=False)
    parser.read_string(text)
    assert parser.sections() == ["Interface", "Peer"]
