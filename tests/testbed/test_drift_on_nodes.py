"""Drift on real nodes: each hand edit is named by the read of `pulumi refresh`, and the `up` after it
runs exactly the step that puts it back; then the read is clean.

Three booted nodes (n1 the server, n2 and n3 agents) and a git server. The stack goes up through
tests/testbed/engine.py. A refresh is the drift provider's own read (components/drift.py),
called from the controller namespace with the record's stored state, as the engine calls it; the
`up` after it is the program again with the records' inputs as the refresh left them, so each
step's stdin carries the repair counter the provider's check computes.
"""

from __future__ import annotations

from typing import Any

import pytest

from components.drift import drift_check, drift_read, recorded
from components.gitops import GitTreeProvider
from components.render.drift import AS_APPLIED
from tests.harness import ProgramRun, run_program
from tests.testbed.conftest import booted_testbed
from tests.testbed.engine import Engine, Report
from tests.testbed.nodes import AIRGAP_BINARY, GIT_REPO, STANDIN_K3S, Testbed, call_in_netns
from tests.testbed.stack import K3S_VERSION, MESH_INTERFACE, stack_config

pytestmark = pytest.mark.testbed

NODES = ["n1", "n2", "n3"]
LOGINS = "journalctl -u ssh.service -o cat --no-pager | grep -c 'Accepted publickey' || true"
STEPS = ("k3s", "mesh", "firewall")


class DriftStack:
    """The stack's engine state plus each drift record's state (outputs and inputs) as the engine keeps them."""

    def __init__(self, tb: Testbed) -> None:
        self.tb = tb
        self.engine = Engine(ssh_prefix=["ip", "netns", "exec", tb.ctl], workdir=tb.workdir)
        self.config = stack_config(tb)
        self.outputs: dict[str, dict[str, Any]] = {}
        self.inputs: dict[str, dict[str, Any]] = {}
        self.run: ProgramRun | None = None

    def up(self) -> Report:
        states = {f"{name}-drift": state for name, state in self.inputs.items()}
        run = call_in_netns(self.tb.ctl, run_program, self.config, drift_state=states)
        report = self.engine.up(run)
        for record in run.drift_records():
            name = record.name.removesuffix("-drift")
            checked = drift_check(self.inputs.get(name, {}), record.inputs)
            before = self.outputs.get(name, {}).get("reachable")
            self.outputs[name], self.inputs[name] = recorded(checked, before), checked
        self.run = run
        return report

    def refresh(self, name: str) -> dict[str, Any]:
        outs, inputs = call_in_netns(self.tb.ctl, drift_read, self.outputs[name])
        self.outputs[name], self.inputs[name] = outs, inputs
        return outs

    def drifts(self, name: str) -> dict[str, str]:
        outs = self.refresh(name)
        assert outs["reachable"] == "reachable", outs["reachable"]
        return {artefact: line for artefact, line in outs["observed"].items() if line != AS_APPLIED}

    def steps_run(self, report: Report) -> set[str]:
        return {name for name in report.ran() if name.endswith(tuple(f"-{step}" for step in STEPS))}


@pytest.fixture(scope="module")
def tb() -> Any:
    yield from booted_testbed(NODES, git=True)


@pytest.fixture(scope="module")
def stack(tb: Testbed) -> DriftStack:
    stack = DriftStack(tb)
    stack.up()
    return stack


def logins(tb: Testbed) -> dict[str, int]:
    return {name: int(tb.ssh(name, LOGINS).stdout.strip() or 0) for name in tb.nodes}


def test_a_clean_node_reads_as_applied_in_one_session_each(stack: DriftStack) -> None:
    before = logins(stack.tb)
    for name in NODES:
        assert stack.drifts(name) == {}, name
    after = logins(stack.tb)
    # One session per read; reading the counter is one more login each time.
    assert {name: after[name] - before[name] - 1 for name in NODES} == dict.fromkeys(NODES, 1)
    assert set(stack.outputs["n1"]["observed"]) >= {"config.yaml", "wireguard", "nftables", "firewall-unit"}


def test_an_edited_config_yaml_is_named_and_the_k3s_step_rewrites_it(stack: DriftStack) -> None:
    tb = stack.tb
    tb.ssh("n2", "echo 'node-label: [edited=by-hand]' >> /etc/rancher/k3s/config.yaml")
    found = stack.drifts("n2")
    assert list(found) == ["config.yaml"], found
    assert found["config.yaml"].startswith("n2: /etc/rancher/k3s/config.yaml edited on the node (sha256 ")
    assert "by-hand" not in found["config.yaml"] and "token" not in found["config.yaml"]
    report = stack.up()
    assert stack.steps_run(report) == {"n2-k3s"}
    assert "edited=by-hand" not in tb.ssh("n2", "cat /etc/rancher/k3s/config.yaml").stdout
    assert stack.drifts("n2") == {}
    # A second up with nothing found runs no step at all.
    assert stack.steps_run(stack.up()) == set()


def test_a_stopped_k3s_is_named_and_started_again(stack: DriftStack) -> None:
    stack.tb.ssh("n3", "systemctl stop k3s-agent")
    assert stack.drifts("n3") == {"k3s-service": "n3: k3s-agent.service inactive"}
    assert stack.steps_run(stack.up()) == {"n3-k3s"}
    assert stack.tb.ssh("n3", "systemctl is-active k3s-agent").stdout.strip() == "active"
    assert stack.drifts("n3") == {}


def test_a_flushed_chain_then_a_deleted_table_is_loaded_again(stack: DriftStack) -> None:
    tb = stack.tb
    # Not the input chain: flushed, its drop policy would shut SSH out and the node could not be read.
    tb.ssh("n3", "nft flush chain inet space_harbor prerouting")
    found = stack.drifts("n3")
    assert list(found) == ["nftables"], found
    assert found["nftables"].startswith("n3: nftables table space_harbor changed on the node (sha256 ")
    assert stack.steps_run(stack.up()) == {"n3-firewall"}
    assert stack.drifts("n3") == {}
    tb.ssh("n3", "nft delete table inet space_harbor")
    assert stack.drifts("n3") == {"nftables": "n3: nftables table space_harbor missing"}
    assert stack.steps_run(stack.up()) == {"n3-firewall"}
    assert tb.ssh("n3", "nft list table inet space_harbor", check=False).returncode == 0
    assert stack.drifts("n3") == {}


def test_a_removed_peer_is_named_and_synced_back(stack: DriftStack) -> None:
    tb = stack.tb
    n2_key = tb.ssh("n2", f"wg show {MESH_INTERFACE} public-key").stdout.strip()
    tb.ssh("n1", f"wg set {MESH_INTERFACE} peer {n2_key} remove")
    assert stack.drifts("n1") == {"wireguard": f"n1: {MESH_INTERFACE} lacks the peer n2 (key {n2_key[:8]}…)"}
    assert stack.steps_run(stack.up()) == {"n1-mesh"}
    assert n2_key in tb.ssh("n1", f"wg show {MESH_INTERFACE} peers").stdout.split()
    assert stack.drifts("n1") == {}


def test_an_unreachable_node_is_reported_as_such_and_nothing_runs_there(stack: DriftStack) -> None:
    tb = stack.tb
    before = dict(stack.outputs["n2"]["observed"])
    tb.stop_sshd("n2")
    try:
        outs = stack.refresh("n2")
        assert outs["reachable"].startswith("unreachable: cannot reach the node at "), outs["reachable"]
        assert outs["observed"] == before  # left as it was: nothing reported as drifted
        assert stack.steps_run(stack.up()) == set()
    finally:
        tb.start_sshd("n2")
    assert stack.drifts("n2") == {}


def put_k3s_binary(tb: Testbed, node: str, version: str) -> None:
    """Replace the node's k3s binary by hand with the stand-in of `version` (the running one stays)."""
    standin = STANDIN_K3S.read_text().replace(
        'STANDIN_VERSION="${K3S_STANDIN_VERSION:-v1.31.4+k3s1}"',
        f'STANDIN_VERSION="${{K3S_STANDIN_VERSION:-{version}}}"',
    )
    assert version in standin
    tb.ssh(
        node,
        f"cat > {AIRGAP_BINARY}.new && chmod 755 {AIRGAP_BINARY}.new && mv {AIRGAP_BINARY}.new {AIRGAP_BINARY}",
        input=standin,
    )


def test_a_newer_binary_put_by_hand_is_named_and_never_downgraded(stack: DriftStack) -> None:
    tb = stack.tb
    put_k3s_binary(tb, "n3", "v1.32.1+k3s1")
    try:
        assert stack.drifts("n3") == {"k3s-version": f"n3: k3s v1.32.1+k3s1 running, {K3S_VERSION} applied"}
        report = stack.up()
        assert stack.steps_run(report) == {"n3-k3s"}
        said = report.result("n3-k3s").stderr
        assert "newer than" in said and "never downgraded" in said, said
        assert "v1.32.1+k3s1" in tb.ssh("n3", f"{AIRGAP_BINARY} --version").stdout
        assert tb.ssh("n3", "systemctl is-active k3s-agent").stdout.strip() == "active"
    finally:
        put_k3s_binary(tb, "n3", K3S_VERSION)
    assert stack.drifts("n3") == {}


def test_a_hand_edited_and_a_removed_gitops_file_are_named_and_committed_back(stack: DriftStack) -> None:
    tb = stack.tb
    assert stack.run is not None
    (tree,) = [r for r in stack.run.resources if r.type == "pulumi-python:dynamic:Resource" and "gitops" in r.name]
    inputs = {k: v for k, v in tree.inputs.items() if k != "__provider"}
    provider = GitTreeProvider()
    created = call_in_netns(tb.ctl, provider.create, inputs).outs
    owned = sorted(created["owned"])
    edited, removed = owned[0], owned[1]
    tb.ssh(
        "git",
        f"set -e; rm -rf /tmp/hand; git clone -q {GIT_REPO} /tmp/hand; cd /tmp/hand; "
        f"echo '# by hand' >> {edited}; git rm -q {removed}; "
        "git -c user.name=h -c user.email=h@x commit -qam 'by hand'; git push -q origin HEAD:main",
    )
    read = call_in_netns(tb.ctl, provider.read, "id", created).outs
    assert read["drift"] == {
        edited: read["drift"][edited],
        removed: f"{removed}: removed from branch main",
    }
    assert read["drift"][edited].startswith(f"{edited}: changed on branch main (sha256 ")
    assert provider.diff("id", read, inputs).changes is True
    updated = call_in_netns(tb.ctl, provider.update, "id", read, inputs).outs
    changed = tb.ssh("git", f"git -C {GIT_REPO} diff-tree --no-commit-id --name-only -r main").stdout.split()
    assert sorted(changed) == sorted([edited, removed])
    again = call_in_netns(tb.ctl, provider.read, "id", updated).outs
    assert again["drift"] == {}
