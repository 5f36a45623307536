"""The "sync now" step (gitops.syncOnApply) in the resource graph, under mocks.

The step's stdin carries the commit the GitOps tree landed as; the engine re-runs a Command's
update exactly when its stdin changes, so these tests pin what the stdin depends on. (The mocks
give the tree a commit that changes with its files, as a push does: tests/harness.py.)
"""

from __future__ import annotations

import copy
import re
from typing import Any

import pytest

from tests.conftest import GIT_KEY_MARKER, SSH_KEY_MARKER, base_config, etcd_config
from tests.harness import UNKNOWN, ProgramRun, Registered, _mock_commit, run_program
from tests.helpers import command_env

STEP = "argocd-sync"


def syncing(config: dict[str, Any], **gitops: Any) -> dict[str, Any]:
    config = copy.deepcopy(config)
    config["gitops"] |= {"syncOnApply": True, **gitops}
    return config


def tree(run: ProgramRun) -> Registered:
    return next(r for r in run.resources if r.type == "pulumi-python:dynamic:Resource" and "repo_url" in r.inputs)


@pytest.mark.parametrize("preview", [True, False], ids=["preview", "up"])
@pytest.mark.parametrize("gitops", [{}, {"syncOnApply": False}], ids=["default", "false"])
def test_no_step_unless_enabled(preview: bool, gitops: dict[str, Any]) -> None:
    config = base_config(agents=1)
    config["gitops"] |= gitops
    run = run_program(config, preview=preview)
    assert STEP not in {r.name for r in run.resources}
    assert not [c for c in run.commands() if "argocd-sync.sh" in str(c.inputs.get("stdin", ""))]


def test_the_step_runs_sync_on_the_first_server_after_the_commit_and_argo_cd() -> None:
    config = syncing(etcd_config())
    config["k3s"]["firstServer"] = "server-2"
    run = run_program(config)
    step = run.named(STEP)

    assert step.type == "command:remote:Command"
    assert step.urn.endswith("::command:remote:Command::argocd-sync"), step.urn  # a top-level identity
    assert step.inputs["create"] == step.inputs["update"] == "bash -s -- sync"
    assert "delete" not in step.inputs or step.inputs["delete"] in (None, "")
    server_2 = next(n for n in config["nodes"] if n["name"] == "server-2")
    assert step.inputs["connection"]["host"] == server_2["host"]

    # After the push, and after Argo CD's objects and the root Application exist.
    assert run.depends_on(step, tree(run))
    root = run.named("argocd-root-application")
    assert run.depends_on(step, root)
    controller = next(r for r in run.resources if r.name.endswith("argocd-application-controller"))
    assert run.depends_on(step, controller)
    # Gone with the cluster, like the Applications it writes.
    assert step.deleted_with == run.named("cluster-id").urn

    env = command_env(step)
    assert re.fullmatch(r"[0-9a-f]{40}", env["HARBOR_GITOPS_REVISION"])
    assert env["HARBOR_ARGOCD_NAMESPACE"] == root.inputs["metadata"]["namespace"]
    assert env["HARBOR_ROOT_APPLICATION"] == root.inputs["metadata"]["name"]
    assert env["HARBOR_CHILD_SELECTOR"] == (
        "app.kubernetes.io/part-of=space-harbor-platform,app.kubernetes.io/managed-by=space-harbor"
    )
    # Labels are not enough (a user's Application can carry them): the names of this stack's own.
    assert env["HARBOR_CHILD_APPLICATIONS"].splitlines() == ["infracheck", "sealed-secrets", "traefik"]
    assert env["HARBOR_SYNC_TIMEOUT"] == "300"
    assert "argocd-sync.sh" in step.inputs["stdin"]
    # Nothing secret travels with it.
    assert "stdin" not in step.secret_inputs
    assert SSH_KEY_MARKER not in step.public_text() and GIT_KEY_MARKER not in step.public_text()


def test_the_revision_is_the_commit_the_tree_landed_as() -> None:
    run = run_program(syncing(base_config(agents=1)))
    # The mocked push's commit, read back from the tree's outputs by the program.
    assert command_env(run.named(STEP))["HARBOR_GITOPS_REVISION"] == _mock_commit(tree(run).raw_inputs)


def test_the_step_changes_exactly_when_a_new_commit_lands() -> None:
    before = run_program(syncing(base_config(agents=1)))

    same_tree = syncing(base_config(agents=1))
    same_tree["nodes"][1]["labels"] = {"disk": "ssd"}  # a node's config.yaml changes, not the GitOps tree
    unchanged = run_program(same_tree)
    assert tree(unchanged).inputs["files"] == tree(before).inputs["files"]
    assert unchanged.named(STEP).inputs == before.named(STEP).inputs

    new_tree = syncing(base_config(agents=1))
    new_tree["components"]["sealedSecrets"] = {"enabled": False}  # one Application less in git
    changed = run_program(new_tree)
    assert tree(changed).inputs["files"] != tree(before).inputs["files"]
    old_env, new_env = command_env(before.named(STEP)), command_env(changed.named(STEP))
    assert new_env["HARBOR_GITOPS_REVISION"] != old_env["HARBOR_GITOPS_REVISION"]
    # The revision, and the platform's Applications that the tree lost: nothing else about it moves.
    moved = {"HARBOR_GITOPS_REVISION", "HARBOR_CHILD_APPLICATIONS"}
    assert {k: v for k, v in new_env.items() if k not in moved} == {k: v for k, v in old_env.items() if k not in moved}
    assert new_env["HARBOR_CHILD_APPLICATIONS"].splitlines() == ["infracheck", "traefik"]
    assert changed.named(STEP).inputs["connection"] == before.named(STEP).inputs["connection"]


def test_preview_knows_no_commit_and_so_runs_nothing_yet() -> None:
    run = run_program(syncing(base_config(agents=1)), preview=True)
    step = run.named(STEP)
    # Before the push there is no commit: the stdin is unknown, and pulumi-command runs nothing in
    # a preview anyway. (A step whose parameters are all known has its stdin known in a preview.)
    assert step.inputs["stdin"] == UNKNOWN
    assert run.named("cluster-departures").inputs["stdin"] != UNKNOWN
    assert run.depends_on(step, tree(run))


def test_the_timeout_reaches_the_step() -> None:
    run = run_program(syncing(base_config(agents=1), syncTimeoutSeconds=900))
    assert command_env(run.named(STEP))["HARBOR_SYNC_TIMEOUT"] == "900"
