"""The stack's own steps around the nodes' k3s: the cluster's id, the departures' drain, the API credential.

They run once per stack, not per node (K3sNode, components/k3s.py, is per node). Each command
step runs on the first server, whose kubectl reaches the API locally.
"""

from __future__ import annotations

import pulumi
import pulumi_random as random

from components.config import HarborConfig
from components.remote import first_server_command

# The Kubernetes provider's `clusterIdentifier`. pulumi-kubernetes replaces a provider whose
# identifier is unchanged never, whatever else changed in its kubeconfig (the API address of a
# mesh/ssh-tunnel switch, another tunnel port or first server, a new CA, or a kubeconfig that a
# preview cannot know yet); a replaced provider would replace every object in the cluster. A
# stack has one cluster for its whole life, so the identifier is a constant: not the cluster's
# id, whose replacement must not take the provider with it, and not the stack's name, which
# `pulumi stack rename` changes. Set on an existing stack it replaces nothing: the provider
# replaces only when an identifier it already had changes.
KUBERNETES_CLUSTER_IDENTIFIER = "space-harbor"


def cluster_identity() -> pulumi.Resource:
    """The cluster's id: made first, deleted last, only by `pulumi destroy`. Everything that lives in
    the cluster, or only matters while it does, is `deleted_with` it, so a destroy skips those
    deletes instead of needing an API that is going away (or a program that is not running).

    The engine keeps its state in dependency order and refuses a deletedWith target that comes
    after the resource or is missing, so this is a real resource that every such step depends on
    (through the preflight and the API credential), never a reference to one registered later.
    """
    return random.RandomUuid("cluster-id")


def refuse_cluster_id_replacement(config: HarborConfig, cluster_id: pulumi.Resource) -> pulumi.Resource:
    """A step that stops an `up` that replaces the cluster's id, before anything of the cluster is touched.

    The engine replaces whatever is `deleted_with` a replaced resource, this step included, and it
    replaces it delete-first (it has a delete), while the new id's create has already run: its
    delete (k3s-lifecycle.sh refuse-cluster-id-replacement, on the first server) fails, and every
    node step waits for it (through the preflight), so none of them is replaced. The next `up`
    finds the new id in the state and nothing being replaced. It has no create or update, so it
    dials nobody then, and `pulumi destroy` skips its delete, as it does every delete of what goes
    with the cluster.
    """
    return first_server_command(
        "cluster-id-guard",
        config,
        {},
        pulumi.ResourceOptions(depends_on=[cluster_id], deleted_with=cluster_id),
        create=None,
        delete="refuse-cluster-id-replacement",
    )


def drain_departed_nodes(config: HarborConfig, after: list[pulumi.Resource]) -> pulumi.Resource:
    """A step on the first server that drains nodes removed from the stack, before anything else.

    Pulumi runs the updates of the remaining nodes (their meshes and firewalls drop the removed
    peer) before the deletes of the removed node's resources. A drain at delete time would find
    the node cut off from the API and its pods stuck terminating, so the other nodes' mesh and
    firewall wait for this step, which drains it while it is still connected. The removed node's
    own `registered` delete then finds it drained. Nodes in `decommission.forget` cannot be
    drained (they are gone): their Node objects are deleted, and Kubernetes reschedules their pods.

    It waits for every node's preflight, and everything else waits for it: nothing changes on any
    node until every node has passed.
    """
    env: dict[str, pulumi.Input[str]] = {
        "HARBOR_CLUSTER_NODES": "\n".join(sorted(node.name for node in config.nodes)),
        "HARBOR_FORGET_NODES": "\n".join(sorted(config.decommission.forget)),
        "HARBOR_DRAIN_TIMEOUT": str(config.decommission.drain_timeout_seconds),
        "HARBOR_FORCE": "true" if config.decommission.force else "false",
    }
    return first_server_command(
        "cluster-departures",
        config,
        env,
        pulumi.ResourceOptions(depends_on=after),
        create="drain-departed",
        delete=None,
    )


def read_api_credential(config: HarborConfig, after: list[pulumi.Resource]) -> pulumi.Resource:
    """The stack's own API credential, read on the first server: a kubeconfig that does not expire.

    k3s signs its admin kubeconfig's client certificate for 365 days, and the program reads the
    credential only when this step is created or updated, so a copy of the admin kubeconfig in the
    state stops working after a year. The step makes a ServiceAccount with a long-lived token
    Secret bound to cluster-admin and prints a kubeconfig for it (with the cluster's CA, valid for
    ten years).
    """
    return first_server_command(
        "api-credential",
        config,
        {},
        pulumi.ResourceOptions(depends_on=after),
        create="api-credential",
        delete=None,
        prints_secret=True,
    )
