"""Day 2 under mocks: the upgrade order, HA servers, and what a version change touches.

Pulumi runs a resource's create or update only after its dependencies', so the dependency
edges between the lifecycle commands are the upgrade order.
"""

from __future__ import annotations

import copy
import sys
from typing import Any

import pytest
import yaml

from tests.conftest import base_config, etcd_config, pinned
from tests.harness import ProgramRun, run_program
from tests.helpers import command_env

NEW_VERSION = "v1.32.1+k3s1"


def _inputs(run: ProgramRun) -> dict[str, Any]:
    # By type and name: Argo CD's objects share names across kinds (a ServiceAccount and its Role).
    # The nodes' drift records follow the version they expect and dial nobody: left out.
    records = {r.urn for r in run.drift_records()}
    return {f"{r.type}::{r.name}": r.inputs for r in run.resources if r.custom and r.urn not in records}


def _updated(before: dict[str, Any], after: dict[str, Any]) -> set[str]:
    old, new = _inputs(run_program(before)), _inputs(run_program(after))
    assert old.keys() == new.keys()
    return {key.split("::")[-1] for key in old if old[key] != new[key]}


def _ha_stack(agents: int, concurrency: int = 1) -> dict[str, Any]:
    config = base_config(agents=agents)
    config["nodes"] = [
        pinned({"name": f"server-{i}", "role": "server", "host": f"192.0.2.{10 + i}", "meshAddress": f"10.160.0.{i}"})
        for i in range(1, 4)
    ] + config["nodes"][1:]
    config["k3s"] = {"datastore": "etcd", "firstServer": "server-1", "upgradeConcurrency": concurrency}
    return config


def _before(run: ProgramRun, first: str, then: str) -> bool:
    """Whether `then` runs only after `first` has (a path of dependencies from `then` to `first`)."""
    return run.depends_on(run.named(then), run.named(first))


UPGRADE_STEPS = ("-drain", "-upgrade", "-uncordon")


def test_version_change_moves_nodes_through_the_upgrade_steps_only() -> None:
    config = _ha_stack(agents=2)
    upgraded = copy.deepcopy(config)
    upgraded["k3s"]["version"] = NEW_VERSION
    updated = {name for name in _updated(config, upgraded) if not name.endswith("-preflight")}
    nodes = [n["name"] for n in config["nodes"]]
    # The install's update (reconfigure) sees the new version but never acts on it: only the
    # chained drain -> upgrade -> uncordon steps move a node to it.
    expected = {f"{n}{step}" for n in nodes for step in (*UPGRADE_STEPS, "-k3s")}
    assert updated == expected
    assert not any(name.endswith(("-mesh", "-firewall", "-registered", "-node-object")) for name in updated)


def test_servers_upgrade_one_at_a_time_then_agents_each_drained_upgraded_uncordoned() -> None:
    run = run_program(_ha_stack(agents=3))
    # each node: drain -> upgrade (after its install exists) -> confirm and uncordon
    for name in ["server-1", "server-2", "server-3", "agent-1", "agent-2", "agent-3"]:
        assert _before(run, f"{name}-drain", f"{name}-upgrade")
        assert _before(run, f"{name}-k3s", f"{name}-upgrade")
        assert _before(run, f"{name}-upgrade", f"{name}-uncordon")
    # the first server, confirmed at the new version, before anything else moves
    assert _before(run, "server-1-uncordon", "server-2-drain")
    # servers one at a time
    assert _before(run, "server-2-uncordon", "server-3-drain")
    assert not _before(run, "server-3-uncordon", "server-2-drain")
    # every agent after the last server
    for agent in ["agent-1", "agent-2", "agent-3"]:
        assert _before(run, "server-3-uncordon", f"{agent}-drain")
    # upgradeConcurrency 1: agents strictly one after another
    assert _before(run, "agent-1-uncordon", "agent-2-drain")
    assert _before(run, "agent-2-uncordon", "agent-3-drain")


def test_upgrade_concurrency_lets_that_many_agents_go_at_once() -> None:
    run = run_program(_ha_stack(agents=5, concurrency=2))
    # agents 1 and 2 start together; 3 waits for 1, 4 for 2, 5 for 3
    assert not _before(run, "agent-1-uncordon", "agent-2-drain")
    assert not _before(run, "agent-2-uncordon", "agent-1-drain")
    assert _before(run, "agent-1-uncordon", "agent-3-drain")
    assert not _before(run, "agent-2-uncordon", "agent-3-drain")
    assert _before(run, "agent-2-uncordon", "agent-4-drain")
    assert _before(run, "agent-3-uncordon", "agent-5-drain")
    assert not _before(run, "agent-4-uncordon", "agent-5-drain")


def test_day_one_agents_join_in_parallel_and_servers_one_at_a_time() -> None:
    run = run_program(_ha_stack(agents=4))
    agents = [f"agent-{i}" for i in range(1, 5)]
    for a in agents:
        for b in agents:
            if a != b:
                # No install, registration or upgrade step of one agent waits for another's
                # install or registration: on day one they all join at once.
                for step in ("-k3s", "-registered"):
                    assert not _before(run, f"{a}{step}", f"{b}-k3s"), (a, b, step)
                    assert not _before(run, f"{a}{step}", f"{b}-registered"), (a, b, step)
        # every agent joins once the servers are up
        assert _before(run, "server-1-registered", f"{a}-k3s")
        assert _before(run, "server-3-k3s", f"{a}-k3s")
    # joining servers: one at a time, each after the previous is Ready
    assert _before(run, "server-2-registered", "server-3-k3s")
    assert not _before(run, "server-3-k3s", "server-2-k3s")
    # The chained steps have no create: on day one they dial nobody, so the chain costs nothing.
    for command in run.commands():
        if command.name.endswith(UPGRADE_STEPS):
            assert "create" not in command.inputs, command.name
            assert "delete" not in command.inputs, command.name
            assert command.inputs["update"].startswith("bash -s -- "), command.name


def test_a_node_added_during_an_upgrade_installs_the_new_version_without_waiting_for_agents() -> None:
    config = _ha_stack(agents=3)
    config["k3s"]["version"] = NEW_VERSION
    config["nodes"].append(
        pinned({"name": "agent-9", "role": "agent", "host": "192.0.2.99", "meshAddress": "10.160.9.9"})
    )
    run = run_program(config)
    assert command_env(run.named("agent-9-k3s"))["HARBOR_K3S_VERSION"] == NEW_VERSION
    for agent in ("agent-1", "agent-2", "agent-3"):
        for step in ("-drain", "-upgrade", "-uncordon", "-k3s", "-registered"):
            assert not _before(run, f"{agent}{step}", "agent-9-k3s"), step
    # ...but never before the servers run the new version: an agent is not newer than its servers
    assert _before(run, "server-3-uncordon", "agent-9-k3s")


def test_lifecycle_commands_drain_before_and_reconcile_after_the_install() -> None:
    run = run_program(base_config(agents=1))
    node_object, registered = run.named("agent-1-node-object"), run.named("agent-1-registered")
    drain, upgrade, uncordon = (run.named(f"agent-1{step}") for step in UPGRADE_STEPS)
    assert node_object.inputs["create"] == "bash -s -- node-object"
    assert node_object.inputs["delete"] == "bash -s -- delete-node"
    assert drain.inputs["update"] == "bash -s -- prepare-upgrade"
    assert upgrade.inputs["update"] == "bash -s -- upgrade"
    assert uncordon.inputs["update"] == "bash -s -- confirm-upgrade"
    assert registered.inputs["create"] == "bash -s -- reconcile"
    assert "update" not in registered.inputs  # an update runs create again: reconcile
    assert registered.inputs["delete"] == "bash -s -- drain"
    # the lifecycle steps run on the first server; the upgrade on the node itself
    install_version = command_env(run.named("agent-1-k3s"))["HARBOR_K3S_VERSION"]
    for command in (node_object, registered, drain, uncordon):
        assert command.inputs["connection"]["host"] == "192.0.2.10"
    assert upgrade.inputs["connection"]["host"] == "192.0.2.21"
    for command in (drain, upgrade, uncordon):
        assert command_env(command)["HARBOR_K3S_VERSION"] == install_version
    # a registration does not depend on the version: an upgrade does not re-run it
    assert "HARBOR_K3S_VERSION" not in command_env(registered)
    # the first server has a reconcile too, with nothing to undo on delete, and is never drained
    first = run.named("server-1-registered")
    assert first.inputs["create"] == "bash -s -- reconcile"
    assert "delete" not in first.inputs
    assert command_env(run.named("server-1-drain"))["HARBOR_DRAIN"] == "false"
    assert command_env(drain)["HARBOR_DRAIN"] == "true"


def test_labels_and_taints_reach_the_reconcile_step() -> None:
    config = base_config(agents=1)
    config["nodes"][1]["labels"] = {"tier": "web", "topology.kubernetes.io/zone": "fsn1"}
    config["nodes"][1]["taints"] = ["dedicated=web:NoSchedule", "spot:PreferNoSchedule"]
    env = command_env(run_program(config).named("agent-1-registered"))
    assert env["HARBOR_NODE_LABELS"].splitlines() == ["tier=web", "topology.kubernetes.io/zone=fsn1"]
    assert env["HARBOR_NODE_TAINTS"].splitlines() == ["dedicated=web:NoSchedule", "spot:PreferNoSchedule"]


@pytest.mark.parametrize(
    ("change", "installs"),
    [
        pytest.param(lambda c: c["components"].__setitem__("smtp", {"enabled": False}), set(), id="component"),
        pytest.param(lambda c: c["firewall"].__setitem__("publicTcpPorts", [80, 443, 8443]), set(), id="firewall-port"),
        pytest.param(lambda c: c["gitops"].__setitem__("autoSync", True), set(), id="gitops-autosync"),
        # a label is that one node's config.yaml
        pytest.param(lambda c: c["nodes"][2].__setitem__("labels", {"tier": "db"}), {"server-3-k3s"}, id="label"),
    ],
)
def test_unrelated_changes_rerun_no_install(change, installs: set[str]) -> None:
    config = _ha_stack(agents=2)
    config.setdefault("firewall", {})
    config["components"]["smtp"] = {"enabled": True, "relayHost": "smtp.example.org"}
    changed = copy.deepcopy(config)
    change(changed)
    updated = _updated(config, changed)
    assert updated, "the change reached no resource at all"
    assert {name for name in updated if name.endswith("-k3s")} == installs
    assert not any(name.endswith(("-node-object", *UPGRADE_STEPS)) for name in updated)


def test_three_etcd_servers_cluster_init_on_the_first_join_over_the_mesh() -> None:
    run = run_program(etcd_config())
    configs = {}
    for name in ["server-1", "server-2", "server-3", "agent-1"]:
        text = command_env(run.named(f"{name}-k3s"))["HARBOR_K3S_CONFIG"]
        configs[name] = yaml.safe_load(text)
    assert configs["server-1"].get("cluster-init") is True
    assert "server" not in configs["server-1"]
    for name in ["server-2", "server-3", "agent-1"]:
        assert "cluster-init" not in configs[name]
        assert configs[name]["server"] == "https://10.160.0.1:6443"
    for name in ["server-2", "server-3"]:
        assert command_env(run.named(f"{name}-k3s"))["HARBOR_K3S_ROLE"] == "server"
        assert configs[name]["node-ip"] == configs[name]["advertise-address"]
    assert _before(run, "server-2-registered", "server-3-k3s")


def test_sqlite_to_etcd_migrates_the_single_server_in_place() -> None:
    config = base_config(agents=2)
    migrated = copy.deepcopy(config)
    migrated["k3s"] = {"datastore": "etcd"}
    assert {name for name in _updated(config, migrated) if not name.endswith("-preflight")} == {"server-1-k3s"}
    server = yaml.safe_load(command_env(run_program(migrated).named("server-1-k3s"))["HARBOR_K3S_CONFIG"])
    assert server["cluster-init"] is True


def test_etcd_snapshots_go_to_s3_with_secret_credentials() -> None:
    config = etcd_config()
    config["k3s"]["etcdSnapshots"] = {
        "schedule": "0 */4 * * *",
        "retention": 20,
        "s3Endpoint": "s3.example.org",
        "s3Bucket": "harbor-etcd",
        "s3AccessKey": "MARKER-S3-ACCESS-51c0",
        "s3SecretKey": "MARKER-S3-SECRET-8e2f",
    }
    run = run_program(config)
    for name in ["server-1", "server-2", "server-3"]:
        command = run.named(f"{name}-k3s")
        assert "stdin" in command.secret_inputs
        settings = yaml.safe_load(command_env(command)["HARBOR_K3S_CONFIG"])
        assert settings["etcd-snapshot-schedule-cron"] == "0 */4 * * *"
        assert settings["etcd-snapshot-retention"] == 20
        assert settings["etcd-s3"] is True
        assert settings["etcd-s3-endpoint"] == "s3.example.org"
        assert settings["etcd-s3-bucket"] == "harbor-etcd"
        assert settings["etcd-s3-access-key"] == "MARKER-S3-ACCESS-51c0"
        assert settings["etcd-s3-secret-key"] == "MARKER-S3-SECRET-8e2f"
    agent = yaml.safe_load(command_env(run.named("agent-1-k3s"))["HARBOR_K3S_CONFIG"])
    assert not any(key.startswith("etcd") for key in agent)
    for resource in run.resources:
        assert "MARKER-S3" not in resource.public_text(), resource.name


def test_a_removed_node_is_drained_before_any_mesh_or_firewall_drops_it() -> None:
    config = base_config(agents=3)
    run = run_program(config)
    departures = run.named("cluster-departures")
    assert departures.inputs["create"] == "bash -s -- drain-departed"
    assert "delete" not in departures.inputs
    assert departures.inputs["connection"]["host"] == "192.0.2.10"  # the first server
    assert command_env(departures)["HARBOR_CLUSTER_NODES"].splitlines() == ["agent-1", "agent-2", "agent-3", "server-1"]
    for node in config["nodes"]:
        for kind in ("mesh", "firewall"):
            assert _before(run, "cluster-departures", f"{node['name']}-{kind}")
    # removing agent-2 changes the member list, so the drain runs in the update phase
    shrunk = copy.deepcopy(config)
    del shrunk["nodes"][2]
    after = run_program(shrunk)
    assert "agent-2" not in command_env(after.named("cluster-departures"))["HARBOR_CLUSTER_NODES"].splitlines()


def test_a_long_upgrade_chain_does_not_exhaust_the_interpreters_stack() -> None:
    """The SDK walks the dependency graph recursively; one agent after another makes it deep.

    With 300 frames (instead of Python's 1000) a 120-node chain reaches the same depth that about
    400 nodes reach by default; the program must raise the limit itself.
    """
    config = base_config(agents=119)
    for i, node in enumerate(config["nodes"][1:], start=1):
        node["host"] = f"198.51.100.{i}"
        node["meshAddress"] = f"10.161.0.{i}"
    saved = sys.getrecursionlimit()
    sys.setrecursionlimit(300)
    try:
        run = run_program(config, preview=True)
    finally:
        sys.setrecursionlimit(saved)
    assert _before(run, "agent-1-uncordon", "agent-99-drain")


def test_moving_agents_to_the_agent_token_touches_only_the_installs_servers_first() -> None:
    """The first `up` after agents stopped holding the server token (tests/testbed/test_migrations.py
    runs it on nodes): every install's config.yaml changes, nothing else of k3s does."""
    from unittest import mock

    from tests.testbed.test_migrations import BEFORE_AGENT_TOKENS

    config = base_config(agents=2)
    with mock.patch(BEFORE_AGENT_TOKENS.target, BEFORE_AGENT_TOKENS.replacement()):
        before = run_program(config)
    after = run_program(config)
    old, new = _inputs(before), _inputs(after)
    changed = {key.split("::")[-1] for key in old if old[key] != new[key]}
    assert changed == {"server-1-k3s", "agent-1-k3s", "agent-2-k3s"}
    for agent in ("agent-1", "agent-2"):
        settings = yaml.safe_load(command_env(after.named(f"{agent}-k3s"))["HARBOR_K3S_CONFIG"])
        server = yaml.safe_load(command_env(after.named("server-1-k3s"))["HARBOR_K3S_CONFIG"])
        assert settings["token"] == server["agent-token"] != server["token"]
        # the engine updates in dependency order: the server restarts with agent-token first
        assert _before(after, "server-1-k3s", f"{agent}-k3s")
