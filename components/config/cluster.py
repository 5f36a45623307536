"""The cluster's sections of the stack config: SSH, nodes, mesh, k3s, firewall, decommission, preflight.

Each section checks its own keys; checks that span sections are in components/config/checks.py.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Literal

from pydantic import AfterValidator, Discriminator, Field, FilePath, SecretStr, Tag, field_validator

from components.schema import Cidr, ConfigModel, Host, Ipv4, Port, WireGuardKey, dns_label

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


class SshDefaults(ConfigModel):
    user: str = "root"
    port: Port = 22


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
    labels: dict[str, str] = Field(default_factory=dict)
    taints: list[str] = Field(default_factory=list)
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
