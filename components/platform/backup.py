"""Backup (riotkit-org backup-maker-controller, from helm-of-revolution): scheduled backups.

Values keys checked against the packaged chart's values.yaml and templates of v0.1.2. The
controller has no target of its own: each ScheduledBackup names a Backup Repository server, a
collection and a token Secret. Space Harbor puts the token in `backup-repository` of namespace
`backup`, for the ScheduledBackups committed there.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import SecretStr, field_validator

from components.platform.base import (
    CRD_PENDING,
    Component,
    Context,
    Opening,
    SecretSpec,
    Section,
    api_egress,
    dns_egress,
    resources,
    secret_path,
    tcp,
)
from components.schema import require, secret_value

BACKUP_SECRET = "backup-repository"  # noqa: S105 (a Secret's name)
BACKUP_TOKEN_KEY = "token"  # noqa: S105 (a key's name)
_HTTP_URL = re.compile(r"^https?://[^\s/:]+(:\d{1,5})?(/\S*)?$")
_CRON = re.compile(r"^\S+( \S+){4}$")


class Backup(Section):
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


def check(settings: Backup, context: Context) -> None:
    del context
    require(settings.repository_url, "components.backup.repositoryUrl", "while backup is enabled")
    require(settings.collection_id, "components.backup.collectionId", "while backup is enabled")
    require(secret_value(settings.token), "components.backup.token", "while backup is enabled")


def values(settings: Backup, context: Context) -> dict[str, Any]:
    del settings, context
    return {
        "replicas": 1,
        # The tag is pinned; Always would pull on every restart for nothing.
        "image": {"pullPolicy": "IfNotPresent"},
        "resources": resources("10m", "32Mi", "200m", "128Mi"),
        # One replica locks in memory; no Redis to run.
        "redis": {"deploy": False, "enable": False},
    }


def repository_port(settings: Backup) -> int:
    url = settings.repository_url or ""
    authority = url.split("://", 1)[-1].split("/", 1)[0]
    if ":" in authority:
        return int(authority.rsplit(":", 1)[1])
    return 80 if url.startswith("http://") else 443


def secrets(settings: Backup, context: Context) -> list[SecretSpec]:
    token = settings.token
    assert token is not None  # config validation requires it while backup is enabled
    return [
        SecretSpec(
            component="backup",
            namespace="backup",
            name=BACKUP_SECRET,
            path=secret_path(context, "backup", BACKUP_SECRET),
            data={BACKUP_TOKEN_KEY: token.get_secret_value()},
        )
    ]


def openings(settings: Backup, context: Context) -> list[Opening]:
    return [
        Opening("allow-dns", egress=(dns_egress(),)),
        # The controller turns ScheduledBackups into CronJobs, Secrets and ConfigMaps.
        Opening("allow-api-server", egress=tuple(api_egress(context))),
        # Its backup jobs upload to the Backup Repository server.
        Opening("allow-repository", egress=({"ports": tcp(repository_port(settings))},)),
    ]


def readme(settings: Backup, context: Context) -> str:
    return (
        f"**backup** runs backup-maker-controller, which has no target of its own: commit "
        f"`ScheduledBackup`s in namespace `backup` (under `{context.gitops_path}/apps/user/`, say) with "
        f'`cronJob.scheduleEvery: "{settings.schedule}"`, '
        f"`collectionId: {settings.collection_id}`, Repository url "
        f"`{settings.repository_url}` and "
        f"`tokenSecretRef: {{secretName: {BACKUP_SECRET}, tokenKey: {BACKUP_TOKEN_KEY}}}`. A job that "
        "reads a database in another namespace needs a NetworkPolicy of its own beside it."
    )


COMPONENT = Component(
    name="backup",
    key="backup",
    settings=Backup,
    namespace="backup",
    release="backup-maker-controller",
    values=values,
    openings=openings,
    secrets=secrets,
    check=check,
    readme=readme,
    sync_options=(CRD_PENDING,),
)
