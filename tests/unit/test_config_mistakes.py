"""The mistakes a newcomer makes in stack config, each refused at load with its key path and its fix.

Every missing required key comes in one run; host-key pins and private keys are parsed as the
programs that use them would; a node without a pin is refused unless the stack opts out; a secret
is never echoed back, whichever secret field it is in; a credential inside the repository URL is
refused.
"""

from __future__ import annotations

import copy
import subprocess
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Union, get_args, get_origin

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    BestAvailableEncryption,
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)
from pydantic import BaseModel, SecretStr

from components.config import HarborConfig, load_config
from components.schema import ConfigError
from tests.conftest import base_config, fake_host_key, fake_private_key


def refusal(raw: dict[str, Any]) -> list[str]:
    """The lines of the refusal, without its heading."""
    with pytest.raises(ConfigError) as refused:
        load_config(raw)
    heading, *lines = str(refused.value).split("\n")
    assert heading == "invalid stack config:"
    return [line.strip() for line in lines]


# --- every missing required key at once ------------------------------------------------------------


def test_the_keys_the_default_components_require_are_named_in_one_run() -> None:
    raw = base_config(agents=1)
    del raw["domain"]
    raw["components"] = {}
    lines = refusal(raw)
    assert [line.split(":")[0] for line in lines] == [
        "domain",
        "components.traefik.acmeEmail",
        "components.infracheck.host",
    ]


def test_every_unpinned_node_and_every_missing_gitops_key_in_one_run() -> None:
    raw = base_config(agents=2)
    for node in raw["nodes"]:
        del node["sshHostKey"]
    del raw["gitops"]["sshPrivateKey"], raw["gitops"]["knownHosts"]
    paths = {line.split(":")[0] for line in refusal(raw)}
    assert paths == {
        "gitops.sshPrivateKey",
        "gitops.knownHosts",
        "nodes[0].sshHostKey",
        "nodes[1].sshHostKey",
        "nodes[2].sshHostKey",
    }


def test_every_missing_mesh_address_in_one_run() -> None:
    raw = base_config(agents=2)
    for node in raw["nodes"][1:]:
        del node["meshAddress"]
    assert [line.split(":")[0] for line in refusal(raw)] == ["nodes[1].meshAddress", "nodes[2].meshAddress"]


# --- host keys ---------------------------------------------------------------------------------------


def test_an_unpinned_node_is_refused_with_the_ssh_keyscan_command_and_the_opt_out() -> None:
    raw = base_config(agents=1)
    del raw["nodes"][1]["sshHostKey"]
    [line] = refusal(raw)
    assert line.startswith("nodes[1].sshHostKey: is required")
    assert "ssh-keyscan -t ed25519 192.0.2.21 2>/dev/null | cut -d' ' -f2-" in line
    assert "ssh.allowUnpinnedHostKeys" in line


def test_an_unpinned_node_behind_a_bastion_is_told_where_to_read_its_key() -> None:
    raw = base_config(agents=1)
    del raw["nodes"][1]["sshHostKey"]
    raw["nodes"][1]["bastion"] = {"host": "198.51.100.5", "hostKey": fake_host_key("bastion")}
    [line] = refusal(raw)
    assert "on the bastion 198.51.100.5" in line


def test_the_opt_out_accepts_unpinned_nodes() -> None:
    raw = base_config(agents=1)
    del raw["nodes"][1]["sshHostKey"]
    raw["ssh"] = {"allowUnpinnedHostKeys": True}
    assert load_config(raw).nodes[1].ssh_host_key is None


@pytest.mark.parametrize(
    ("pin", "says"),
    [
        # The whole ssh-keyscan line, host name first.
        (f"203.0.113.10 {fake_host_key('x')}", "a host name: give only the key type and the key"),
        ("ssh-ed25519 notbase64!!", "the ssh-ed25519 key is not base64"),
        ("AAAAC3NzaC1lZDI1NTE5AAAAI", "is not a host key like `ssh-ed25519 AAAA...`"),
        (f"ssh-rsa {fake_host_key('x').split()[1]}", "does not match its type ssh-rsa"),
    ],
)
def test_a_malformed_node_pin_is_refused_with_the_right_form(pin: str, says: str) -> None:
    raw = base_config(agents=1)
    raw["nodes"][1]["sshHostKey"] = pin
    [line] = refusal(raw)
    assert line.startswith("nodes[1].sshHostKey: ") and says in line
    assert "ssh-keyscan -t ed25519 HOST | cut -d' ' -f2-" in line or "not base64" in says or "match" in says


def test_a_valid_pin_is_kept_as_written() -> None:
    # Part of every step's connection: rewriting it would update every step of the node.
    raw = base_config(agents=1)
    raw["nodes"][1]["sshHostKey"] = f"{fake_host_key('x')} root@agent-1"
    assert load_config(raw).nodes[1].ssh_host_key == f"{fake_host_key('x')} root@agent-1"


def test_the_quick_starts_pin_command_gives_a_value_the_model_takes(tmp_path: Path) -> None:
    # What `ssh-keyscan -t ed25519 HOST` prints (`HOST TYPE KEY`), cut as the quick start cuts it.
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "k")], check=True)
    kind, key = (tmp_path / "k.pub").read_text().split()[:2]
    cut = subprocess.run(
        ["cut", "-d", " ", "-f2-"], input=f"203.0.113.10 {kind} {key}\n", text=True, capture_output=True, check=True
    )
    raw = base_config(agents=1)
    raw["nodes"][1]["sshHostKey"] = cut.stdout.strip()
    assert load_config(raw).nodes[1].ssh_host_key == f"{kind} {key}"


# --- private keys ------------------------------------------------------------------------------------

_KEY = Ed25519PrivateKey.generate()
_PRIVATE_KEY_FIELDS = {
    "sshPrivateKey": lambda raw, v: raw.__setitem__("sshPrivateKey", v),
    "nodes[1].sshPrivateKey": lambda raw, v: raw["nodes"][1].__setitem__("sshPrivateKey", v),
    "ssh.bastion.privateKey": lambda raw, v: raw.__setitem__(
        "ssh", {"bastion": {"host": "jump.example.org", "privateKey": v}}
    ),
    "nodes[1].bastion.privateKey": lambda raw, v: raw["nodes"][1].__setitem__(
        "bastion", {"host": "jump.example.org", "privateKey": v}
    ),
    "gitops.sshPrivateKey": lambda raw, v: raw["gitops"].__setitem__("sshPrivateKey", v),
    "gitops.argocdSshPrivateKey": lambda raw, v: raw["gitops"].__setitem__("argocdSshPrivateKey", v),
}
_WRONG_KEYS = {
    "a public key": (
        _KEY.public_key().public_bytes(Encoding.OpenSSH, PublicFormat.OpenSSH).decode() + " me@laptop\n",
        "is a public key (the .pub file)",
    ),
    "a path": ("/home/me/.ssh/id_ed25519", "is a file path, not a key"),
    "a home path": ("~/.ssh/id_ed25519", "is a file path, not a key"),
    "an encrypted OpenSSH key": (
        _KEY.private_bytes(Encoding.PEM, PrivateFormat.OpenSSH, BestAvailableEncryption(b"pass phrase")).decode(),
        "is protected by a passphrase",
    ),
    "an encrypted PKCS#8 key": (
        ec.generate_private_key(ec.SECP256R1())
        .private_bytes(Encoding.PEM, PrivateFormat.PKCS8, BestAvailableEncryption(b"pass phrase"))
        .decode(),
        "is protected by a passphrase",
    ),
    "an encrypted PEM key": (
        ec.generate_private_key(ec.SECP256R1())
        .private_bytes(Encoding.PEM, PrivateFormat.TraditionalOpenSSL, BestAvailableEncryption(b"pass phrase"))
        .decode(),
        "is protected by a passphrase",
    ),
    "a cut key": (
        _KEY.private_bytes(Encoding.PEM, PrivateFormat.OpenSSH, NoEncryption()).decode()[:120]
        + "\n-----END OPENSSH PRIVATE KEY-----\n",
        "is not a readable private key",
    ),
    "garbage": ("hunter2hunter2", "is not a private key"),
}


@pytest.mark.parametrize("path", list(_PRIVATE_KEY_FIELDS))
@pytest.mark.parametrize("wrong", list(_WRONG_KEYS))
def test_every_private_key_is_parsed_at_load(path: str, wrong: str) -> None:
    value, says = _WRONG_KEYS[wrong]
    raw = base_config(agents=1)
    _PRIVATE_KEY_FIELDS[path](raw, value)
    [line] = refusal(raw)
    assert line.startswith(f"{path}: {says}"), line
    if "passphrase" in says:
        assert "ssh-keygen -p -N ''" in line
    else:
        assert f"pulumi config set --secret --path '{path}' <" in line
    # Not a byte of the value comes back (the private parts, the path, the public key).
    for chunk in (part for part in value.split() if len(part) > 8 and "-----" not in part and part != "PRIVATE"):
        assert chunk not in line


@pytest.mark.parametrize("path", list(_PRIVATE_KEY_FIELDS))
def test_real_unencrypted_keys_of_every_format_are_taken(path: str) -> None:
    for text in (
        _KEY.private_bytes(Encoding.PEM, PrivateFormat.OpenSSH, NoEncryption()).decode(),
        ec.generate_private_key(ec.SECP256R1())
        .private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
        .decode(),
        ec.generate_private_key(ec.SECP384R1())
        .private_bytes(Encoding.PEM, PrivateFormat.TraditionalOpenSSL, NoEncryption())
        .decode(),
    ):
        raw = base_config(agents=1)
        _PRIVATE_KEY_FIELDS[path](raw, text)
        load_config(raw)


def test_a_key_made_by_ssh_keygen_is_taken_and_its_pub_file_refused(tmp_path: Path) -> None:
    key = tmp_path / "harbor"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    raw = base_config(agents=1)
    raw["sshPrivateKey"] = key.read_text()
    load_config(raw)
    raw["sshPrivateKey"] = (tmp_path / "harbor.pub").read_text()
    [line] = refusal(raw)
    assert line.startswith("sshPrivateKey: is a public key")
    subprocess.run(["ssh-keygen", "-q", "-p", "-P", "", "-N", "secret words", "-f", str(key)], check=True)
    raw["sshPrivateKey"] = key.read_text()
    [line] = refusal(raw)
    assert line.startswith("sshPrivateKey: is protected by a passphrase")


# --- secrets are never echoed ------------------------------------------------------------------------


def _inner(annotation: Any) -> list[Any]:
    """The types inside `X | None`, `Annotated[X, ...]`, `list[X]`, `dict[str, X]` (for the walk)."""
    origin = get_origin(annotation)
    if origin is Annotated:
        return _inner(get_args(annotation)[0])
    if origin in (Union, UnionType):
        return [inner for arg in get_args(annotation) for inner in _inner(arg)]
    return [annotation]


def _secret_paths(model: type[BaseModel], prefix: str) -> list[str]:
    """The path of every secret field below `model`, found by its type (SecretStr), written the
    way stack config spells it; `[]` stands for one list entry or one map key."""
    found: list[str] = []
    for name, field in model.model_fields.items():
        # As stack config spells it: `k3s` stays `k3s`, snake_case becomes camelCase.
        key = name if "_" not in name else (field.alias or name)
        path = f"{prefix}.{key}" if prefix else key
        for candidate in _inner(field.annotation):
            origin = get_origin(candidate)
            element = get_args(candidate)[-1] if origin in (list, dict) else None
            if candidate is SecretStr:
                found.append(path)
            elif isinstance(candidate, type) and issubclass(candidate, BaseModel):
                found += _secret_paths(candidate, path)
            elif element is not None:
                for inner in _inner(element):
                    if isinstance(inner, type) and issubclass(inner, BaseModel):
                        found += _secret_paths(inner, f"{path}[]")
    return found


SECRET_PATHS = sorted(set(_secret_paths(HarborConfig, "")))


def _put(raw: dict[str, Any], path: str, value: Any) -> None:
    """Set `a.b[].c`, making what is missing; `[]` is the first list entry or the map key `r.example.org`."""
    target: Any = raw
    parts = path.replace("[]", ".[]").split(".")
    for i, part in enumerate(parts[:-1]):
        following = parts[i + 1]
        if part == "[]":
            if isinstance(target, list):
                target = target[1] if len(target) > 1 else target[0]
            else:
                target = target.setdefault("r.example.org", {})
            continue
        default: Any = [{}] if following == "[]" and part in ("nodes", "operators") else {}
        if isinstance(target.get(part), bool):
            target[part] = {}
        target = target.setdefault(part, default)
    target[parts[-1]] = value


def test_the_walk_finds_every_kind_of_secret() -> None:
    # A test that tries every secret field must first find them all.
    for expected in (
        "sshPrivateKey",
        "nodes[].sshPrivateKey",
        "ssh.bastion.privateKey",
        "k3s.token",
        "k3s.agentToken",
        "k3s.etcdSnapshots.s3SecretKey",
        "k3s.registries.configs[].auth.password",
        "gitops.password",
        "gitops.argocdPassword",
        "components.smtp.relayPassword",
        "components.backup.token",
        "components.telegraf.tlsKey",
    ):
        assert expected in SECRET_PATHS, expected
    assert len(SECRET_PATHS) >= 19, SECRET_PATHS


@pytest.mark.parametrize("path", SECRET_PATHS)
@pytest.mark.parametrize("value", [918273645546372819, "MARKER-SECRET-4c1e\nwith a second line"])
def test_no_secret_field_echoes_its_value(path: str, value: Any) -> None:
    raw = copy.deepcopy(base_config(agents=1))
    _put(raw, path, value)
    # A wrong type, a wrong shape, or right but beside another problem: in no case is it shown.
    raw["mesh"] = {"listenPort": 0}
    with pytest.raises(ConfigError) as refused:
        load_config(raw)
    message = str(refused.value)
    for shown in (str(value), "918273645", "MARKER-SECRET-4c1e"):
        assert shown not in message, message


def test_a_credential_in_an_extra_arg_url_is_not_echoed() -> None:
    raw = base_config(agents=1)
    raw["k3s"] = {"extraArgs": ["--datastore-endpoint=postgres://harbor:S3cretPassw0rd@db.example.org/k3s", "bad"]}
    message = "\n".join(refusal(raw))
    assert "S3cretPassw0rd" not in message and "harbor:" not in message
    assert "k3s.extraArgs" in message


# --- credentials in the repository URL ---------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "https://ghp_TOKEN0123456789abcdef@github.com/example-org/cluster.git",
        "https://bot:ghp_TOKEN0123456789abcdef@github.com/example-org/cluster.git",
        "http://oauth2:ghp_TOKEN0123456789abcdef@git.example.org/ops/cluster.git",
        "ssh://git:ghp_TOKEN0123456789abcdef@git.example.org/ops/cluster.git",
    ],
)
def test_a_credential_in_the_repository_url_is_refused_and_not_echoed(url: str) -> None:
    raw = base_config(agents=1)
    raw["gitops"] = {"repoUrl": url, "username": "bot", "password": "pw-pw-pw"}
    [line] = refusal(raw)
    assert line.startswith("gitops.repoUrl: holds a credential")
    assert "gitops.username" in line and "gitops.password" in line
    assert "ghp_TOKEN0123456789abcdef" not in line


@pytest.mark.parametrize(
    "url", ["git@github.com:example-org/cluster.git", "ssh://git@git.example.org:2222/ops/cluster.git"]
)
def test_an_ssh_login_name_in_the_url_is_not_a_credential(url: str) -> None:
    raw = base_config(agents=1)
    raw["gitops"]["repoUrl"] = url
    load_config(raw)


def test_secret_fields_hold_secretstr() -> None:
    # The redaction goes by type: a secret field typed as plain str would be echoed.
    config = load_config(base_config(agents=1))
    assert isinstance(config.ssh_private_key, SecretStr)
    assert isinstance(config.gitops.ssh_private_key, SecretStr)
    assert fake_private_key("x").startswith("-----BEGIN PRIVATE KEY-----")
