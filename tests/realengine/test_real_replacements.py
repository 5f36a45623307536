"""The replacement hazards, with the real engine: a port change and `--replace` destroy nothing.

One server and one agent. Each test changes one thing and reads the real world afterwards: the
UIDs of the in-cluster objects (a replaced object is a new UID, or gone), the node's WireGuard
interface and firewall table, its Node object. `pulumi up --replace` of every node step that has a
delete leaves the node as it was: its files, interfaces, firewall ruleset, staged files and the
same Node object, schedulable.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator

import pytest

from tests.realengine.conftest import RealStack, stack_on
from tests.realengine.test_real_engine import NFT_TABLE, api_nodes, change_summary, ready
from tests.testbed.conftest import snapshot
from tests.testbed.stack import MESH_INTERFACE

pytestmark = [pytest.mark.realengine, pytest.mark.testbed]

KEPT = "namespace/argocd secret/argocd-secret configmap/argocd-ssh-known-hosts-cm"
STAGING = "/var/lib/space-harbor/staging"
# What the running control plane rewrites on its own (kine's database, its WAL).
LIVE_FILES = "/var/lib/rancher/k3s/server/db/"


@pytest.fixture(scope="module")
def cluster2(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealStack]:
    yield from stack_on(["n1", "n2"], tmp_path_factory.mktemp("real"), up=True)


def object_uids(stack: RealStack) -> dict[str, str]:
    """The UIDs of objects whose replacement would hurt (Argo CD's namespace, its secret, known hosts)."""
    out = stack.tb.ssh("n1", f"k3s kubectl -n argocd get {KEPT} -o json").stdout
    return {f"{i['kind']}/{i['metadata']['name']}": i["metadata"]["uid"] for i in json.loads(out)["items"]}


def urn_of(stack: RealStack, name: str) -> str:
    found = [r["urn"] for r in stack.pulumi.resources() if r["urn"].endswith(f"command:remote:Command::{name}")]
    assert len(found) == 1, (name, found)
    return found[0]


def node_intact(stack: RealStack, name: str) -> None:
    tb = stack.tb
    peers = tb.ssh(name, f"wg show {MESH_INTERFACE} peers").stdout.split()
    assert len(peers) == len(tb.nodes) - 1, f"{name}: mesh peers {peers}"
    assert tb.ssh(name, f"nft list table inet {NFT_TABLE} >/dev/null; echo $?").stdout.strip() == "0", name
    node = api_nodes(tb)[name]
    assert ready(node) and not node["spec"].get("unschedulable"), (name, node["spec"], node["status"]["conditions"])


def test_a_tunnel_port_change_updates_the_provider_and_replaces_no_object(cluster2: RealStack) -> None:
    before = object_uids(cluster2)
    assert set(before) == {"Namespace/argocd", "Secret/argocd-secret", "ConfigMap/argocd-ssh-known-hosts-cm"}
    config = copy.deepcopy(cluster2.config)
    config.setdefault("k3s", {})["tunnelPort"] = 16999
    cluster2.apply_config(config)
    preview = cluster2.pulumi.run("preview", "--diff")
    assert "pulumi:providers:kubernetes" in preview.output
    up = cluster2.pulumi.run("up", "--yes", "--skip-preview")
    assert change_summary(up.output).get("replace", 0) == 0, up.output[-3000:]
    assert change_summary(up.output).get("delete", 0) == 0, up.output[-3000:]
    assert object_uids(cluster2) == before


def steps_with_a_delete(stack: RealStack, node: str) -> list[str]:
    """The node's Commands whose stored inputs have a delete (the install's own is left out: its
    replacement is a reinstall), from `pulumi stack export`."""
    return sorted(
        r["urn"].rsplit("::", 1)[1]
        for r in stack.pulumi.resources()
        if r["type"] == "command:remote:Command"
        and r["urn"].rsplit("::", 1)[1].startswith(f"{node}-")
        and (r.get("inputs") or {}).get("delete")
        and not r["urn"].endswith("-k3s")
    )


def node_state(stack: RealStack, node: str) -> dict[str, object]:
    """What a replacement must leave as it was on `node`."""
    tb = stack.tb
    snap = snapshot(tb, node)
    api = api_nodes(tb)[node]
    return {
        "files": {path: digest for path, digest in snap.files.items() if not path.startswith(LIVE_FILES)},
        "interfaces": sorted(line.split()[1] for line in snap.links),
        "nft": snap.nft,
        "staged": tb.ssh(node, f"sha256sum {STAGING}/* 2>/dev/null || true").stdout,
        # the same Node object (same uid), as scheduled and marked as before
        "node": {
            "uid": api["metadata"]["uid"],
            "labels": api["metadata"].get("labels"),
            "annotations": api["metadata"].get("annotations"),
            "spec": api["spec"],
        },
    }


@pytest.mark.parametrize("node", ["n2", "n1"])
def test_replacing_each_node_step_leaves_the_node_as_it_was(cluster2: RealStack, node: str) -> None:
    steps = steps_with_a_delete(cluster2, node)
    kinds = {step.removeprefix(f"{node}-") for step in steps}
    # (the first server's own registration has no delete: its Node goes with the cluster)
    assert {"mesh", "firewall", "node-object", "shipped"} | ({"registered"} if node != "n1" else set()) <= kinds, kinds
    before = node_state(cluster2, node)
    assert before["staged"]
    for step in steps:
        cluster2.pulumi.run("up", "--yes", "--skip-preview", "--replace", urn_of(cluster2, step))
        after = node_state(cluster2, node)
        assert after == before, f"--replace of {step} changed {node}: " + ", ".join(
            key for key in before if before[key] != after[key]
        )
        node_intact(cluster2, "n2")
        node_intact(cluster2, "n1")
    assert cluster2.pulumi.run("preview", "--expect-no-changes", check=False).returncode == 0


def test_destroy_leaves_the_state_empty(cluster2: RealStack) -> None:
    cluster2.pulumi.run("destroy", "--yes", "--skip-preview")
    assert cluster2.pulumi.resources() == []
