"""The drift records in the graph: one per node, before its steps, and HARBOR_REPAIR only after a drift.

The mocks play the engine for a drift record as it behaves with a dynamic provider: a preview gets
the checked inputs back as outputs, an up the update's outputs (tests/harness.py).
"""

from __future__ import annotations

from typing import Any

import pytest

from components.render.drift import AS_APPLIED, STEP_OF
from tests.conftest import SSH_KEY_MARKER, TOKEN_MARKER, base_config, etcd_config
from tests.harness import UNKNOWN, ProgramRun, Registered, run_program

DYNAMIC = "pulumi-python:dynamic:Resource"
DRIFT_COMPONENT = "space-harbor:index:NodeDrift"


def records(run: ProgramRun) -> dict[str, Registered]:
    return {r.name.removesuffix("-drift"): r for r in run.of_type(DYNAMIC) if "expected" in r.inputs}


def steps(run: ProgramRun, node: str) -> dict[str, Registered]:
    return {step: run.named(f"{node}-{step}") for step in ("k3s", "mesh", "firewall")}


def stdin(step: Registered) -> str:
    return str(step.inputs["stdin"])


def drifted_state(node: str, artefacts: list[str]) -> dict[str, dict[str, Any]]:
    """The stored inputs of `node`'s record after a refresh that found `artefacts` drifted."""
    observed = dict.fromkeys(STEP_OF, AS_APPLIED) | {a: f"{node}: {a} differs" for a in artefacts}
    return {f"{node}-drift": {"repair": {"k3s": 0, "mesh": 0, "firewall": 0}, "observed": observed}}


def test_one_record_per_node_under_one_component() -> None:
    config = etcd_config()
    run = run_program(config)
    found = records(run)
    assert sorted(found) == sorted(node["name"] for node in config["nodes"])
    (component,) = run.of_type(DRIFT_COMPONENT)
    assert component.parent is not None and component.parent.endswith("pulumi:pulumi:Stack::space-harbor-test")
    for record in found.values():
        assert record.parent == component.urn


@pytest.mark.parametrize("preview", [True, False], ids=["preview", "up"])
def test_each_step_waits_for_its_nodes_record_and_no_record_for_a_step(preview: bool) -> None:
    run = run_program(base_config(agents=2), preview=preview, existing=preview)
    found = records(run)
    for node, record in found.items():
        for step in steps(run, node).values():
            assert run.depends_on(step, record), f"{step.name} does not wait for {record.name}"
        # Created first, dialling nobody: a record waits for no step of any node.
        assert not any(run.depends_on(record, command) for command in run.commands()), record.dependencies


@pytest.mark.parametrize("preview", [True, False], ids=["preview", "up"])
def test_without_drift_the_steps_stdin_carries_no_repair_and_is_known(preview: bool) -> None:
    """A stack that gains drift detection keeps its steps' inputs: no step re-runs, also in preview."""
    run = run_program(base_config(agents=2), preview=preview, existing=preview)
    for node in records(run):
        for step in steps(run, node).values():
            assert UNKNOWN not in stdin(step), f"{step.name}'s stdin is unknown in this run"
            assert "HARBOR_REPAIR" not in stdin(step), step.name


@pytest.mark.parametrize("preview", [True, False], ids=["preview", "up"])
@pytest.mark.parametrize(
    ("artefacts", "repaired"),
    [
        (["config.yaml"], {"k3s"}),
        (["k3s-service", "k3s-version"], {"k3s"}),
        (["wireguard"], {"mesh"}),
        (["nftables", "firewall-unit"], {"firewall"}),
        (["registries.yaml", "wireguard-unit", "nftables"], {"k3s", "mesh", "firewall"}),
    ],
)
def test_a_drift_read_bumps_exactly_the_steps_of_the_drifted_artefacts(
    artefacts: list[str], repaired: set[str], preview: bool
) -> None:
    config = base_config(agents=2)
    clean = run_program(config, preview=preview, existing=preview)
    run = run_program(config, preview=preview, existing=preview, drift_state=drifted_state("agent-1", artefacts))
    for node in records(run):
        for name, step in steps(run, node).items():
            before = stdin(steps(clean, node)[name])
            if node == "agent-1" and name in repaired:
                assert "\nHARBOR_REPAIR=1\n" in f"\n{stdin(step)}"
                assert f"\n{stdin(step)}".replace("\nHARBOR_REPAIR=1\n", "\n") == f"\n{before}"
            else:
                assert stdin(step) == before, f"{step.name} changed though nothing of it drifted"


def test_the_counter_goes_on_from_the_stored_one() -> None:
    state = drifted_state("server-1", ["nftables"])
    state["server-1-drift"]["repair"] = {"k3s": 2, "mesh": 0, "firewall": 4}
    run = run_program(base_config(), drift_state=state)
    by_step = steps(run, "server-1")
    assert "\nHARBOR_REPAIR=5\n" in f"\n{stdin(by_step['firewall'])}"
    assert "\nHARBOR_REPAIR=2\n" in f"\n{stdin(by_step['k3s'])}"  # stays as it was: no re-run of k3s
    assert "HARBOR_REPAIR" not in stdin(by_step["mesh"])


def test_the_record_keeps_keys_secret_and_fingerprints_plain() -> None:
    config = base_config(agents=1)
    config["k3s"] = {"token": TOKEN_MARKER}
    run = run_program(config)
    for record in records(run).values():
        assert "connection" in record.secret_inputs
        assert "expected" not in record.secret_inputs  # shown in a preview's diff: fingerprints only
        assert "connection" in record.additional_secret_outputs
        public = record.public_text()
        assert SSH_KEY_MARKER not in public and TOKEN_MARKER not in public
        assert record.inputs["connection"]["private_key"].find(SSH_KEY_MARKER) >= 0  # the read needs it
        assert len(record.inputs["expected"]["config.yaml"]["sha256"]) == 64


def test_mesh_and_firewall_off_leave_their_artefacts_out() -> None:
    config = base_config(agents=1)
    config["firewall"] = {"enabled": False}
    run = run_program(config)
    expected = records(run)["agent-1"].inputs["expected"]
    assert "nftables" not in expected and "firewall-unit" not in expected
    assert {"config.yaml", "registries.yaml", "k3s-version", "k3s-service", "wireguard"} <= set(expected)
    assert expected["k3s-service"] == {"unit": "k3s-agent", "role": "agent"}
    (peer,) = expected["wireguard"]["peers"].splitlines()
    name, key, allowed = peer.split(" ")
    assert (name, allowed) == ("server-1", "10.160.0.1/32") and len(key) == 44
