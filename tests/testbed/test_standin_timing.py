"""The k3s stand-in is as slow as its testbed asks: an install takes time, a start takes time before READY.

Two nodes (n1 the server, n2 an agent) with a stand-in that takes INSTALL_S to install and START_S
to start; the program's k3s commands (and what they wait for) run over SSH as `pulumi up` would.
What a benchmark of the install order relies on is checked where it shows: in the k3s commands'
durations, in systemd's own timestamps of each unit, and in when the agent's Node first appeared.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.testbed.nodes import Testbed, missing_requirements
from tests.testbed.runner import CommandResult
from tests.testbed.stack import K3S_VERSION, names, program, stack_config

pytestmark = pytest.mark.testbed

INSTALL_S = 3.0
START_S = 4.0
UNITS = {"n1": "k3s", "n2": "k3s-agent"}
STANDIN_NODES = "/var/lib/rancher/k3s/standin/nodes"


@dataclass
class Applied:
    tb: Testbed
    results: dict[str, CommandResult]


@pytest.fixture(scope="module")
def applied() -> Iterator[Applied]:
    reason = missing_requirements()
    if reason:
        pytest.skip(reason)
    tb = Testbed(k3s_version=K3S_VERSION, k3s_install_seconds=INSTALL_S, k3s_start_seconds=START_S)
    try:
        tb.start()
        tb.add_nodes(UNITS)
        _, runner = program(tb, stack_config(tb))
        with runner:
            results = runner.apply(names(runner, "-registered"))
        yield Applied(tb, {result.name: result for result in results})
    finally:
        tb.close()


def unit_times(tb: Testbed, node: str) -> dict[str, int]:
    """systemd's timestamps of the node's k3s unit: monotonic microseconds, and the start as unix seconds."""
    out = tb.ssh(
        node,
        f"systemctl show {UNITS[node]} -p ExecMainStartTimestampMonotonic -p ActiveEnterTimestampMonotonic"
        f" && systemctl show --timestamp=unix -p ExecMainStartTimestamp --value {UNITS[node]}",
    ).stdout.splitlines()
    times = dict(line.split("=", 1) for line in out[:-1])
    return {
        "exec_start_us": int(times["ExecMainStartTimestampMonotonic"]),
        "active_us": int(times["ActiveEnterTimestampMonotonic"]),
        "exec_start_unix": int(out[-1].lstrip("@")),
    }


@pytest.mark.parametrize("node", UNITS)
def test_the_install_command_takes_the_install_and_the_start_time(applied: Applied, node: str) -> None:
    result = applied.results[f"{node}-k3s"]
    assert f"k3s install stand-in: taking {INSTALL_S:g}s" in result.stderr
    # The installer sleeps, then k3s.sh's `systemctl restart` waits for READY.
    assert result.seconds >= INSTALL_S + START_S, f"{node}-k3s took {result.seconds:.1f}s"


@pytest.mark.parametrize("node", UNITS)
def test_the_unit_turns_active_only_after_the_start_time(applied: Applied, node: str) -> None:
    times = unit_times(applied.tb, node)
    activating = (times["active_us"] - times["exec_start_us"]) / 1e6
    assert activating >= START_S, f"{UNITS[node]} was activating {activating:.1f}s"
    status = applied.tb.ssh(node, f"systemctl show -p StatusText --value {UNITS[node]}").stdout
    assert "stand-in" in status


def test_the_agent_registers_its_node_only_after_the_start_time(applied: Applied) -> None:
    started = unit_times(applied.tb, "n2")["exec_start_unix"]  # whole seconds, rounded down
    created = float(
        applied.tb.ssh(
            "n1", f'python3 -c \'import json; print(json.load(open("{STANDIN_NODES}/n2.json"))["created"])\''
        ).stdout
    )
    assert created - started >= START_S, f"n2's Node appeared {created - started:.1f}s after its agent started"
    ready = applied.tb.ssh(
        "n1", "k3s kubectl get node n2 -o jsonpath='{.status.conditions[?(@.type==\"Ready\")].status}'"
    )
    assert ready.stdout == "True"
