"""SMTP relay (bokysan/docker-postfix, chart `mail`): mail from any namespace, relayed onwards.

Values keys checked against helm/mail/values.yaml and templates/statefulset.yaml of the published
5.1.0 package.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, SecretStr

from components.platform.base import (
    CRD_PENDING,
    Component,
    Context,
    Opening,
    SecretSpec,
    Section,
    dns_egress,
    resources,
    secret_path,
    tcp,
)
from components.schema import require

SMTP_PORT = 587
SMTP_SECRET = "smtp-relay"  # noqa: S105 (a Secret's name)


class Smtp(Section):
    enabled: bool = False
    relay_host: str | None = None
    relay_username: str | None = None
    relay_password: SecretStr | None = None
    allowed_sender_domains: list[str] = Field(default_factory=list)


def check(settings: Smtp, context: Context) -> None:
    require(settings.relay_host, "components.smtp.relayHost", "while smtp is enabled")
    if settings.relay_username and settings.relay_password is None:
        raise ValueError("components.smtp.relayPassword: is required with relayUsername")
    if not settings.allowed_sender_domains and not context.domain:
        raise ValueError("components.smtp.allowedSenderDomains: is required while smtp is enabled and domain is unset")


def relay_port(relay_host: str) -> int:
    """The port of RELAYHOST (`host`, `host:port`, `[host]:port`); Postfix's default is 25."""
    tail = relay_host.rsplit("]", 1)[-1] if relay_host.startswith("[") else relay_host
    if ":" in tail:
        port = tail.rsplit(":", 1)[1]
        if port.isdigit():
            return int(port)
    return 25


def sender_domains(settings: Smtp, context: Context) -> list[str]:
    return settings.allowed_sender_domains or [context.domain or ""]


def values(settings: Smtp, context: Context) -> dict[str, Any]:
    general: dict[str, str] = {
        "RELAYHOST": settings.relay_host or "",
        "ALLOWED_SENDER_DOMAINS": " ".join(sender_domains(settings, context)),
    }
    if settings.relay_username:
        general["RELAYHOST_USERNAME"] = settings.relay_username
    chart_values: dict[str, Any] = {
        # The Service becomes smtp.smtp.svc:587.
        "fullnameOverride": "smtp",
        # true stamps `now` into the pod template on every render: Argo CD would never see it in sync.
        "recreateOnRedeploy": False,
        "resources": resources("10m", "64Mi", "250m", "256Mi"),
        "config": {"general": general},
    }
    if settings.relay_password is not None:
        # The chart adds every key of this Secret to the pod's environment (envFrom).
        chart_values["existingSecret"] = SMTP_SECRET
    return chart_values


def secrets(settings: Smtp, context: Context) -> list[SecretSpec]:
    password = settings.relay_password
    if password is None:
        return []
    return [
        SecretSpec(
            component="smtp",
            namespace="smtp",
            name=SMTP_SECRET,
            path=secret_path(context, "smtp", SMTP_SECRET),
            data={"RELAYHOST_PASSWORD": password.get_secret_value()},
        )
    ]


def openings(settings: Smtp, context: Context) -> list[Opening]:
    del context
    return [
        # Any workload may hand mail to the relay.
        Opening("allow-submission", ingress=({"from": [{"namespaceSelector": {}}], "ports": tcp(SMTP_PORT)},)),
        Opening("allow-dns", egress=(dns_egress(),)),
        Opening("allow-relay", egress=({"ports": tcp(relay_port(settings.relay_host or ""))},)),
    ]


def readme(settings: Smtp, context: Context) -> str:
    del settings, context
    return f"**smtp** accepts mail from any namespace at `smtp.smtp.svc:{SMTP_PORT}`."


COMPONENT = Component(
    name="smtp",
    key="smtp",
    settings=Smtp,
    namespace="smtp",
    release="smtp",
    values=values,
    openings=openings,
    secrets=secrets,
    check=check,
    readme=readme,
    sync_options=(CRD_PENDING,),
)
