"""Drift with the real engine: `pulumi preview --refresh` names each hand edit, `pulumi refresh` and
`pulumi up` repair it, and the next `pulumi preview --refresh --expect-no-changes` is clean.

One cluster for the module (n1 server, n2 and n3 agents, a git server), the tests in file order.
Every check reads the real world: the nodes over SSH, the git repository, `pulumi stack export`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.realengine.conftest import RealStack, stack_on
from tests.realengine.test_real_engine import change_summary, logins, sessions_since
from tests.testbed.nodes import GIT_REPO
from tests.testbed.stack import MESH_INTERFACE

pytestmark = [pytest.mark.realengine, pytest.mark.testbed]

NODES = ["n1", "n2", "n3"]


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


def shows_then_repairs(stack: RealStack, line: str, step: str) -> None:
    """The preview names `line`; refresh and up run `step` again; the next preview is clean."""
    preview = stack.pulumi.run("preview", "--refresh", "--diff")
    assert line in preview.output, preview.output[-4000:]
    stack.pulumi.run("refresh", "--yes", "--skip-preview")
    up = stack.pulumi.run("up", "--yes", "--skip-preview")
    assert step in up.output, up.output[-4000:]
    stack.pulumi.run("preview", "--refresh", "--expect-no-changes")


def test_a_clean_refresh_changes_nothing_and_opens_one_session_per_node(cluster3: RealStack) -> None:
    before = logins(cluster3.tb)
    preview = cluster3.pulumi.run("preview", "--refresh", "--expect-no-changes")
    assert not {"create", "update", "delete", "replace"} & set(change_summary(preview.output))
    assert sessions_since(cluster3.tb, before) == dict.fromkeys(NODES, 1)
    cluster3.pulumi.run("refresh", "--yes", "--skip-preview")
    assert {name: r["reachable"] for name, r in records(cluster3).items()} == dict.fromkeys(NODES, "reachable")


def test_a_no_op_up_without_refresh_dials_no_node(cluster3: RealStack) -> None:
    before = logins(cluster3.tb)
    cluster3.pulumi.run("up", "--yes", "--expect-no-changes")
    assert sessions_since(cluster3.tb, before) == dict.fromkeys(NODES, 0)


def test_an_edited_config_yaml(cluster3: RealStack) -> None:
    cluster3.tb.ssh("n2", "echo 'node-label: [edited=by-hand]' >> /etc/rancher/k3s/config.yaml")
    shows_then_repairs(cluster3, "n2: /etc/rancher/k3s/config.yaml edited on the node (sha256 ", "n2-k3s")
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


def test_a_hand_edited_gitops_file(cluster3: RealStack) -> None:
    tb = cluster3.tb
    tree = tb.ssh("git", f"git -C {GIT_REPO} ls-tree -r --name-only main").stdout.split()
    path = next(name for name in tree if name.endswith(".yaml"))
    tb.ssh(
        "git",
        f"set -e; rm -rf /tmp/hand; git clone -q {GIT_REPO} /tmp/hand; cd /tmp/hand; echo '# by hand' >> {path}; "
        "git -c user.name=h -c user.email=h@x commit -qam 'by hand'; git push -q origin HEAD:main",
    )
    shows_then_repairs(cluster3, f"{path}: changed on branch main", "gitops-tree")
    assert "# by hand" not in tb.ssh("git", f"git -C {GIT_REPO} show main:{path}").stdout


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
