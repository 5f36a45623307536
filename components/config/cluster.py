"""The cluster's sections of the stack config: SSH, nodes, mesh, firewall, decommission, preflight (k3s: k3s.py).

Each section checks its own keys; checks that span sections are in components/config/checks.py.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Discriminator, Field, Tag, field_validator

from components.schema import (
    Cidr,
    ConfigModel,
    Host,
    HostKey,
    Ipv4,
    NodeHostKey,
    Port,
    SshPrivateKey,
    WireGuardKey,
    dns_label,
)

# flannel's wireguard-native backend hard-codes these; the mesh must not take them.
FLANNEL_WIREGUARD_PORTS = frozenset({51820, 51821})
# Ports that only the cluster may reach: the node firewall drops them for everyone else, so
# `firewall.publicTcpPorts` must not open them (components/render/nftables.py).
CLUSTER_ONLY_PORTS = {
    6443: "the Kubernetes API",
    10250: "the kubelet API",
    2379: "etcd's client port",
    2380: "etcd's peer port",
    8472: "flannel's VXLAN port",
    51820: "flannel's WireGuard port",
    51821: "flannel's WireGuard port (IPv6)",
}

# The checks of components/scripts/preflight.sh, in the order it runs them. `role` and
# `secretsEncryption` cannot be skipped: they refuse a change that k3s cannot make in place, and
# skipping them would uninstall or break a running server instead of stopping the run.
PREFLIGHT_CHECKS = (
    "os",
    "arch",
    "cgroups",
    "swap",
    "ports",
    "timeSync",
    "hostname",
    "mtu",
    "role",
    "bootstrap",
    "secretsEncryption",
    "firewall",
)
PREFLIGHT_REQUIRED = frozenset({"role", "secretsEncryption"})
SKIPPABLE_PREFLIGHT_CHECKS = tuple(check for check in PREFLIGHT_CHECKS if check not in PREFLIGHT_REQUIRED)

# Linux IFNAMSIZ is 16 including the NUL; wg-quick also restricts the alphabet.
_INTERFACE = re.compile(r"^[a-zA-Z0-9_=+.-]{1,15}$")
_LABEL_KEY = re.compile(
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
)
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")
_TAINT = re.compile(r"^(?P<key>[^=:\s]+)(=(?P<value>[^:\s]*))?:(?P<effect>NoSchedule|PreferNoSchedule|NoExecute)$")
# A DNS subdomain, the optional prefix of a label or taint key.
_KEY_PREFIX_MAX = 253


def _taint(value: str) -> str:
    """`key[=value]:Effect` with Kubernetes' own key and value syntax (a label's).

    Beyond Kubernetes' rule, this keeps a taint from ever reading as an option of the `kubectl taint`
    that sets it as root (a key that starts with `-`).
    """
    match = _TAINT.match(value)
    if not match:
        raise ValueError(f"{value!r} is not key[=value]:NoSchedule|PreferNoSchedule|NoExecute")
    key, taint_value = match.group("key"), match.group("value") or ""
    prefix = key.rpartition("/")[0]
    if not _LABEL_KEY.match(key) or len(prefix) > _KEY_PREFIX_MAX:
        raise ValueError(
            f"{value!r}: {key!r} is not a valid taint key (an optional DNS subdomain and '/', then up to 63 "
            "letters, digits, '-', '_' or '.', starting and ending with a letter or digit)"
        )
    if not _LABEL_VALUE.match(taint_value):
        raise ValueError(
            f"{value!r}: {taint_value!r} is not a valid taint value (up to 63 letters, digits, '-', '_' or '.', "
            "starting and ending with a letter or digit)"
        )
    return value


Taint = Annotated[str, AfterValidator(_taint)]


def _preflight_check(value: str) -> str:
    valid = ", ".join(SKIPPABLE_PREFLIGHT_CHECKS)
    if value in PREFLIGHT_REQUIRED:
        raise ValueError(
            f"{value!r} cannot be skipped: it refuses a change that k3s cannot make in place; valid names: {valid}"
        )
    if value not in PREFLIGHT_CHECKS:
        raise ValueError(f"{value!r} is not a preflight check; valid names: {valid}")
    return value


PreflightCheck = Annotated[str, AfterValidator(_preflight_check)]


# A login name that fits `user@host` and an ssh command line as it is.
_SSH_USER = re.compile(r"^[A-Za-z0-9._][A-Za-z0-9._-]*$")


class Bastion(ConfigModel):
    """A jump host that the program dials first, then through it the node's sshd.

    Not a cluster node: nothing is installed on it; its sshd must allow TCP forwarding to the
    nodes' SSH ports. `user` and `private_key` default to `ssh.user` and `sshPrivateKey`.
    """

    host: Host
    port: Port = 22
    user: str | None = None
    private_key: SshPrivateKey | None = None
    # Pins the bastion's sshd key, as `nodes[i].sshHostKey` does a node's; unset means no check.
    host_key: HostKey | None = None

    @field_validator("user")
    @classmethod
    def _user(cls, value: str | None) -> str | None:
        if value is not None and not _SSH_USER.match(value):
            raise ValueError(f"{value!r} is not a login name (letters, digits, '.', '_', '-')")
        return value


def _bastion_branch(value: Any) -> str | None:
    # `false` says "dial this node directly" even when `ssh.bastion` is set; anything but an
    # object or false gets one error of its own rather than one per branch of the union.
    if value is False:
        return "union-direct"
    if isinstance(value, dict | Bastion):
        return "union-bastion"
    return None


NodeBastion = Annotated[
    Annotated[Literal[False], Tag("union-direct")] | Annotated[Bastion, Tag("union-bastion")],
    Discriminator(
        _bastion_branch,
        custom_error_type="bastion",
        custom_error_message="must be a bastion {host, port, user, privateKey, hostKey}, or false to dial "
        "this node directly",
    ),
]


class SshDefaults(ConfigModel):
    user: str = "root"
    port: Port = 22
    # The jump host for every node; `nodes[i].bastion` replaces it (or, false, turns it off) for one.
    bastion: Bastion | None = None
    # Dial nodes without `sshHostKey` anyway, with no host-key check at all (warned about on every run).
    allow_unpinned_host_keys: bool = False


class Node(ConfigModel):
    name: str
    role: Literal["server", "agent"]
    host: Host
    endpoint: Host | None = None
    mesh_address: Ipv4 | None = None
    private_address: Host | None = None
    ssh_user: str | None = None
    ssh_port: Port | None = None
    # The node's own sshd port(s), which the firewall keeps open first. Differs from ssh_port
    # when a NAT forwards the port Pulumi dials; default: [the port Pulumi dials].
    ssh_listen_ports: list[Port] | None = Field(default=None, min_length=1)
    ssh_private_key: SshPrivateKey | None = None
    # Pins sshd's host key ("ssh-ed25519 AAAA..."); unset, the node is refused unless
    # ssh.allowUnpinnedHostKeys, and then dialled with no host-key check at all.
    ssh_host_key: NodeHostKey | None = None
    # This node's jump host instead of `ssh.bastion`; false: this node is dialled directly.
    bastion: NodeBastion | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    taints: list[Taint] = Field(default_factory=list)
    # Any change of this counter reruns the k3s installer on this node at the version it runs,
    # without uninstalling (a forced reinstall, for one node).
    reinstall: int = Field(default=0, ge=0)
    # Preflight checks skipped on this node only, beside `preflight.skip`.
    preflight_skip: list[PreflightCheck] = Field(default_factory=list)

    @field_validator("name")
    @classmethod
    def _dns_label(cls, value: str) -> str:
        return dns_label(value)

    @field_validator("ssh_listen_ports")
    @classmethod
    def _unique_ports(cls, value: list[int] | None) -> list[int] | None:
        if value is not None and len(set(value)) != len(value):
            raise ValueError(f"{value} lists a port twice")
        return value

    @field_validator("labels")
    @classmethod
    def _labels(cls, value: dict[str, str]) -> dict[str, str]:
        for key, label in value.items():
            if not _LABEL_KEY.match(key):
                raise ValueError(f"{key!r} is not a valid label key")
            if not _LABEL_VALUE.match(label):
                raise ValueError(f"{label!r} (label {key}) is not a valid label value")
        return value

    @property
    def public_endpoint(self) -> str:
        return self.endpoint or self.host

    @property
    def cluster_address(self) -> str:
        """The address other nodes use when the mesh is off."""
        return self.private_address or self.host


class Operator(ConfigModel):
    name: str
    mesh_address: Ipv4
    # When set, the operator keeps their private key and none enters state.
    public_key: WireGuardKey | None = None

    @field_validator("name")
    @classmethod
    def _dns_label(cls, value: str) -> str:
        return dns_label(value)


class Mesh(ConfigModel):
    enabled: bool = True
    cidr: Cidr = ipaddress.IPv4Network("10.160.0.0/12")
    listen_port: Port = 51871
    interface: str = "wg-harbor"
    persistent_keepalive: int = Field(default=25, ge=0, le=65535)
    mtu: int = Field(default=1420, ge=1280, le=9000)
    operators: list[Operator] = Field(default_factory=list)

    @field_validator("listen_port")
    @classmethod
    def _not_flannel(cls, value: int) -> int:
        if value in FLANNEL_WIREGUARD_PORTS:
            raise ValueError(f"{value} is taken by flannel's wireguard-native backend (51820/51821)")
        return value

    @field_validator("interface")
    @classmethod
    def _interface(cls, value: str) -> str:
        if not _INTERFACE.match(value):
            raise ValueError(f"{value!r} is not an interface name (1-15 of a-z A-Z 0-9 _=+.-)")
        return value


class Firewall(ConfigModel):
    enabled: bool = True
    public_tcp_ports: list[Port] = Field(default_factory=lambda: [80, 443])

    @field_validator("public_tcp_ports")
    @classmethod
    def _unique(cls, value: list[int]) -> list[int]:
        if len(set(value)) != len(value):
            raise ValueError(f"{value} lists a port twice")
        return value


class Decommission(ConfigModel):
    # Skip the steps that need an unreachable node instead of failing on them.
    force: bool = False
    drain_timeout_seconds: int = Field(default=120, ge=10)
    # Names of nodes that left `nodes` and cannot be reached: their steps are disarmed (nothing
    # dials them again) and their Node objects are deleted without a drain.
    forget: list[str] = Field(default_factory=list)

    @field_validator("forget")
    @classmethod
    def _forget(cls, value: list[str]) -> list[str]:
        for name in value:
            dns_label(name)
        if len(set(value)) != len(value):
            raise ValueError(f"{value} lists a node twice")
        return value


class Preflight(ConfigModel):
    # Checks of components/scripts/preflight.sh skipped on every node.
    skip: list[PreflightCheck] = Field(default_factory=list)
