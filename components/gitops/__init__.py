"""GitOps commit: the app-of-apps tree under `gitops.path`, committed and pushed by a dynamic provider.

`GitTreeProvider` (a Pulumi dynamic provider over GitPython) keeps a set of files in one folder of
one branch equal to its `files` input:

- It works in a throwaway bare repository: fetch the branch (an empty repo or a missing branch is
  fine: the first commit is a root commit), build the new tree in a private index, commit only
  when the tree changed, push without force. A rejected push whose cause is a moved remote is
  rebased: the change is replayed on the new tip (the checks below run again) and pushed again,
  up to `MAX_PUSH_ATTEMPTS` times.
- It never touches a path outside its own list, and every path must lie inside `path`.
- It records the sha256 of every file it wrote (`owned`). A file whose content in the repo is
  neither what it recorded nor what it is about to write was changed by hand: the run stops and
  names the files, unless `overwrite_manual_changes` is true. A file it has never written that
  already exists with other content counts the same way.
- Paths in `create_only` are written when missing, once, and never rewritten or removed.
- Delete commits the removal of the files it owns (never the create-only ones, nor one edited by
  hand: that one is left as it was written) and pushes.
- Transport: SSH with the key in a 0600 file, `StrictHostKeyChecking=yes` and only the given
  known_hosts (there is no trust-on-first-use: without `known_hosts` an SSH URL is refused);
  HTTPS with username and password handed to git by a GIT_ASKPASS script from environment
  variables, never in the URL or on a command line. Global and system git config are ignored.
- Credentials are never in commit messages or errors (git's messages are scrubbed). They stay in
  the state as the `credentials` output, which the component marks secret, because `pulumi
  destroy` has nothing but the state to push the removal with.

The package creates nothing at import: Pulumi pickles the provider by reference, as
`components.gitops.GitTreeProvider`, into every stack's state, and `pulumi destroy` loads it from
there. The provider class therefore lives here, at that path; the pure plan is
components/gitops/plan.py, the git workspace and transport components/gitops/workspace.py.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pulumi
import pulumi.dynamic

from components.config import HarborConfig
from components.gitops.drift import drifted_paths, read_inputs, read_tree
from components.gitops.plan import (
    DEFAULT_AUTHOR,
    INPUT_KEYS,
    GitOpsError,
    Plan,
    Spec,
    is_unknown,
    plain,
    plan_changes,
    redact_url,
    replaced_keys,
    repository_location,
    sha256,
    transport_of,
    validate,
)
from components.gitops.workspace import (
    MAX_PUSH_ATTEMPTS,
    Workspace,
    ssh_command,
    sync_tree,
    transport_env,
    workspace,
)
from components.render.gitops import create_only_paths, known_hosts_text, render_tree

__all__ = [
    "MAX_PUSH_ATTEMPTS",
    "GitOpsError",
    "GitOpsRepository",
    "GitTree",
    "GitTreeProvider",
    "Plan",
    "Spec",
    "Workspace",
    "plan_changes",
    "redact_url",
    "repository_location",
    "sha256",
    "ssh_command",
    "sync_tree",
    "transport_env",
    "transport_of",
    "tree_inputs",
    "validate",
    "workspace",
]


def resource_id(props: Mapping[str, Any]) -> str:
    return f"{redact_url(str(props['repo_url']))}#{props['branch']}:{str(props['path']).strip('/')}"


class GitTreeProvider(pulumi.dynamic.ResourceProvider):
    """Dynamic provider: the files of one folder of one branch. Stateless; all state is in props."""

    def check(self, _olds: dict[str, Any], news: dict[str, Any]) -> pulumi.dynamic.CheckResult:
        failures = [pulumi.dynamic.CheckFailure(key, why) for key, why in validate(plain(news))]
        return pulumi.dynamic.CheckResult(news, failures)

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> pulumi.dynamic.DiffResult:
        olds, news = plain(olds), plain(news)
        changed = [key for key in INPUT_KEYS if is_unknown(news.get(key)) or olds.get(key) != news.get(key)]
        # Another repository, branch or folder is a replacement: the new tree is created, then the
        # old one's delete removes it (create-before-delete). The same place spelled otherwise
        # (https or ssh, `.git` or not) is an update that writes with the new URL.
        replaces = replaced_keys(olds, news, changed)
        # Owned files a refresh found changed by hand are a change too: the update puts them back.
        drifted = bool(drifted_paths(olds))
        return pulumi.dynamic.DiffResult(
            changes=bool(changed) or drifted, replaces=replaces, delete_before_replace=False
        )

    def create(self, props: dict[str, Any]) -> pulumi.dynamic.CreateResult:
        outs = sync_tree(props, None)
        return pulumi.dynamic.CreateResult(resource_id(props), outs)

    def update(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> pulumi.dynamic.UpdateResult:
        return pulumi.dynamic.UpdateResult(sync_tree(news, olds, repairs=drifted_paths(olds)))

    def read(self, id_: str, props: dict[str, Any]) -> pulumi.dynamic.ReadResult:
        # `pulumi refresh`: owned files changed or removed in the repository (components/gitops/drift.py).
        outs = read_tree(props)
        return pulumi.dynamic.ReadResult(id_, outs, read_inputs(outs))

    def delete(self, _id: str, props: dict[str, Any]) -> None:
        sync_tree(props, props, removing=True)


# --- the component -------------------------------------------------------------------------


def tree_inputs(config: HarborConfig, stack: str, sealed: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The provider inputs for `config`, credentials in plain text (the component wraps them secret).

    `sealed`: the SealedSecret files of `secret_specs(config)`, by repo path (they join the tree).
    """
    gitops = config.gitops
    if gitops.uses_ssh:
        assert gitops.ssh_private_key is not None  # config validation requires it for SSH URLs
        credentials = {"ssh_private_key": gitops.ssh_private_key.get_secret_value()}
    else:
        assert gitops.username is not None and gitops.password is not None
        credentials = {"username": gitops.username, "password": gitops.password.get_secret_value()}
    return {
        "repo_url": gitops.repo_url,
        "branch": gitops.branch,
        "path": gitops.path,
        "files": render_tree(config, sealed),
        "create_only": sorted(create_only_paths(config)),
        "credentials": credentials,
        "known_hosts": known_hosts_text(config),
        "overwrite_manual_changes": gitops.overwrite_manual_changes,
        "author_name": DEFAULT_AUTHOR[0],
        "author_email": DEFAULT_AUTHOR[1],
        "message_prefix": f"space-harbor({stack}):",
    }


class GitTree(pulumi.dynamic.Resource):
    """The dynamic resource: registers as `pulumi-python:dynamic:Resource`."""

    commit: pulumi.Output[str]
    owned: pulumi.Output[dict[str, str]]
    created: pulumi.Output[list[str]]
    tree: pulumi.Output[str]

    def __init__(self, name: str, props: dict[str, Any], opts: pulumi.ResourceOptions | None = None) -> None:
        outputs = {"commit": None, "owned": None, "created": None, "tree": None}
        super().__init__(GitTreeProvider(), name, {**props, **outputs}, opts)


class GitOpsRepository(pulumi.ComponentResource):
    """The app-of-apps tree under gitops.path, committed and pushed to the cluster-wide repo."""

    commit: pulumi.Output[str]
    files: pulumi.Output[dict[str, str]]
    branch: str

    def __init__(
        self,
        name: str,
        config: HarborConfig,
        sealed: pulumi.Input[Mapping[str, str]] | None = None,
        opts: pulumi.ResourceOptions | None = None,
        *,
        after: Sequence[pulumi.Resource] = (),
    ) -> None:
        """`sealed`: SealedSecret YAML by repo path, for the paths of `secret_specs(config)`; `after`:
        what must be in place before the commit is pushed."""
        super().__init__("space-harbor:index:GitOpsRepository", name, None, opts)
        inputs = tree_inputs(config, pulumi.get_stack())
        inputs["credentials"] = pulumi.Output.secret(inputs["credentials"])
        if sealed is not None:
            # Ciphertext only: the files stay readable in the preview's diff.
            inputs["files"] = pulumi.Output.from_input(sealed).apply(lambda files: render_tree(config, files))
        tree = GitTree(
            f"{name}-tree",
            inputs,
            opts=pulumi.ResourceOptions(parent=self, additional_secret_outputs=["credentials"], depends_on=list(after)),
        )
        self.tree = tree
        self.commit = tree.commit
        self.files = tree.owned
        self.branch = config.gitops.branch
        self.register_outputs({"commit": self.commit, "files": self.files, "branch": self.branch})
