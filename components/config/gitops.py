"""The GitOps sections of the stack config: `argocd` (the pinned release) and `gitops` (the repository).

The GitOps section checks its own credentials against its URL (SSH needs a key and known hosts,
HTTPS a username and password) and Argo CD's own read-only credential against the same URL.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator

from components.schema import ConfigModel, SshPrivateKey, gather
from components.upstream import UpstreamError, pinned_versions

DEFAULT_ARGOCD_VERSION = "v2.13.3"
# The kind of Argo CD's core-install.yaml in manifests/upstream.yaml: its versions are the supported ones.
ARGOCD_CORE_FILE = "argocd-core"
_ARGOCD_VERSION = re.compile(r"^v\d+\.\d+\.\d+$")
_SCP_GIT_URL = re.compile(r"^[A-Za-z0-9._-]+@[A-Za-z0-9.-]+:[^\s]+$")
_URL_GIT = re.compile(r"^(ssh|https?)://[^\s/]+/[^\s]+$")


class ArgoCD(ConfigModel):
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


class GitOps(ConfigModel):
    repo_url: str
    branch: str = "main"
    path: str = "cluster"
    ssh_private_key: SshPrivateKey | None = None
    username: str | None = None
    password: SecretStr | None = None
    # known_hosts lines for the git server; Argo CD and the commit both pin them.
    known_hosts: str | None = None
    # Argo CD's own (read-only) credential; unset, Argo CD gets the write credential above.
    argocd_ssh_private_key: SshPrivateKey | None = None
    argocd_username: str | None = None
    argocd_password: SecretStr | None = None
    auto_sync: bool = False
    # After each commit, ask Argo CD to refresh the root and sync what is out of sync (components/argocd.py).
    sync_on_apply: bool = False
    # How long that step may wait for Argo CD in all: refreshes, the root's sync, the children's syncs.
    sync_timeout_seconds: int = Field(default=300, ge=30, le=3600)
    overwrite_manual_changes: bool = False

    @field_validator("repo_url")
    @classmethod
    def _url(cls, value: str) -> str:
        if _URL_GIT.match(value):
            parts = urlsplit(value)
            # A user name is how SSH logs in (ssh://git@host/...); a password, or any login in an
            # HTTPS URL, is a credential that would sit in plain text in the state and in Argo CD's
            # objects. The value is not shown: it holds the credential.
            if parts.password is not None or (parts.scheme != "ssh" and parts.username is not None):
                raise ValueError(
                    "holds a credential before the host (scheme://USER:TOKEN@host/...), which would be stored "
                    "in plain text; remove it from the URL and set gitops.username, and gitops.password as a "
                    "secret (`pulumi config set --secret --path gitops.password < token-file`)"
                )
            return value
        if not _SCP_GIT_URL.match(value):
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
            # Both at once: one run names every missing key.
            gather(self._write_key_given, self._known_hosts_given)
        elif self.username is None or self.password is None:
            raise ValueError(f"gitops.username and gitops.password: are required for the HTTPS URL {self.repo_url}")
        return self

    def _write_key_given(self) -> None:
        if self.ssh_private_key is None:
            raise ValueError(
                f"gitops.sshPrivateKey: is required for the SSH URL {self.repo_url}: a deploy key with write "
                "access (`pulumi config set --secret --path gitops.sshPrivateKey < deploy_key`)"
            )

    def _known_hosts_given(self) -> None:
        if not (self.known_hosts or "").strip():
            raise ValueError(
                "gitops.knownHosts: is required for an SSH URL, to pin the git server's host key "
                "(the output of `ssh-keyscan <host>`)"
            )

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
