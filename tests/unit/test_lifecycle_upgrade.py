"""k3s-lifecycle.sh's day-2 actions against a fake `k3s kubectl` that keeps real Node objects.

The fake stores one JSON Node per file and implements the verbs the script uses (get with
jsonpath, label, taint, annotate, cordon/uncordon/drain) the way kubectl does, so the tests see
the Node the script leaves behind, not just the commands it ran.
"""

from __future__ import annotations

import json
import subprocess
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml

from components.render.remote import script_payload

SCRIPT = Path(__file__).resolve().parents[2] / "components" / "scripts" / "k3s-lifecycle.sh"
OLD, NEW = "v1.31.4+k3s1", "v1.32.1+k3s1"

_FAKE_K3S = textwrap.dedent(
    """\
    #!/usr/bin/env python3
    import json, os, re, sys
    state = os.environ["STATE"]
    args = sys.argv[1:]
    assert args[0] == "kubectl", args
    args = args[1:]
    with open(os.path.join(state, "kubectl.log"), "a") as log:
        log.write(" ".join(args) + "\\n")
    if os.path.exists(os.path.join(state, "drain-fails")) and args[0] == "drain":
        sys.exit("error: cannot evict pod web-0: disruption budget")
    flags, words, output, pending = [], [], "", False
    for a in args:
        if pending == "namespace":
            pending = False
        elif pending:
            output, pending = a, False
        elif a in ("-n", "--namespace"):
            pending = "namespace"
        elif a in ("-o", "--output"):
            pending = True
        elif a.startswith("-o"):
            output = a[2:]
        elif a.startswith("-"):
            flags.append(a)
        else:
            words.append(a)
    verb, rest = words[0], words[1:]
    if verb == "apply":
        # The deployer manifest: the token controller fills the Secret in unless told not to.
        manifest = sys.stdin.read()
        open(os.path.join(state, "applied.yaml"), "a").write(manifest)
        if not os.path.exists(os.path.join(state, "no-token-controller")):
            open(os.path.join(state, "token"), "w").write("ZGVwbG95ZXItdG9rZW4=")  # base64("deployer-token")
        print("serviceaccount/space-harbor-deployer configured")
        sys.exit(0)
    if verb == "get" and rest[:1] == ["secret"]:
        token = os.path.join(state, "token")
        print(open(token).read() if os.path.exists(token) else "", end="")
        sys.exit(0)
    if verb == "config" and rest == ["view"]:
        print("Q0EtREFUQQ==", end="")  # base64("CA-DATA")
        sys.exit(0)
    if verb == "delete":
        path = os.path.join(state, "nodes", rest[1] + ".json")
        if os.path.exists(path):
            os.unlink(path)
            print(f'node "{rest[1]}" deleted')
        sys.exit(0)
    if verb == "get" and rest == ["nodes"]:
        print("\\n".join("node/" + n[:-5] for n in sorted(os.listdir(os.path.join(state, "nodes")))))
        sys.exit(0)
    if rest[0] == "node":  # `kubectl label node NAME ...`, but `kubectl drain NAME`
        rest = rest[1:]
    name = rest[0]
    path = os.path.join(state, "nodes", name + ".json")
    if not os.path.exists(path):
        if "--ignore-not-found" in flags:
            sys.exit(0)
        sys.exit(f'Error from server (NotFound): nodes "{name}" not found')
    node = json.load(open(path))
    meta = node["metadata"]
    def save():
        json.dump(node, open(path, "w"))
    if verb == "get":
        field = output.removeprefix("jsonpath=").strip("{}")
        if field == "name":
            print("node/" + name)
            sys.exit(0)
        if field.startswith(".status.conditions"):
            print(node["status"]["ready"], end="")
            sys.exit(0)
        value = node
        for part in re.split(r"(?<!\\\\)\\.", field.lstrip(".")):
            value = value.get(part.replace("\\\\.", "."), {}) if isinstance(value, dict) else {}
        print("" if value == {} else value, end="")
    elif verb == "label":
        for item in rest[1:]:
            if item.endswith("-"):
                meta["labels"].pop(item[:-1], None)
            else:
                key, value = item.split("=", 1)
                meta["labels"][key] = value
        save()
    elif verb == "annotate":
        for item in rest[1:]:
            if item.endswith("-"):
                meta["annotations"].pop(item[:-1], None)
            else:
                key, value = item.split("=", 1)
                meta["annotations"][key] = value
        save()
    elif verb == "taint":
        taints = node["spec"]["taints"]
        for item in rest[1:]:
            key_value, effect = item.rsplit(":", 1)
            key = key_value.split("=", 1)[0]
            if effect.endswith("-"):
                kept = [t for t in taints if (t["key"], t["effect"]) != (key, effect[:-1])]
                if len(kept) == len(taints):
                    sys.exit(f'error: taint "{item[:-1]}" not found')
                taints[:] = kept
            else:
                taints[:] = [t for t in taints if (t["key"], t["effect"]) != (key, effect)]
                taints.append({"key": key, "value": key_value.partition("=")[2], "effect": effect})
        save()
    elif verb in ("cordon", "drain"):
        node["spec"]["unschedulable"] = True
        save()
    elif verb == "uncordon":
        node["spec"]["unschedulable"] = False
        save()
    else:
        sys.exit(f"fake kubectl: {verb} is not faked")
    """
)


class Cluster:
    def __init__(self, root: Path) -> None:
        self.state = root / "state"
        (self.state / "nodes").mkdir(parents=True)
        self.bin = root / "bin"
        self.bin.mkdir()
        fake = self.bin / "k3s"
        fake.write_text(_FAKE_K3S)
        fake.chmod(0o755)

    def add(self, name: str, version: str, **metadata: Any) -> None:
        node = {
            "metadata": {"name": name, "labels": {}, "annotations": {}, **metadata},
            "spec": {"taints": [], "unschedulable": False},
            "status": {"ready": "True", "nodeInfo": {"kubeletVersion": version}},
        }
        (self.state / "nodes" / f"{name}.json").write_text(json.dumps(node))

    def node(self, name: str) -> dict[str, Any]:
        return json.loads((self.state / "nodes" / f"{name}.json").read_text())

    def set_version(self, name: str, version: str) -> None:
        node = self.node(name)
        node["status"]["nodeInfo"]["kubeletVersion"] = version
        (self.state / "nodes" / f"{name}.json").write_text(json.dumps(node))

    def calls(self) -> list[str]:
        log = self.state / "kubectl.log"
        return log.read_text().splitlines() if log.exists() else []

    def run(self, action: str, node: str = "agent-1", **env: str) -> subprocess.CompletedProcess[str]:
        full = {
            "PATH": f"{self.bin}:/usr/bin:/bin",
            "STATE": str(self.state),
            "HARBOR_NODE_NAME": node,
            "HARBOR_K3S_VERSION": NEW,
            "HARBOR_DRAIN_TIMEOUT": "30",
            "HARBOR_FORCE": "false",
            "HARBOR_READY_TIMEOUT": "4",
            **env,
        }
        payload = script_payload(SCRIPT.read_text(), {})
        return subprocess.run(
            ["bash", "-s", "--", action], input=payload, capture_output=True, text=True, env=full, timeout=60
        )


@pytest.fixture
def cluster(tmp_path: Path) -> Cluster:
    return Cluster(tmp_path)


def _status(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().splitlines()[-1].rsplit(": ", 1)[1]


def test_prepare_upgrade_drains_an_older_node_and_marks_it(cluster: Cluster) -> None:
    cluster.add("agent-1", OLD)
    assert _status(cluster.run("prepare-upgrade", HARBOR_DRAIN_TIMEOUT="45")) == "changed"
    node = cluster.node("agent-1")
    assert node["spec"]["unschedulable"] is True
    assert node["metadata"]["annotations"]["space-harbor/drained-for-upgrade"] == NEW
    assert "drain agent-1 --ignore-daemonsets --delete-emptydir-data --timeout=45s" in cluster.calls()


def test_prepare_upgrade_leaves_a_current_or_unregistered_node_alone(cluster: Cluster) -> None:
    cluster.add("agent-1", NEW)
    assert _status(cluster.run("prepare-upgrade")) == "unchanged"
    assert _status(cluster.run("prepare-upgrade", node="agent-9")) == "unchanged"
    assert cluster.node("agent-1")["spec"]["unschedulable"] is False
    assert not any(call.startswith(("drain", "cordon", "annotate")) for call in cluster.calls())


def test_prepare_upgrade_refuses_a_downgrade_before_touching_the_node(cluster: Cluster) -> None:
    cluster.add("agent-1", "v1.33.0+k3s1")
    result = cluster.run("prepare-upgrade")
    assert result.returncode != 0
    assert "refusing to downgrade node agent-1 from v1.33.0+k3s1 to v1.32.1+k3s1" in result.stderr
    assert cluster.node("agent-1")["spec"]["unschedulable"] is False
    assert cluster.node("agent-1")["metadata"]["annotations"] == {}
    # the k3s patch release orders numerically: +k3s10 is newer than +k3s9
    cluster.add("agent-2", "v1.32.1+k3s10")
    assert (
        "refusing to downgrade"
        in cluster.run("prepare-upgrade", node="agent-2", HARBOR_K3S_VERSION="v1.32.1+k3s9").stderr
    )


def test_failed_drain_keeps_the_mark_so_the_next_run_still_uncordons(cluster: Cluster) -> None:
    cluster.add("agent-1", OLD)
    (cluster.state / "drain-fails").write_text("")
    result = cluster.run("prepare-upgrade")
    assert result.returncode != 0
    assert "draining node agent-1 before its upgrade to v1.32.1+k3s1 failed" in result.stderr
    assert "stays cordoned" in result.stderr
    assert cluster.node("agent-1")["metadata"]["annotations"]["space-harbor/drained-for-upgrade"] == NEW


def test_confirm_upgrade_waits_for_the_new_version_then_uncordons_what_it_drained(cluster: Cluster) -> None:
    cluster.add("agent-1", OLD)
    cluster.run("prepare-upgrade")
    # the agent still reports the old kubelet: confirm-upgrade must not uncordon it
    stuck = cluster.run("confirm-upgrade")
    assert stuck.returncode != 0
    assert "node agent-1 runs v1.31.4+k3s1, not v1.32.1+k3s1" in stuck.stderr
    assert cluster.node("agent-1")["spec"]["unschedulable"] is True
    cluster.set_version("agent-1", NEW)
    assert _status(cluster.run("confirm-upgrade")) == "changed"
    node = cluster.node("agent-1")
    assert node["spec"]["unschedulable"] is False
    assert "space-harbor/drained-for-upgrade" not in node["metadata"]["annotations"]
    # a second confirmation finds nothing to undo
    assert _status(cluster.run("confirm-upgrade")) == "unchanged"


def test_confirm_upgrade_never_uncordons_an_operators_cordon(cluster: Cluster) -> None:
    cluster.add("agent-1", NEW)
    node = cluster.node("agent-1")
    node["spec"]["unschedulable"] = True
    (cluster.state / "nodes" / "agent-1.json").write_text(json.dumps(node))
    assert _status(cluster.run("confirm-upgrade")) == "unchanged"
    assert cluster.node("agent-1")["spec"]["unschedulable"] is True
    assert "uncordon agent-1" not in cluster.calls()


def test_prepare_upgrade_without_drain_refuses_a_downgrade_and_leaves_the_node_scheduled(cluster: Cluster) -> None:
    # The first server: its upgrade is checked, never drained.
    cluster.add("server-1", OLD)
    assert _status(cluster.run("prepare-upgrade", node="server-1", HARBOR_DRAIN="false")) == "unchanged"
    assert cluster.node("server-1")["spec"]["unschedulable"] is False
    assert not any(call.startswith(("drain", "cordon", "annotate")) for call in cluster.calls())
    down = cluster.run("prepare-upgrade", node="server-1", HARBOR_DRAIN="false", HARBOR_K3S_VERSION="v1.30.0+k3s1")
    assert down.returncode != 0
    assert "refusing to downgrade node server-1" in down.stderr


def test_reconcile_does_not_wait_for_a_version(cluster: Cluster) -> None:
    # Registration is about labels and taints; the version is confirm-upgrade's business.
    cluster.add("agent-1", OLD)
    assert _status(cluster.run("reconcile", HARBOR_K3S_VERSION="")) == "changed"


def test_reconcile_never_uncordons_an_operators_cordon(cluster: Cluster) -> None:
    cluster.add("agent-1", NEW)
    node = cluster.node("agent-1")
    node["spec"]["unschedulable"] = True
    (cluster.state / "nodes" / "agent-1.json").write_text(json.dumps(node))
    # the first run marks the node as joined by Space Harbor; the second has nothing to do
    assert _status(cluster.run("reconcile")) == "changed"
    assert cluster.node("agent-1")["metadata"]["annotations"]["space-harbor/managed"] == "true"
    assert _status(cluster.run("reconcile")) == "unchanged"
    assert cluster.node("agent-1")["spec"]["unschedulable"] is True
    assert "uncordon agent-1" not in cluster.calls()


def test_reconcile_applies_labels_and_taints_and_removes_only_its_own(cluster: Cluster) -> None:
    cluster.add("agent-1", NEW)
    node = cluster.node("agent-1")
    node["metadata"]["labels"]["kubernetes.io/hostname"] = "agent-1"  # set by k3s, not ours
    (cluster.state / "nodes" / "agent-1.json").write_text(json.dumps(node))
    labels = "tier=web\ntopology.kubernetes.io/zone=fsn1"
    taints = "dedicated=web:NoSchedule\nspot:PreferNoSchedule"
    assert _status(cluster.run("reconcile", HARBOR_NODE_LABELS=labels, HARBOR_NODE_TAINTS=taints)) == "changed"
    node = cluster.node("agent-1")
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
    assert _status(cluster.run("reconcile", HARBOR_NODE_LABELS=labels, HARBOR_NODE_TAINTS=taints)) == "unchanged"
    # a label and a taint leave the stack: they leave the node, the k3s label stays
    assert _status(cluster.run("reconcile", HARBOR_NODE_LABELS="tier=db", HARBOR_NODE_TAINTS="")) == "changed"
    node = cluster.node("agent-1")
    assert node["metadata"]["labels"] == {"kubernetes.io/hostname": "agent-1", "tier": "db"}
    assert node["spec"]["taints"] == []
    assert node["metadata"]["annotations"]["space-harbor/managed-labels"] == "tier"


def test_day2_actions_refuse_a_bad_version(cluster: Cluster) -> None:
    cluster.add("agent-1", OLD)
    for action in ("prepare-upgrade", "confirm-upgrade"):
        result = cluster.run(action, HARBOR_K3S_VERSION="latest")
        assert result.returncode != 0
        assert "HARBOR_K3S_VERSION must look like v1.31.4+k3s1 (got 'latest')" in result.stderr


def test_drain_departed_drains_only_our_nodes_that_left_the_stack(cluster: Cluster) -> None:
    managed = {"annotations": {"space-harbor/managed": "true"}}
    for name in ("server-1", "agent-1", "agent-2"):
        cluster.add(name, NEW, **managed)
    cluster.add("manual-1", NEW)  # joined by hand, never by Space Harbor
    members = "server-1\nagent-1"
    assert _status(cluster.run("drain-departed", node="", HARBOR_CLUSTER_NODES=members)) == "changed"
    assert cluster.node("agent-2")["spec"]["unschedulable"] is True
    for name in ("server-1", "agent-1", "manual-1"):
        assert cluster.node(name)["spec"]["unschedulable"] is False, name
    drains = [call for call in cluster.calls() if call.startswith("drain")]
    assert drains == ["drain agent-2 --ignore-daemonsets --delete-emptydir-data --timeout=30s"]
    # every member present: nothing to do
    everyone = "server-1\nagent-1\nagent-2\nmanual-1"
    assert _status(cluster.run("drain-departed", node="", HARBOR_CLUSTER_NODES=everyone)) == "unchanged"


def test_drain_departed_before_k3s_exists_does_nothing(cluster: Cluster) -> None:
    result = cluster.run("drain-departed", node="", HARBOR_CLUSTER_NODES="server-1", PATH="/usr/bin:/bin")
    assert _status(result) == "unchanged"
    assert "k3s is not installed here yet" in result.stderr


def test_drain_departed_deletes_forgotten_nodes_without_draining_them(cluster: Cluster) -> None:
    managed = {"annotations": {"space-harbor/managed": "true"}}
    for name in ("server-1", "agent-1", "agent-2"):
        cluster.add(name, NEW, **managed)
    result = cluster.run(
        "drain-departed", node="", HARBOR_CLUSTER_NODES="server-1\nagent-1", HARBOR_FORGET_NODES="agent-2"
    )
    assert _status(result) == "changed"
    assert not (cluster.state / "nodes" / "agent-2.json").exists()
    assert not any(call.startswith("drain") for call in cluster.calls())
    assert "delete node agent-2 --ignore-not-found" in cluster.calls()
    assert "agent-2 is forgotten (decommission.forget)" in result.stderr


def test_delete_node_on_a_server_without_k3s_has_nothing_to_do(cluster: Cluster) -> None:
    # A whole-stack destroy uninstalls the first server before nothing else needs its API.
    result = cluster.run("delete-node", PATH="/usr/bin:/bin")
    assert _status(result) == "unchanged"
    assert "k3s is not installed on this server" in result.stderr


def test_api_credential_prints_a_token_kubeconfig_and_nothing_when_it_fails(cluster: Cluster) -> None:
    result = cluster.run("api-credential", node="")
    assert result.returncode == 0, result.stderr
    kubeconfig = yaml.safe_load(result.stdout)
    assert kubeconfig["users"][0]["user"] == {"token": "deployer-token"}
    assert kubeconfig["clusters"][0]["cluster"]["certificate-authority-data"] == "Q0EtREFUQQ=="
    applied = list(yaml.safe_load_all((cluster.state / "applied.yaml").read_text()))
    assert [(d["kind"], d["metadata"]["name"]) for d in applied] == [
        ("ServiceAccount", "space-harbor-deployer"),
        ("ClusterRoleBinding", "space-harbor-deployer"),
        ("Secret", "space-harbor-deployer-token"),
    ]
    assert applied[1]["roleRef"]["name"] == "cluster-admin"
    assert applied[2]["type"] == "kubernetes.io/service-account-token"
    # A token that never arrives fails the step, and stdout (which pulumi-command would put into
    # the error) holds no credential.
    (cluster.state / "token").unlink()
    (cluster.state / "no-token-controller").write_text("")
    failed = cluster.run("api-credential", node="", HARBOR_CREDENTIAL_WAIT="1")
    assert failed.returncode != 0
    assert failed.stdout == ""
