"""The `k3s` section of the stack config: version, datastore, API access, air gap, registries.

Checks that span sections (a registration address against the servers, say) are in
components/config/checks.py.
"""

from __future__ import annotations

import ipaddress
import re
import urllib.parse
from typing import Annotated, Literal

from pydantic import AfterValidator, Discriminator, Field, FilePath, SecretStr, Tag, field_validator

from components.schema import Cidr, ConfigModel, split_host_port

DEFAULT_K3S_VERSION = "v1.31.4+k3s1"
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

_K3S_VERSION = re.compile(r"^v(\d+)\.(\d+)\.(\d+)\+k3s(\d+)$")
# The Pod Security fence is a ValidatingAdmissionPolicy of admissionregistration.k8s.io/v1, served
# from Kubernetes 1.30 (components/render/pod_security.py): an older server would refuse it mid-run.
MINIMUM_K3S_MINOR = (1, 30)


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
    # Unset: a port of the stack's own, derived from the project and stack name (components/access.py).
    tunnel_port: int | None = Field(default=None, ge=1024, le=65535)
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
    # Lets a cluster that already runs with a shorter token keep it (k3s cannot change it in place
    # before `k3s token rotate`); see checks.token_strength.
    allow_weak_tokens: bool = False
    # k3s `secrets-encryption` on servers: Secrets encrypted at rest (and so in etcd snapshots). A
    # running server cannot switch it on in place before k3s's 2026 releases, so the preflight
    # refuses it there (docs/upgrading.md: secrets encryption).
    secrets_encryption: bool = True
    # k3s's registries.yaml on every node; unset: Space Harbor writes none (and removes its own).
    registries: Registries | None = None
    # Where joining nodes register: a DNS name or address the user runs in front of the servers.
    registration_address: RegistrationAddress | None = None
    # k3s's klipper service load balancer (servicelb): off unless asked for, see docs/nodes.md.
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
        release = _K3S_VERSION.match(value)
        if not release:
            raise ValueError(f"{value!r} is not a k3s release like v1.31.4+k3s1")
        if (int(release[1]), int(release[2])) < MINIMUM_K3S_MINOR:
            major, minor = MINIMUM_K3S_MINOR
            raise ValueError(
                f"{value!r} is older than v{major}.{minor}, the first Kubernetes release to serve "
                f"ValidatingAdmissionPolicy (the Pod Security fence on users' namespaces); choose "
                f"v{major}.{minor} or later"
            )
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
