"""The stack config of Space Harbor: one typed model, validated before any resource exists.

DESIGN §2 is the contract. Keys are camelCase in `Pulumi.<stack>.yaml` and snake_case here.
`load_config` turns raw config values into a `HarborConfig` or raises one `ConfigError` whose
every line names a key path (`nodes[2].meshAddress: ...`).
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import json
import re
from collections.abc import Callable, Mapping
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from components.upstream import UpstreamError, pinned_versions

PROJECT = "space-harbor"

# Every top-level key the program reads; anything else in the namespace is a typo.
TOP_LEVEL_KEYS = (
    "domain",
    "sshPrivateKey",
    "ssh",
    "nodes",
    "mesh",
    "k3s",
    "firewall",
    "argocd",
    "gitops",
    "components",
    "decommission",
    "preflight",
)

DEFAULT_K3S_VERSION = "v1.31.4+k3s1"
DEFAULT_ARGOCD_VERSION = "v2.13.3"
# The kind of Argo CD's core-install.yaml in manifests/upstream.yaml: its versions are the supported ones.
ARGOCD_CORE_FILE = "argocd-core"
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

_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_HOSTNAME = re.compile(
    r"^(?=.{1,253}$)([A-Za-z0-9]([-A-Za-z0-9]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9]([-A-Za-z0-9]{0,61}[A-Za-z0-9])?)*\.?$"
)
_K3S_VERSION = re.compile(r"^v(\d+)\.(\d+)\.(\d+)\+k3s(\d+)$")
_ARGOCD_VERSION = re.compile(r"^v\d+\.\d+\.\d+$")
# Linux IFNAMSIZ is 16 including the NUL; wg-quick also restricts the alphabet.
_INTERFACE = re.compile(r"^[a-zA-Z0-9_=+.-]{1,15}$")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_LABEL_KEY = re.compile(
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
)
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")
_TAINT = re.compile(r"^(?P<key>[^=:\s]+)(=(?P<value>[^:\s]*))?:(?P<effect>NoSchedule|PreferNoSchedule|NoExecute)$")
# Telegraf's socket_writer address: host:port, optionally with the tcp:// scheme it needs.
_CENTRAL_ADDRESS = re.compile(r"^(tcp://)?(?P<host>\[[0-9A-Fa-f:.]+\]|[^:/\s\[\]]+):(?P<port>\d{1,5})$")
_HTTP_URL = re.compile(r"^https?://[^\s/:]+(:\d{1,5})?(/\S*)?$")
_CRON = re.compile(r"^\S+( \S+){4}$")
_SCP_GIT_URL = re.compile(r"^[A-Za-z0-9._-]+@[A-Za-z0-9.-]+:[^\s]+$")
_URL_GIT = re.compile(r"^(ssh|https?)://[^\s/]+/[^\s]+$")


class ConfigError(ValueError):
    """Stack config was refused; the message has one line per problem, each naming its key path."""


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


def _preflight_check(value: str) -> str:
    valid = ", ".join(SKIPPABLE_PREFLIGHT_CHECKS)
    if value in PREFLIGHT_REQUIRED:
        raise ValueError(
            f"{value!r} cannot be skipped: it refuses a change that k3s cannot make in place; valid names: {valid}"
        )
    if value not in PREFLIGHT_CHECKS:
        raise ValueError(f"{value!r} is not a preflight check; valid names: {valid}")
    return value


Host = Annotated[str, AfterValidator(_host)]
Port = Annotated[int, AfterValidator(_port)]
WireGuardKey = Annotated[str, AfterValidator(_wireguard_key)]
PreflightCheck = Annotated[str, AfterValidator(_preflight_check)]
Ipv4 = ipaddress.IPv4Address
Cidr = ipaddress.IPv4Network


class _Model(BaseModel):
    """camelCase keys, typos refused, values frozen once validated."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        frozen=True,
    )


def _require(value: object, path: str, why: str) -> None:
    if value in (None, "", [], {}):
        raise ValueError(f"{path}: is required {why}")


def _secret_value(secret: SecretStr | None) -> str:
    return secret.get_secret_value() if secret is not None else ""


# --- sections ------------------------------------------------------------------------------


class SshDefaults(_Model):
    user: str = "root"
    port: Port = 22


class Node(_Model):
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
        if not _DNS1123_LABEL.match(value):
            raise ValueError(f"{value!r} is not a DNS-1123 label (lower-case a-z, 0-9, '-', at most 63)")
        return value

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


class Operator(_Model):
    name: str
    mesh_address: Ipv4
    # When set, the operator keeps their private key and none enters state.
    public_key: WireGuardKey | None = None

    @field_validator("name")
    @classmethod
    def _dns_label(cls, value: str) -> str:
        return Node._dns_label(value)


class Mesh(_Model):
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


class EtcdSnapshots(_Model):
    schedule: str = "0 */6 * * *"
    retention: int = Field(default=12, ge=1)
    s3_endpoint: str | None = None
    s3_bucket: str | None = None
    s3_access_key: SecretStr | None = None
    s3_secret_key: SecretStr | None = None


class K3s(_Model):
    version: str = DEFAULT_K3S_VERSION
    token: SecretStr | None = None
    flannel_backend: Literal["vxlan", "host-gw", "wireguard-native"] = "vxlan"
    cluster_cidr: Cidr = ipaddress.IPv4Network("10.42.0.0/16")
    service_cidr: Cidr = ipaddress.IPv4Network("10.43.0.0/16")
    datastore: Literal["sqlite", "etcd"] = "sqlite"
    api_access: Literal["ssh-tunnel", "mesh"] = "ssh-tunnel"
    tunnel_port: int = Field(default=16443, ge=1024, le=65535)
    extra_args: list[str] = Field(default_factory=list)
    # Install from a binary already on the node (INSTALL_K3S_SKIP_DOWNLOAD), for hosts without internet.
    airgap: bool = False
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


class Firewall(_Model):
    enabled: bool = True
    public_tcp_ports: list[Port] = Field(default_factory=lambda: [80, 443])

    @field_validator("public_tcp_ports")
    @classmethod
    def _unique(cls, value: list[int]) -> list[int]:
        if len(set(value)) != len(value):
            raise ValueError(f"{value} lists a port twice")
        return value


class ArgoCD(_Model):
    version: str = DEFAULT_ARGOCD_VERSION

    @field_validator("version")
    @classmethod
    def _version(cls, value: str) -> str:
        if not _ARGOCD_VERSION.match(value):
            raise ValueError(f"{value!r} is not an Argo CD release like v2.13.3")
        try:
            pinned = pinned_versions(ARGOCD_CORE_FILE)
        except UpstreamError as error:
            raise ValueError(str(error)) from None
        if value not in pinned:
            raise ValueError(
                f"{value} is not a supported Argo CD release; supported (pinned in manifests/upstream.yaml): "
                + ", ".join(pinned)
            )
        return value


class GitOps(_Model):
    repo_url: str
    branch: str = "main"
    path: str = "cluster"
    ssh_private_key: SecretStr | None = None
    username: str | None = None
    password: SecretStr | None = None
    # known_hosts lines for the git server; Argo CD and the commit both pin them.
    known_hosts: str | None = None
    # Argo CD's own (read-only) credential; unset, Argo CD gets the write credential above.
    argocd_ssh_private_key: SecretStr | None = None
    argocd_username: str | None = None
    argocd_password: SecretStr | None = None
    auto_sync: bool = False
    overwrite_manual_changes: bool = False

    @field_validator("repo_url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not (_SCP_GIT_URL.match(value) or _URL_GIT.match(value)):
            raise ValueError(f"{value!r} is not git@host:org/repo.git, ssh://... or https://...")
        return value

    @field_validator("branch")
    @classmethod
    def _branch(cls, value: str) -> str:
        if not value or value.startswith(("-", "/")) or ".." in value or " " in value:
            raise ValueError(f"{value!r} is not a branch name")
        return value

    @field_validator("path")
    @classmethod
    def _path(cls, value: str) -> str:
        parts = value.strip("/").split("/")
        if not value.strip("/") or value.startswith("/") or any(p in ("", ".", "..", ".git") for p in parts):
            raise ValueError(f"{value!r} must be a relative folder inside the repo, without '..' or '.git'")
        return value.strip("/")

    @property
    def uses_ssh(self) -> bool:
        return not self.repo_url.startswith(("http://", "https://"))

    @model_validator(mode="after")
    def _credentials(self) -> GitOps:
        if self.uses_ssh:
            if self.ssh_private_key is None:
                raise ValueError(f"gitops.sshPrivateKey: is required for the SSH URL {self.repo_url}")
            if not (self.known_hosts or "").strip():
                raise ValueError(
                    "gitops.knownHosts: is required for an SSH URL, to pin the git server's host key "
                    "(the output of `ssh-keyscan <host>`)"
                )
        elif self.username is None or self.password is None:
            raise ValueError(f"gitops.username and gitops.password: are required for the HTTPS URL {self.repo_url}")
        return self

    @model_validator(mode="after")
    def _argocd_credentials(self) -> GitOps:
        https_keys = [
            key
            for key, value in (
                ("gitops.argocdUsername", self.argocd_username),
                ("gitops.argocdPassword", self.argocd_password),
            )
            if value is not None
        ]
        if self.uses_ssh and https_keys:
            raise ValueError(
                f"{' and '.join(https_keys)}: {'is' if len(https_keys) == 1 else 'are'} for HTTPS URLs; for the "
                f"SSH URL {self.repo_url} give Argo CD a read-only key in gitops.argocdSshPrivateKey"
            )
        if not self.uses_ssh and self.argocd_ssh_private_key is not None:
            raise ValueError(
                f"gitops.argocdSshPrivateKey: is for SSH URLs; for the HTTPS URL {self.repo_url} "
                "set gitops.argocdUsername and gitops.argocdPassword"
            )
        if self.argocd_username is not None and self.argocd_password is None:
            raise ValueError("gitops.argocdPassword: is required with gitops.argocdUsername")
        if self.argocd_password is not None and self.argocd_username is None:
            raise ValueError("gitops.argocdUsername: is required with gitops.argocdPassword")
        if self.argocd_ssh_private_key is not None and not self.argocd_ssh_private_key.get_secret_value().strip():
            raise ValueError("gitops.argocdSshPrivateKey: is empty")
        return self

    @property
    def argocd_has_own_credential(self) -> bool:
        return self.argocd_ssh_private_key is not None or self.argocd_username is not None

    @property
    def argocd_ssh_key(self) -> SecretStr:
        """The SSH key Argo CD reads the repository with: its own, else the write key."""
        key = self.argocd_ssh_private_key or self.ssh_private_key
        assert key is not None  # _credentials requires the write key for SSH URLs
        return key

    @property
    def argocd_login(self) -> tuple[str, SecretStr]:
        """The HTTPS username and password Argo CD reads the repository with: its own, else the write ones."""
        if self.argocd_username is not None and self.argocd_password is not None:
            return self.argocd_username, self.argocd_password
        assert self.username is not None and self.password is not None  # _credentials requires them for HTTPS
        return self.username, self.password

    @property
    def write_credential_keys(self) -> str:
        """The config keys of the write credential, for messages."""
        return "gitops.sshPrivateKey" if self.uses_ssh else "gitops.username/gitops.password"

    @property
    def argocd_credential_keys(self) -> str:
        """The config keys of Argo CD's own credential, for messages."""
        return "gitops.argocdSshPrivateKey" if self.uses_ssh else "gitops.argocdUsername and gitops.argocdPassword"


class Traefik(_Model):
    enabled: bool = True
    acme_email: str | None = None
    acme_staging: bool = False
    # The node whose ports 80/443 Traefik binds (hostPort); DNS of the domain points at it. Default: the first server.
    node: str | None = None

    @field_validator("acme_email")
    @classmethod
    def _email(cls, value: str | None) -> str | None:
        if value is not None and not _EMAIL.match(value):
            raise ValueError(f"{value!r} is not an e-mail address")
        return value


class SealedSecrets(_Model):
    enabled: bool = True


class Infracheck(_Model):
    enabled: bool = True
    host: Host | None = None


class Telegraf(_Model):
    enabled: bool = False
    central_address: str | None = None
    ca_cert: str | None = None
    tls_cert: str | None = None
    tls_key: SecretStr | None = None

    @field_validator("central_address")
    @classmethod
    def _address(cls, value: str | None) -> str | None:
        if value is not None:
            match = _CENTRAL_ADDRESS.match(value)
            if not match or not 1 <= int(match["port"]) <= 65535:
                raise ValueError(f"{value!r} is not host:port (or tcp://host:port) of the central Telegraf")
        return value


class Smtp(_Model):
    enabled: bool = False
    relay_host: str | None = None
    relay_username: str | None = None
    relay_password: SecretStr | None = None
    allowed_sender_domains: list[str] = Field(default_factory=list)


class Backup(_Model):
    enabled: bool = False
    schedule: str = "0 3 * * *"
    # The target: a Backup Repository server (riotkit-org/backup-repository), which backup-maker uploads to.
    repository_url: str | None = None
    collection_id: str | None = None
    token: SecretStr | None = None

    @field_validator("schedule")
    @classmethod
    def _schedule(cls, value: str) -> str:
        if not _CRON.match(value.strip()):
            raise ValueError(f"{value!r} is not a cron schedule of five fields, like '0 3 * * *'")
        return value.strip()

    @field_validator("repository_url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is not None and not _HTTP_URL.match(value):
            raise ValueError(f"{value!r} is not an http(s):// URL of a Backup Repository server")
        return value


class Components(_Model):
    traefik: Traefik = Traefik()
    sealed_secrets: SealedSecrets = SealedSecrets()
    infracheck: Infracheck = Infracheck()
    telegraf: Telegraf = Telegraf()
    smtp: Smtp = Smtp()
    backup: Backup = Backup()


class Decommission(_Model):
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
            Node._dns_label(name)
        if len(set(value)) != len(value):
            raise ValueError(f"{value} lists a node twice")
        return value


class Preflight(_Model):
    # Checks of components/scripts/preflight.sh skipped on every node.
    skip: list[PreflightCheck] = Field(default_factory=list)


# --- the whole stack -----------------------------------------------------------------------


class HarborConfig(_Model):
    domain: Host | None = None
    ssh_private_key: SecretStr
    ssh: SshDefaults = SshDefaults()
    nodes: list[Node] = Field(min_length=1)
    mesh: Mesh = Mesh()
    k3s: K3s = K3s()
    firewall: Firewall = Firewall()
    argocd: ArgoCD = ArgoCD()
    gitops: GitOps
    components: Components = Components()
    decommission: Decommission = Decommission()
    preflight: Preflight = Preflight()

    @property
    def servers(self) -> list[Node]:
        return [node for node in self.nodes if node.role == "server"]

    @property
    def agents(self) -> list[Node]:
        return [node for node in self.nodes if node.role == "agent"]

    @property
    def first_server(self) -> Node:
        """The server that bootstraps the cluster: `k3s.firstServer`, or the only server."""
        name = self.k3s.first_server or self.servers[0].name
        return next(node for node in self.nodes if node.name == name)

    def node_address(self, node: Node) -> str:
        """Where cluster traffic for `node` goes: its mesh address, or its private one."""
        if self.mesh.enabled:
            assert node.mesh_address is not None  # checked by _mesh_addresses
            return str(node.mesh_address)
        return node.cluster_address

    def ssh_user(self, node: Node) -> str:
        return node.ssh_user or self.ssh.user

    def ssh_port(self, node: Node) -> int:
        return node.ssh_port or self.ssh.port

    def ssh_listen_ports(self, node: Node) -> list[int]:
        """The ports sshd listens on at the node, which the firewall opens before anything else."""
        return list(node.ssh_listen_ports) if node.ssh_listen_ports else [self.ssh_port(node)]

    def ssh_key(self, node: Node) -> SecretStr:
        return node.ssh_private_key or self.ssh_private_key

    def secret_values(self) -> list[str]:
        """Every secret the config holds, for leak checks."""
        found: list[str] = []

        def walk(value: object) -> None:
            if isinstance(value, SecretStr):
                if value.get_secret_value():
                    found.append(value.get_secret_value())
            elif isinstance(value, BaseModel):
                for field in type(value).model_fields:
                    walk(getattr(value, field))
            elif isinstance(value, list | tuple):
                for item in value:
                    walk(item)
            elif isinstance(value, dict):
                for item in value.values():
                    walk(item)

        walk(self)
        return found

    # Cross-field checks. Each raises with the key path first; `load_config` keeps it.

    @model_validator(mode="after")
    def _unique_names(self) -> HarborConfig:
        seen: dict[str, str] = {}
        for i, node in enumerate(self.nodes):
            if node.name in seen:
                raise ValueError(f"nodes[{i}].name: {node.name!r} is already used by {seen[node.name]}")
            seen[node.name] = f"nodes[{self.nodes.index(node)}]"
        for i, operator in enumerate(self.mesh.operators):
            if operator.name in seen:
                raise ValueError(
                    f"mesh.operators[{i}].name: {operator.name!r} is already used by {seen[operator.name]}"
                )
            seen[operator.name] = f"mesh.operators[{i}]"
        hosts: dict[tuple[str, int], int] = {}
        for i, node in enumerate(self.nodes):
            key = (node.host, self.ssh_port(node))
            if key in hosts:
                raise ValueError(f"nodes[{i}].host: {node.host}:{key[1]} is already nodes[{hosts[key]}]")
            hosts[key] = i
        return self

    @model_validator(mode="after")
    def _server_count(self) -> HarborConfig:
        count = len(self.servers)
        if self.k3s.datastore == "sqlite" and count != 1:
            raise ValueError(
                f"nodes: k3s.datastore sqlite needs exactly one server, found {count}; "
                "set k3s.datastore to etcd for 3 or 5 servers"
            )
        if self.k3s.datastore == "etcd" and count not in (1, 3, 5):
            raise ValueError(f"nodes: embedded etcd needs 1, 3 or 5 servers for quorum, found {count}")
        first = self.k3s.first_server
        if first is None and count > 1:
            raise ValueError(
                f"k3s.firstServer: is required with {count} servers: name the server that bootstrapped the "
                f"cluster (before this key existed, the first server listed: {self.servers[0].name!r}; "
                "for a new cluster, any of them)"
            )
        if first is not None and first not in [node.name for node in self.servers]:
            raise ValueError(
                f"k3s.firstServer: {first!r} is not a server in nodes; servers: {[n.name for n in self.servers]}"
            )
        return self

    @model_validator(mode="after")
    def _forgotten_nodes(self) -> HarborConfig:
        names = {node.name for node in self.nodes}
        for i, name in enumerate(self.decommission.forget):
            if name in names:
                raise ValueError(
                    f"decommission.forget[{i}]: {name!r} is still in nodes; remove it from nodes to decommission "
                    "it, and list it here only when it cannot be reached"
                )
        return self

    @model_validator(mode="after")
    def _mesh_addresses(self) -> HarborConfig:
        mesh = self.mesh
        if not mesh.enabled:
            for i, node in enumerate(self.nodes):
                if node.mesh_address is not None:
                    raise ValueError(f"nodes[{i}].meshAddress: is set but mesh.enabled is false")
            if mesh.operators:
                raise ValueError("mesh.operators: operators need the mesh; set mesh.enabled to true")
            return self
        usable = (mesh.cidr.network_address, mesh.cidr.broadcast_address)
        taken: dict[Ipv4, str] = {}
        members: list[tuple[str, Ipv4 | None]] = [
            (f"nodes[{i}].meshAddress", node.mesh_address) for i, node in enumerate(self.nodes)
        ] + [(f"mesh.operators[{i}].meshAddress", op.mesh_address) for i, op in enumerate(mesh.operators)]
        for path, address in members:
            if address is None:
                raise ValueError(f"{path}: is required while mesh.enabled is true")
            if address not in mesh.cidr:
                raise ValueError(f"{path}: {address} is outside mesh.cidr {mesh.cidr}")
            if mesh.cidr.prefixlen < 31 and address in usable:
                raise ValueError(f"{path}: {address} is the network or broadcast address of {mesh.cidr}")
            if address in taken:
                raise ValueError(f"{path}: {address} is already used by {taken[address]}")
            taken[address] = path.rsplit(".", 1)[0]
        return self

    @model_validator(mode="after")
    def _networks(self) -> HarborConfig:
        networks = [("k3s.clusterCidr", self.k3s.cluster_cidr), ("k3s.serviceCidr", self.k3s.service_cidr)]
        if self.mesh.enabled:
            networks.append(("mesh.cidr", self.mesh.cidr))
        for i, (path, net) in enumerate(networks):
            for other_path, other in networks[i + 1 :]:
                if net.overlaps(other):
                    raise ValueError(f"{path}: {net} overlaps {other_path} {other}")
        if self.k3s.flannel_backend == "wireguard-native" and self.mesh.enabled:
            raise ValueError(
                "k3s.flannelBackend: wireguard-native would tunnel inside the mesh; "
                "use vxlan with the mesh, or set mesh.enabled to false"
            )
        if self.firewall.enabled and not self.mesh.enabled:
            # nftables resolves names once at load time and fails the whole table if DNS is down.
            for i, node in enumerate(self.nodes):
                try:
                    ipaddress.ip_address(node.cluster_address)
                except ValueError:
                    key = "privateAddress" if node.private_address else "host"
                    raise ValueError(
                        f"nodes[{i}].{key}: {node.cluster_address!r} is a DNS name, but with mesh.enabled false "
                        "the firewall admits cluster traffic by IP address; set privateAddress to an IP"
                    ) from None
        if self.k3s.api_access == "mesh" and not self.mesh.enabled:
            raise ValueError("k3s.apiAccess: mesh needs mesh.enabled true; use ssh-tunnel")
        return self

    @model_validator(mode="after")
    def _public_ports(self) -> HarborConfig:
        reach = "the mesh" if self.mesh.enabled else "the other nodes"
        for i, port in enumerate(self.firewall.public_tcp_ports):
            path = f"firewall.publicTcpPorts[{i}]"
            if port in CLUSTER_ONLY_PORTS:
                hint = "; reach it through the SSH tunnel or as a mesh operator" if port == 6443 else ""
                raise ValueError(f"{path}: {port} is {CLUSTER_ONLY_PORTS[port]}, which answers only {reach}{hint}")
            if self.mesh.enabled and port == self.mesh.listen_port:
                raise ValueError(f"{path}: {port} is mesh.listenPort, which is opened for WireGuard on UDP already")
        return self

    @model_validator(mode="after")
    def _components(self) -> HarborConfig:
        comps = self.components
        if comps.traefik.enabled:
            _require(self.domain, "domain", "while components.traefik is enabled")
            _require(comps.traefik.acme_email, "components.traefik.acmeEmail", "for Let's Encrypt")
        if comps.traefik.enabled and comps.traefik.node is not None:
            names = [node.name for node in self.nodes]
            if comps.traefik.node not in names:
                raise ValueError(f"components.traefik.node: {comps.traefik.node!r} is not one of the nodes {names}")
        if comps.infracheck.enabled:
            _require(self.domain, "domain", "while components.infracheck is enabled")
            _require(comps.infracheck.host, "components.infracheck.host", "while infracheck is enabled")
            if not comps.traefik.enabled:
                raise ValueError(
                    "components.infracheck.enabled: the health endpoint is served through Traefik; "
                    "enable components.traefik or disable infracheck"
                )
        if comps.telegraf.enabled:
            for key in ("central_address", "ca_cert", "tls_cert", "tls_key"):
                value = getattr(comps.telegraf, key)
                _require(
                    _secret_value(value) if isinstance(value, SecretStr) else value,
                    f"components.telegraf.{to_camel(key)}",
                    "while telegraf is enabled",
                )
        if comps.smtp.enabled:
            _require(comps.smtp.relay_host, "components.smtp.relayHost", "while smtp is enabled")
            if comps.smtp.relay_username and comps.smtp.relay_password is None:
                raise ValueError("components.smtp.relayPassword: is required with relayUsername")
            if not comps.smtp.allowed_sender_domains and not self.domain:
                raise ValueError(
                    "components.smtp.allowedSenderDomains: is required while smtp is enabled and domain is unset"
                )
        if comps.backup.enabled:
            backup = comps.backup
            _require(backup.repository_url, "components.backup.repositoryUrl", "while backup is enabled")
            _require(backup.collection_id, "components.backup.collectionId", "while backup is enabled")
            _require(_secret_value(backup.token), "components.backup.token", "while backup is enabled")
        sealed = [
            name
            for name, needs in (
                ("smtp", comps.smtp.enabled and comps.smtp.relay_password is not None),
                ("telegraf", comps.telegraf.enabled),
                ("backup", comps.backup.enabled),
            )
            if needs
        ]
        if sealed and not comps.sealed_secrets.enabled:
            raise ValueError(
                f"components.sealedSecrets.enabled: must be true for {', '.join(sealed)}, "
                "whose secrets reach the cluster as SealedSecrets"
            )
        snapshots = self.k3s.etcd_snapshots
        if snapshots is not None:
            if self.k3s.datastore != "etcd":
                raise ValueError("k3s.etcdSnapshots: needs k3s.datastore etcd")
            if snapshots.s3_bucket and (snapshots.s3_access_key is None or snapshots.s3_secret_key is None):
                raise ValueError("k3s.etcdSnapshots.s3AccessKey and s3SecretKey: are required with s3Bucket")
        return self


# --- loading -------------------------------------------------------------------------------


def _key_path(loc: tuple[int | str, ...]) -> str:
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            # pydantic appends the branch name of tagged/union types; it is not a key.
            if part.startswith(("function-", "is-instance[", "lax-or-strict")):
                continue
            path += f".{part}" if path else part
    return path


def _describe(error: Mapping[str, Any]) -> str:
    message = str(error["msg"])
    for prefix in ("Value error, ", "Assertion failed, "):
        if message.startswith(prefix):
            message = message[len(prefix) :]
    path = _key_path(tuple(error["loc"]))
    if not path or message.startswith(f"{path}.") or message.startswith(f"{path}:"):
        # cross-field checks already start with their key path
        return message
    if error["type"] in {"missing", "extra_forbidden"}:
        return f"{path}: {'is required' if error['type'] == 'missing' else 'is not a known key'}"
    value = error.get("input")
    shown = "" if isinstance(value, dict | list) or "secret" in path.lower() else f" (got {value!r})"
    if ("Key" in path and "public" not in path.lower()) or str(value) in message:
        shown = ""
    return f"{path}: {message}{shown}"


def _parse(raw: str) -> Any:
    """Pulumi hands every config value over as a string; objects and lists are JSON."""
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw


def load_config(values: Mapping[str, Any]) -> HarborConfig:
    """Validate raw stack config (top-level key -> value or JSON text) into the model."""
    unknown = sorted(set(values) - set(TOP_LEVEL_KEYS))
    problems = [f"{key}: is not a known key of {PROJECT}" for key in unknown]
    parsed = {key: _parse(value) if isinstance(value, str) else value for key, value in values.items()}
    if not problems:
        try:
            return HarborConfig.model_validate(parsed)
        except ValidationError as error:
            problems = [_describe(item) for item in error.errors(include_url=False)]
    raise ConfigError("invalid stack config:\n  " + "\n  ".join(problems))


def read_pulumi_config(get: Callable[[str], str | None]) -> dict[str, str]:
    """Collect the raw values of the project namespace through `get(full_key)`."""
    raw = {key: get(f"{PROJECT}:{key}") for key in TOP_LEVEL_KEYS}
    return {key: value for key, value in raw.items() if value is not None}
