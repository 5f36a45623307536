"""Telegraf (influxdata/telegraf-ds): node metrics, forwarded to a central Telegraf over mutual TLS.

Values keys checked against charts/telegraf-ds/values.yaml and templates/daemonset.yaml of chart
1.1.53.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import SecretStr, field_validator
from pydantic.alias_generators import to_camel

from components.platform.base import (
    CRD_PENDING,
    Component,
    Context,
    Opening,
    SecretSpec,
    Section,
    dns_egress,
    kubelet_egress,
    labels,
    pem,
    resources,
    secret_path,
    tcp,
)
from components.schema import require_all, secret_value

TELEGRAF_TLS_DIR = "/etc/telegraf-tls"
TELEGRAF_CERTS = "telegraf-tls"
TELEGRAF_KEY = "telegraf-tls-key"
# Telegraf's socket_writer address: host:port, optionally with the tcp:// scheme it needs.
_CENTRAL_ADDRESS = re.compile(r"^(tcp://)?(?P<host>\[[0-9A-Fa-f:.]+\]|[^:/\s\[\]]+):(?P<port>\d{1,5})$")


class Telegraf(Section):
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


def check(settings: Telegraf, context: Context) -> None:
    del context
    require_all(
        *(
            (
                secret_value(value) if isinstance(value, SecretStr) else value,
                f"components.telegraf.{to_camel(key)}",
                "while telegraf is enabled",
            )
            for key in ("central_address", "ca_cert", "tls_cert", "tls_key")
            for value in [getattr(settings, key)]
        )
    )


def central_address(settings: Telegraf) -> tuple[str, int]:
    """socket_writer's address (with tcp://) and its port."""
    address = settings.central_address or ""
    url = address if address.startswith("tcp://") else f"tcp://{address}"
    return url, int(url.rsplit(":", 1)[1])


def values(settings: Telegraf, context: Context) -> dict[str, Any]:
    del context
    return {
        "resources": resources("20m", "64Mi", "500m", "256Mi"),
        # Every node, tainted ones too: metrics of a node nobody watches are the ones you miss.
        "tolerations": [{"operator": "Exists"}],
        "config": {
            # Pass-through to the central Telegraf (its socket_listener), with mutual TLS from our own CA.
            "outputs": [
                {
                    "socket_writer": {
                        "address": central_address(settings)[0],
                        "data_format": "influx",
                        "tls_ca": f"{TELEGRAF_TLS_DIR}/ca.crt",
                        "tls_cert": f"{TELEGRAF_TLS_DIR}/tls.crt",
                        "tls_key": f"{TELEGRAF_TLS_DIR}/tls.key",
                    }
                }
            ]
        },
        # The certificates (ConfigMap, in git) and the key (Secret, sealed) in one read-only folder.
        "volumes": [
            {
                "name": "tls",
                "projected": {"sources": [{"configMap": {"name": TELEGRAF_CERTS}}, {"secret": {"name": TELEGRAF_KEY}}]},
            }
        ],
        "mountPoints": [{"name": "tls", "mountPath": TELEGRAF_TLS_DIR, "readOnly": True}],
    }


def manifests(settings: Telegraf, context: Context) -> list[dict[str, Any]]:
    del context
    return [
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": TELEGRAF_CERTS, "namespace": "telegraf", "labels": labels()},
            # Certificates are public; only the key is sealed.
            "data": {"ca.crt": pem(settings.ca_cert), "tls.crt": pem(settings.tls_cert)},
        }
    ]


def secrets(settings: Telegraf, context: Context) -> list[SecretSpec]:
    key = settings.tls_key
    assert key is not None  # config validation requires it while telegraf is enabled
    return [
        SecretSpec(
            component="telegraf",
            namespace="telegraf",
            name=TELEGRAF_KEY,
            path=secret_path(context, "telegraf", TELEGRAF_KEY),
            data={"tls.key": pem(key.get_secret_value())},
        )
    ]


def openings(settings: Telegraf, context: Context) -> list[Opening]:
    return [
        Opening("allow-dns", egress=(dns_egress(),)),
        Opening("allow-central", egress=({"ports": tcp(central_address(settings)[1])},)),
        # The kubernetes input reads each node's kubelet (status.hostIP:10250).
        Opening("allow-kubelet", egress=(kubelet_egress(context),)),
    ]


COMPONENT = Component(
    name="telegraf",
    key="telegraf",
    settings=Telegraf,
    namespace="telegraf",
    release="telegraf",
    values=values,
    openings=openings,
    manifests=manifests,
    secrets=secrets,
    check=check,
    sync_options=(CRD_PENDING,),
)
