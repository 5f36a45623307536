"""Backup (riotkit-org backup-maker-controller, from helm-of-revolution): scheduled backups.

Values keys checked against the packaged chart's values.yaml and templates of v0.1.2. The
controller has no target of its own: users commit ScheduledBackups. Space Harbor seals the
repository token into `backup-repository` of namespace `backup`, for the ScheduledBackups there,
and the generated README shows one, as the ScheduledBackup CRD of v0.1.2 takes it (the CRD is
pinned in manifests/upstream.yaml; tests/unit/test_backup_guidance.py checks the example against
its schema). That CRD has no field for the repository's URL: the template's script reads it from
`spec.vars` (`Repository.url`), where the example puts `repositoryUrl`.
"""

from __future__ import annotations

import json
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
from components.schema import require_all, secret_value

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
    require_all(
        (settings.repository_url, "components.backup.repositoryUrl", "while backup is enabled"),
        (settings.collection_id, "components.backup.collectionId", "while backup is enabled"),
        (secret_value(settings.token), "components.backup.token", "while backup is enabled"),
    )


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


# The Secret the controller generates the GPG key pair into (createIfNotExists), with its keys. Not
# BACKUP_SECRET: the controller adds the keys to the Secret it is given, and Sealed Secrets keeps
# that one equal to git.
GPG_SECRET = "backup-gpg"  # noqa: S105 (a Secret's name)


def scheduled_backup_example(settings: Backup, context: Context) -> str:
    """A ScheduledBackup for backup-maker-controller v0.1.2, with the stack's values, as YAML with comments."""
    email = f"backup@{context.domain}" if context.domain else "backup@example.org"

    def quoted(value: str | None) -> str:
        return json.dumps(value or "")

    return f"""apiVersion: riotkit.org/v1alpha1
kind: ScheduledBackup
metadata:
  name: shop-db
  namespace: backup            # where the token Secret is; the backup jobs run here too
spec:
  operation: backup
  cronJob:
    enabled: true
    scheduleEvery: {quoted(settings.schedule)}
  collectionId: {quoted(settings.collection_id)}
  tokenSecretRef:              # sealed by Space Harbor from components.backup.token
    secretName: {BACKUP_SECRET}
    tokenKey: {BACKUP_TOKEN_KEY}
  gpgKeySecretRef:             # the controller generates the key pair into this Secret
    secretName: {GPG_SECRET}
    createIfNotExists: true
    email: {email}
    publicKey: public
    privateKey: private
    passphraseKey: passphrase
  templateRef:                 # a script bundled with Backup Maker, or kind ClusterBackupProcedureTemplate
    kind: internal
    name: postgres
  vars: |                      # YAML text: what the template's script reads
    Params:
      hostname: postgres.shop.svc.cluster.local
      port: 5432
      db: shop
      user: backup
    Repository:
      url: {quoted(settings.repository_url)}
      collectionId: {quoted(settings.collection_id)}
      recipient: {email}
      passphrase: ""
  varsSecretRef:               # keys of this Secret of yours replace those vars
    secretName: shop-db-backup
    importOnlyKeys:
      - Params.password
"""


def readme(settings: Backup, context: Context) -> str:
    return (
        "**backup** runs backup-maker-controller v0.1.2, which has no target of its own: you commit "
        "`ScheduledBackup`s in namespace `backup`, in a folder of your own (say `backups/`, outside "
        f"`{context.gitops_path}/`), and an Application for that folder in `{context.gitops_path}/apps/user/` "
        "(project `backups`, destination namespace `backup`, which admits ScheduledBackups and SealedSecrets "
        "only; `apps/user/README.md` shows an Application). "
        "For example, a PostgreSQL database on this stack's schedule:\n\n"
        f"```yaml\n{scheduled_backup_example(settings, context)}```\n\n"
        "Every field of `spec` above is required. The ScheduledBackup has no field for the Backup "
        "Repository's URL: the template's script reads it from `vars` (`Repository.url`, with "
        "`Repository.collectionId` and the GPG `recipient`), and the controller adds the token from "
        "`tokenSecretRef` as `Repository.token`. `templateRef` names a script bundled with Backup Maker "
        "(`kind: internal`; `postgres` here) or a `ClusterBackupProcedureTemplate` of yours, and "
        "`vars.Params` holds what that script asks for. "
        "Keep passwords out of `vars`: put them in a Secret of your own (sealed) and list its keys in "
        "`varsSecretRef.importOnlyKeys`.\n\n"
        f"On its first run the controller generates a GPG key pair into the Secret `{GPG_SECRET}`, which "
        "belongs to the ScheduledBackup: deleting the ScheduledBackup deletes the key, and without the "
        "private key no backup can be restored. Keep a copy outside the cluster "
        f"(`kubectl -n backup get secret {GPG_SECRET} -o yaml`), or create the key pair yourself, commit "
        "it sealed and set `createIfNotExists: false`.\n\n"
        "Pods in `backup` may reach DNS, the API server and the repository's port, nothing else: a job "
        "that reads a database in another namespace also needs openings in both namespaces' NetworkPolicies, "
        "which neither project `backups` nor `applications` may create."
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
