"""Day 2 on real nodes, under the engine: upgrades in order, refusals, labels, decommission, an
unreachable node dropped by config, and a whole-stack destroy with no program running.

Three booted nodes: n1 the server, n2 and n3 agents, with the k3s stand-in. Each step is a config
change applied with `up`: the real `pulumi up` when the engine's tools are built (the nodes then
run the real API server behind the stand-in), else the replay of tests/testbed/engine.py (see
`engine_cluster`). Assertions read the nodes over SSH, the Node objects, the state and the
engine's report of what ran (for the real engine, its own event log).
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterator
from typing import Any

import pytest

from tests.harness import run_program
from tests.testbed.conftest import engine_cluster
from tests.testbed.nodes import AIRGAP_BINARY, STANDIN_K3S, Testbed, call_in_netns
from tests.testbed.stack import K3S_VERSION, MESH_INTERFACE, stack_config
from tests.testbed.stack_engine import EngineFailed, Report, StackEngine

pytestmark = pytest.mark.testbed

NODES = ["n1", "n2", "n3"]
NEW_VERSION = "v1.32.1+k3s1"
STANDIN_NODES = "/var/lib/rancher/k3s/standin/nodes"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StackEngine]:
    for cluster in engine_cluster(NODES, tmp_path_factory.mktemp("day2"), git=False):
        cluster.up(stack_config(cluster.tb))
        yield cluster


def node_record(tb: Testbed, name: str) -> dict[str, Any] | None:
    """`name`'s Node object as the server's API holds it: labels, annotations, taints (`key:effect`),
    the kubelet's version, whether it is cordoned. The real API server when the stand-in runs
    one, else the stand-in's own record of it."""
    result = tb.ssh("n1", f"k3s kubectl get node {name} -o json", check=False)
    if result.returncode != 0:
        return None
    found = json.loads(result.stdout)
    if "apiVersion" not in found:  # the stand-in's kubectl: its record holds what its JSON leaves out
        record = json.loads(tb.ssh("n1", f"cat {STANDIN_NODES}/{name}.json").stdout)
        return {
            "labels": record.get("labels") or {},
            "annotations": record.get("annotations") or {},
            "taints": set(record.get("taints") or {}),
            "version": record["version"],
            "unschedulable": bool(record.get("unschedulable")),
        }
    return {
        "labels": found["metadata"].get("labels") or {},
        "annotations": found["metadata"].get("annotations") or {},
        "taints": {f"{t['key']}:{t['effect']}" for t in found["spec"].get("taints") or []},
        "version": found["status"]["nodeInfo"]["kubeletVersion"],
        "unschedulable": bool(found["spec"].get("unschedulable")),
    }


def stage_k3s(tb: Testbed, version: str, nodes: list[str] = NODES) -> None:
    """Put the k3s `version` binary where the air-gap install takes it from, as an operator would."""
    standin = STANDIN_K3S.read_text().replace(
        'STANDIN_VERSION="${K3S_STANDIN_VERSION:-v1.31.4+k3s1}"',
        f'STANDIN_VERSION="${{K3S_STANDIN_VERSION:-{version}}}"',
    )
    assert version in standin
    for name in nodes:
        # A new file moved into place: the running k3s keeps the old one open.
        tb.ssh(
            name,
            f"cat > {AIRGAP_BINARY}.new && chmod 755 {AIRGAP_BINARY}.new && mv {AIRGAP_BINARY}.new {AIRGAP_BINARY}",
            input=standin,
        )


def identity(urn: str) -> str:
    """A URN without its stack and project (`urn:pulumi:STACK::PROJECT::`): the mocks name their own."""
    return urn.split("::", 2)[2]


def before(report: Report, first: str, then: str) -> None:
    assert report.result(first).finished <= report.result(then).started, f"{then} started before {first} finished"


def with_k3s(config: dict[str, Any], **changes: Any) -> dict[str, Any]:
    changed = copy.deepcopy(config)
    changed["k3s"] = {**changed["k3s"], **changes}
    return changed


def test_every_node_is_marked_as_joined_by_space_harbor(cluster: StackEngine) -> None:
    for name in NODES:
        record = node_record(cluster.tb, name)
        assert record is not None, name
        assert record["annotations"]["space-harbor/managed"] == "true"
        assert record["version"] == K3S_VERSION


def test_upgrade_goes_server_first_then_each_agent_drained_upgraded_uncordoned(cluster: StackEngine) -> None:
    tb = cluster.tb
    stage_k3s(tb, NEW_VERSION)
    report = cluster.up(with_k3s(cluster.config, version=NEW_VERSION))
    chained = {f"{n}-{step}" for n in NODES for step in ("drain", "upgrade", "uncordon")}
    assert chained <= set(report.updates)
    assert not {u for u in report.updates if u.endswith(("-registered", "-node-object", "-mesh", "-firewall"))}
    # the install's own update saw the new version and left it alone
    for name in NODES:
        assert report.result(f"{name}-k3s").stdout.strip().endswith("reconfigure: unchanged"), name

    before(report, "n1-upgrade", "n1-uncordon")
    for agent, after in (("n2", "n1"), ("n3", "n2")):
        before(report, f"{after}-uncordon", f"{agent}-drain")
        before(report, f"{agent}-drain", f"{agent}-upgrade")
        before(report, f"{agent}-upgrade", f"{agent}-uncordon")
        assert (
            f"draining node {agent} for its upgrade from {K3S_VERSION} to {NEW_VERSION}"
            in report.result(f"{agent}-drain").stderr
        )
        assert f"node {agent} upgraded to {NEW_VERSION} and uncordoned" in report.result(f"{agent}-uncordon").stderr
    assert "without a drain" in report.result("n1-drain").stderr
    for name in NODES:
        record = node_record(tb, name)
        assert record is not None
        assert record["version"] == NEW_VERSION, name
        assert not record["unschedulable"], f"{name} stayed cordoned"
        assert "space-harbor/drained-for-upgrade" not in record["annotations"]
        assert NEW_VERSION in tb.ssh(name, "k3s --version").stdout


def test_downgrade_is_refused_before_any_node_moves(cluster: StackEngine) -> None:
    tb = cluster.tb
    before_files = {name: tb.ssh(name, "sha256sum /etc/rancher/k3s/config.yaml").stdout for name in NODES}
    with pytest.raises(EngineFailed, match=re.escape(f"refusing to downgrade node n1 from {NEW_VERSION}")) as failed:
        cluster.up(with_k3s(cluster.config, version=K3S_VERSION))
    assert not {name for name in failed.value.report.ran() if name.endswith(("-upgrade", "-uncordon"))}
    for name in NODES:
        assert tb.ssh(name, "sha256sum /etc/rancher/k3s/config.yaml").stdout == before_files[name]
        record = node_record(tb, name)
        assert record is not None and record["version"] == NEW_VERSION and not record["unschedulable"]


def test_a_role_change_is_refused_on_the_node(cluster: StackEngine) -> None:
    tb = cluster.tb
    config = copy.deepcopy(cluster.config)
    for node in config["nodes"]:
        node["role"] = "server"
    config["k3s"] = {**config["k3s"], "datastore": "etcd", "firstServer": "n1"}
    run = call_in_netns(tb.ctl, run_program, config)
    # The same identities (type chain and name) as in the state: the engine updates, never
    # uninstalls and reinstalls.
    assert {identity(r.urn) for r in run.resources} >= {identity(u) for u in cluster.urns() if "K3sNode" in u}
    before_files = {name: tb.ssh(name, "sha256sum /etc/rancher/k3s/config.yaml").stdout for name in NODES}
    refusal = "the role of node n2 is server in the stack but it runs k3s as agent"
    with pytest.raises(EngineFailed, match=refusal) as refused:
        cluster.up(config)
    # The preflight refused it: no other step on any node ran.
    assert {name for name in refused.value.report.ran() if not name.endswith("-preflight")} == set()
    for name in NODES:
        assert tb.ssh(name, "sha256sum /etc/rancher/k3s/config.yaml").stdout == before_files[name]
    assert tb.ssh("n2", "systemctl is-active k3s-agent").stdout.strip() == "active"


def test_a_label_change_reaches_the_live_node_and_only_that_node(cluster: StackEngine) -> None:
    # The refused runs above left steps that did succeed recorded with their inputs, as the engine
    # records them; the next `up` of the current config converges first.
    cluster.up(cluster.config)
    config = copy.deepcopy(cluster.config)
    config["nodes"][1]["labels"] = {"tier": "web"}
    config["nodes"][1]["taints"] = ["dedicated=web:NoSchedule"]
    report = cluster.up(config)
    # (n2's drift record follows its new config.yaml fingerprint; it dials nobody)
    assert {u for u in report.updates if not u.endswith(("-preflight", "-drift"))} == {"n2-k3s", "n2-registered"}
    assert "n2-drift" in report.updates
    record = node_record(cluster.tb, "n2")
    assert record is not None
    assert record["labels"].get("tier") == "web"
    assert record["taints"] == {"dedicated:NoSchedule"}
    assert "node-label" in cluster.tb.ssh("n2", "cat /etc/rancher/k3s/config.yaml").stdout

    config = copy.deepcopy(config)
    config["nodes"][1]["labels"] = {}
    config["nodes"][1]["taints"] = []
    cluster.up(config)
    record = node_record(cluster.tb, "n2")
    assert record is not None and "tier" not in record["labels"] and record["taints"] == set()


def test_a_removed_agent_is_drained_while_connected_then_decommissioned(cluster: StackEngine) -> None:
    tb = cluster.tb
    identity = {
        n: tb.ssh(n, f"cat /sys/class/net/{MESH_INTERFACE}/ifindex; pgrep -x wireguard-go").stdout for n in ("n1", "n2")
    }
    n3_key = cluster.outputs()["meshPublicKeys"]["n3"]
    config = stack_config(tb, node_names=["n1", "n2"])
    config["k3s"] = cluster.config["k3s"]
    report = cluster.up(config)
    assert {"cluster-departures", "n1-mesh", "n2-mesh"} <= set(report.updates)
    # The update phase: the drain first, while n3 still has its peers.
    for mesh in ("n1-mesh", "n2-mesh"):
        before(report, "cluster-departures", mesh)
    assert "node n3 left the stack: draining it" in report.result("cluster-departures").stderr
    # Then, after the program, the removed node's own steps run their stored deletes, in order.
    before(report, "n3-registered", "n3-k3s")
    before(report, "n3-k3s", "n3-node-object")
    before(report, "n3-node-object", "n3-mesh")
    assert node_record(tb, "n3") is None, "n3's Node object is still there"
    assert tb.ssh("n3", "test -e /etc/systemd/system/k3s-agent.service", check=False).returncode != 0
    assert tb.ssh("n3", f"ip link show {MESH_INTERFACE}", check=False).returncode != 0
    for name in ("n1", "n2"):
        assert n3_key not in tb.ssh(name, f"wg show {MESH_INTERFACE} peers").stdout
        # the remaining tunnel was changed in place, not bounced
        assert (
            tb.ssh(name, f"cat /sys/class/net/{MESH_INTERFACE}/ifindex; pgrep -x wireguard-go").stdout == identity[name]
        )
    tb.ssh("n1", f"ping -c1 -W2 -I {MESH_INTERFACE} {report_mesh_address(cluster, 'n2')}")
    assert not any(name.startswith("n3-") for name in cluster.names())


def report_mesh_address(cluster: StackEngine, name: str) -> str:
    return next(n["meshAddress"] for n in cluster.outputs()["nodes"] if n["name"] == name)


def test_an_unreachable_removed_node_is_forgotten_by_config_and_the_others_go_on(cluster: StackEngine) -> None:
    """decommission.force cannot reach a removed node's deletes (they keep their stored inputs);
    `decommission.forget` disarms them instead, with one config change and one `up`."""
    tb = cluster.tb
    # n3 joins again (its uninstall took the air-gapped binary along), then dies: its sshd stops
    # and every dial is refused.
    stage_k3s(tb, cluster.config["k3s"]["version"], nodes=["n3"])
    cluster.up(stack_config(tb, k3s=cluster.config["k3s"]))
    assert node_record(tb, "n3") is not None
    tb.stop_sshd("n3")
    n3_address = tb.nodes["n3"].address
    try:
        gone = stack_config(tb, node_names=["n1", "n2"], k3s=cluster.config["k3s"])
        # What happens without it: the update phase goes through, the deletes dial the dead node and fail.
        with pytest.raises(EngineFailed) as failed:
            cluster.up(gone)
        assert any(r.host == n3_address and r.dial_failed for r in failed.value.report.results)
        assert any(name.startswith("n3-") for name in cluster.names())

        forget = {**gone, "decommission": {"forget": ["n3"]}}
        report = cluster.up(forget)
        dialled_n3 = [r.name for r in report.results if r.host == n3_address and r.command]
        assert dialled_n3 == [], f"steps dialled the dead node: {dialled_n3}"
        assert "deleting its Node object without a drain" in report.result("cluster-departures").stderr
        assert node_record(tb, "n3") is None
        # n3's steps are still in the state, disarmed: nothing stored would dial anyone.
        for step in ("n3-k3s", "n3-registered", "n3-node-object", "n3-mesh", "n3-firewall"):
            stored = cluster.stored_inputs(step)
            assert not {key for key in ("create", "update", "delete") if stored.get(key)}, step

        # The name leaves the list: the engine drops the disarmed steps, still without a dial.
        report = cluster.up(gone)
        assert {r.host for r in report.results if r.command} <= {tb.nodes["n1"].address, tb.nodes["n2"].address}
        assert not any(name.startswith("n3-") for name in cluster.names())
        tb.ssh("n1", f"ping -c1 -W2 -I {MESH_INTERFACE} {report_mesh_address(cluster, 'n2')}")
    finally:
        tb.start_sshd("n3")


def test_destroy_without_the_program_leaves_every_node_clean(cluster: StackEngine) -> None:
    """`pulumi destroy` runs no program, so no API tunnel is open: the Kubernetes objects' deletes
    must not need the API (they go with the cluster id, `deletedWith`), and every node is cleaned."""
    tb = cluster.tb
    # a URN ends `::<parent types>$<type>::<name>`
    kubernetes_objects = [urn for urn in cluster.urns() if urn.split("::")[-2].split("$")[-1].startswith("kubernetes:")]
    assert kubernetes_objects
    report = cluster.destroy(api_after_exit=False)
    assert {urn.rsplit("::", 1)[1] for urn in kubernetes_objects} <= set(report.deletes)
    assert cluster.names() == set()
    for name in ("n1", "n2"):
        leftovers = tb.ssh(
            name,
            f"ls /etc/rancher/k3s /usr/local/bin/k3s-uninstall.sh /usr/local/bin/k3s-agent-uninstall.sh "
            f"/etc/wireguard/{MESH_INTERFACE}.conf 2>/dev/null; ip link show {MESH_INTERFACE} 2>/dev/null; "
            "nft list tables | grep space_harbor; systemctl is-active k3s k3s-agent 2>/dev/null | grep -x active",
            check=False,
        ).stdout
        assert leftovers == "", f"{name} kept: {leftovers}"
