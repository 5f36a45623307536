"""Longhorn (longhorn/longhorn): replicated block storage on the nodes' own disks, off by default.

Values keys checked against chart/values.yaml and chart/templates of Longhorn 1.12.1;
tests/unit/test_longhorn.py compares every key set here with the key paths of that values.yaml.
The chart must be installed in `longhorn-system` (its README says so). The nodes need open-iscsi
(the volumes' iSCSI frontend) and nfs-common (ReadWriteMany volumes): components/scripts/k3s.sh
installs them while Longhorn is enabled.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import Field, field_validator

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

NAMESPACE = "longhorn-system"
STORAGE_CLASS = "longhorn"  # the chart's StorageClass name
DEFAULT_REPLICAS = 3
# The conversion and admission webhooks (on the longhorn-manager pods), which the API server calls.
WEBHOOK_PORTS = (9501, 9502)
# NFS of the share-manager pods: a node's kernel mounts ReadWriteMany volumes from there.
NFS_PORT = 2049
_DATA_PATH = re.compile(r"^/[A-Za-z0-9._/-]*$")


class Longhorn(Section):
    enabled: bool = False
    # Replicas of each volume, on as many nodes; default: 3, or the number of nodes when fewer.
    replica_count: int | None = Field(default=None, ge=1, le=20)
    # Whether `longhorn` is the cluster's default StorageClass. k3s's own local-path is default too.
    default_storage_class: bool = False
    # Where Longhorn keeps replica data on every node.
    data_path: str = "/var/lib/longhorn/"

    @field_validator("data_path")
    @classmethod
    def _data_path(cls, value: str) -> str:
        if not _DATA_PATH.match(value) or ".." in value.split("/") or value.rstrip("/") in ("", "/proc", "/sys"):
            raise ValueError(f"{value!r} is not an absolute folder on the nodes, like /var/lib/longhorn/")
        return value


def replicas(settings: Longhorn, context: Context) -> int:
    return settings.replica_count or min(DEFAULT_REPLICAS, len(context.node_names))


def check(settings: Longhorn, context: Context) -> None:
    count, nodes = replicas(settings, context), len(context.node_names)
    if count > nodes:
        raise ValueError(
            f"components.longhorn.replicaCount: {count} replicas need {count} nodes to land on, and nodes lists "
            f"{nodes}; lower it, or add nodes"
        )


def values(settings: Longhorn, context: Context) -> dict[str, Any]:
    count = replicas(settings, context)
    # The control plane's CSI sidecars (attacher, provisioner, resizer, snapshotter) default to 3
    # each; more than one per node only takes memory.
    sidecars = min(DEFAULT_REPLICAS, len(context.node_names))
    return {
        "persistence": {
            "defaultClass": settings.default_storage_class,
            "defaultClassReplicaCount": count,
        },
        "defaultSettings": {
            "defaultDataPath": settings.data_path,
            # For volumes made in Longhorn's UI; the StorageClass above has its own count.
            "defaultReplicaCount": {"v1": str(count), "v2": str(count)},
            # No calls home: the upgrade check and usage metrics go to Longhorn's servers.
            "upgradeChecker": False,
            "allowCollectingLonghornUsageMetrics": False,
        },
        # A Helm pre-upgrade hook that the chart says to switch off under Argo CD and other GitOps tools.
        "preUpgradeChecker": {"jobEnabled": False},
        "csi": {
            "attacherReplicaCount": sidecars,
            "provisionerReplicaCount": sidecars,
            "resizerReplicaCount": sidecars,
            "snapshotterReplicaCount": sidecars,
        },
        # Reached with `kubectl port-forward`; one is enough.
        "longhornUI": {"replicas": 1},
        "longhornManager": {"resources": resources("50m", "128Mi", "1", "512Mi")},
    }


def openings(settings: Longhorn, context: Context) -> list[Opening]:
    del settings
    own_namespace: dict[str, Any] = {"podSelector": {}}
    return [
        Opening("allow-dns", egress=(dns_egress(),)),
        # The manager, the CSI sidecars and the driver deployer watch and write Longhorn's objects.
        Opening("allow-api-server", egress=tuple(api_egress(context))),
        # Managers, instance managers (engines and replicas, on ports they pick), the CSI plugin, share
        # managers and the UI talk to each other, across nodes, pod to pod.
        Opening("allow-longhorn", ingress=({"from": [own_namespace]},), egress=({"to": [own_namespace]},)),
        # The API server calls the webhooks from a server's address (its host network, over the mesh
        # or flannel's interface): any source, these ports only.
        Opening("allow-webhooks", ingress=({"ports": tcp(*WEBHOOK_PORTS)},)),
        # The CSI plugin mounts a ReadWriteMany volume in the node's own network namespace, so the NFS
        # client is the node (whichever of its addresses the hop uses), not a pod.
        Opening("allow-nfs-from-nodes", ingress=({"ports": tcp(NFS_PORT)},)),
    ]


def readme(settings: Longhorn, context: Context) -> str:
    default = (
        "the default StorageClass (k3s's `local-path` is marked default too; Kubernetes takes the newer one)"
        if settings.default_storage_class
        else f"not the default StorageClass: ask for it with `storageClassName: {STORAGE_CLASS}`"
    )
    return (
        f"**longhorn** provides the StorageClass `{STORAGE_CLASS}`: each volume keeps "
        f"{replicas(settings, context)} replicas on different nodes, under `{settings.data_path}`. It is "
        f"{default}. Every node has open-iscsi and nfs-common (Space Harbor installs them). Its UI is not "
        f"exposed: `kubectl -n {NAMESPACE} port-forward svc/longhorn-frontend 8080:80`. A backup target "
        f"needs a NetworkPolicy of your own in `{NAMESPACE}` that lets Longhorn reach it. Before you turn "
        "Longhorn off, move your data off its volumes: Argo CD then deletes what the chart installed."
    )


COMPONENT = Component(
    name="longhorn",
    key="longhorn",
    settings=Longhorn,
    namespace=NAMESPACE,
    release="longhorn",
    values=values,
    openings=openings,
    check=check,
    readme=readme,
    node_packages=("open-iscsi", "nfs-common"),
)
