"""The GitOps tree's respellings and moves over real SSH, driven as the engine drives the provider.

A booted git server (tests/testbed/nodes.py `add_git_server`) serves bare repositories at
/srv/git over SSH with a pinned host key. The provider runs in the controller's namespace, as
the engine would: `diff` decides; a replacement is the new create, then the old delete with the
OLD stored outputs (create-before-delete), or the other way round; anything else is an update.
Each respelling of the server's repository must keep every file; each move must leave the new
tree committed and the old one removed.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from components.gitops import GitTreeProvider
from tests.testbed.conftest import booted_testbed
from tests.testbed.nodes import GIT_ADDRESS, Testbed, _keypair, call_in_netns

pytestmark = pytest.mark.testbed

provider = GitTreeProvider()
REPO = "/srv/git/cluster.git"
OTHER = "/srv/git/other.git"
FILES = {
    "cluster/README.md": "# the cluster\n",
    "cluster/apps/projects/infrastructure.yaml": "kind: AppProject\nmetadata: {name: infrastructure}\n",
    "cluster/apps/projects/applications.yaml": "kind: AppProject\nmetadata: {name: applications}\n",
    "cluster/apps/user/README.md": "# yours\n",
}
CREATE_ONLY = "cluster/apps/user/README.md"


class Server:
    def __init__(self, tb: Testbed) -> None:
        self.tb = tb
        self.key, public = _keypair()
        tb.ssh("git", "cat >>/root/.ssh/authorized_keys", input=f"{public} gitops-moves\n")

    def props(self, url: str, files: dict[str, str] | None = None, **overrides: Any) -> dict[str, Any]:
        path = overrides.get("path", "cluster")
        files = (
            files if files is not None else {name.replace("cluster/", f"{path}/", 1): v for name, v in FILES.items()}
        )
        base = {
            "repo_url": url,
            "branch": "main",
            "path": path,
            "files": files,
            "create_only": [name for name in files if name.endswith("user/README.md")],
            "credentials": {"ssh_private_key": self.key},
            "known_hosts": self.tb.git_known_hosts(),
            "overwrite_manual_changes": False,
            "author_name": "Space Harbor",
            "author_email": "space-harbor@localhost",
            "message_prefix": "space-harbor(testbed):",
        }
        return base | overrides

    def call(self, method: str, *args: Any) -> Any:
        return call_in_netns(self.tb.ctl, getattr(provider, method), *args)

    def up(self, old: dict[str, Any], new: dict[str, Any], *, delete_first: bool = False) -> dict[str, Any]:
        """One `pulumi up` of the tree from state `old` to inputs `new`: the outputs it leaves."""
        assert self.call("check", old, new).failures == []
        diff = self.call("diff", "id", old, new)
        if not diff.changes:
            return old
        if not diff.replaces:
            return self.call("update", "id", old, new).outs
        if delete_first:
            self.call("delete", "id", old)
            return self.call("create", new).outs
        created = self.call("create", new).outs
        self.call("delete", "id", old)
        return created

    def files(self, repo: str = REPO, branch: str = "main") -> list[str]:
        listing = self.tb.ssh("git", f"git -C {repo} ls-tree -r --name-only {branch} 2>/dev/null || true").stdout
        return sorted(name for name in listing.split() if not name.endswith("/.space-harbor-tree"))

    def reset(self) -> None:
        """Both repositories as the server starts them: one empty commit on main."""
        self.tb.ssh(
            "git",
            f"set -e; for repo in {REPO} {OTHER}; do "
            "rm -rf $repo; git init -q --bare --initial-branch=main $repo; done; "
            "tmp=$(mktemp -d); cd $tmp; git init -q --initial-branch=main; "
            "git -c user.name=testbed -c user.email=testbed@example.invalid commit -q --allow-empty -m initial; "
            f"git push -q {REPO} main; git push -q {OTHER} main; rm -rf $tmp",
        )


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    for tb in booted_testbed([], git=True):
        yield Server(tb)


SCP = f"root@{GIT_ADDRESS}:{REPO}"
RESPELLINGS = [
    f"ssh://root@{GIT_ADDRESS}{REPO}",
    f"ssh://root@{GIT_ADDRESS}:22{REPO}",
    f"{SCP}/",
    f"root@{GIT_ADDRESS}:{REPO.removesuffix('.git')}",
    f"ssh://root@{GIT_ADDRESS}{REPO.removesuffix('.git')}/",
]


@pytest.mark.parametrize("spelling", RESPELLINGS)
def test_a_respelled_repository_keeps_every_file(server: Server, spelling: str) -> None:
    server.reset()
    state = server.call("create", server.props(SCP)).outs
    files = dict(FILES, **{"cluster/README.md": "# respelled\n"})

    state = server.up(state, server.props(spelling, files))

    assert server.files() == sorted(FILES)
    assert server.tb.ssh("git", f"git -C {REPO} show main:cluster/README.md").stdout == "# respelled\n"
    assert state["repo_url"] == spelling
    # and back: nothing to move, nothing lost
    server.up(state, server.props(SCP))
    assert server.files() == sorted(FILES)


MOVES = {
    "repository": ({"repo_url": f"root@{GIT_ADDRESS}:{OTHER}"}, OTHER, "main", "cluster"),
    "branch": ({"branch": "production"}, REPO, "production", "cluster"),
    "folder": ({"path": "clusters/prod"}, REPO, "main", "clusters/prod"),
}


@pytest.mark.parametrize("delete_first", [False, True], ids=["create-then-delete", "delete-then-create"])
@pytest.mark.parametrize("kind", sorted(MOVES))
def test_a_move_commits_the_new_tree_and_removes_the_old_one(server: Server, kind: str, delete_first: bool) -> None:
    server.reset()
    old = server.call("create", server.props(SCP)).outs
    overrides, repo, branch, path = MOVES[kind]
    url = overrides.get("repo_url", SCP)
    new_props = server.props(url, **{k: v for k, v in overrides.items() if k != "repo_url"})

    new = server.up(old, new_props, delete_first=delete_first)

    moved = sorted(name.replace("cluster/", f"{path}/", 1) for name in FILES)
    assert [name for name in server.files(repo, branch) if name.startswith(f"{path}/")] == moved
    # the old tree is gone, but for the file written only once (it is the user's)
    assert [name for name in server.files() if name.startswith("cluster/")] == [CREATE_ONLY]
    assert (new["repo_url"], new["branch"], new["path"]) == (url, branch, path)


def test_a_replacement_in_place_keeps_every_file(server: Server) -> None:
    """`pulumi up --replace` of the tree: the new create, then the old delete with the old outputs."""
    server.reset()
    old = server.call("create", server.props(SCP)).outs
    files = dict(FILES, **{"cluster/README.md": "# replaced in place\n"})

    server.call("create", server.props(SCP, files))
    server.call("delete", "id", old)

    assert server.files() == sorted(FILES)
    assert server.tb.ssh("git", f"git -C {REPO} show main:cluster/README.md").stdout == "# replaced in place\n"
