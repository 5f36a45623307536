"""Traefik (traefik/traefik): the ingress, on the node's 80/443, with Let's Encrypt certificates.

Values keys checked against traefik/values.yaml and values.schema.json of chart 41.3.0.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import field_validator

from components.platform.base import (
    Component,
    Context,
    Opening,
    Section,
    api_egress,
    dns_egress,
    resources,
    tcp,
)
from components.schema import require_all

# Traefik's Let's Encrypt resolver, for IngressRoutes' `tls.certResolver`.
CERT_RESOLVER = "letsencrypt"
ACME_PRODUCTION = "https://acme-v02.api.letsencrypt.org/directory"
ACME_STAGING = "https://acme-staging-v02.api.letsencrypt.org/directory"
ACME_STORAGE = "/data/acme.json"
# Traefik's entry points inside the pod (chart defaults); hostPort maps the node's 80/443 onto them.
WEB_PORT, WEBSECURE_PORT = 8000, 8443
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


class Traefik(Section):
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


def traefik_node(settings: Traefik, context: Context) -> str:
    """The node whose public address answers 80/443: components.traefik.node, else the first server."""
    return settings.node or context.first_server


def check(settings: Traefik, context: Context) -> None:
    require_all(
        (context.domain, "domain", "while components.traefik is enabled"),
        (settings.acme_email, "components.traefik.acmeEmail", "for Let's Encrypt"),
    )
    names = list(context.node_names)
    if settings.node is not None and settings.node not in names:
        raise ValueError(f"components.traefik.node: {settings.node!r} is not one of the nodes {names}")


def values(settings: Traefik, context: Context) -> dict[str, Any]:
    return {
        # One pod on one known node: its public address is what `domain`'s DNS points at, and Let's
        # Encrypt's account and certificates (acme.json) sit on a ReadWriteOnce volume on that node.
        # Traefik Proxy cannot share acme.json between replicas.
        "deployment": {"kind": "Deployment", "replicas": 1},
        # The new pod needs the old one's host ports and volume: stop it first.
        "updateStrategy": {"type": "Recreate"},
        "nodeSelector": {"kubernetes.io/hostname": traefik_node(settings, context)},
        # servicelb is disabled: the node's 80/443 reach the pod by hostPort (CNI portmap). hostNetwork
        # would need root or NET_BIND_SERVICE for 80/443, expose every other Traefik port on the node, and
        # bypass NetworkPolicy; hostPort keeps the pod unprivileged, in the pod network, behind its policies.
        "ports": {
            "web": {
                "hostPort": 80,
                "http": {"redirections": {"entryPoint": {"to": "websecure", "scheme": "https", "permanent": True}}},
            },
            "websecure": {"hostPort": 443},
        },
        # A LoadBalancer Service would stay pending without servicelb, and Argo CD would report it Progressing.
        "service": {"spec": {"type": "ClusterIP"}},
        "api": {"dashboard": False},
        "ingressRoute": {"dashboard": {"enabled": False}},
        "global": {"checkNewVersion": False, "sendAnonymousUsage": False},
        "persistence": {"enabled": True, "size": "128Mi", "path": "/data"},
        "certificatesResolvers": {
            CERT_RESOLVER: {
                "acme": {
                    "email": settings.acme_email,
                    "caServer": ACME_STAGING if settings.acme_staging else ACME_PRODUCTION,
                    "storage": ACME_STORAGE,
                    # TLS-ALPN-01 on 443: independent of the HTTP->HTTPS redirect on port 80.
                    "tlsChallenge": True,
                }
            }
        },
        "resources": resources("50m", "64Mi", "500m", "256Mi"),
    }


def openings(settings: Traefik, context: Context) -> list[Opening]:
    del settings
    return [
        Opening("allow-web", ingress=({"ports": tcp(WEB_PORT, WEBSECURE_PORT)},)),
        Opening("allow-dns", egress=(dns_egress(),)),
        # Traefik watches Ingresses, IngressRoutes, Services and EndpointSlices.
        Opening("allow-api-server", egress=tuple(api_egress(context))),
        # Let's Encrypt's ACME API.
        Opening("allow-acme", egress=({"ports": tcp(443)},)),
        # Whatever an IngressRoute points at, in any namespace.
        Opening("allow-backends", egress=({"to": [{"namespaceSelector": {}}]},)),
    ]


def readme(settings: Traefik, context: Context) -> str:
    staging = " (staging CA: certificates are not trusted)" if settings.acme_staging else ""
    return (
        f"**traefik** binds ports 80 and 443 of node `{traefik_node(settings, context)}`: point the DNS names you "
        f"serve at its public address. Certificates come from Let's Encrypt{staging}; use "
        f"`tls.certResolver: {CERT_RESOLVER}` in an IngressRoute."
    )


COMPONENT = Component(
    name="traefik",
    key="traefik",
    settings=Traefik,
    namespace="traefik",
    release="traefik",
    values=values,
    openings=openings,
    check=check,
    readme=readme,
)
