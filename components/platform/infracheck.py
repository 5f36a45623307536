"""Infracheck (riotkit-org/infracheck): a health endpoint for an outside monitor, behind Traefik.

The chart lives on the `k8s` branch, folder `k8s`; values keys checked against k8s/values.yaml
and k8s/templates/*.yaml at the pinned commit.
"""

from __future__ import annotations

import json
from typing import Any

from components.platform.base import (
    CRD_PENDING,
    Component,
    Context,
    Opening,
    Section,
    dns_egress,
    labels,
    resources,
    tcp,
)
from components.platform.traefik import CERT_RESOLVER
from components.schema import Host, require_all

# Infracheck answers on /<prefix>/ only (`--server-path-prefix`). The prefix is in git, so it is a
# path, not a password.
INFRACHECK_PATH_PREFIX = "health"
INFRACHECK_PORT = 8000
INFRACHECK_SERVICE = "infracheck-http"  # `{{ .Release.Name }}-http`; the chart selects pods by release name


class Infracheck(Section):
    enabled: bool = True
    host: Host | None = None


def check(settings: Infracheck, context: Context) -> None:
    require_all(
        (context.domain, "domain", "while components.infracheck is enabled"),
        (settings.host, "components.infracheck.host", "while infracheck is enabled"),
    )
    if "traefik" not in context.enabled:
        raise ValueError(
            "components.infracheck.enabled: the health endpoint is served through Traefik; "
            "enable components.traefik or disable infracheck"
        )


def infracheck_checks(context: Context) -> dict[str, dict[str, Any]]:
    """The default checks: free disk, free RAM, load, and the TLS certificate of `domain`."""
    checks: dict[str, dict[str, Any]] = {
        # The container's root is the node's containerd filesystem, so this is the node's free space.
        "free-disk": {"type": "disk-space", "input": {"dir": "/", "min_req_space": "2"}},
        # /proc/meminfo and /proc/loadavg are the node's even inside the container.
        "free-ram": {"type": "free-ram", "input": {"max_ram_percentage": "90"}},
        "load": {"type": "load-average-auto", "input": {"maximum_above": "1", "timing": "15"}},
    }
    if context.domain:
        checks[f"tls-{context.domain}"] = {
            "type": "tls",
            "input": {"domain": context.domain, "alert_days_before": "10"},
        }
    return checks


def values(settings: Infracheck, context: Context) -> dict[str, Any]:
    del settings
    return {
        "deployment": {
            "resources": resources("10m", "64Mi", "500m", "256Mi"),
            # The checks above need neither host paths nor privileges.
            "allowHostSystemPaths": False,
            "isPrivileged": False,
        },
        # The chart declares this volume only with allowHostSystemPaths; the results cache can live in the pod.
        "dbVolume": {"enabled": False},
        # The chart's IngressRoute uses traefik.containo.us, which Traefik 3 no longer serves; ours is in git.
        "ingress": {"enabled": False},
        "settings": {"secret_code": INFRACHECK_PATH_PREFIX},
        "checks": {
            "configured": {name: json.dumps(check, indent=4) for name, check in infracheck_checks(context).items()}
        },
    }


def manifests(settings: Infracheck, context: Context) -> list[dict[str, Any]]:
    del context
    return [
        {
            "apiVersion": "traefik.io/v1alpha1",
            "kind": "IngressRoute",
            "metadata": {"name": "infracheck", "namespace": "infracheck", "labels": labels()},
            "spec": {
                "entryPoints": ["websecure"],
                "routes": [
                    {
                        "kind": "Rule",
                        "match": f"Host(`{settings.host}`)",
                        "services": [{"name": INFRACHECK_SERVICE, "port": 80}],
                    }
                ],
                "tls": {"certResolver": CERT_RESOLVER},
            },
        }
    ]


def openings(settings: Infracheck, context: Context) -> list[Opening]:
    del settings, context
    from_traefik = {
        "from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "traefik"}}}],
        "ports": tcp(INFRACHECK_PORT),
    }
    return [
        Opening("allow-from-traefik", ingress=(from_traefik,)),
        Opening("allow-dns", egress=(dns_egress(),)),
        # The tls check opens a TLS connection to `domain`:443.
        Opening("allow-tls-check", egress=({"ports": tcp(443)},)),
    ]


def readme(settings: Infracheck, context: Context) -> str:
    del context
    return (
        f"**infracheck** answers `https://{settings.host}/{INFRACHECK_PATH_PREFIX}/` "
        "with HTTP 200 when every check passes and 500 otherwise: point an outside monitor at it."
    )


COMPONENT = Component(
    name="infracheck",
    key="infracheck",
    settings=Infracheck,
    namespace="infracheck",
    release="infracheck",
    values=values,
    openings=openings,
    manifests=manifests,
    check=check,
    readme=readme,
    # The IngressRoute's CRD arrives with Traefik; until then a dry run would refuse it.
    sync_options=(CRD_PENDING,),
)
