"""The cluster's sections of the stack config: SSH, nodes, mesh, k3s, firewall, decommission, preflight.

Each section checks its own keys; checks that span sections are in components/config/checks.py.
"""

from __future__ import annotations

import ipaddress
import re
import urllib.parse
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Discriminator, Field, FilePath, SecretStr, Tag, field_validator

from components.schema import Cidr, ConfigModel, Host, HostKey, Ipv4, Port, WireGuardKey, _host, _port, dns_label

DEFAULT_K3S_VERSION = "v1.31.4+k3s1"
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

# config.yaml keys that Space Harbor derives from other settings (components/render/k3s.py).
MANAGED_K3S_FLAGS = frozenset(
    f"--{name}"
    for name in (
        "server",
        "node-name",
        "node-ip",
        "advertise-address",
        "flannel-iface",
        "flannel-backend",
        "tls-san",
        "cluster-cidr",
        "service-cidr",
        "disable",
        "cluster-init",
        "node-label",
        "node-taint",
        "write-kubeconfig-mode",
        "secrets-encryption",
    )
)

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
)
PREFLIGHT_REQUIRED = frozenset({"role", "secretsEncryption"})
SKIPPABLE_PREFLIGHT_CHECKS = tuple(check for check in PREFLIGHT_CHECKS if check not in PREFLIGHT_REQUIRED)

_K3S_VERSION = re.compile(r"^v(\d+)\.(\d+)\.(\d+)\+k3s(\d+)$")
# Linux IFNAMSIZ is 16 including the NUL; wg-quick also restricts the alphabet.
_INTERFACE = re.compile(r"^[a-zA-Z0-9_=+.-]{1,15}$")
_LABEL_KEY = re.compile(
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
)
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")
_TAINT = re.compile(r"^(?P<key>[^=:\s]+)(=(?P<value>[^:\s]*))?:(?P<effect>NoSchedule|PreferNoSchedule|NoExecute)$")


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
    private_key: SecretStr | None = None
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
    ssh_private_key: SecretStr | None = None
    # Pins sshd's host key ("ssh-ed25519 AAAA..."); unset means no host-key check at all.
    ssh_host_key: str | None = None
    # This node's jump host instead of `ssh.bastion`; false: this node is dialled directly.
    bastion: NodeBastion | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    taints: list[str] = Field(default_factory=list)
    # Any change of this counter reruns the k3s installer on this node at the version it runs,
    # without uninstalling (the seed's `force_k3s_upgrade`, for one node).
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

    @field_validator("taints")
    @classmethod
    def _taints(cls, value: list[str]) -> list[str]:
        for taint in value:
            if not _TAINT.match(taint):
                raise ValueError(f"{taint!r} is not key[=value]:NoSchedule|PreferNoSchedule|NoExecute")
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


class EtcdSnapshots(ConfigModel):
    schedule: str = "0 */6 * * *"
    retention: int = Field(default=12, ge=1)
    s3_endpoint: str | None = None
    s3_bucket: str | None = None
    s3_access_key: SecretStr | None = None
    s3_secret_key: SecretStr | None = None


# The archive formats k3s imports from its agent/images directory at start.
AIRGAP_IMAGE_SUFFIXES = (".tar", ".tar.gz", ".tar.zst", ".tar.lz4", ".tar.bz2")


class AirgapFiles(ConfigModel):
    """`k3s.airgap` as an object: files on the machine that runs Pulumi, shipped to every node."""

    # The k3s binary of `k3s.version` for the nodes' architecture (k3s, k3s-arm64, ...).
    binary: FilePath
    # k3s-airgap-images-<arch>.tar.zst (or another archive k3s imports), optional.
    images: FilePath | None = None

    @field_validator("images")
    @classmethod
    def _images_archive(cls, value: FilePath | None) -> FilePath | None:
        if value is not None and not value.name.endswith(AIRGAP_IMAGE_SUFFIXES):
            raise ValueError(f"{str(value)!r} is not an image archive k3s imports ({', '.join(AIRGAP_IMAGE_SUFFIXES)})")
        return value


def _airgap_form(value: object) -> str:
    return "union-files" if isinstance(value, dict | AirgapFiles) else "union-flag"


# `true`, `false`, or the files to ship. Tagged (not a plain union) so that a refusal names the
# key it is about, e.g. k3s.airgap.binary, and not one line per branch of the union.
Airgap = Annotated[
    Annotated[bool, Tag("union-flag")] | Annotated[AirgapFiles, Tag("union-files")],
    Discriminator(_airgap_form),
]


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


def _registration_address(value: str) -> str:
    if "://" in value or "/" in value:
        raise ValueError(f"{value!r} is not host[:port]; write it without a scheme or path, e.g. api.example.org:6443")
    split_host_port(value)
    return value


def _registry_host(value: str) -> str:
    """A registry as registries.yaml names it: host or host:port (no scheme), or `*` for every registry."""
    if value == "*":
        return value
    if "://" in value or "/" in value:
        raise ValueError(f"{value!r} is not a registry host; write host or host:port, without a scheme or path")
    try:
        split_host_port(value)
    except ValueError:
        raise ValueError(f"{value!r} is not a registry host (host or host:port, or * for every registry)") from None
    return value


def _endpoint(value: str) -> str:
    parts = urllib.parse.urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
        raise ValueError(f"{value!r} is not an http:// or https:// URL like https://mirror.example.org:5000")
    try:
        split_host_port(parts.netloc)
    except ValueError:
        raise ValueError(f"{value!r}: {parts.netloc!r} is not host or host:port") from None
    return value


def _node_file(value: str) -> str:
    """A TLS file for a registry: PEM text that Space Harbor writes to the node, or a path already there."""
    if value.lstrip().startswith("-----BEGIN "):
        if not value.rstrip().endswith("-----"):
            raise ValueError("is cut short: PEM text must end with its -----END ...----- line")
        return value
    if not value.startswith("/") or "\n" in value or ".." in value.split("/"):
        raise ValueError("is neither PEM text (-----BEGIN ...) nor an absolute path of a file on the nodes")
    return value


RegistrationAddress = Annotated[str, AfterValidator(_registration_address)]
RegistryHost = Annotated[str, AfterValidator(_registry_host)]
Endpoint = Annotated[str, AfterValidator(_endpoint)]
NodeFile = Annotated[str, AfterValidator(_node_file)]


class RegistryMirror(ConfigModel):
    # Tried in order; containerd still tries the registry itself last.
    endpoint: list[Endpoint] = Field(default_factory=list)
    # Repository rewrites, regular expression -> replacement ($1 for a group), as k3s applies them.
    rewrite: dict[str, str] = Field(default_factory=dict)

    @field_validator("rewrite")
    @classmethod
    def _patterns(cls, value: dict[str, str]) -> dict[str, str]:
        for pattern in value:
            try:
                re.compile(pattern)
            except re.error as error:
                raise ValueError(f"{pattern!r} is not a regular expression: {error}") from None
        return value


class RegistryAuth(ConfigModel):
    """One way to log in: username and password, `auth` (base64 of user:password), or an identity token."""

    username: str | None = None
    password: SecretStr | None = None
    auth: SecretStr | None = None
    identity_token: SecretStr | None = None


class RegistryTls(ConfigModel):
    # Each file: PEM text (written to the nodes by Space Harbor) or the path of a file on the nodes.
    ca_file: NodeFile | None = None
    cert_file: NodeFile | None = None
    key_file: SecretStr | None = None
    insecure_skip_verify: bool = False

    @field_validator("key_file")
    @classmethod
    def _key_file(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            _node_file(value.get_secret_value())
        return value


class RegistryConfig(ConfigModel):
    auth: RegistryAuth | None = None
    tls: RegistryTls | None = None


class Registries(ConfigModel):
    """k3s's registries.yaml: `mirrors` (where to pull from) and `configs` (how to log in and trust)."""

    mirrors: dict[RegistryHost, RegistryMirror] = Field(default_factory=dict)
    configs: dict[RegistryHost, RegistryConfig] = Field(default_factory=dict)


class K3s(ConfigModel):
    version: str = DEFAULT_K3S_VERSION
    token: SecretStr | None = None
    flannel_backend: Literal["vxlan", "host-gw", "wireguard-native"] = "vxlan"
    cluster_cidr: Cidr = ipaddress.IPv4Network("10.42.0.0/16")
    service_cidr: Cidr = ipaddress.IPv4Network("10.43.0.0/16")
    datastore: Literal["sqlite", "etcd"] = "sqlite"
    api_access: Literal["ssh-tunnel", "mesh"] = "ssh-tunnel"
    tunnel_port: int = Field(default=16443, ge=1024, le=65535)
    extra_args: list[str] = Field(default_factory=list)
    # For hosts without internet: `true` installs the binary already at /usr/local/bin/k3s on every
    # node (INSTALL_K3S_SKIP_DOWNLOAD); an object ships the binary (and images) there first.
    airgap: Airgap = False
    upgrade_concurrency: int = Field(default=1, ge=1)
    etcd_snapshots: EtcdSnapshots | None = None
    # The server that bootstraps the cluster, by name: the list's order must not decide it, or a
    # reorder would move the cluster's origin (and the identity of every step that runs there).
    first_server: str | None = None
    # Agents join with this token only; the server token (k3s: equivalent to cluster admin) stays
    # on the servers. Generated in state when unset.
    agent_token: SecretStr | None = None
    # k3s `secrets-encryption` on servers: Secrets encrypted at rest (and so in etcd snapshots). A
    # running server cannot switch it on in place before k3s's 2026 releases, so the preflight
    # refuses it there (README: secrets encryption).
    secrets_encryption: bool = True
    # k3s's registries.yaml on every node; unset: Space Harbor writes none (and removes its own).
    registries: Registries | None = None
    # Where joining nodes register: a DNS name or address the user runs in front of the servers.
    registration_address: RegistrationAddress | None = None
    # k3s's klipper service load balancer (servicelb): off unless asked for, see the README.
    service_load_balancer: Literal["klipper", "none"] = "none"

    @property
    def airgap_files(self) -> AirgapFiles | None:
        return self.airgap if isinstance(self.airgap, AirgapFiles) else None

    @property
    def skips_download(self) -> bool:
        """The installer takes the binary at /usr/local/bin/k3s instead of downloading it."""
        return self.airgap is not False

    @field_validator("version")
    @classmethod
    def _version(cls, value: str) -> str:
        if not _K3S_VERSION.match(value):
            raise ValueError(f"{value!r} is not a k3s release like v1.31.4+k3s1")
        return value

    @field_validator("extra_args")
    @classmethod
    def _extra_args(cls, value: list[str]) -> list[str]:
        for arg in value:
            if not arg.startswith("--"):
                raise ValueError(f"{arg!r} is not a flag; write it as --name=value")
            flag = arg.split("=", 1)[0]
            if flag in {"--token", "--agent-token", "--datastore-endpoint"}:
                raise ValueError(f"{arg!r} would put a secret on the command line; use k3s.token")
            if flag in MANAGED_K3S_FLAGS:
                raise ValueError(f"{flag} is set by Space Harbor from other keys; remove it from extraArgs")
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
