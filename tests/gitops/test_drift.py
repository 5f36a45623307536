"""GitOps drift: a refresh (the provider's read) names owned files changed or removed in the
repository, the diff shows a change, and the update re-commits exactly those files.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from components.gitops import GitOpsError
from tests.gitops.test_provider import FILES, Human, assert_no_leak, at, commits, human, props, provider, remote
from tests.helpers import git

__all__ = ["human", "remote"]  # fixtures

PROJECTS = "cluster/apps/projects/applications.yaml"
INFRA = "cluster/apps/projects/infrastructure.yaml"


def changed_paths(remote: Path, rev: str) -> list[str]:
    return sorted(git("diff-tree", "--no-commit-id", "--name-only", "-r", rev, cwd=remote).splitlines())


def test_a_clean_repository_reads_clean_and_changes_nothing(remote: Path) -> None:
    created = provider.create(props(remote)).outs
    read = provider.read("id", created)
    assert read.outs["drift"] == {}
    assert read.outs["reachable"].startswith(f"read {remote} at ")
    assert provider.diff("id", read.outs, props(remote)).changes is False


def test_edited_and_removed_files_are_named_and_only_they_are_committed_back(remote: Path, human: Human) -> None:
    created = provider.create(props(remote)).outs
    human.commit({PROJECTS: "kind: AppProject # tweaked\n", INFRA: None}, "human: tweak and remove")
    human.commit({"cluster/apps/user/README.md": "# mine now\n", "elsewhere.txt": "foreign\n"}, "human: own files")

    read = provider.read("id", created)
    assert read.outs["drift"] == {
        INFRA: f"{INFRA}: removed from branch main",
        PROJECTS: read.outs["drift"][PROJECTS],
    }
    assert read.outs["drift"][PROJECTS].startswith(f"{PROJECTS}: changed on branch main (sha256 ")
    assert "tweaked" not in repr(read.outs["drift"])
    assert provider.diff("id", read.outs, props(remote)).changes is True
    # The refreshed inputs name them too: the next inputs lack `drift`, so a preview's diff shows it.
    assert read.inputs["drift"] == read.outs["drift"]
    assert {key: read.inputs[key] for key in props(remote)} == {key: created[key] for key in props(remote)}

    updated = provider.update("id", read.outs, props(remote)).outs
    head = commits(remote)[0]
    assert updated["commit"] == head
    assert changed_paths(remote, head) == sorted([PROJECTS, INFRA])
    assert at(remote, PROJECTS) == FILES[PROJECTS] and at(remote, INFRA) == FILES[INFRA]
    # What is not ours stays as the human left it: the create-only file and a foreign one.
    assert at(remote, "cluster/apps/user/README.md") == "# mine now\n"
    assert at(remote, "elsewhere.txt") == "foreign\n"
    assert "drift" not in updated
    again = provider.read("id", updated)
    assert again.outs["drift"] == {}
    assert provider.diff("id", again.outs, props(remote)).changes is False
    assert_no_leak(remote, repr(read.outs["drift"]), read.outs["reachable"])


def test_a_hand_change_after_the_refresh_is_still_refused(remote: Path, human: Human) -> None:
    created = provider.create(props(remote)).outs
    human.commit({PROJECTS: "kind: AppProject # tweaked\n"}, "human: tweak")
    read = provider.read("id", created)
    human.commit({INFRA: "kind: AppProject # later\n"}, "human: a later tweak, never shown in a preview")
    with pytest.raises(GitOpsError, match=f"changed by hand: {INFRA}"):
        provider.update("id", read.outs, props(remote))


def test_an_unreachable_repository_keeps_its_last_drift(remote: Path, tmp_path: Path) -> None:
    created = provider.create(props(remote)).outs
    stale = {**created, "drift": {PROJECTS: f"{PROJECTS}: removed from branch main"}}
    moved = {**stale, "repo_url": str(tmp_path / "gone.git")}
    read = provider.read("id", moved)
    assert read.outs["reachable"].startswith("unreachable: git ")
    assert read.outs["drift"] == stale["drift"]
    assert "MARKER" not in read.outs["reachable"]
