"""What a config change touches: the resource diff between two up-mode runs under mocks.

Keys come from the mocks as a function of their names, so two runs differ exactly where the
program's inputs differ, which is what the engine would show as an update.
"""

from __future__ import annotations

import copy
import json

from tests.conftest import base_config, pinned
from tests.harness import ProgramRun, run_program


def _inputs(run: ProgramRun) -> dict[str, str]:
    # A node's drift record follows the fingerprints of its steps; its update dials nobody
    # (tests/program/test_drift_graph.py covers it), so it is left out of what a change touches.
    return {
        f"{r.type}::{r.name}": json.dumps(r.inputs, sort_keys=True)
        for r in run.resources
        if not (r.type == "pulumi-python:dynamic:Resource" and "expected" in r.inputs)
    }


def _changes(before: dict, after: dict) -> tuple[set[str], set[str], set[str]]:
    old, new = _inputs(run_program(before)), _inputs(run_program(after))
    updated = {key.split("::")[-1] for key in old.keys() & new.keys() if old[key] != new[key]}
    added = {key.split("::")[-1] for key in new.keys() - old.keys()}
    removed = {key.split("::")[-1] for key in old.keys() - new.keys()}
    return added, removed, updated


def test_same_config_changes_nothing() -> None:
    config = base_config(agents=3)
    assert _changes(config, copy.deepcopy(config)) == (set(), set(), set())


def test_adding_a_node_updates_only_the_meshes_and_reinstalls_nothing() -> None:
    config = base_config(agents=3)
    grown = copy.deepcopy(config)
    grown["nodes"].append(
        pinned({"name": "agent-9", "role": "agent", "host": "192.0.2.99", "meshAddress": "10.160.9.9"})
    )
    added, removed, updated = _changes(config, grown)
    assert removed == set()
    assert {"agent-9-mesh", "agent-9-firewall", "agent-9-k3s", "agent-9-node-object", "agent-9-registered"} <= added
    # Every existing node learns the new peer through its mesh file, and the member list that
    # drain-departed checks gains it; nothing else is touched.
    assert updated == {"server-1-mesh", "agent-1-mesh", "agent-2-mesh", "agent-3-mesh", "cluster-departures"}


def test_removing_a_node_deletes_its_resources_and_updates_the_other_meshes() -> None:
    config = base_config(agents=3)
    shrunk = copy.deepcopy(config)
    del shrunk["nodes"][2]  # agent-2
    added, removed, updated = _changes(config, shrunk)
    assert added == set()
    assert {"agent-2-mesh", "agent-2-firewall", "agent-2-k3s", "agent-2-node-object", "agent-2-registered"} <= removed
    # cluster-departures drains agent-2 during the update phase, before the meshes drop it
    assert updated == {"server-1-mesh", "agent-1-mesh", "agent-3-mesh", "cluster-departures"}


def test_a_label_touches_only_that_nodes_config_and_node_object() -> None:
    config = base_config(agents=3)
    labelled = copy.deepcopy(config)
    labelled["nodes"][2]["labels"] = {"tier": "web"}
    # config.yaml (for a re-registration) and the live Node object (k3s labels only at registration)
    assert _changes(config, labelled) == (set(), set(), {"agent-2-k3s", "agent-2-registered"})
