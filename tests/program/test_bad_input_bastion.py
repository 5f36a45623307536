"""Malformed bastion config (`ssh.bastion`, `nodes[i].bastion`) is refused by the program itself: one
error naming the key path, no secret echoed, and not a single resource registered before it."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest

from tests.conftest import EXAMPLE_HOST_KEY, GIT_KEY_MARKER, SSH_KEY_MARKER, base_config, fake_private_key
from tests.harness import run_program
from tests.helpers import assert_refused_before_any_resource

Mutation = Callable[[dict[str, Any]], None]
BASTION_KEY_MARKER = "MARKER-BASTION-KEY-51d0"
# An RSA key's blob under an ed25519 name: the type and the key data disagree.
RSA_BLOB = "AAAAB3NzaC1yc2EAAAADAQABAAAAgQC7"


def _stack_bastion(**fields: Any) -> Mutation:
    def mutate(config: dict[str, Any]) -> None:
        config["ssh"] = {"bastion": {"host": "jump.example.org", **fields}}

    return mutate


def _node_bastion(value: Any) -> Mutation:
    def mutate(config: dict[str, Any]) -> None:
        config["nodes"][1]["bastion"] = value

    return mutate


def _stack_bastion_is_the_server(config: dict[str, Any]) -> None:
    config["ssh"] = {"bastion": {"host": "192.0.2.10"}}


def _stack_bastion_is_the_server_on_its_port(config: dict[str, Any]) -> None:
    config["ssh"] = {"port": 2222, "bastion": {"host": "192.0.2.10", "port": 2222}}


CASES: list[tuple[str, Mutation, str]] = [
    ("stack bastion without host", lambda c: c.__setitem__("ssh", {"bastion": {"port": 22}}), "ssh.bastion.host: is required"),
    ("stack bastion not an object", lambda c: c.__setitem__("ssh", {"bastion": "jump.example.org"}), "ssh.bastion: Input should be a valid dictionary"),
    ("bastion host not a host", _stack_bastion(host="jump host!"), "ssh.bastion.host: 'jump host!' is neither an IP address nor a DNS name"),
    ("bastion port out of range", _stack_bastion(port=70000), "ssh.bastion.port: 70000 is not a port"),
    ("bastion port not a number", _stack_bastion(port="ssh"), "ssh.bastion.port: Input should be a valid integer"),
    ("typo in a bastion key", _stack_bastion(hostkey=EXAMPLE_HOST_KEY), "ssh.bastion.hostkey: is not a known key"),
    ("bastion user with a space", _stack_bastion(user="jump user"), "ssh.bastion.user: 'jump user' is not a login name"),
    ("bastion user with an @", _stack_bastion(user="jump@example.org"), "ssh.bastion.user: 'jump@example.org' is not a login name"),
    ("bastion key not text", _stack_bastion(privateKey=1234), "ssh.bastion.privateKey: Input should be a valid string"),
    ("host key without its type", _stack_bastion(hostKey=EXAMPLE_HOST_KEY.split()[1]), "ssh.bastion.hostKey: is not a host key like `ssh-ed25519 AAAA...`"),
    ("host key a whole keyscan line", _stack_bastion(hostKey=f"jump.example.org {EXAMPLE_HOST_KEY}"), "ssh.bastion.hostKey: starts with 'jump.example.org', a host name"),
    ("host key not base64", _stack_bastion(hostKey="ssh-ed25519 AAAA!!"), "ssh.bastion.hostKey: the ssh-ed25519 key is not base64"),
    ("host key of another type", _stack_bastion(hostKey=f"ssh-ed25519 {RSA_BLOB}"), "ssh.bastion.hostKey: the key data does not match its type ssh-ed25519"),
    ("node bastion a bare host name", _node_bastion("jump.example.org"), "nodes[1].bastion: must be a bastion {host, port, user, privateKey, hostKey}, or false to dial this node directly (got 'jump.example.org')"),
    ("node bastion true", _node_bastion(True), "nodes[1].bastion: must be a bastion {host, port, user, privateKey, hostKey}, or false to dial this node directly (got True)"),
    ("node bastion without host", _node_bastion({"user": "jump"}), "nodes[1].bastion.host: is required"),
    ("node bastion bad port", _node_bastion({"host": "jump.example.org", "port": 0}), "nodes[1].bastion.port: 0 is not a port"),
    ("node bastion bad host key", _node_bastion({"host": "jump.example.org", "hostKey": "jump"}), "nodes[1].bastion.hostKey: is not a host key"),
    ("node is its own bastion", _node_bastion({"host": "192.0.2.21"}), "nodes[1].bastion.host: 192.0.2.21:22 is nodes[1] (agent-1) itself"),
    ("stack bastion is a node", _stack_bastion_is_the_server, "ssh.bastion.host: 192.0.2.10:22 is nodes[0] (server-1) itself; set nodes[0].bastion to false"),
    ("stack bastion is a node on its port", _stack_bastion_is_the_server_on_its_port, "ssh.bastion.host: 192.0.2.10:2222 is nodes[0] (server-1) itself"),
]  # fmt: skip


@pytest.mark.parametrize(("mutate", "expected"), [(m, e) for _, m, e in CASES], ids=[c[0] for c in CASES])
def test_refused_with_key_path_before_any_resource(mutate: Mutation, expected: str) -> None:
    config = copy.deepcopy(base_config(agents=1))
    config["ssh"] = {"bastion": {"host": "jump.example.org", "privateKey": fake_private_key(BASTION_KEY_MARKER)}}
    mutate(config)
    assert_refused_before_any_resource(config, expected, secrets=(SSH_KEY_MARKER, GIT_KEY_MARKER, BASTION_KEY_MARKER))


def test_the_cases_are_distinct() -> None:
    assert len({case[0] for case in CASES}) == len(CASES)
    assert len({case[2] for case in CASES}) == len(CASES)


@pytest.mark.parametrize(
    "mutate",
    [
        _stack_bastion(port=2222, user="jump", hostKey=f"{EXAMPLE_HOST_KEY} jump@example"),
        _node_bastion(False),
        _node_bastion({"host": "203.0.113.7", "hostKey": EXAMPLE_HOST_KEY}),
    ],
    ids=["stack bastion with every field", "a node opts out", "a node with its own bastion"],
)
def test_good_bastion_config_is_accepted(mutate: Mutation) -> None:
    # The control for the cases above: each registers resources.
    config = copy.deepcopy(base_config(agents=1))
    mutate(config)
    assert run_program(config, preview=True).resources
