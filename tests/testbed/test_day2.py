"""Day 2 on real nodes (issue 5): an upgrade in order, a refused downgrade, live labels, decommission.

Three booted nodes: n1 the server, n2 and n3 agents, with the k3s stand-in. Each step is a config
change: the program runs again and the runner applies exactly the commands whose inputs changed,
with `update` where a command has one, in dependency order, as `pulumi up` would; a removed node's
commands run their delete from the previous run, as Pulumi does at the end of an update.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest

from tests.harness import ProgramRun
from tests.testbed.conftest import _testbed
from tests.testbed.nodes import AIRGAP_BINARY, STANDIN_K3S, Testbed
from tests.testbed.runner import CommandResult, RunFailed, Runner
from tests.testbed.stack import K3S_VERSION, MESH_INTERFACE, names, program, stack_config

pytestmark = pytest.mark.testbed

NODES = ["n1", "n2", "n3"]
NEW_VERSION = "v1.32.1+k3s1"
STANDIN_NODES = "/var/lib/rancher/k3s/standin/nodes"


@pytest.fixture(scope="module")
def testbed3() -> Iterator[Testbed]:
    yield from _testbed(NODES, git=False)


class Cluster:
    """The stack as last applied: its config, program run and runner."""

    def __init__(self, tb: Testbed) -> None:
        self.tb = tb
        self.config = stack_config(tb)
        self.run, self.runner = program(tb, self.config)

    def change(self, config: dict[str, Any]) -> tuple[ProgramRun, Runner, set[str]]:
        """The program on `config`, and the commands whose inputs differ from the last run."""
        run, runner = program(self.tb, config)
        old = {c.name: c.inputs for c in self.runner.commands}
        changed = {c.name for c in runner.commands if c.name in old and old[c.name] != c.inputs}
        return run, runner, changed

    def adopt(self, config: dict[str, Any], run: ProgramRun, runner: Runner) -> None:
        self.config, self.run, self.runner = config, run, runner


@pytest.fixture(scope="module")
def cluster(testbed3: Testbed) -> Cluster:
    cluster = Cluster(testbed3)
    cluster.runner.apply()
    return cluster


def node_record(tb: Testbed, name: str) -> dict[str, Any] | None:
    """The stand-in server's Node record of `name` (labels, annotations, version, cordon)."""
    result = tb.ssh("n1", f"cat {STANDIN_NODES}/{name}.json", check=False)
    return json.loads(result.stdout) if result.returncode == 0 else None


def stage_k3s(tb: Testbed, version: str) -> None:
    """Put the k3s `version` binary where the air-gap install takes it from, as an operator would."""
    standin = STANDIN_K3S.read_text().replace(
        'STANDIN_VERSION="${K3S_STANDIN_VERSION:-v1.31.4+k3s1}"',
        f'STANDIN_VERSION="${{K3S_STANDIN_VERSION:-{version}}}"',
    )
    assert version in standin
    for name in NODES:
        # A new file moved into place: the running k3s keeps the old one open.
        tb.ssh(
            name,
            f"cat > {AIRGAP_BINARY}.new && chmod 755 {AIRGAP_BINARY}.new && mv {AIRGAP_BINARY}.new {AIRGAP_BINARY}",
            input=standin,
        )


def by_name(results: list[CommandResult]) -> dict[str, CommandResult]:
    return {result.name: result for result in results}


def before(results: dict[str, CommandResult], first: str, then: str) -> None:
    assert results[first].finished <= results[then].started, f"{then} started before {first} finished"


def test_every_node_is_marked_as_joined_by_space_harbor(cluster: Cluster) -> None:
    for name in NODES:
        record = node_record(cluster.tb, name)
        assert record is not None, name
        assert record["annotations"]["space-harbor/managed"] == "true"
        assert record["version"] == K3S_VERSION


def test_upgrade_goes_server_first_then_each_agent_drained_upgraded_uncordoned(cluster: Cluster) -> None:
    tb = cluster.tb
    stage_k3s(tb, NEW_VERSION)
    config = {**cluster.config, "k3s": {**cluster.config["k3s"], "version": NEW_VERSION}}
    run, runner, changed = cluster.change(config)
    assert changed == {f"{n}-k3s" for n in NODES} | {f"{n}-registered" for n in NODES} | {
        "n2-node-object",
        "n3-node-object",
    }
    results = by_name(runner.update(changed))

    before(results, "n1-k3s", "n1-registered")
    for agent, after in (("n2", "n1"), ("n3", "n2")):
        before(results, f"{after}-registered", f"{agent}-node-object")
        before(results, f"{agent}-node-object", f"{agent}-k3s")
        before(results, f"{agent}-k3s", f"{agent}-registered")
        assert (
            f"draining node {agent} for its upgrade from {K3S_VERSION} to {NEW_VERSION}"
            in results[f"{agent}-node-object"].stderr
        )
        assert f"node {agent} upgraded to {NEW_VERSION} and uncordoned" in results[f"{agent}-registered"].stderr
    for name in NODES:
        record = node_record(tb, name)
        assert record is not None
        assert record["version"] == NEW_VERSION, name
        assert not record["unschedulable"], f"{name} stayed cordoned"
        assert "space-harbor/drained-for-upgrade" not in record["annotations"]
        assert NEW_VERSION in tb.ssh(name, "k3s --version").stdout
    cluster.adopt(config, run, runner)


def test_downgrade_is_refused_before_any_node_is_touched(cluster: Cluster) -> None:
    tb = cluster.tb
    config = {**cluster.config, "k3s": {**cluster.config["k3s"], "version": K3S_VERSION}}
    _, runner, changed = cluster.change(config)
    before_files = {name: tb.ssh(name, "sha256sum /etc/rancher/k3s/config.yaml").stdout for name in NODES}
    with pytest.raises(RunFailed, match=re.escape(f"refusing to downgrade k3s from {NEW_VERSION} to {K3S_VERSION}")):
        runner.update(changed)
    ran = {result.name for result in runner.results}
    assert ran == {"n1-k3s"}, f"commands ran after the refusal: {sorted(ran)}"
    for name in NODES:
        assert tb.ssh(name, "sha256sum /etc/rancher/k3s/config.yaml").stdout == before_files[name]
        record = node_record(tb, name)
        assert record is not None and record["version"] == NEW_VERSION and not record["unschedulable"]


def test_a_label_change_reaches_the_live_node_and_only_that_node(cluster: Cluster) -> None:
    config = json.loads(json.dumps(cluster.config))
    config["nodes"][1]["labels"] = {"tier": "web"}
    config["nodes"][1]["taints"] = ["dedicated=web:NoSchedule"]
    run, runner, changed = cluster.change(config)
    assert changed == {"n2-k3s", "n2-registered"}
    runner.update(changed)
    record = node_record(cluster.tb, "n2")
    assert record is not None
    assert record["labels"] == {"tier": "web"}
    assert list(record["taints"]) == ["dedicated:NoSchedule"]
    assert "node-label" in cluster.tb.ssh("n2", "cat /etc/rancher/k3s/config.yaml").stdout
    cluster.adopt(config, run, runner)

    config = json.loads(json.dumps(config))
    config["nodes"][1]["labels"] = {}
    config["nodes"][1]["taints"] = []
    run, runner, changed = cluster.change(config)
    runner.update(changed)
    record = node_record(cluster.tb, "n2")
    assert record is not None and record["labels"] == {} and record["taints"] == {}
    cluster.adopt(config, run, runner)


def test_a_removed_agent_is_drained_while_connected_then_decommissioned(cluster: Cluster) -> None:
    tb = cluster.tb
    old_runner = cluster.runner
    identity = {
        n: tb.ssh(n, f"cat /sys/class/net/{MESH_INTERFACE}/ifindex; pgrep -x wireguard-go").stdout for n in ("n1", "n2")
    }
    n3_key = cluster.run.outputs["meshPublicKeys"]["n3"]
    config = stack_config(tb, node_names=["n1", "n2"])
    config["k3s"] = cluster.config["k3s"]
    run, runner, changed = cluster.change(config)
    assert {"cluster-departures", "n1-mesh", "n2-mesh"} <= changed
    # The update phase: the drain first, while n3 still has its peers.
    updates = by_name(runner.update(changed))
    for mesh in ("n1-mesh", "n2-mesh"):
        before(updates, "cluster-departures", mesh)
    assert "node n3 left the stack: draining it" in updates["cluster-departures"].stderr
    record = node_record(tb, "n3")
    assert record is not None and record["unschedulable"], "n3 was not drained"
    # Then, as at the end of `pulumi up`, the removed node's own commands run their delete.
    deletes = by_name(
        old_runner.delete_only(
            names(old_runner, "-registered", "-k3s", "-node-object", "-mesh", "-firewall", nodes=["n3"])
        )
    )
    before(deletes, "n3-registered", "n3-k3s")
    before(deletes, "n3-k3s", "n3-node-object")
    before(deletes, "n3-node-object", "n3-mesh")
    assert node_record(tb, "n3") is None, "n3's Node object is still there"
    assert tb.ssh("n3", "test -e /etc/systemd/system/k3s-agent.service", check=False).returncode != 0
    assert tb.ssh("n3", f"ip link show {MESH_INTERFACE}", check=False).returncode != 0
    for name in ("n1", "n2"):
        assert n3_key not in tb.ssh(name, f"wg show {MESH_INTERFACE} peers").stdout
        # the remaining tunnel was changed in place, not bounced
        assert (
            tb.ssh(name, f"cat /sys/class/net/{MESH_INTERFACE}/ifindex; pgrep -x wireguard-go").stdout == identity[name]
        )
    tb.ssh("n1", f"ping -c1 -W2 -I {MESH_INTERFACE} {run.outputs['nodes'][1]['meshAddress']}")
    cluster.adopt(config, run, runner)
