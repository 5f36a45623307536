"""k3s-lifecycle.sh's day-2 actions against a fake `k3s kubectl` that keeps real Node objects
(tests/helpers.py `FakeK3s`, the `fake_k3s` fixture): the tests see the Node the script leaves
behind, not just the commands it ran.
"""

from __future__ import annotations

import json
import subprocess

import yaml

from tests.helpers import FakeK3s, status_line

OLD, NEW = "v1.31.4+k3s1", "v1.32.1+k3s1"


def _status(result: subprocess.CompletedProcess[str]) -> str:
    return status_line(result).rsplit(": ", 1)[1]


def test_prepare_upgrade_drains_an_older_node_and_marks_it(fake_k3s: FakeK3s) -> None:
    fake_k3s.add("agent-1", OLD)
    assert _status(fake_k3s.run("prepare-upgrade", HARBOR_DRAIN_TIMEOUT="45")) == "changed"
    node = fake_k3s.node("agent-1")
    assert node["spec"]["unschedulable"] is True
    assert node["metadata"]["annotations"]["space-harbor/drained-for-upgrade"] == NEW
    assert "drain agent-1 --ignore-daemonsets --delete-emptydir-data --timeout=45s" in fake_k3s.calls()


def test_prepare_upgrade_leaves_a_current_or_unregistered_node_alone(fake_k3s: FakeK3s) -> None:
    fake_k3s.add("agent-1", NEW)
    assert _status(fake_k3s.run("prepare-upgrade")) == "unchanged"
    assert _status(fake_k3s.run("prepare-upgrade", node="agent-9")) == "unchanged"
    assert fake_k3s.node("agent-1")["spec"]["unschedulable"] is False
    assert not any(call.startswith(("drain", "cordon", "annotate")) for call in fake_k3s.calls())


def test_prepare_upgrade_refuses_a_downgrade_before_touching_the_node(fake_k3s: FakeK3s) -> None:
    fake_k3s.add("agent-1", "v1.33.0+k3s1")
    result = fake_k3s.run("prepare-upgrade")
    assert result.returncode != 0
    assert "refusing to downgrade node agent-1 from v1.33.0+k3s1 to v1.32.1+k3s1" in result.stderr
    assert fake_k3s.node("agent-1")["spec"]["unschedulable"] is False
    assert fake_k3s.node("agent-1")["metadata"]["annotations"] == {}
    # the k3s patch release orders numerically: +k3s10 is newer than +k3s9
    fake_k3s.add("agent-2", "v1.32.1+k3s10")
    assert (
        "refusing to downgrade"
        in fake_k3s.run("prepare-upgrade", node="agent-2", HARBOR_K3S_VERSION="v1.32.1+k3s9").stderr
    )


def test_failed_drain_keeps_the_mark_so_the_next_run_still_uncordons(fake_k3s: FakeK3s) -> None:
    fake_k3s.add("agent-1", OLD)
    (fake_k3s.state / "drain-fails").write_text("")
    result = fake_k3s.run("prepare-upgrade")
    assert result.returncode != 0
    assert "draining node agent-1 before its upgrade to v1.32.1+k3s1 failed" in result.stderr
    assert "stays cordoned" in result.stderr
    assert fake_k3s.node("agent-1")["metadata"]["annotations"]["space-harbor/drained-for-upgrade"] == NEW


def test_confirm_upgrade_waits_for_the_new_version_then_uncordons_what_it_drained(fake_k3s: FakeK3s) -> None:
    fake_k3s.add("agent-1", OLD)
    fake_k3s.run("prepare-upgrade")
    # the agent still reports the old kubelet: confirm-upgrade must not uncordon it
    stuck = fake_k3s.run("confirm-upgrade")
    assert stuck.returncode != 0
    assert "node agent-1 runs v1.31.4+k3s1, not v1.32.1+k3s1" in stuck.stderr
    assert fake_k3s.node("agent-1")["spec"]["unschedulable"] is True
    fake_k3s.set_version("agent-1", NEW)
    assert _status(fake_k3s.run("confirm-upgrade")) == "changed"
    node = fake_k3s.node("agent-1")
    assert node["spec"]["unschedulable"] is False
    assert "space-harbor/drained-for-upgrade" not in node["metadata"]["annotations"]
    # a second confirmation finds nothing to undo
    assert _status(fake_k3s.run("confirm-upgrade")) == "unchanged"


def test_confirm_upgrade_never_uncordons_an_operators_cordon(fake_k3s: FakeK3s) -> None:
    fake_k3s.add("agent-1", NEW)
    node = fake_k3s.node("agent-1")
    node["spec"]["unschedulable"] = True
    (fake_k3s.state / "nodes" / "agent-1.json").write_text(json.dumps(node))
    assert _status(fake_k3s.run("confirm-upgrade")) == "unchanged"
    assert fake_k3s.node("agent-1")["spec"]["unschedulable"] is True
    assert "uncordon agent-1" not in fake_k3s.calls()


def test_prepare_upgrade_without_drain_refuses_a_downgrade_and_leaves_the_node_scheduled(fake_k3s: FakeK3s) -> None:
    # The first server: its upgrade is checked, never drained.
    fake_k3s.add("server-1", OLD)
    assert _status(fake_k3s.run("prepare-upgrade", node="server-1", HARBOR_DRAIN="false")) == "unchanged"
    assert fake_k3s.node("server-1")["spec"]["unschedulable"] is False
    assert not any(call.startswith(("drain", "cordon", "annotate")) for call in fake_k3s.calls())
    down = fake_k3s.run("prepare-upgrade", node="server-1", HARBOR_DRAIN="false", HARBOR_K3S_VERSION="v1.30.0+k3s1")
    assert down.returncode != 0
    assert "refusing to downgrade node server-1" in down.stderr


def test_reconcile_does_not_wait_for_a_version(fake_k3s: FakeK3s) -> None:
    # Registration is about labels and taints; the version is confirm-upgrade's business.
    fake_k3s.add("agent-1", OLD)
    assert _status(fake_k3s.run("reconcile", HARBOR_K3S_VERSION="")) == "changed"


def test_reconcile_never_uncordons_an_operators_cordon(fake_k3s: FakeK3s) -> None:
    fake_k3s.add("agent-1", NEW)
    node = fake_k3s.node("agent-1")
    node["spec"]["unschedulable"] = True
    (fake_k3s.state / "nodes" / "agent-1.json").write_text(json.dumps(node))
    # the first run marks the node as joined by Space Harbor; the second has nothing to do
    assert _status(fake_k3s.run("reconcile")) == "changed"
    assert fake_k3s.node("agent-1")["metadata"]["annotations"]["space-harbor/managed"] == "true"
    assert _status(fake_k3s.run("reconcile")) == "unchanged"
    assert fake_k3s.node("agent-1")["spec"]["unschedulable"] is True
    assert "uncordon agent-1" not in fake_k3s.calls()


def test_reconcile_applies_labels_and_taints_and_removes_only_its_own(fake_k3s: FakeK3s) -> None:
    fake_k3s.add("agent-1", NEW)
    node = fake_k3s.node("agent-1")
    node["metadata"]["labels"]["kubernetes.io/hostname"] = "agent-1"  # set by k3s, not ours
    (fake_k3s.state / "nodes" / "agent-1.json").write_text(json.dumps(node))
    labels = "tier=web\ntopology.kubernetes.io/zone=fsn1"
    taints = "dedicated=web:NoSchedule\nspot:PreferNoSchedule"
    assert _status(fake_k3s.run("reconcile", HARBOR_NODE_LABELS=labels, HARBOR_NODE_TAINTS=taints)) == "changed"
    node = fake_k3s.node("agent-1")
    assert node["metadata"]["labels"] == {
        "kubernetes.io/hostname": "agent-1",
        "tier": "web",
        "topology.kubernetes.io/zone": "fsn1",
    }
    assert sorted((t["key"], t["value"], t["effect"]) for t in node["spec"]["taints"]) == [
        ("dedicated", "web", "NoSchedule"),
        ("spot", "", "PreferNoSchedule"),
    ]
    # the same stack again: nothing to report
    assert _status(fake_k3s.run("reconcile", HARBOR_NODE_LABELS=labels, HARBOR_NODE_TAINTS=taints)) == "unchanged"
    # a label and a taint leave the stack: they leave the node, the k3s label stays
    assert _status(fake_k3s.run("reconcile", HARBOR_NODE_LABELS="tier=db", HARBOR_NODE_TAINTS="")) == "changed"
    node = fake_k3s.node("agent-1")
    assert node["metadata"]["labels"] == {"kubernetes.io/hostname": "agent-1", "tier": "db"}
    assert node["spec"]["taints"] == []
    assert node["metadata"]["annotations"]["space-harbor/managed-labels"] == "tier"


def test_reconcile_passes_labels_and_taints_as_operands_never_as_options(fake_k3s: FakeK3s) -> None:
    # The model refuses such keys; the script still ends kubectl's options with `--`, so an item
    # that slipped through is a (refused) operand, never a flag of a kubectl that runs as root.
    fake_k3s.add("agent-1", NEW)
    taint = "--kubeconfig=/tmp/planted:NoSchedule"
    label = "--kubeconfig=/tmp/planted"
    fake_k3s.run("reconcile", HARBOR_NODE_LABELS=label, HARBOR_NODE_TAINTS=taint)
    node = fake_k3s.node("agent-1")
    # the fake, like kubectl, takes what follows `--` as operands: the items landed as such
    assert [t["key"] for t in node["spec"]["taints"]] == ["--kubeconfig"]
    assert node["metadata"]["labels"] == {"--kubeconfig": "/tmp/planted"}
    for call in fake_k3s.calls():
        if call.startswith(("label", "taint", "annotate")):
            options, _, operands = call.partition(" -- ")
            assert operands and "kubeconfig" not in options, call


def test_day2_actions_refuse_a_bad_version(fake_k3s: FakeK3s) -> None:
    fake_k3s.add("agent-1", OLD)
    for action in ("prepare-upgrade", "confirm-upgrade"):
        result = fake_k3s.run(action, HARBOR_K3S_VERSION="latest")
        assert result.returncode != 0
        assert "HARBOR_K3S_VERSION must look like v1.31.4+k3s1 (got 'latest')" in result.stderr


def test_drain_departed_drains_only_our_nodes_that_left_the_stack(fake_k3s: FakeK3s) -> None:
    managed = {"annotations": {"space-harbor/managed": "true"}}
    for name in ("server-1", "agent-1", "agent-2"):
        fake_k3s.add(name, NEW, **managed)
    fake_k3s.add("manual-1", NEW)  # joined by hand, never by Space Harbor
    members = "server-1\nagent-1"
    assert _status(fake_k3s.run("drain-departed", node="", HARBOR_CLUSTER_NODES=members)) == "changed"
    assert fake_k3s.node("agent-2")["spec"]["unschedulable"] is True
    for name in ("server-1", "agent-1", "manual-1"):
        assert fake_k3s.node(name)["spec"]["unschedulable"] is False, name
    drains = [call for call in fake_k3s.calls() if call.startswith("drain")]
    assert drains == ["drain agent-2 --ignore-daemonsets --delete-emptydir-data --timeout=30s"]
    # every member present: nothing to do
    everyone = "server-1\nagent-1\nagent-2\nmanual-1"
    assert _status(fake_k3s.run("drain-departed", node="", HARBOR_CLUSTER_NODES=everyone)) == "unchanged"


def test_drain_departed_before_k3s_exists_does_nothing(fake_k3s: FakeK3s) -> None:
    result = fake_k3s.run("drain-departed", node="", HARBOR_CLUSTER_NODES="server-1", PATH="/usr/bin:/bin")
    assert _status(result) == "unchanged"
    assert "k3s is not installed here yet" in result.stderr


def test_drain_departed_on_an_air_gapped_node_before_its_first_start_does_nothing(fake_k3s: FakeK3s) -> None:
    # The binary is there (placed for the air-gapped install), but no server has ever started.
    fake_k3s.kubeconfig.unlink()
    result = fake_k3s.run("drain-departed", node="", HARBOR_CLUSTER_NODES="server-1")
    assert _status(result) == "unchanged"
    assert "k3s has not started a server here yet" in result.stderr
    assert fake_k3s.calls() == []


def test_drain_departed_deletes_forgotten_nodes_without_draining_them(fake_k3s: FakeK3s) -> None:
    managed = {"annotations": {"space-harbor/managed": "true"}}
    for name in ("server-1", "agent-1", "agent-2"):
        fake_k3s.add(name, NEW, **managed)
    result = fake_k3s.run(
        "drain-departed", node="", HARBOR_CLUSTER_NODES="server-1\nagent-1", HARBOR_FORGET_NODES="agent-2"
    )
    assert _status(result) == "changed"
    assert not (fake_k3s.state / "nodes" / "agent-2.json").exists()
    assert not any(call.startswith("drain") for call in fake_k3s.calls())
    assert "delete node agent-2 --ignore-not-found" in fake_k3s.calls()
    assert "agent-2 is forgotten (decommission.forget)" in result.stderr


def test_delete_node_on_a_server_without_k3s_has_nothing_to_do(fake_k3s: FakeK3s) -> None:
    # A whole-stack destroy uninstalls the first server before nothing else needs its API.
    result = fake_k3s.run("delete-node", PATH="/usr/bin:/bin")
    assert _status(result) == "unchanged"
    assert "k3s is not installed on this server" in result.stderr


def test_api_credential_prints_a_token_kubeconfig_and_nothing_when_it_fails(fake_k3s: FakeK3s) -> None:
    result = fake_k3s.run("api-credential", node="")
    assert result.returncode == 0, result.stderr
    kubeconfig = yaml.safe_load(result.stdout)
    assert kubeconfig["users"][0]["user"] == {"token": "deployer-token"}
    assert kubeconfig["clusters"][0]["cluster"]["certificate-authority-data"] == "Q0EtREFUQQ=="
    applied = list(yaml.safe_load_all((fake_k3s.state / "applied.yaml").read_text()))
    assert [(d["kind"], d["metadata"]["name"]) for d in applied] == [
        ("ServiceAccount", "space-harbor-deployer"),
        ("ClusterRoleBinding", "space-harbor-deployer"),
        ("Secret", "space-harbor-deployer-token"),
    ]
    assert applied[1]["roleRef"]["name"] == "cluster-admin"
    assert applied[2]["type"] == "kubernetes.io/service-account-token"
    # A token that never arrives fails the step, and stdout (which pulumi-command would put into
    # the error) holds no credential.
    (fake_k3s.state / "token").unlink()
    (fake_k3s.state / "no-token-controller").write_text("")
    failed = fake_k3s.run("api-credential", node="", HARBOR_CREDENTIAL_WAIT="1")
    assert failed.returncode != 0
    assert failed.stdout == ""


# --- the deletes of node-object and registered, replaced delete-first ---------------------------


def test_delete_node_keeps_a_ready_node_that_never_left(fake_k3s: FakeK3s) -> None:
    """`pulumi up --replace` of node-object runs its delete first, on a node that stays in the stack."""
    fake_k3s.add("agent-1", NEW)
    result = fake_k3s.run("delete-node")
    assert _status(result) == "unchanged"
    assert "node agent-1 is Ready and was not drained to leave the stack: its Node object stays" in result.stderr
    assert (fake_k3s.state / "nodes" / "agent-1.json").exists()
    assert not any(call.startswith("delete") for call in fake_k3s.calls())


def test_delete_node_deletes_a_node_drained_to_leave_or_no_longer_ready(fake_k3s: FakeK3s) -> None:
    fake_k3s.add("agent-1", NEW)
    fake_k3s.add("agent-2", NEW)
    # a node that leaves: its registration's delete (drain) ran first, then its uninstall
    assert _status(fake_k3s.run("drain")) == "changed"
    assert fake_k3s.node("agent-1")["metadata"]["annotations"]["space-harbor/drained-to-leave"] == "true"
    assert _status(fake_k3s.run("delete-node")) == "changed"
    assert not (fake_k3s.state / "nodes" / "agent-1.json").exists()
    # never drained by us, but its kubelet is gone
    fake_k3s.set_ready("agent-2", False)
    assert _status(fake_k3s.run("delete-node", node="agent-2")) == "changed"
    assert not (fake_k3s.state / "nodes" / "agent-2.json").exists()
    # already gone: nothing to do
    assert _status(fake_k3s.run("delete-node", node="agent-2")) == "unchanged"


def test_a_replaced_registration_drains_then_leaves_the_node_schedulable(fake_k3s: FakeK3s) -> None:
    """registered replaced delete-first: drain (its delete), then reconcile (its create)."""
    fake_k3s.add("agent-1", NEW)
    assert _status(fake_k3s.run("drain")) == "changed"
    assert fake_k3s.node("agent-1")["spec"]["unschedulable"] is True
    assert _status(fake_k3s.run("reconcile")) == "changed"
    node = fake_k3s.node("agent-1")
    assert node["spec"]["unschedulable"] is False
    assert "space-harbor/drained-to-leave" not in node["metadata"]["annotations"]
    # and nothing is left to undo
    assert _status(fake_k3s.run("reconcile")) == "unchanged"


def test_drain_departed_marks_the_node_it_drains_as_leaving(fake_k3s: FakeK3s) -> None:
    fake_k3s.add("agent-2", NEW, annotations={"space-harbor/managed": "true"})
    fake_k3s.run("drain-departed", node="", HARBOR_CLUSTER_NODES="server-1")
    assert fake_k3s.node("agent-2")["metadata"]["annotations"]["space-harbor/drained-to-leave"] == "true"
    # the node's own node-object delete, after its uninstall, then deletes it while still Ready
    assert _status(fake_k3s.run("delete-node", node="agent-2")) == "changed"


def test_the_cluster_id_guard_refuses_and_says_why(fake_k3s: FakeK3s) -> None:
    """The delete of `cluster-id-guard`: it runs only when the cluster's id is being replaced."""
    result = fake_k3s.run("refuse-cluster-id-replacement", node="")
    assert result.returncode != 0
    assert "refusing to replace cluster-id" in result.stderr
    assert "the next pulumi up replaces nothing" in result.stderr
    assert fake_k3s.calls() == []
