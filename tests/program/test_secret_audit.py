"""Security audit of the registered graph under mocks (issue 6): where secrets go, and host-key pins.

Every secret the stack config can hold is set to a unique marker; the generated ones (WireGuard
private keys, the k3s token when none is given, operator keys) are read back from the run. None
may appear in a non-secret input of any resource (`Registered.public_text`), in a command line,
or in a non-secret stack output. The testbed half of the audit (files, processes and git history
on real nodes) is tests/testbed/test_audit.py.
"""

from __future__ import annotations

import copy
import json
import re
import types
import typing
from collections.abc import Iterator
from typing import Any

import pytest
from pydantic import BaseModel, SecretStr

from components.config import HarborConfig, load_config
from tests.conftest import EXAMPLE_HOST_KEY, base_config, fake_private_key
from tests.harness import ProgramRun, run_program

MODES = {"preview": True, "up": False}
OTHER_HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHr1ZKYrCeZ1d6aJx7o5m7VoVWoS2ZrGkzQ6Yw0Qm3uP"
ACTION_LINE = re.compile(r"(sudo -n )?bash -s -- [a-z][a-z-]*")


def marker(path: str) -> str:
    return "MARKER-AUDIT-" + re.sub(r"[^A-Za-z0-9]+", "-", path).strip("-").upper()


def pem_text(marker: str) -> str:
    return f"-----BEGIN PRIVATE KEY-----\n{marker}\n-----END PRIVATE KEY-----\n"


def audit_config(transport: str) -> dict[str, Any]:
    """1 server + 2 agents (one with its own SSH key, two behind bastions), etcd snapshots to S3, every
    secret a marker."""
    config = base_config(agents=2)
    config["sshPrivateKey"] = fake_private_key(marker("sshPrivateKey"))
    config["nodes"][1]["sshPrivateKey"] = fake_private_key(marker("nodes.sshPrivateKey"))
    config["nodes"][0]["sshHostKey"] = EXAMPLE_HOST_KEY
    config["nodes"][2]["sshHostKey"] = OTHER_HOST_KEY
    # Behind bastions with keys of their own: the stack's for the server, its own for agent-2;
    # agent-1 is dialled directly.
    config["ssh"] = {
        "bastion": {"host": "198.51.100.5", "privateKey": fake_private_key(marker("ssh.bastion.privateKey"))},
        # agent-1 stays unpinned, which the stack must then allow: its connection has no hostKey.
        "allowUnpinnedHostKeys": True,
    }
    del config["nodes"][1]["sshHostKey"]
    config["nodes"][1]["bastion"] = False
    config["nodes"][2]["bastion"] = {
        "host": "198.51.100.6",
        "hostKey": OTHER_HOST_KEY,
        "privateKey": fake_private_key(marker("nodes.bastion.privateKey")),
    }
    config["mesh"] = {"operators": [{"name": "laptop", "meshAddress": "10.160.200.1"}]}
    config["k3s"] = {
        # with what a real token has on top (length, variety), which k3s.token must show
        "token": marker("k3s.token") + "-0f9a6c31b8e45d72",
        "agentToken": marker("k3s.agentToken") + "-0f9a6c31b8e45d72",
        "datastore": "etcd",
        "firstServer": "server-1",
        "etcdSnapshots": {
            "s3Bucket": "snapshots",
            "s3AccessKey": marker("k3s.etcdSnapshots.s3AccessKey"),
            "s3SecretKey": marker("k3s.etcdSnapshots.s3SecretKey"),
        },
        # One registry per way to log in; a client key given as PEM text, written to the nodes.
        "registries": {
            "configs": {
                "registry.example.org": {
                    "auth": {"username": "puller", "password": marker("k3s.registries.password")},
                    "tls": {
                        "certFile": "/etc/ssl/registry/client.crt",
                        # PEM text the nodes get as a file: only its shape is checked here.
                        "keyFile": pem_text(marker("k3s.registries.keyFile")),
                    },
                },
                "quay.example.org": {"auth": {"auth": marker("k3s.registries.auth")}},
                "cloud.example.org": {"auth": {"identityToken": marker("k3s.registries.identityToken")}},
            }
        },
    }
    if transport == "https":
        config["gitops"] = {
            "repoUrl": "https://git.example.org/ops/cluster.git",
            "username": "harbor",
            "password": marker("gitops.password"),
            "argocdUsername": "harbor-reader",
            "argocdPassword": marker("gitops.argocdPassword"),
        }
    else:
        config["gitops"]["sshPrivateKey"] = fake_private_key(marker("gitops.sshPrivateKey"))
        config["gitops"]["argocdSshPrivateKey"] = fake_private_key(marker("gitops.argocdSshPrivateKey"))
    components = config["components"]
    components["telegraf"] = {"tlsKey": marker("components.telegraf.tlsKey")}
    components["smtp"] = {"relayPassword": marker("components.smtp.relayPassword")}
    components["backup"] = {"token": marker("components.backup.token")}
    return config


def _types(annotation: Any) -> Iterator[Any]:
    yield annotation
    for arg in typing.get_args(annotation):
        yield from _types(arg)


def secret_fields(model: type[BaseModel], prefix: str = "") -> Iterator[str]:
    """Dotted paths (list items unnumbered) of every SecretStr field the config model declares."""
    for name, info in model.model_fields.items():
        for kind in _types(info.annotation):
            if kind is SecretStr:
                yield prefix + name
            elif isinstance(kind, type) and not isinstance(kind, types.GenericAlias) and issubclass(kind, BaseModel):
                yield from secret_fields(kind, f"{prefix}{name}.")


def set_secret_fields(value: Any, prefix: str = "") -> Iterator[str]:
    """The paths of the SecretStr fields that hold a value in a loaded config."""
    if isinstance(value, BaseModel):
        for name in type(value).model_fields:
            item = getattr(value, name)
            if isinstance(item, SecretStr) and item.get_secret_value():
                yield prefix + name
            else:
                yield from set_secret_fields(item, f"{prefix}{name}.")
    elif isinstance(value, list):
        for item in value:
            yield from set_secret_fields(item, prefix)
    elif isinstance(value, dict):  # keyed sections, like k3s.registries.configs.<registry>
        for item in value.values():
            yield from set_secret_fields(item, prefix)


def test_the_audit_sets_every_secret_the_config_can_hold() -> None:
    declared = set(secret_fields(HarborConfig))
    assert {"ssh_private_key", "k3s.token", "gitops.ssh_private_key", "gitops.password"} <= declared
    covered: set[str] = set()
    for transport in ("ssh", "https"):
        loaded = load_config(audit_config(transport))
        covered |= set(set_secret_fields(loaded))
        for value in loaded.secret_values():
            assert value.startswith("MARKER-AUDIT-") or "MARKER-AUDIT-" in value, "a secret without a marker"
    assert covered == declared, f"secrets the audit does not set: {sorted(declared - covered)}"


def generated_secrets(run: ProgramRun) -> dict[str, str]:
    """Secrets the program makes itself: WireGuard private keys, operator keys, the k3s token."""
    found: dict[str, str] = {}
    for command in run.commands():
        if command.name.endswith("-mesh"):
            for key in re.findall(r"PrivateKey = (\S+)", command.inputs["stdin"]):
                found[f"{command.name} private key"] = key
    for name, text in (run.outputs.get("operatorConfigs") or {}).items():
        for key in re.findall(r"PrivateKey = (\S+)", text):
            found[f"operator {name} private key"] = key
    token = run.outputs.get("k3sToken")
    if token:
        found["k3s token"] = token
    return found


def assert_no_leak(run: ProgramRun, secrets: dict[str, str]) -> None:
    for resource in run.resources:
        text = resource.public_text()
        for what, value in secrets.items():
            assert value not in text, f"{what} is readable in {resource.type} {resource.name}"
    for name, value in run.outputs.items():
        if name in run.secret_outputs:
            continue
        text = json.dumps(value)
        for what, secret in secrets.items():
            assert secret not in text, f"{what} is in the non-secret stack output {name}"


@pytest.mark.parametrize("transport", ["ssh", "https"])
@pytest.mark.parametrize("mode", MODES)
def test_no_config_secret_reaches_a_public_input_or_output(transport: str, mode: str) -> None:
    config = audit_config(transport)
    run = run_program(config, preview=MODES[mode])
    markers = {
        f"config secret {i}": m for i, m in enumerate(re.findall(r"MARKER-AUDIT-[A-Z0-9-]+", json.dumps(config)))
    }
    assert len(markers) >= 9
    assert_no_leak(run, markers)
    if mode == "up":
        # The markers do reach the nodes, inside secret inputs: the check above is not vacuous.
        stdin = " ".join(c.inputs.get("stdin", "") for c in run.commands())
        for name in ("k3s.token", "k3s.etcdSnapshots.s3SecretKey", "k3s.registries.password"):
            assert marker(name) in stdin
        # Argo CD's read-only credential reaches its repository Secret, secret, and the write one does not.
        repository = run.named("argocd-repository")
        own, write = (
            ("gitops.argocdPassword", "gitops.password")
            if transport == "https"
            else ("gitops.argocdSshPrivateKey", "gitops.sshPrivateKey")
        )
        assert "stringData" in repository.secret_inputs
        assert marker(own) in json.dumps(repository.inputs["stringData"])
        assert marker(write) not in json.dumps(repository.inputs)


def test_generated_secrets_stay_secret() -> None:
    config = audit_config("ssh")
    del config["k3s"]["token"]  # generated by pulumi-random instead
    run = run_program(config)
    secrets = generated_secrets(run)
    assert sum(what.endswith("-mesh private key") for what in secrets) == 3
    assert "operator laptop private key" in secrets and "k3s token" in secrets
    assert_no_leak(run, secrets)
    assert {"kubeconfig", "k3sToken", "operatorConfigs"} <= run.secret_outputs


@pytest.mark.parametrize("mode", MODES)
def test_command_lines_carry_no_parameters(mode: str) -> None:
    """Parameters go on stdin, never on argv (the node's `ps`) nor into SSH env requests."""
    run = run_program(audit_config("ssh"), preview=MODES[mode])
    for command in run.commands():
        for action in ("create", "update", "delete"):
            line = command.inputs.get(action)
            assert line is None or ACTION_LINE.fullmatch(line), f"{command.name} {action}: {line!r}"
        assert not command.inputs.get("environment"), f"{command.name} sends environment variables"


@pytest.mark.parametrize("mode", MODES)
def test_host_keys_are_pinned_where_configured(mode: str) -> None:
    config = audit_config("ssh")
    run = run_program(config, preview=MODES[mode])
    pins = {node["host"]: node.get("sshHostKey") for node in config["nodes"]}
    assert None in pins.values(), "the audit stack needs a node without a pin too"
    seen: set[str] = set()
    for command in run.commands():
        connection = command.inputs["connection"]
        host = connection["host"]
        seen.add(host)
        # Without a pin pulumi-command accepts any host key, on every connection (not only the first).
        assert connection.get("hostKey") == pins[host], f"{command.name} -> {host}"
    assert seen == set(pins)
    if mode == "up":  # the tunnel opens once the kubeconfig is known
        assert [target.host_key for target, _ in run.tunnels] == [config["nodes"][0]["sshHostKey"]]


def test_a_pin_changes_only_the_connections_to_that_node() -> None:
    config = audit_config("ssh")
    repinned = copy.deepcopy(config)
    repinned["nodes"][2]["sshHostKey"] = EXAMPLE_HOST_KEY
    before, after = run_program(config), run_program(repinned)
    changed = {r.name for r in after.commands() if r.inputs["connection"] != before.named(r.name).inputs["connection"]}
    host = config["nodes"][2]["host"]
    assert changed == {c.name for c in after.commands() if c.inputs["connection"]["host"] == host}
