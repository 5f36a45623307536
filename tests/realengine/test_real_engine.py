"""`pulumi preview`, `up`, a second `up`, day 2, `refresh` and `destroy` with the real engine.

One cluster for the module (n1 server, n2..n4 agents, a git server), the tests in file order, as a
user would type the commands. Every assertion reads the real world: the nodes over SSH, the real
API server through `k3s kubectl` on the first server, the git repository, `pulumi stack export`.
"""

from __future__ import annotations

import copy
import json
import re
import subprocess
from pathlib import Path

import pytest

from tests.realengine.conftest import RealStack, stop_tunnels
from tests.testbed.nodes import GIT_REPO, Testbed
from tests.testbed.stack import K3S_VERSION, MESH_INTERFACE, stack_config
from tests.testbed.test_day2 import NEW_VERSION, stage_k3s

pytestmark = [pytest.mark.realengine, pytest.mark.testbed]

LOGINS = "journalctl -u ssh.service -o cat --no-pager | grep -c 'Accepted publickey' || true"
NFT_TABLE = "space_harbor"


def logins(tb: Testbed) -> dict[str, int]:
    """SSH logins each node has accepted so far; reading them is one login more."""
    return {name: int(tb.ssh(name, LOGINS).stdout.strip() or 0) for name in tb.nodes}


def sessions_since(tb: Testbed, before: dict[str, int]) -> dict[str, int]:
    """Logins other than the two reads of `logins` (before and now), per node."""
    now = logins(tb)
    return {name: now[name] - before.get(name, 0) - 1 for name in now}


def api_nodes(tb: Testbed) -> dict[str, dict]:
    """The Node objects of the real API server, read with kubectl on the first server."""
    out = tb.ssh("n1", "k3s kubectl get nodes -o json").stdout
    return {item["metadata"]["name"]: item for item in json.loads(out)["items"]}


def ready(node: dict) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True" for c in node["status"].get("conditions", []))


def change_summary(output: str) -> dict[str, int]:
    """The counts of the engine's `Resources:` summary (`+ 3 to create`, `~ 1 to update`, ...)."""
    verbs = {"to create": "create", "created": "create", "to update": "update", "updated": "update",
             "to delete": "delete", "deleted": "delete", "to replace": "replace", "replaced": "replace"}  # fmt: skip
    counts: dict[str, int] = {}
    for number, verb in re.findall(rf"(\d+) ({'|'.join(verbs)})\b", output):
        counts[verbs[verb]] = counts.get(verbs[verb], 0) + int(number)
    return counts


def test_preview_lists_the_resources_and_touches_no_node(cluster4: RealStack) -> None:
    before = logins(cluster4.tb)
    result = cluster4.pulumi.run("preview", "--diff")
    assert "command:remote:Command" in result.output and "kubernetes:" in result.output, result.output[-3000:]
    assert change_summary(result.output).get("create", 0) > 40, result.output[-2000:]
    assert sessions_since(cluster4.tb, before) == dict.fromkeys(cluster4.tb.nodes, 0)


def test_up_builds_the_cluster(cluster4: RealStack) -> None:
    tb = cluster4.tb
    cluster4.pulumi.run("up", "--yes", "--skip-preview")
    for name in tb.nodes:
        peers = tb.ssh(name, f"wg show {MESH_INTERFACE} peers").stdout.split()
        assert len(peers) == len(tb.nodes) - 1, f"{name} has mesh peers {peers}"
        assert tb.ssh(name, f"nft list table inet {NFT_TABLE}", check=False).returncode == 0, name
    nodes = api_nodes(tb)
    assert set(nodes) == set(tb.nodes)
    assert all(ready(node) for node in nodes.values()), {n: node["status"]["conditions"] for n, node in nodes.items()}
    deployments = json.loads(tb.ssh("n1", "k3s kubectl -n argocd get deployments,statefulsets -o json").stdout)
    assert deployments["items"], "no Argo CD workloads in the API"
    for item in deployments["items"]:
        status = item.get("status", {})
        assert status.get("readyReplicas") == item["spec"].get("replicas", 1), (item["metadata"]["name"], status)
    apps = tb.ssh("n1", "k3s kubectl -n argocd get applications.argoproj.io,appprojects.argoproj.io -o name").stdout
    assert "application.argoproj.io/" in apps and "appproject.argoproj.io/" in apps, apps
    assert tb.git is not None
    log = tb.ssh(tb.git, f"git -C {GIT_REPO} log --format=%s main").stdout
    assert len(log.splitlines()) >= 2, log
    export = cluster4.pulumi.export()
    kinds = {r["type"] for r in export["deployment"]["resources"]}
    assert "kubernetes:apiextensions.k8s.io/v1:CustomResourceDefinition" in kinds


def test_a_second_up_changes_nothing_and_dials_no_node(cluster4: RealStack) -> None:
    before = logins(cluster4.tb)
    preview = cluster4.pulumi.run("preview", "--expect-no-changes")
    up = cluster4.pulumi.run("up", "--yes", "--expect-no-changes")
    assert not {"create", "update", "delete", "replace"} & set(change_summary(preview.output + up.output))
    assert sessions_since(cluster4.tb, before) == dict.fromkeys(cluster4.tb.nodes, 0)


def test_removing_a_node_drains_it_deletes_its_node_and_the_peers_drop_it(cluster4: RealStack) -> None:
    tb = cluster4.tb
    config = stack_config(tb, node_names=["n1", "n2", "n3"])
    cluster4.apply_config(config)
    cluster4.pulumi.run("up", "--yes", "--skip-preview")
    assert set(api_nodes(tb)) == {"n1", "n2", "n3"}
    for name in ("n1", "n2", "n3"):
        peers = tb.ssh(name, f"wg show {MESH_INTERFACE} peers").stdout.split()
        assert len(peers) == 2, f"{name} still has {len(peers)} peers"
    left = tb.ssh("n4", "systemctl is-active k3s-agent; test -e /etc/rancher/k3s/config.yaml && echo config; true")
    assert left.stdout.split() in (["inactive"], ["unknown"]), f"n4 after its removal: {left.stdout}"


def test_adding_a_node_joins_it(cluster4: RealStack) -> None:
    tb = cluster4.tb
    # Air-gapped: the uninstall took the binary with it; the operator places it again.
    stage_k3s(tb, K3S_VERSION, nodes=["n4"])
    cluster4.apply_config(stack_config(tb))
    cluster4.pulumi.run("up", "--yes", "--skip-preview")
    nodes = api_nodes(tb)
    assert set(nodes) == set(tb.nodes) and ready(nodes["n4"])


def test_refresh_through_the_tunnel_that_scripts_kubeconfig_opens(cluster4: RealStack, tmp_path: Path) -> None:
    tb, pulumi = cluster4.tb, cluster4.pulumi
    stop_tunnels(cluster4)  # as after the tunnel's lifetime, or a reboot of the operator's machine
    kubeconfig = tmp_path / "config"
    opened = subprocess.run(
        ["ip", "netns", "exec", tb.ctl, "./scripts/kubeconfig", cluster4.name, "--kubeconfig", str(kubeconfig)],
        cwd=pulumi.project,
        env=pulumi.env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert opened.returncode == 0, opened.stdout + opened.stderr
    pulumi.run("refresh", "--yes", "--skip-preview")
    listed = subprocess.run(
        ["ip", "netns", "exec", tb.ctl, "kubectl", "--kubeconfig", str(kubeconfig), "--context",
         f"harbor-{cluster4.name}", "get", "nodes", "-o", "name"],
        env=pulumi.env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert sorted(listed.stdout.split()) == [f"node/{name}" for name in sorted(tb.nodes)], listed.stderr
    assert pulumi.run("preview", "--expect-no-changes", check=False).returncode == 0


def test_a_version_change_upgrades_the_server_first_then_each_agent(cluster4: RealStack) -> None:
    tb = cluster4.tb
    stage_k3s(tb, NEW_VERSION, nodes=list(tb.nodes))
    config = copy.deepcopy(cluster4.config)
    config["k3s"] = {**config["k3s"], "version": NEW_VERSION}
    cluster4.apply_config(config)
    up = cluster4.pulumi.run("up", "--yes", "--skip-preview")
    # The engine's own log of the run: when each step started and ended, in order.
    events = re.findall(r"command:remote:Command (n\d-(?:drain|upgrade|uncordon)) (updating|updated)", up.output)
    order = [f"{name} {event}" for name, event in events]
    server_done = order.index("n1-uncordon updated")
    for agent in ("n2", "n3", "n4"):
        assert order.index(f"{agent}-drain updating") > server_done, order
        assert order.index(f"{agent}-upgrade updating") > order.index(f"{agent}-drain updated"), order
    nodes = api_nodes(tb)
    assert {n["status"]["nodeInfo"]["kubeletVersion"] for n in nodes.values()} == {NEW_VERSION}
    assert all(ready(n) and not n["spec"].get("unschedulable") for n in nodes.values())


def test_destroy_runs_no_program_and_leaves_every_node_clean(cluster4: RealStack) -> None:
    tb = cluster4.tb
    # No program: the project's entry point is gone, as after a checkout of another branch.
    (cluster4.pulumi.project / "__main__.py").rename(cluster4.pulumi.project / "__main__.py.away")
    try:
        cluster4.pulumi.run("destroy", "--yes", "--skip-preview")
    finally:
        (cluster4.pulumi.project / "__main__.py.away").rename(cluster4.pulumi.project / "__main__.py")
    assert cluster4.pulumi.resources() == []
    for name in tb.nodes:
        left = tb.ssh(
            name,
            f"ip link show {MESH_INTERFACE} >/dev/null 2>&1 && echo mesh; nft list table inet {NFT_TABLE} "
            ">/dev/null 2>&1 && echo firewall; test -e /etc/rancher/k3s/config.yaml && echo k3s; true",
        ).stdout.split()
        assert left == [], f"{name} keeps {left}"


def test_the_tier_ran_the_real_cli(cluster4: RealStack) -> None:
    version = subprocess.run(["pulumi", "version"], env=cluster4.pulumi.env, capture_output=True, text=True)
    assert version.returncode == 0 and version.stdout.startswith("v3."), version
