"""The GitOps tree when its place changes, driven as the engine drives the provider.

The engine asks `diff`; a change it says to replace is create-before-delete: the new resource's
create, then (after the program) the old resource's delete with the OLD stored outputs. Any
other change is an update. A respelling of the same repository must be at most an update; a move
to another repository, branch or folder must leave the new tree committed and the old one
removed, in either order of create and delete, and a failure of either must leave what the next
`up` completes. Here against bare repositories reached by path; tests/testbed/test_gitops_moves.py
does the same over SSH.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from components.gitops import GitOpsError, GitTreeProvider, repository_location
from tests.gitops.test_provider import FILES, MARKER, Human, at, props, tree
from tests.helpers import git

provider = GitTreeProvider()
OWNED = sorted(name for name in FILES if name != "cluster/apps/user/README.md")


def engine_up(old: dict[str, Any], new: dict[str, Any], *, delete_first: bool = False) -> dict[str, Any]:
    """One `pulumi up` of the tree from state `old` to inputs `new`: the outputs it leaves in the state."""
    assert provider.check(old, new).failures == []
    diff = provider.diff("id", old, new)
    if not diff.changes:
        return old
    if not diff.replaces:
        return provider.update("id", old, new).outs
    if delete_first:
        provider.delete("id", old)
        return provider.create(new).outs
    created = provider.create(new).outs
    provider.delete("id", old)
    return created


def bare(path: Path) -> Path:
    git("init", "--quiet", "--bare", "--initial-branch=main", str(path), cwd=path.parent)
    return path


# --- which changes are moves ---------------------------------------------------------------------

SSH_KEYS = {"credentials": {"ssh_private_key": "k"}, "known_hosts": "git.example.org ssh-ed25519 AAAA"}
HTTPS_KEYS = {"credentials": {"username": "bot", "password": "p"}}
RESPELLINGS = [
    ("git@git.example.org:ops/cluster.git", "ssh://git@git.example.org/ops/cluster.git"),
    ("git@git.example.org:ops/cluster.git", "git@git.example.org:ops/cluster"),
    ("git@git.example.org:ops/cluster", "git@git.example.org:ops/cluster.git/"),
    ("ssh://git@git.example.org:22/ops/cluster.git", "git@Git.Example.org:ops/cluster.git"),
    ("https://git.example.org/ops/cluster.git", "git@git.example.org:ops/cluster.git"),
    ("https://git.example.org/ops/cluster/", "https://bot@git.example.org/ops/cluster.git"),
]


@pytest.mark.parametrize(("before", "after"), RESPELLINGS)
def test_a_respelled_repository_is_an_update_not_a_replacement(before: str, after: str) -> None:
    assert repository_location(before) == repository_location(after)

    def keys(url: str) -> dict[str, Any]:
        return HTTPS_KEYS if url.startswith("https") else SSH_KEYS

    old = props(Path("/srv/x"), repo_url=before, **keys(before)) | {"commit": "abc", "owned": {}, "created": []}
    result = provider.diff("id", old, props(Path("/srv/x"), repo_url=after, **keys(after)))
    assert result.changes is True
    assert result.replaces == []


def test_another_repository_branch_or_folder_is_a_replacement() -> None:
    old = props(Path("/srv/remote.git")) | {"commit": "abc", "owned": {}, "created": []}
    moves = {
        "repo_url": "/srv/other.git",
        "branch": "production",
        "path": "clusters/prod",
    }
    for key, value in moves.items():
        assert provider.diff("id", old, props(Path("/srv/remote.git"), **{key: value})).replaces == [key]
    for url in ("git@git.example.org:ops/other.git", "git@other.example.org:ops/cluster.git"):
        ssh_old = props(Path("/x"), repo_url="git@git.example.org:ops/cluster.git", **SSH_KEYS)
        ssh_new = props(Path("/x"), repo_url=url, **SSH_KEYS)
        assert provider.diff("id", ssh_old, ssh_new).replaces == ["repo_url"]
    # the folder written with a trailing slash is the same folder
    assert provider.diff("id", old, props(Path("/srv/remote.git"), path="cluster/")).replaces == []


# --- respellings against a real repository ---------------------------------------------------------


def test_a_respelled_local_repository_keeps_every_file(tmp_path: Path) -> None:
    remote = bare(tmp_path / "remote.git")
    state = provider.create(props(remote)).outs
    for spelling in (f"{remote}/", f"file://{remote}", str(remote)):
        files = dict(FILES, **{"cluster/README.md": f"# via {spelling}\n"})
        state = engine_up(state, props(remote, files, repo_url=spelling))
        assert tree(remote) == sorted(FILES), spelling
        assert at(remote, "cluster/README.md") == f"# via {spelling}\n"
        assert state["repo_url"] == spelling


# --- real moves -------------------------------------------------------------------------------------


def _moves(tmp_path: Path, remote: Path) -> dict[str, dict[str, Any]]:
    other = bare(tmp_path / "other.git")
    return {
        "repository": {"repo_url": str(other)},
        "branch": {"branch": "production"},
        "folder": {"path": "clusters/prod", "create_only": ["clusters/prod/apps/user/README.md"]},
    }


def _files_for(path: str) -> dict[str, str]:
    return {name.replace("cluster/", f"{path}/", 1): content for name, content in FILES.items()}


def tree_under(remote: Path, branch: str, path: str) -> list[str]:
    return [name for name in tree(remote, branch) if name.startswith(f"{path}/")]


def _where(remote: Path, move: dict[str, Any]) -> tuple[Path, str, str]:
    return Path(move.get("repo_url", remote)), move.get("branch", "main"), move.get("path", "cluster")


@pytest.mark.parametrize("delete_first", [False, True], ids=["create-then-delete", "delete-then-create"])
@pytest.mark.parametrize("kind", ["repository", "branch", "folder"])
def test_a_move_commits_the_new_tree_and_removes_the_old_one(tmp_path: Path, kind: str, delete_first: bool) -> None:
    remote = bare(tmp_path / "remote.git")
    human = Human(remote, tmp_path / "human")
    old = provider.create(props(remote)).outs
    human.commit({"cluster/apps/user/mine.yaml": "kind: Application\n", "notes.txt": "x\n"}, "human: own files")
    move = _moves(tmp_path, remote)[kind]
    target, branch, path = _where(remote, move)

    new = engine_up(old, props(remote, _files_for(path), **move), delete_first=delete_first)

    assert tree_under(target, branch, path) == sorted(_files_for(path))
    assert at(target, f"{path}/.space-harbor-tree", branch) is not None
    # the old tree is gone, the create-only file and the human's files stay
    same_branch = (target, branch) == (remote, "main")
    assert [name for name in tree(remote, marker=True) if not (same_branch and name.startswith(f"{path}/"))] == [
        "cluster/apps/user/README.md",
        "cluster/apps/user/mine.yaml",
        "notes.txt",
    ]
    assert new["repo_url"] == str(target) and new["branch"] == branch


@pytest.mark.parametrize("kind", ["repository", "branch", "folder"])
def test_a_move_whose_create_fails_changes_nothing_and_the_next_up_completes_it(tmp_path: Path, kind: str) -> None:
    remote = bare(tmp_path / "remote.git")
    old = provider.create(props(remote)).outs
    move = _moves(tmp_path, remote)[kind]
    target, branch, path = _where(remote, move)
    # the new place cannot be written yet: the repository is missing, or the remote refuses pushes
    hidden = _break(remote, target)

    with pytest.raises(GitOpsError):
        engine_up(old, props(remote, _files_for(path), **move))
    hidden()
    # a failed create leaves the old resource as it was, and its tree in place
    assert tree(remote) == sorted(FILES)

    new = engine_up(old, props(remote, _files_for(path), **move))
    assert tree_under(target, branch, path) == sorted(_files_for(path))
    assert tree_under(remote, "main", "cluster") == ["cluster/apps/user/README.md"]
    assert (new["repo_url"], new["branch"], new["path"]) == (str(target), branch, path)


@pytest.mark.parametrize("kind", ["repository", "branch", "folder"])
def test_a_move_whose_old_delete_fails_is_finished_by_the_next_up(tmp_path: Path, kind: str) -> None:
    remote = bare(tmp_path / "remote.git")
    old = provider.create(props(remote)).outs
    move = _moves(tmp_path, remote)[kind]
    target, branch, path = _where(remote, move)
    new_props = props(remote, _files_for(path), **move)

    new = provider.create(new_props).outs
    if kind == "repository":
        restore = _break(remote, remote)
        with pytest.raises(GitOpsError):
            provider.delete("id", old)
        restore()
    # the old resource stays pending delete: the next up runs the same delete, with the same outputs
    provider.delete("id", old)

    assert tree_under(target, branch, path) == sorted(_files_for(path))
    assert tree_under(remote, "main", "cluster") == ["cluster/apps/user/README.md"]
    # and the up after that changes nothing
    assert engine_up(new, new_props) is new


def _break(remote: Path, target: Path) -> Callable[[], None]:
    """Make `target` unwritable (moved away, or a hook that refuses pushes); returns the undo."""
    if target != remote:
        aside = target.with_suffix(".aside")
        shutil.move(target, aside)
        return lambda: shutil.move(aside, target)
    hook = target / "hooks" / "pre-receive"
    hook.write_text("#!/bin/sh\necho 'refused for the test' >&2\nexit 1\n")
    hook.chmod(0o755)
    return hook.unlink


# --- a replacement at the same place -----------------------------------------------------------------


def test_a_replacement_in_place_keeps_the_tree(tmp_path: Path) -> None:
    """`pulumi up --replace` of the tree: the new create, then the old delete with the old outputs."""
    remote = bare(tmp_path / "remote.git")
    old = provider.create(props(remote)).outs

    new = provider.create(props(remote)).outs
    provider.delete("id", old)

    assert tree(remote) == sorted(FILES)
    marker = at(remote, MARKER)
    assert marker is not None and new["tree"] in marker and old["tree"] not in marker
    # the new resource owns it: its own delete removes the tree, marker included
    provider.delete("id", new)
    assert tree(remote, marker=True) == ["cluster/apps/user/README.md"]


def test_an_unrecognised_spelling_of_the_same_repository_replaced_keeps_the_tree(tmp_path: Path) -> None:
    """A spelling the URL rules cannot tell is the same (here a symlink) is a replacement, and harmless."""
    remote = bare(tmp_path / "remote.git")
    link = tmp_path / "link.git"
    link.symlink_to(remote)
    old = provider.create(props(remote)).outs
    files = dict(FILES, **{"cluster/README.md": "# same repository, another name\n"})

    new = engine_up(old, props(remote, files, repo_url=str(link)), delete_first=False)

    assert tree(remote) == sorted(FILES)
    assert at(remote, "cluster/README.md") == "# same repository, another name\n"
    assert new["repo_url"] == str(link)


def test_a_move_away_from_a_hand_edited_tree_finishes(tmp_path: Path) -> None:
    """The old delete keeps the edited file instead of failing on every later up with its stored inputs."""
    remote = bare(tmp_path / "remote.git")
    human = Human(remote, tmp_path / "human")
    old = provider.create(props(remote)).outs
    human.commit({"cluster/README.md": "# my notes\n"}, "human: edit an owned file")
    other = bare(tmp_path / "other.git")

    engine_up(old, props(remote, repo_url=str(other)))

    assert tree(other) == sorted(FILES)
    assert tree(remote) == ["cluster/README.md", "cluster/apps/user/README.md"]
    assert at(remote, "cluster/README.md") == "# my notes\n"
