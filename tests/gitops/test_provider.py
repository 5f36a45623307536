"""GitTreeProvider against real git repositories: bare remotes in tmp_path, reached by path.

The provider is driven directly (check/create/diff/update/delete), as the engine would call it.
A second clone plays the humans and the other writers of the repo.
"""

from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path
from typing import Any

import pulumi
import pytest

from components.gitops import (
    MAX_PUSH_ATTEMPTS,
    GitOpsError,
    GitTreeProvider,
    Workspace,
    plan_changes,
    redact_url,
    sha256,
    ssh_command,
    transport_env,
    transport_of,
)
from tests.conftest import EXAMPLE_HOST_KEY
from tests.helpers import GIT_ENV, git

PASSWORD_MARKER = "MARKER-GIT-PASSWORD-7c41"
KEY_MARKER = "MARKER-GIT-SSH-KEY-e02d"


@pytest.fixture
def remote(tmp_path: Path) -> Path:
    path = tmp_path / "remote.git"
    git("init", "--quiet", "--bare", "--initial-branch=main", str(path), cwd=tmp_path)
    return path


class Human:
    """A clone of the remote where someone commits by hand."""

    def __init__(self, remote: Path, workdir: Path) -> None:
        self.remote = remote
        self.dir = workdir

    def sync(self) -> None:
        if not self.dir.exists():
            git("clone", "--quiet", str(self.remote), str(self.dir), cwd=self.dir.parent)
        git("fetch", "--quiet", "origin", cwd=self.dir)
        if git("ls-remote", "--heads", "origin", "main", cwd=self.dir):
            git("checkout", "--quiet", "-B", "main", "origin/main", cwd=self.dir)
        else:
            git("checkout", "--quiet", "--orphan", "main", cwd=self.dir)

    def commit(self, files: dict[str, str | None], message: str) -> str:
        self.sync()
        for name, content in files.items():
            target = self.dir / name
            if content is None:
                git("rm", "--quiet", name, cwd=self.dir)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(content)
            git("add", name, cwd=self.dir)
        git("commit", "--quiet", "-m", message, cwd=self.dir)
        git("push", "--quiet", "origin", "HEAD:refs/heads/main", cwd=self.dir)
        return git("rev-parse", "HEAD", cwd=self.dir)


@pytest.fixture
def human(remote: Path, tmp_path: Path) -> Human:
    return Human(remote, tmp_path / "human")


def at(remote: Path, path: str, rev: str = "main") -> str | None:
    result = subprocess.run(
        ["git", "show", f"{rev}:{path}"], cwd=remote, env={**os.environ, **GIT_ENV}, capture_output=True, text=True
    )
    return result.stdout if result.returncode == 0 else None


MARKER = "cluster/.space-harbor-tree"


def tree(remote: Path, rev: str = "main", *, marker: bool = False) -> list[str]:
    """The files at `rev`; without the provider's own marker file unless asked for (tests of it do)."""
    files = sorted(git("ls-tree", "-r", "--name-only", rev, cwd=remote).splitlines())
    return files if marker else [name for name in files if not name.endswith("/.space-harbor-tree")]


def commits(remote: Path) -> list[str]:
    out = git("rev-list", "main", cwd=remote) if git("branch", "--list", "main", cwd=remote) else ""
    return out.splitlines()


FILES = {
    "cluster/README.md": "# the cluster\n",
    "cluster/apps/projects/infrastructure.yaml": "kind: AppProject\nmetadata: {name: infrastructure}\n",
    "cluster/apps/projects/applications.yaml": "kind: AppProject\nmetadata: {name: applications}\n",
    "cluster/apps/user/README.md": "# yours\n",
}


def props(remote: Path, files: dict[str, str] | None = None, **overrides: Any) -> dict[str, Any]:
    base = {
        "repo_url": str(remote),
        "branch": "main",
        "path": "cluster",
        "files": dict(FILES if files is None else files),
        "create_only": ["cluster/apps/user/README.md"],
        # The local transport needs none, but they must stay out of everything all the same.
        "credentials": {"username": "bot", "password": PASSWORD_MARKER},
        "known_hosts": None,
        "overwrite_manual_changes": False,
        "author_name": "Space Harbor",
        "author_email": "space-harbor@localhost",
        "message_prefix": "space-harbor(test):",
    }
    return base | overrides


def assert_no_leak(remote: Path, *texts: str) -> None:
    history = git("log", "--all", "-p", "--format=%H%n%an <%ae>%n%B", cwd=remote)
    for text in (history, *texts):
        assert PASSWORD_MARKER not in text
        assert KEY_MARKER not in text


def public_outputs(outs: dict[str, Any]) -> str:
    """The outputs a reader sees: everything but `credentials`, which the component marks secret."""
    return repr({key: value for key, value in outs.items() if key != "credentials"})


provider = GitTreeProvider()


# --- create ------------------------------------------------------------------------------------


def test_create_on_an_empty_repo_makes_one_root_commit(remote: Path) -> None:
    result = provider.create(props(remote))

    assert commits(remote) == [result.outs["commit"]]
    assert tree(remote) == sorted(FILES)
    for name, content in FILES.items():
        assert at(remote, name) == content
    assert result.outs["owned"] == {n: sha256(c) for n, c in FILES.items() if n != "cluster/apps/user/README.md"}
    assert result.outs["created"] == ["cluster/apps/user/README.md"]
    assert result.outs["branch"] == "main"
    assert result.id == f"{remote}#main:cluster"
    message = git("log", "-1", "--format=%an <%ae>%n%B", cwd=remote)
    assert message.startswith("Space Harbor <space-harbor@localhost>\nspace-harbor(test): update cluster")
    assert "- write cluster/README.md" in message
    assert_no_leak(remote, public_outputs(result.outs), result.id)


def test_create_on_a_new_branch_keeps_the_other_branches(remote: Path, human: Human) -> None:
    start = human.commit({"docs/hello.md": "hi\n"}, "human: start")

    result = provider.create(props(remote, branch="gitops"))

    assert git("rev-parse", "main", cwd=remote) == start
    assert git("rev-list", "gitops", cwd=remote).splitlines() == [result.outs["commit"]]
    assert tree(remote, "gitops") == sorted(FILES)


def test_create_next_to_foreign_files_touches_none_of_them(remote: Path, human: Human) -> None:
    foreign = {"docs/hello.md": "hi\n", "cluster/apps/user/mine.yaml": "kind: Application\n"}
    start = human.commit(foreign, "human: start")

    result = provider.create(props(remote))

    assert git("rev-list", "--count", "main", cwd=remote) == "2"
    assert git("rev-parse", f"{result.outs['commit']}^", cwd=remote) == start
    assert tree(remote) == sorted([*FILES, *foreign])
    assert at(remote, "cluster/apps/user/mine.yaml") == "kind: Application\n"


# --- update ------------------------------------------------------------------------------------


def test_unchanged_tree_makes_no_commit(remote: Path) -> None:
    created = provider.create(props(remote))

    again = provider.update("id", created.outs, props(remote))

    assert commits(remote) == [created.outs["commit"]]
    assert again.outs["commit"] == created.outs["commit"]
    assert again.outs["owned"] == created.outs["owned"]


def test_update_is_one_commit_removes_dropped_files_and_keeps_foreign_ones(remote: Path, human: Human) -> None:
    created = provider.create(props(remote))
    human.commit({"cluster/apps/user/mine.yaml": "kind: Application\n", "notes.txt": "x\n"}, "human: add")
    files = dict(FILES)
    files["cluster/README.md"] = "# the cluster, v2\n"
    del files["cluster/apps/projects/applications.yaml"]
    files["cluster/apps/projects/extra.yaml"] = "kind: AppProject\n"

    updated = provider.update("id", created.outs, props(remote, files))

    history = commits(remote)
    assert len(history) == 3
    assert history[0] == updated.outs["commit"]
    assert at(remote, "cluster/README.md") == "# the cluster, v2\n"
    assert at(remote, "cluster/apps/projects/applications.yaml") is None
    assert at(remote, "cluster/apps/projects/extra.yaml") == "kind: AppProject\n"
    assert at(remote, "cluster/apps/user/mine.yaml") == "kind: Application\n"
    assert at(remote, "notes.txt") == "x\n"
    changed = git("diff", "--name-status", f"{history[1]}..{history[0]}", cwd=remote).splitlines()
    assert sorted(changed) == [
        "A\tcluster/apps/projects/extra.yaml",
        "D\tcluster/apps/projects/applications.yaml",
        "M\tcluster/.space-harbor-tree",  # the provider's record of what it owns
        "M\tcluster/README.md",
    ]
    assert "cluster/apps/projects/applications.yaml" not in updated.outs["owned"]
    assert_no_leak(remote, public_outputs(updated.outs))


def test_dropped_file_that_is_already_gone_is_no_commit(remote: Path, human: Human) -> None:
    created = provider.create(props(remote))
    human.commit({"cluster/apps/projects/applications.yaml": None}, "human: remove")
    files = {k: v for k, v in FILES.items() if k != "cluster/apps/projects/applications.yaml"}

    updated = provider.update("id", created.outs, props(remote, files))

    assert len(commits(remote)) == 2
    assert updated.outs["commit"] == commits(remote)[0]


def test_create_only_file_is_never_rewritten(remote: Path, human: Human) -> None:
    created = provider.create(props(remote))
    human.commit({"cluster/apps/user/README.md": "# my own notes\n"}, "human: my readme")
    files = dict(FILES, **{"cluster/apps/user/README.md": "# a newer template\n"})

    updated = provider.update("id", created.outs, props(remote, files))
    assert at(remote, "cluster/apps/user/README.md") == "# my own notes\n"
    assert len(commits(remote)) == 2
    assert updated.outs["commit"] == commits(remote)[0]

    human.commit({"cluster/apps/user/README.md": None}, "human: no readme")
    again = provider.update("id", updated.outs, props(remote, files))
    assert at(remote, "cluster/apps/user/README.md") is None
    assert again.outs["created"] == ["cluster/apps/user/README.md"]


def test_remote_that_moved_is_rebased_onto_never_forced(remote: Path, human: Human, monkeypatch) -> None:
    created = provider.create(props(remote))
    files = dict(FILES, **{"cluster/README.md": "# v2\n"})
    # Someone pushes between the provider's fetch and its push: the first push must be rejected.
    real_fetch = Workspace.fetch
    moved: list[str] = []

    def fetch_then_someone_pushes(self: Workspace) -> str | None:
        base = real_fetch(self)
        if not moved:
            moved.append(human.commit({"docs/other.md": "unrelated\n"}, "human: unrelated"))
        return base

    monkeypatch.setattr(Workspace, "fetch", fetch_then_someone_pushes)
    pushes: list[tuple[str, ...]] = []
    real_run = Workspace.run

    def recording_run(self: Workspace, *args: str, **kwargs: Any) -> str:
        if args[0] == "push":
            pushes.append(args)
        return real_run(self, *args, **kwargs)

    monkeypatch.setattr(Workspace, "run", recording_run)

    updated = provider.update("id", created.outs, props(remote, files))

    history = commits(remote)
    assert history[0] == updated.outs["commit"]
    assert len(history) == 3
    # the other writer's commit is an ancestor of ours; nothing was forced
    git("merge-base", "--is-ancestor", moved[0], updated.outs["commit"], cwd=remote)
    assert git("rev-parse", f"{updated.outs['commit']}^", cwd=remote) == moved[0]
    assert at(remote, "docs/other.md") == "unrelated\n"
    assert at(remote, "cluster/README.md") == "# v2\n"
    assert len(pushes) == 2
    for push in pushes:
        assert not any(arg.startswith(("-f", "--force")) or arg.startswith("+") for arg in push)


def test_remote_that_never_stops_moving_gives_up(remote: Path, human: Human, monkeypatch) -> None:
    created = provider.create(props(remote))
    real_fetch = Workspace.fetch
    counter = iter(range(100))

    def fetch_then_someone_pushes(self: Workspace) -> str | None:
        base = real_fetch(self)
        human.commit({"docs/other.md": f"{next(counter)}\n"}, "human: busy")
        return base

    monkeypatch.setattr(Workspace, "fetch", fetch_then_someone_pushes)

    with pytest.raises(GitOpsError, match=f"moved during each of {MAX_PUSH_ATTEMPTS} attempts"):
        provider.update("id", created.outs, props(remote, dict(FILES, **{"cluster/README.md": "# v2\n"})))
    assert at(remote, "cluster/README.md") == FILES["cluster/README.md"]


# --- hand edits --------------------------------------------------------------------------------


def test_hand_edited_owned_file_is_refused_then_overwritten_on_request(remote: Path, human: Human) -> None:
    created = provider.create(props(remote))
    human.commit({"cluster/apps/projects/applications.yaml": "kind: AppProject # tweaked\n"}, "human: tweak")
    files = dict(FILES, **{"cluster/apps/projects/applications.yaml": "kind: AppProject\nspec: {}\n"})

    with pytest.raises(GitOpsError) as refused:
        provider.update("id", created.outs, props(remote, files))
    message = str(refused.value)
    assert "changed by hand: cluster/apps/projects/applications.yaml" in message
    assert "overwriteManualChanges" in message
    assert at(remote, "cluster/apps/projects/applications.yaml") == "kind: AppProject # tweaked\n"

    accepted = provider.update("id", created.outs, props(remote, files, overwrite_manual_changes=True))

    assert at(remote, "cluster/apps/projects/applications.yaml") == "kind: AppProject\nspec: {}\n"
    assert accepted.outs["commit"] == commits(remote)[0]
    assert_no_leak(remote, message)


def test_hand_edit_that_matches_the_new_content_is_fine(remote: Path, human: Human) -> None:
    created = provider.create(props(remote))
    files = dict(FILES, **{"cluster/README.md": "# v2\n"})
    human.commit({"cluster/README.md": "# v2\n"}, "human: got there first")

    updated = provider.update("id", created.outs, props(remote, files))

    assert len(commits(remote)) == 2
    assert updated.outs["owned"]["cluster/README.md"] == sha256("# v2\n")


def test_unchanged_inputs_do_not_refuse_an_untouched_file_but_a_new_file_over_a_foreign_one_is(
    remote: Path, human: Human
) -> None:
    human.commit({"cluster/README.md": "# written by hand before Space Harbor\n"}, "human: readme")

    with pytest.raises(GitOpsError, match=r"changed by hand: cluster/README\.md"):
        provider.create(props(remote))
    assert tree(remote) == ["cluster/README.md"]

    result = provider.create(props(remote, overwrite_manual_changes=True))
    assert at(remote, "cluster/README.md") == FILES["cluster/README.md"]
    assert result.outs["commit"] == commits(remote)[0]


# --- delete ------------------------------------------------------------------------------------


def test_delete_commits_the_removal_of_owned_files_only(remote: Path, human: Human) -> None:
    created = provider.create(props(remote))
    human.commit({"cluster/apps/user/mine.yaml": "kind: Application\n"}, "human: app")

    provider.delete("id", created.outs)

    assert tree(remote) == ["cluster/apps/user/README.md", "cluster/apps/user/mine.yaml"]
    assert len(commits(remote)) == 3
    message = git("log", "-1", "--format=%B", cwd=remote)
    assert message.startswith("space-harbor(test): remove cluster")
    assert "- remove cluster/README.md" in message
    assert_no_leak(remote)


def test_delete_keeps_a_hand_edited_file_and_removes_the_others(remote: Path, human: Human) -> None:
    """Refusing would leave a delete that fails on every later up: its stored inputs never change."""
    created = provider.create(props(remote))
    human.commit({"cluster/README.md": "# precious notes\n"}, "human: notes")

    provider.delete("id", created.outs)

    assert at(remote, "cluster/README.md") == "# precious notes\n"
    assert tree(remote, marker=True) == ["cluster/README.md", "cluster/apps/user/README.md"]


def test_delete_when_everything_is_gone_already_makes_no_commit(remote: Path, human: Human) -> None:
    created = provider.create(props(remote))
    owned = {name: None for name in [*created.outs["owned"], MARKER]}
    human.commit(owned, "human: cleaned up")

    provider.delete("id", created.outs)

    assert len(commits(remote)) == 2


# --- diff and check ----------------------------------------------------------------------------


def test_diff_names_changes_and_replaces_on_location() -> None:
    old = props(Path("/srv/remote.git"))
    old |= {"commit": "abc", "owned": {}, "created": []}
    assert provider.diff("id", old, props(Path("/srv/remote.git"))).changes is False

    files = dict(FILES, **{"cluster/README.md": "# v2\n"})
    result = provider.diff("id", old, props(Path("/srv/remote.git"), files))
    assert result.changes is True
    assert result.replaces == []

    for key, value in (("path", "platform"), ("branch", "gitops"), ("repo_url", "/srv/other.git")):
        result = provider.diff("id", old, props(Path("/srv/remote.git"), **{key: value}))
        assert result.changes is True
        assert result.replaces == [key]

    rotated = props(Path("/srv/remote.git"), credentials={"username": "bot", "password": "new"})
    assert provider.diff("id", old, rotated).replaces == []
    assert provider.diff("id", old, rotated).changes is True


@pytest.mark.parametrize(
    ("overrides", "key", "reason"),
    [
        ({"files": {"elsewhere/x.yaml": "a"}}, "files", "is not a file inside 'cluster'"),
        ({"files": {"cluster/../x.yaml": "a"}}, "files", "is not a file inside"),
        ({"files": {"cluster/.git/config": "a"}}, "files", "is not a file inside"),
        ({"path": "../up"}, "path", "must be a relative folder"),
        ({"create_only": ["cluster/nope.md"]}, "create_only", "not in files"),
        (
            {"repo_url": "git@git.example.org:ops/cluster.git", "credentials": {"ssh_private_key": "k"}},
            "known_hosts",
            "is required for the SSH URL git@git.example.org:ops/cluster.git",
        ),
        ({"repo_url": "git@git.example.org:ops/cluster.git"}, "credentials", "needs ssh_private_key"),
        ({"repo_url": "https://git.example.org/ops/c.git", "credentials": {}}, "credentials", "username and password"),
        (
            {"repo_url": f"https://bot:{PASSWORD_MARKER}@git.example.org/ops/c.git"},
            "repo_url",
            "must not carry a password",
        ),
    ],
)
def test_check_refuses_inputs_that_cannot_work(overrides: dict[str, Any], key: str, reason: str) -> None:
    result = provider.check({}, props(Path("/srv/remote.git"), **overrides))

    found = [(failure.property, failure.reason) for failure in result.failures]
    assert any(prop == key and reason in why for prop, why in found), found
    assert PASSWORD_MARKER not in repr(found)


def test_check_accepts_the_test_inputs() -> None:
    assert provider.check({}, props(Path("/srv/remote.git"))).failures == []


# --- transport and secrets ---------------------------------------------------------------------


def test_transport_of_reads_urls_like_git() -> None:
    assert transport_of("git@github.com:org/repo.git") == "ssh"
    assert transport_of("ssh://git@host:2222/org/repo.git") == "ssh"
    assert transport_of("https://host/org/repo.git") == "https"
    assert transport_of("http://host/org/repo.git") == "https"
    assert transport_of("/srv/git/repo.git") == "local"
    assert transport_of("file:///srv/git/repo.git") == "local"
    assert transport_of("./relative/dir:with-colon") == "local"
    with pytest.raises(ValueError, match="unsupported"):
        transport_of("ftp://host/repo")


def test_ssh_command_pins_the_key_and_the_host_key() -> None:
    command = ssh_command("/tmp/a dir/id_key", "/tmp/a dir/known_hosts")
    argv = shlex.split(command)

    assert argv[0] == "ssh"
    assert argv[argv.index("-i") + 1] == "/tmp/a dir/id_key"
    options = [argv[i + 1] for i, arg in enumerate(argv) if arg == "-o"]
    assert "IdentitiesOnly=yes" in options
    assert "StrictHostKeyChecking=yes" in options
    assert "UserKnownHostsFile=/tmp/a dir/known_hosts" in options
    assert "GlobalKnownHostsFile=/dev/null" in options
    assert "BatchMode=yes" in options


def test_transport_env_isolates_git_and_keeps_secrets_out_of_commands() -> None:
    ssh = transport_env("ssh", key_file="/k", known_hosts_file="/h")
    assert ssh["GIT_SSH_COMMAND"] == ssh_command("/k", "/h")
    assert ssh["GIT_CONFIG_GLOBAL"] == os.devnull
    assert ssh["GIT_CONFIG_NOSYSTEM"] == "1"
    assert ssh["GIT_TERMINAL_PROMPT"] == "0"

    https = transport_env(
        "https", askpass="/askpass.sh", username="bot", password=PASSWORD_MARKER, origin="https://git.example.org"
    )
    assert https["GIT_ASKPASS"] == "/askpass.sh"
    assert https["HARBOR_GIT_PASSWORD"] == PASSWORD_MARKER
    assert all(PASSWORD_MARKER not in value for key, value in https.items() if key != "HARBOR_GIT_PASSWORD")
    assert "GIT_SSH_COMMAND" not in https

    with pytest.raises(ValueError, match="known_hosts"):
        transport_env("ssh", key_file="/k")


def test_ssh_workspace_writes_the_key_private_and_removes_it(tmp_path: Path) -> None:
    from components.gitops import Spec

    spec = Spec.from_props(
        props(
            tmp_path,
            repo_url="git@git.example.org:ops/cluster.git",
            credentials={"ssh_private_key": f"-----BEGIN KEY-----\n{KEY_MARKER}\n-----END KEY-----"},
            known_hosts=f"git.example.org {EXAMPLE_HOST_KEY}",
        )
    )
    workspace = Workspace(spec)
    try:
        env = workspace.repo.git.environment()
        argv = shlex.split(env["GIT_SSH_COMMAND"])
        key_file = Path(argv[argv.index("-i") + 1])
        assert key_file.read_text().endswith("-----END KEY-----\n")
        assert (key_file.stat().st_mode & 0o777) == 0o600
        assert (workspace.dir.stat().st_mode & 0o777) == 0o700
        assert all(KEY_MARKER not in value for value in env.values())
        assert workspace.scrub(f"Load key {key_file}: {KEY_MARKER}") == "Load key ***/id_key: ***"
    finally:
        workspace.close()
    assert not key_file.exists()


def test_errors_name_the_repo_without_its_secrets(tmp_path: Path) -> None:
    with pytest.raises(GitOpsError) as failed:
        provider.create(props(tmp_path / "no-such.git"))
    message = str(failed.value)
    assert message.startswith(f"git ls-remote failed for {tmp_path / 'no-such.git'} (exit 128)")
    assert "does not appear to be a git repository" in message
    assert PASSWORD_MARKER not in message
    # the GitCommandError (command line, full stderr) is not chained
    assert failed.value.__cause__ is None and failed.value.__suppress_context__


def test_https_errors_carry_neither_password_nor_work_paths(tmp_path: Path) -> None:
    # 127.0.0.1:9 refuses the connection: git fails before it could use the askpass helper.
    url = "https://127.0.0.1:9/ops/cluster.git"
    with pytest.raises(GitOpsError) as failed:
        provider.create(props(tmp_path, repo_url=url))
    message = str(failed.value)
    assert message.startswith(f"git ls-remote failed for {url}")
    assert PASSWORD_MARKER not in message
    assert "space-harbor-git-" not in message


def test_redact_url_drops_passwords_only() -> None:
    assert redact_url("https://bot:s3cret@host/r.git") == "https://bot:***@host/r.git"
    assert redact_url("ssh://git@host/r.git") == "ssh://git@host/r.git"
    assert redact_url("see https://a:b@h/x and https://c:d@h/y") == "see https://a:***@h/x and https://c:***@h/y"


# --- the rules, as a pure function -------------------------------------------------------------


def test_plan_rules() -> None:
    a, b = sha256("a"), sha256("b")
    desired = {"c/own": "a", "c/new": "b", "c/once": "x"}
    once = frozenset({"c/once"})

    fresh = plan_changes({"c/own": None, "c/new": None, "c/once": None}, desired, once, {}, frozenset())
    assert set(fresh.writes) == {"c/own", "c/new", "c/once"}
    assert fresh.manual == []
    assert fresh.owned == {"c/own": a, "c/new": b}

    steady = plan_changes({"c/own": a, "c/new": b, "c/once": sha256("edited")}, desired, once, fresh.owned, once)
    assert steady.writes == {} and steady.removals == [] and steady.manual == []

    dropped = plan_changes({"c/own": a, "c/old": b}, {"c/own": "a"}, frozenset(), {"c/own": a, "c/old": b}, once)
    assert dropped.removals == ["c/old"] and dropped.manual == []

    edited_then_dropped = plan_changes(
        {"c/own": a, "c/old": sha256("hand")}, {"c/own": "a"}, frozenset(), {"c/own": a, "c/old": b}, once
    )
    assert edited_then_dropped.manual == ["c/old"]

    deleted_by_hand = plan_changes({"c/own": None}, {"c/own": "b"}, frozenset(), {"c/own": a}, frozenset())
    assert deleted_by_hand.manual == ["c/own"]


# --- the component under Pulumi mocks ----------------------------------------------------------


class _Mocks(pulumi.runtime.Mocks):
    def __init__(self) -> None:
        self.registered: list[pulumi.runtime.MockResourceArgs] = []

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict[str, Any]]:
        self.registered.append(args)
        outputs = dict(args.inputs)
        if args.typ == "pulumi-python:dynamic:Resource":
            outputs |= {"commit": "0" * 40, "owned": {"cluster/README.md": sha256("x")}, "created": []}
        return f"{args.name}-id", outputs

    def call(self, args: pulumi.runtime.MockCallArgs) -> dict[str, Any]:
        return {}


def test_component_is_constructible_under_mocks_with_secret_credentials() -> None:
    from components.config import load_config
    from components.gitops import GitOpsRepository, tree_inputs
    from tests.conftest import GIT_KEY_MARKER, base_config

    config = load_config(base_config())
    mocks = _Mocks()
    pulumi.runtime.set_mocks(mocks, project="space-harbor", stack="test", preview=False)
    component = GitOpsRepository("gitops", config)

    @pulumi.runtime.test
    def check() -> pulumi.Output:
        def verify(values: list[Any]) -> None:
            commit, files, secret, credentials = values
            assert commit == "0" * 40
            assert files == {"cluster/README.md": sha256("x")}
            assert secret is True
            assert credentials == {"ssh_private_key": config.gitops.ssh_private_key.get_secret_value()}
            types = {(args.typ, args.name) for args in mocks.registered}
            assert ("space-harbor:index:GitOpsRepository", "gitops") in types
            assert ("pulumi-python:dynamic:Resource", "gitops-tree") in types
            tree = next(args for args in mocks.registered if args.name == "gitops-tree")
            assert tree.inputs["files"] == tree_inputs(config, "test")["files"]
            assert tree.inputs["message_prefix"] == "space-harbor(test):"
            public = {k: v for k, v in tree.inputs.items() if k not in ("credentials", "__provider")}
            assert GIT_KEY_MARKER not in repr(public)

        return pulumi.Output.all(
            component.commit,
            component.files,
            pulumi.Output.from_input(component.tree.credentials).is_secret(),
            component.tree.credentials,
        ).apply(verify)

    check()


def test_tree_inputs_for_https() -> None:
    from components.config import load_config
    from components.gitops import tree_inputs
    from tests.conftest import base_config

    raw = base_config()
    raw["gitops"] = {"repoUrl": "https://git.example.org/ops/c.git", "username": "bot", "password": PASSWORD_MARKER}
    inputs = tree_inputs(load_config(raw), "prod")
    assert inputs["credentials"] == {"username": "bot", "password": PASSWORD_MARKER}
    assert inputs["known_hosts"] is None
    assert inputs["create_only"] == ["cluster/apps/user/README.md"]
    assert provider.check({}, inputs).failures == []


# --- HTTPS credentials, end to end: git's smart HTTP with basic auth on 127.0.0.1 ---------------

HTTP_BACKEND = Path("/usr/lib/git-core/git-http-backend")


class _GitHttp:
    """`git http-backend` behind a WSGI server that demands basic auth; records what it saw."""

    def __init__(self, root: Path, username: str, password: str) -> None:
        import base64
        import threading
        from wsgiref.simple_server import WSGIRequestHandler, make_server

        self.root = root
        self.expected = "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()
        self.seen_paths: list[str] = []
        self.refused = 0

        class Quiet(WSGIRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

        self.server = make_server("127.0.0.1", 0, self.app, handler_class=Quiet)
        self.url = f"http://127.0.0.1:{self.server.server_port}/remote.git"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def app(self, environ: dict[str, Any], start_response: Any) -> list[bytes]:
        self.seen_paths.append(environ.get("PATH_INFO", "") + "?" + environ.get("QUERY_STRING", ""))
        if environ.get("HTTP_AUTHORIZATION") != self.expected:
            self.refused += 1
            start_response("401 Unauthorized", [("WWW-Authenticate", 'Basic realm="git"')])
            return [b"auth required\n"]
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length) if length else b""
        cgi_env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "GIT_PROJECT_ROOT": str(self.root),
            "GIT_HTTP_EXPORT_ALL": "1",
            "REMOTE_USER": "bot",
            "REQUEST_METHOD": environ["REQUEST_METHOD"],
            "PATH_INFO": environ.get("PATH_INFO", ""),
            "QUERY_STRING": environ.get("QUERY_STRING", ""),
            "CONTENT_TYPE": environ.get("CONTENT_TYPE", ""),
            "CONTENT_LENGTH": str(len(body)),
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_CONFIG_GLOBAL": os.devnull,
        }
        if environ.get("HTTP_CONTENT_ENCODING"):
            cgi_env["HTTP_CONTENT_ENCODING"] = environ["HTTP_CONTENT_ENCODING"]
        out = subprocess.run([str(HTTP_BACKEND)], input=body, env=cgi_env, capture_output=True, check=True).stdout
        head, _, payload = out.partition(b"\r\n\r\n")
        headers = [tuple(line.split(": ", 1)) for line in head.decode().split("\r\n") if ": " in line]
        status = next((value for key, value in headers if key.lower() == "status"), "200 OK")
        start_response(status, [(k, v) for k, v in headers if k.lower() != "status"])
        return [payload]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.skipif(not HTTP_BACKEND.exists(), reason="git http-backend is not installed")
def test_https_transport_hands_the_password_over_askpass_only(remote: Path, monkeypatch) -> None:
    git("config", "http.receivepack", "true", cwd=remote)
    server = _GitHttp(remote.parent, "bot", PASSWORD_MARKER)
    commands: list[list[str]] = []
    real_execute = __import__("git").cmd.Git.execute

    def recording_execute(self: Any, command: Any, *args: Any, **kwargs: Any) -> Any:
        commands.append([str(part) for part in command])
        return real_execute(self, command, *args, **kwargs)

    monkeypatch.setattr("git.cmd.Git.execute", recording_execute)
    try:
        wrong = props(remote, repo_url=server.url, credentials={"username": "bot", "password": "wrong"})
        with pytest.raises(GitOpsError, match=r"Authentication failed|401|could not read"):
            provider.create(wrong)
        assert server.refused >= 1

        result = provider.create(props(remote, repo_url=server.url))
    finally:
        server.close()

    assert tree(remote) == sorted(FILES)
    assert result.outs["commit"] == commits(remote)[0]
    assert any("git-receive-pack" in path for path in server.seen_paths)
    assert commands and all(PASSWORD_MARKER not in part for command in commands for part in command)
    assert_no_leak(remote, public_outputs(result.outs), result.id)


def test_provider_pickles_by_reference() -> None:
    """The engine stores the pickled provider in state: it must be a reference, not code or data."""
    import base64

    import dill
    from pulumi.dynamic.dynamic import serialize_provider

    payload = base64.b64decode(serialize_provider(GitTreeProvider()))
    assert b"components.gitops" in payload and b"GitTreeProvider" in payload
    assert len(payload) < 512
    assert isinstance(dill.loads(payload), GitTreeProvider)  # noqa: S301 (our own payload)
