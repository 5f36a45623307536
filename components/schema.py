"""The building blocks of the config model: the base of every section, shared field types, the refusal.

The stack config's sections (components/config/) and the platform components' own sections
(components/platform/) are built from these, so that every section reads camelCase keys, refuses
typos and is frozen once validated, and every refusal names its key path.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
from collections.abc import Callable, Sequence
from functools import partial
from typing import Annotated

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.serialization import load_pem_private_key, load_ssh_private_key
from pydantic import AfterValidator, BaseModel, ConfigDict, SecretStr
from pydantic.alias_generators import to_camel

_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_HOSTNAME = re.compile(
    r"^(?=.{1,253}$)([A-Za-z0-9]([-A-Za-z0-9]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9]([-A-Za-z0-9]{0,61}[A-Za-z0-9])?)*\.?$"
)


class ConfigError(ValueError):
    """Stack config was refused; the message has one line per problem, each naming its key path."""


class Problems(ValueError):
    """Several refusals found in one pass, each a line that starts with its key path."""

    def __init__(self, lines: Sequence[str]) -> None:
        self.lines = list(lines)
        super().__init__("\n".join(self.lines))


def problem_lines(error: ValueError) -> list[str]:
    return list(error.lines) if isinstance(error, Problems) else [str(error)]


def collect(*checks: Callable[[], object]) -> list[str]:
    """Run every check and return the lines of those that refused: one run names every problem."""
    lines: list[str] = []
    for check in checks:
        try:
            check()
        except ValueError as error:
            lines += problem_lines(error)
    return lines


def gather(*checks: Callable[[], object]) -> None:
    """Run every check; refuse with all their problems at once."""
    lines = collect(*checks)
    if lines:
        raise Problems(lines)


class ConfigModel(BaseModel):
    """camelCase keys, typos refused, values frozen once validated."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        frozen=True,
    )


# --- field types ---------------------------------------------------------------------------


def _host(value: str) -> str:
    try:
        ipaddress.ip_address(value)
        return value
    except ValueError:
        pass
    if not _HOSTNAME.match(value):
        raise ValueError(f"{value!r} is neither an IP address nor a DNS name")
    return value


def _port(value: int) -> int:
    if not 1 <= value <= 65535:
        raise ValueError(f"{value} is not a port (1-65535)")
    return value


def _wireguard_key(value: str) -> str:
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("is not base64") from None
    if len(raw) != 32:
        raise ValueError(f"decodes to {len(raw)} bytes; a WireGuard key is 32")
    return value


# Host key types sshd offers (OpenSSH 9); `ssh-keyscan` prints one of them ahead of the key.
HOST_KEY_TYPES = (
    "ssh-ed25519",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "ssh-rsa",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
)


def _host_key(value: str) -> str:
    """`<type> <base64>` as ssh-keyscan prints it after the host name; a trailing comment is dropped.

    pulumi-command parses the pin only when it dials, and the tunnel compares it byte for byte, so
    a malformed pin would surface as a failed dial on every step: refuse it here instead.
    """
    fields = value.split()
    if len(fields) >= 3 and fields[1] in HOST_KEY_TYPES:
        raise ValueError(
            f"starts with {fields[0]!r}, a host name: give only the key type and the key "
            "(`ssh-keyscan -t ed25519 HOST | cut -d' ' -f2-`)"
        )
    if len(fields) < 2 or fields[0] not in HOST_KEY_TYPES:
        raise ValueError(
            "is not a host key like `ssh-ed25519 AAAA...`: the key type and the key, as "
            "`ssh-keyscan -t ed25519 HOST | cut -d' ' -f2-` prints them"
        )
    kind, blob = fields[0], fields[1]
    try:
        raw = base64.b64decode(blob, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"the {kind} key is not base64") from None
    # The key blob starts with its own type name (RFC 4253 6.6): a length-prefixed string.
    length = int.from_bytes(raw[:4], "big")
    if len(raw) < 4 + length or raw[4 : 4 + length] != kind.encode():
        raise ValueError(f"the key data does not match its type {kind} (another type's key, or cut short)")
    return f"{kind} {blob}"


def _host_key_as_given(value: str) -> str:
    """A node's pin is checked as the bastion's is, but kept as written: it is part of every step's
    `connection`, and a changed connection would update (re-run) every step of the node."""
    _host_key(value)
    return value


# The first words of public keys, as a `.pub` file or an authorized_keys line starts.
_PUBLIC_KEY_STARTS = (*HOST_KEY_TYPES, "ssh-dss", "rsa-sha2-256", "rsa-sha2-512")
_FROM_FILE = "set it from the private key file: `pulumi config set --secret --path KEY < ~/.ssh/id_ed25519`"


def _private_key_text(text: str) -> None:
    """Refuse what pulumi-command, the API tunnel or git could not use as an SSH private key.

    Checked at load, so that a path, a `.pub` file or a key with a passphrase is named here rather
    than as `ssh: no key found` on every node's first step. The value is never echoed.
    """
    stripped = text.strip()
    if not stripped:
        raise ValueError("is empty")
    first_line = stripped.splitlines()[0]
    if first_line.split(" ", 1)[0] in _PUBLIC_KEY_STARTS or "PUBLIC KEY-----" in first_line:
        raise ValueError(f"is a public key (the .pub file); give the private key: {_FROM_FILE}")
    if not first_line.startswith("-----BEGIN ") or "PRIVATE KEY-----" not in first_line:
        if "\n" not in stripped and ("/" in stripped or stripped.startswith("~")):
            raise ValueError(f"is a file path, not a key: {_FROM_FILE}")
        raise ValueError(f"is not a private key (no -----BEGIN ... PRIVATE KEY----- line): {_FROM_FILE}")
    encrypted = ValueError(
        "is protected by a passphrase, which the program cannot type: give it a key without one, "
        "e.g. a copy of it: `cp KEYFILE harbor-key && ssh-keygen -p -N '' -f harbor-key` (asks the old "
        "passphrase), or a key of its own: `ssh-keygen -t ed25519 -N '' -f ~/.ssh/harbor`"
    )
    if "ENCRYPTED" in first_line or "Proc-Type: 4,ENCRYPTED" in stripped:
        raise encrypted
    data = stripped.encode()
    try:
        if "OPENSSH PRIVATE KEY" in first_line:
            load_ssh_private_key(data, password=None)
        else:
            load_pem_private_key(data, password=None)
    except TypeError:
        # cryptography's way of saying that the key needs a password
        raise encrypted from None
    except UnsupportedAlgorithm:
        return  # a type this library cannot read (a security key, say): ssh may; let it try
    except ValueError:
        raise ValueError(
            f"is not a readable private key ({first_line.strip('-').strip()} that does not parse; cut "
            f"short or edited?): {_FROM_FILE}"
        ) from None


def _private_key(value: SecretStr) -> SecretStr:
    _private_key_text(value.get_secret_value())
    return value


def dns_label(value: str) -> str:
    """A Kubernetes node name: a DNS-1123 label."""
    if not _DNS1123_LABEL.match(value):
        raise ValueError(f"{value!r} is not a DNS-1123 label (lower-case a-z, 0-9, '-', at most 63)")
    return value


Host = Annotated[str, AfterValidator(_host)]
Port = Annotated[int, AfterValidator(_port)]
WireGuardKey = Annotated[str, AfterValidator(_wireguard_key)]
HostKey = Annotated[str, AfterValidator(_host_key)]
NodeHostKey = Annotated[str, AfterValidator(_host_key_as_given)]
# An SSH private key, unencrypted, as its file holds it (secret).
SshPrivateKey = Annotated[SecretStr, AfterValidator(_private_key)]
Ipv4 = ipaddress.IPv4Address
Cidr = ipaddress.IPv4Network


# --- cross-field checks --------------------------------------------------------------------


def key_segment(key: str, *, first: bool = False) -> str:
    """One key of a path as `pulumi config set --path` takes it: `.name`, or `["registry.example.org"]`."""
    if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
        return key if first else f".{key}"
    return f'["{key}"]'


def require(value: object, path: str, why: str) -> None:
    """Refuse an unset value: `<path>: is required <why>`."""
    if value in (None, "", [], {}):
        raise ValueError(f"{path}: is required {why}")


def require_all(*requirements: tuple[object, str, str]) -> None:
    """`require` each (value, path, why), refusing every unset one at once."""
    gather(*(partial(require, *requirement) for requirement in requirements))


def secret_value(secret: SecretStr | None) -> str:
    return secret.get_secret_value() if secret is not None else ""


def split_host_port(value: str, default_port: int | None = None) -> tuple[str, int | None]:
    """`host`, `host:port`, `[v6]` or `[v6]:port` (a bare IPv6 address has no port) -> (host, port)."""
    host, port = value, None
    if value.startswith("["):
        inner, bracket, rest = value[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise ValueError(f"{value!r} is not [IPv6 address] or [IPv6 address]:port")
        host, port = inner, rest[1:] or None
        ipaddress.IPv6Address(host)
    elif value.count(":") == 1:
        host, port = value.split(":")
    if port is not None and not port.isdigit():
        raise ValueError(f"{value!r}: {port!r} is not a port number")
    number = int(port) if port is not None else default_port
    if number is not None:
        _port(number)
    if ":" not in host:
        _host(host)
    else:
        ipaddress.IPv6Address(host)
    return host, number
