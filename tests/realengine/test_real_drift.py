"""Drift with the real engine: `pulumi preview --refresh` names each hand edit, `pulumi refresh` and
`pulumi up` repair it, running exactly the step that puts it back, and the next
`pulumi preview --refresh --expect-no-changes` is clean.

One cluster for the module (n1 server, n2 and n3 agents, a git server), the tests in file order.
Every check reads the real world: the nodes over SSH, the git repository, `pulumi stack export`,
and the engine's own event log of each `up` (which steps ran).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.realengine.conftest import RealStack, stack_on
from tests.realengine.driver import RealEngine
from tests.realengine.test_real_engine import change_summary, logins, sessions_since
from tests.testbed.nodes import AIRGAP_BINARY, GIT_REPO, STANDIN_K3S, Testbed
from tests.testbed.stack import K3S_VERSION, MESH_INTERFACE
from tests.testbed.stack_engine import Report

pytestmark = [pytest.mark.realengine, pytest.mark.testbed]

NODES = ["n1", "n2", "n3"]
NODE_STEPS = ("-k3s", "-mesh", "-firewall")


@pytest.fixture(scope="module")
def cluster3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealStack]:
    yield from stack_on(NODES, tmp_path_factory.mktemp("drift"), up=True)


def records(stack: RealStack) -> dict[str, dict[str, Any]]:
    """Each node's drift record's outputs, from `pulumi stack export`."""
    return {
        r["urn"].rsplit("::", 1)[1].removesuffix("-drift"): r.get("outputs", {})
        for r in stack.pulumi.resources()
        if r["urn"].endswith("-drift") and r["type"] == "pulumi-python:dynamic:Resource"
    }


def shown_and_repaired(stack: RealStack, line: str, step: str) -> Report:
    """The preview names `line`; after a refresh, `up` runs `step` and no other node step (its
    event log says); the report of that `up`."""
    preview = stack.pulumi.run("preview", "--refresh", "--diff")
    assert line in preview.output, preview.output[-4000:]
    stack.pulumi.run("refresh", "--yes", "--skip-preview")
    report = RealEngine(stack).up(stack.config)
    ran = {name for name in report.ran() if name.endswith(NODE_STEPS)}
    if step.endswith(NODE_STEPS):
        assert ran == {step}, report
    else:
        assert step in report.updates and ran == set(), report
    return report


def shows_then_repairs(stack: RealStack, line: str, step: str) -> None:
    """`shown_and_repaired`, then the next preview with a refresh is clean."""
    shown_and_repaired(stack, line, step)
    stack.pulumi.run("preview", "--refresh", "--expect-no-changes")


def test_a_clean_refresh_changes_nothing_and_opens_one_session_per_node(cluster3: RealStack) -> None:
    before = logins(cluster3.tb)
    preview = cluster3.pulumi.run("preview", "--refresh", "--expect-no-changes")
    assert not {"create", "update", "delete", "replace"} & set(change_summary(preview.output))
    assert sessions_since(cluster3.tb, before) == dict.fromkeys(NODES, 1)
    cluster3.pulumi.run("refresh", "--yes", "--skip-preview")
    found = records(cluster3)
    assert {name: r["reachable"] for name, r in found.items()} == dict.fromkeys(NODES, "reachable")
    assert set(found["n1"]["observed"]) >= {"config.yaml", "wireguard", "nftables", "firewall-unit"}


def test_a_no_op_up_without_refresh_dials_no_node(cluster3: RealStack) -> None:
    before = logins(cluster3.tb)
    cluster3.pulumi.run("up", "--yes", "--expect-no-changes")
    assert sessions_since(cluster3.tb, before) == dict.fromkeys(NODES, 0)


def test_an_edited_config_yaml(cluster3: RealStack) -> None:
    cluster3.tb.ssh("n2", "echo 'node-label: [edited=by-hand]' >> /etc/rancher/k3s/config.yaml")
    line = "n2: /etc/rancher/k3s/config.yaml edited on the node (sha256 "
    preview = cluster3.pulumi.run("preview", "--refresh", "--diff")
    # The line names the file and its hash, never its content (the file holds the token).
    named = [text for text in preview.output.splitlines() if line in text]
    assert named and not [text for text in named if "by-hand" in text or "token" in text], named
    shows_then_repairs(cluster3, line, "n2-k3s")
    assert "by-hand" not in cluster3.tb.ssh("n2", "cat /etc/rancher/k3s/config.yaml").stdout


def test_a_flushed_chain_and_a_deleted_table(cluster3: RealStack) -> None:
    # Not the input chain: flushed, its drop policy would shut SSH out (the node is then unreachable).
    cluster3.tb.ssh("n3", "nft flush chain inet space_harbor prerouting")
    shows_then_repairs(cluster3, "n3: nftables table space_harbor changed on the node (sha256 ", "n3-firewall")
    cluster3.tb.ssh("n3", "nft delete table inet space_harbor")
    shows_then_repairs(cluster3, "n3: nftables table space_harbor missing", "n3-firewall")


def test_a_removed_peer(cluster3: RealStack) -> None:
    tb = cluster3.tb
    key = tb.ssh("n2", f"wg show {MESH_INTERFACE} public-key").stdout.strip()
    tb.ssh("n1", f"wg set {MESH_INTERFACE} peer {key} remove")
    shows_then_repairs(cluster3, f"n1: {MESH_INTERFACE} lacks the peer n2 (key {key[:8]}", "n1-mesh")
    assert key in tb.ssh("n1", f"wg show {MESH_INTERFACE} peers").stdout.split()


def test_a_stopped_service(cluster3: RealStack) -> None:
    cluster3.tb.ssh("n3", "systemctl stop k3s-agent")
    shows_then_repairs(cluster3, "n3: k3s-agent.service inactive", "n3-k3s")
    assert cluster3.tb.ssh("n3", "systemctl is-active k3s-agent").stdout.strip() == "active"


def test_a_hand_edited_and_a_removed_gitops_file(cluster3: RealStack) -> None:
    tb = cluster3.tb
    tree = tb.ssh("git", f"git -C {GIT_REPO} ls-tree -r --name-only main").stdout.split()
    path, removed = [name for name in tree if name.endswith(".yaml")][:2]
    tb.ssh(
        "git",
        f"set -e; rm -rf /tmp/hand; git clone -q {GIT_REPO} /tmp/hand; cd /tmp/hand; echo '# by hand' >> {path}; "
        f"git rm -q {removed}; git -c user.name=h -c user.email=h@x commit -qam 'by hand'; "
        "git push -q origin HEAD:main",
    )
    preview = cluster3.pulumi.run("preview", "--refresh", "--diff")
    assert f"{removed}: removed from branch main" in preview.output, preview.output[-4000:]
    shows_then_repairs(cluster3, f"{path}: changed on branch main", "gitops-tree")
    assert "# by hand" not in tb.ssh("git", f"git -C {GIT_REPO} show main:{path}").stdout
    # One commit puts both back.
    changed = tb.ssh("git", f"git -C {GIT_REPO} diff-tree --no-commit-id --name-only -r main").stdout.split()
    assert sorted(changed) == sorted([path, removed])


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


def test_a_newer_binary_put_by_hand_is_named_and_never_downgraded(cluster3: RealStack) -> None:
    tb = cluster3.tb
    put_k3s_binary(tb, "n3", "v1.32.1+k3s1")
    try:
        report = shown_and_repaired(cluster3, f"n3: k3s v1.32.1+k3s1 running, {K3S_VERSION} applied", "n3-k3s")
        said = report.result("n3-k3s").stderr
        assert "newer than" in said and "never downgraded" in said, said
        assert "v1.32.1+k3s1" in tb.ssh("n3", f"{AIRGAP_BINARY} --version").stdout
        assert tb.ssh("n3", "systemctl is-active k3s-agent").stdout.strip() == "active"
    finally:
        put_k3s_binary(tb, "n3", K3S_VERSION)
    cluster3.pulumi.run("preview", "--refresh", "--expect-no-changes")


def test_an_unreachable_node_is_reported_and_nothing_runs_there(cluster3: RealStack) -> None:
    tb = cluster3.tb
    tb.stop_sshd("n3")
    try:
        cluster3.pulumi.run("refresh", "--yes", "--skip-preview")
        found = records(cluster3)
        assert found["n3"]["reachable"].startswith("unreachable: "), found["n3"]
        assert set(found["n3"]["observed"].values()) == {"as applied"}
        cluster3.pulumi.run("up", "--yes", "--expect-no-changes")
    finally:
        tb.start_sshd("n3")
