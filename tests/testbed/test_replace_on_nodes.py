"""`pulumi up --replace` of each node step on real nodes, in the order the engine would use.

Two booted nodes, n1 the server and n2 an agent, with the k3s stand-in, built by one replayed
`pulumi up`. Then each step that has a delete is replaced as the real engine would replace it,
read from the options the program registered: delete-first when the step says
`delete_before_replace` (its old delete, then its create), otherwise create-before-delete (its
create, then the old delete after the program); the copies that say `replace_with` the step are
created again after it. After each replacement the node must be as it was: its files, its
interfaces, its firewall ruleset, its staged files and its Node object, schedulable.

(The replay engine itself models no replacement; see tests/testbed/engine.py.)
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from tests.harness import ProgramRun, Registered, run_program
from tests.testbed.conftest import Snapshot, booted_testbed, snapshot
from tests.testbed.engine import Engine
from tests.testbed.nodes import Testbed, call_in_netns
from tests.testbed.runner import Runner
from tests.testbed.stack import stack_config

pytestmark = pytest.mark.testbed

STANDIN_NODES = "/var/lib/rancher/k3s/standin/nodes"
STAGING = "/var/lib/space-harbor/staging"


class Stack:
    def __init__(self, tb: Testbed) -> None:
        self.tb = tb
        self.engine = Engine(ssh_prefix=["ip", "netns", "exec", tb.ctl], workdir=tb.workdir)
        self.run: ProgramRun = call_in_netns(tb.ctl, run_program, stack_config(tb))
        self.engine.up(self.run)
        self.runner = Runner(self.run.resources, ssh_prefix=["ip", "netns", "exec", tb.ctl], workdir=tb.workdir)

    def replace(self, name: str) -> None:
        """The engine's replacement of the step `name`, with the inputs of the last `up`."""
        step = self.run.named(name)
        with_it = [r.name for r in self.run.resources if step.urn in r.replace_with]
        if step.delete_before_replace:
            self.runner.run_one(name, "delete")
            self.runner.run_one(name, "create")
        else:
            self.runner.run_one(name, "create")
        for other in with_it:
            self.runner.run_one(other, "create")
        if not step.delete_before_replace:
            # after the program: the old delete, with the stored inputs (the same ones here)
            self.runner.run_one(name, "delete")

    def state(self, node: str) -> dict[str, Any]:
        snap: Snapshot = snapshot(self.tb, node)
        staged = self.tb.ssh(node, f"sha256sum {STAGING}/* 2>/dev/null || true").stdout
        record = self.tb.ssh("n1", f"cat {STANDIN_NODES}/{node}.json", check=False)
        return {
            "files": snap.files,
            "interfaces": sorted(line.split()[1] for line in snap.links),
            "nft": snap.nft,
            "staged": staged,
            # the same Node object (made at the same time), as scheduled and marked as before
            "node": {key: value for key, value in json.loads(record.stdout).items() if key != "heartbeat"}
            if record.returncode == 0
            else None,
        }


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    for tb in booted_testbed(["n1", "n2"], git=False):
        yield Stack(tb)


def _steps_with_a_delete(run: ProgramRun, node: str) -> list[Registered]:
    return [
        r
        for r in run.commands()
        if r.name.startswith(f"{node}-") and r.inputs.get("delete") and not r.name.endswith("-k3s")
    ]


@pytest.mark.parametrize("node", ["n2", "n1"])
def test_replacing_a_node_step_leaves_the_node_as_it_was(stack: Stack, node: str) -> None:
    steps = _steps_with_a_delete(stack.run, node)
    kinds = {step.name.removeprefix(f"{node}-") for step in steps}
    assert {"mesh", "firewall", "shipped", "node-object"} <= kinds, kinds
    before = stack.state(node)
    assert before["node"] is not None and before["staged"]
    for step in steps:
        stack.replace(step.name)
        after = stack.state(node)
        assert after == before, f"--replace of {step.name} changed {node}: " + ", ".join(
            key for key in before if before[key] != after[key]
        )
