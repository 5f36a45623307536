"""The replacement hazards, with the real engine: a port change and `--replace` destroy nothing.

One server and one agent. Each test changes one thing and reads the real world afterwards: the
UIDs of the in-cluster objects (a replaced object is a new UID, or gone), the node's WireGuard
interface and firewall table, its Node object.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator

import pytest

from tests.realengine.conftest import RealStack, stack_on
from tests.realengine.test_real_engine import NFT_TABLE, api_nodes, change_summary, ready
from tests.testbed.stack import MESH_INTERFACE

pytestmark = [pytest.mark.realengine, pytest.mark.testbed]

KEPT = "namespace/argocd secret/argocd-secret configmap/argocd-ssh-known-hosts-cm"


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


@pytest.mark.parametrize("step", ["mesh", "firewall", "node-object", "registered", "shipped"])
def test_replacing_a_node_step_leaves_the_node_as_it_was(cluster2: RealStack, step: str) -> None:
    cluster2.pulumi.run("up", "--yes", "--skip-preview", "--replace", urn_of(cluster2, f"n2-{step}"))
    node_intact(cluster2, "n2")
    node_intact(cluster2, "n1")
    assert cluster2.pulumi.run("preview", "--expect-no-changes", check=False).returncode == 0


def test_destroy_leaves_the_state_empty(cluster2: RealStack) -> None:
    cluster2.pulumi.run("destroy", "--yes", "--skip-preview")
    assert cluster2.pulumi.resources() == []
