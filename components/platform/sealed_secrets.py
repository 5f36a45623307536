"""Sealed Secrets (bitnami-labs/sealed-secrets): the controller that unseals what the tree commits.

Values keys checked against helm/sealed-secrets/values.yaml of chart 2.18.5. It runs in
`kube-system`, where kubeseal looks for it, so its policies select its own pods only: a
namespace-wide deny there would cut CoreDNS and the rest of k3s off.
"""

from __future__ import annotations

from typing import Any

from components.platform.base import (
    KUBE_SYSTEM,
    Component,
    Context,
    Opening,
    Section,
    api_egress,
    dns_egress,
    resources,
    tcp,
)

SEALED_SECRETS_FULLNAME = "sealed-secrets-controller"  # kubeseal's default --controller-name
SEALED_SECRETS_PORT = 8080
SEALED_SECRETS_POD_LABELS = {"app.kubernetes.io/name": "sealed-secrets", "app.kubernetes.io/instance": "sealed-secrets"}


class SealedSecrets(Section):
    enabled: bool = True


def values(settings: SealedSecrets, context: Context) -> dict[str, Any]:
    del settings, context
    return {
        "fullnameOverride": SEALED_SECRETS_FULLNAME,
        # The key pair comes from Pulumi state (a Secret labelled sealed-secrets-key=active, made by the
        # program); a key the controller renewed itself would exist in the cluster only, unbacked.
        "keyrenewperiod": "0",
        "resources": resources("10m", "32Mi", "200m", "128Mi"),
    }


def openings(settings: SealedSecrets, context: Context) -> list[Opening]:
    del settings
    return [
        Opening("allow-dns", egress=(dns_egress(),)),
        Opening("allow-api-server", egress=tuple(api_egress(context))),
        # `kubeseal --fetch-cert` goes through the API server's service proxy, from whichever node
        # address the hop uses (mesh or flannel); the port serves the public certificate and verify/rotate.
        Opening("allow-kubeseal", ingress=({"ports": tcp(SEALED_SECRETS_PORT)},)),
    ]


COMPONENT = Component(
    name="sealed-secrets",
    key="sealedSecrets",
    settings=SealedSecrets,
    namespace=KUBE_SYSTEM,
    release="sealed-secrets",
    values=values,
    openings=openings,
    pod_selector={"matchLabels": SEALED_SECRETS_POD_LABELS},
)
