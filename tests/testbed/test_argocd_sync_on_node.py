"""Sync now (gitops.syncOnApply) on a booted node, as the engine runs it.

One node, n1, the server, with the k3s stand-in. The cluster is installed first without the
feature; then what pulumi-kubernetes and Argo CD would have put in the cluster (the root
Application, the platform's Applications, the controller's StatefulSet) is created through the
stand-in's kubectl, and the Argo CD controller stand-in (tests/testbed/standin/) runs on the node
as a systemd service. Its "git" head is the commit of the program run being applied: the push has
landed. Each step below is a `pulumi up` replayed by tests/testbed/engine.py; the stand-in API's
patch log on the node shows what the `argocd-sync` step wrote, over real SSH. It stays on the
replay because the Argo CD controller stand-in acts on the k3s stand-in's own object store and its
patch log, which the real API server that the real engine's testbed runs has no counterpart of.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from components.render.gitops import ROOT_APPLICATION
from tests.harness import ProgramRun, run_program
from tests.helpers import ARGOCD_CONTROLLER_STANDIN, argocd_objects, command_env
from tests.testbed.engine import Engine, Report
from tests.testbed.nodes import Testbed, call_in_netns
from tests.testbed.stack import stack_config

pytestmark = pytest.mark.testbed

STEP = "argocd-sync"
API = "/var/lib/rancher/k3s/standin/api"
GIT = "/var/lib/rancher/k3s/standin/argocd-git.json"
CONTROLLER_LOG = "/var/lib/rancher/k3s/standin/argocd-controller.log"
CONTROLLER = "/usr/local/bin/argocd-controller-standin"
CHILDREN = ["infracheck", "sealed-secrets", "traefik"]


class Stack:
    def __init__(self, tb: Testbed) -> None:
        self.tb = tb
        self.engine = Engine(ssh_prefix=["ip", "netns", "exec", tb.ctl], workdir=tb.workdir)
        self.config = stack_config(tb, node_names=["n1"])

    def program(self, config: dict[str, Any]) -> ProgramRun:
        return call_in_netns(self.tb.ctl, run_program, config)

    def up(self, run: ProgramRun) -> Report:
        return self.engine.up(run)

    def patches(self) -> list[dict[str, Any]]:
        out = self.tb.ssh("n1", f"cat {API}/patches.log 2>/dev/null || true").stdout
        return [json.loads(line) for line in out.splitlines()]

    def app(self, name: str) -> dict[str, Any]:
        shown = self.tb.ssh("n1", f"k3s kubectl -n argocd get applications.argoproj.io {name} -o json")
        return json.loads(shown.stdout)

    def set_git(self, head: str, drifted: list[str]) -> None:
        self.tb.ssh("n1", f"cat > {GIT}", input=json.dumps({"head": head, "drifted": drifted, "failing": []}))


def ours(patches: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """(what, application) of each patch argocd-sync.sh sent: a refresh request or an operation."""
    found = []
    for patch in patches:
        body = patch["patch"]
        if (body.get("metadata", {}).get("annotations") or {}).get("argocd.argoproj.io/refresh") == "normal":
            found.append(("refresh", patch["name"]))
        if ((body.get("operation") or {}).get("initiatedBy") or {}).get("username") == "space-harbor":
            found.append(("sync", patch["name"]))
    return found


def syncing(config: dict[str, Any], enabled: bool = True) -> dict[str, Any]:
    config = copy.deepcopy(config)
    config["gitops"]["syncOnApply"] = enabled
    return config


def revision(run: ProgramRun) -> str:
    return command_env(run.named(STEP))["HARBOR_GITOPS_REVISION"]


@pytest.fixture(scope="module")
def stack(testbed1: Testbed) -> Stack:
    stack = Stack(testbed1)
    report = stack.up(stack.program(stack.config))
    assert STEP not in report.creates
    # What `pulumi up` applied with pulumi-kubernetes and Argo CD created from git, and Argo CD's
    # controller, played by the stand-in.
    objects = json.dumps(argocd_objects(stack.config))
    testbed1.ssh("n1", f"mkdir -p {API}/applications.argoproj.io && k3s kubectl create -f -", input=objects)
    testbed1.ssh("n1", f"cat > {CONTROLLER} && chmod 755 {CONTROLLER}", input=ARGOCD_CONTROLLER_STANDIN.read_text())
    testbed1.ssh(
        "n1",
        f"systemd-run --unit=argocd-controller-standin {CONTROLLER} --repo {stack.config['gitops']['repoUrl']}"
        f" --git {GIT} --log {CONTROLLER_LOG} --sync-seconds 1",
    )
    return stack


def test_enabling_it_syncs_the_root_and_the_children_out_of_sync(stack: Stack) -> None:
    config = syncing(stack.config)
    run = stack.program(config)
    stack.set_git(revision(run), drifted=[ROOT_APPLICATION, "traefik"])

    report = stack.up(run)

    assert report.creates == [STEP], report.creates
    assert {name for name in report.ran() if not name.endswith("-preflight")} == {STEP}
    result = report.result(STEP)
    assert result.stdout.strip().endswith("space-harbor: argocd-sync.sh sync: changed"), result.stderr
    sent = ours(stack.patches())
    # The root is asked first; it syncs itself (automated), so the only operation of ours is the child's.
    assert sent == [("refresh", ROOT_APPLICATION), *[("refresh", c) for c in CHILDREN], ("sync", "traefik")]
    for name in [ROOT_APPLICATION, *CHILDREN]:
        assert stack.app(name)["status"]["sync"]["status"] == "Synced", name
    assert stack.app("traefik")["status"]["operationState"]["syncResult"]["revisions"][-1] == revision(run)
    stack.config = config


def test_an_up_that_commits_nothing_syncs_nothing(stack: Stack) -> None:
    before = len(stack.patches())
    report = stack.up(stack.program(stack.config))
    assert STEP not in report.ran() and STEP not in report.updates
    assert len(stack.patches()) == before


def test_a_new_commit_runs_the_step_again(stack: Stack) -> None:
    config = copy.deepcopy(stack.config)
    config["components"]["infracheck"]["host"] = "status.harbor.test"  # its Application changes in git
    run = stack.program(config)
    assert revision(run) != revision(stack.program(stack.config))
    stack.set_git(revision(run), drifted=["infracheck"])
    before = len(stack.patches())

    report = stack.up(run)

    # The tree's update is the push; the step is the only command that runs because of it.
    assert "gitops-tree" in report.updates and STEP in report.updates
    assert {name for name in report.ran() if not name.endswith("-preflight")} == {STEP}
    assert ours(stack.patches()[before:]) == [
        ("refresh", ROOT_APPLICATION),
        *[("refresh", c) for c in CHILDREN],
        ("sync", "infracheck"),
    ]
    state = stack.app("infracheck")["status"]["operationState"]
    assert state["phase"] == "Succeeded" and state["syncResult"]["revisions"][-1] == revision(run)
    stack.config = config


def test_disabled_it_writes_nothing_even_for_a_new_commit(stack: Stack) -> None:
    config = syncing(stack.config, enabled=False)
    config["components"]["infracheck"]["host"] = "health.harbor.test"
    run = stack.program(config)
    assert STEP not in {r.name for r in run.resources}
    stack.set_git("f" * 40, drifted=["infracheck"])
    before = len(stack.patches())

    report = stack.up(run)

    # The step leaves the state; it has no delete, so nothing runs for it.
    assert STEP in report.deletes
    assert STEP not in report.ran()
    assert stack.patches()[before:] == []
