"""Drift of the GitOps tree: owned files changed or removed in the repository since the last push.

`read_tree` is the Read of `GitTreeProvider` (`pulumi refresh`): it fetches the branch with the
stored credentials and compares each owned file with the sha256 recorded when it was pushed. It
stores `drift` (repository path -> one line) in the outputs; the provider's diff then shows a
change, and its update re-commits exactly those files: `repairs` is the set `sync_tree` may
overwrite although they were changed by hand. A change that appears after the refresh is still
refused as before (or overwritten only with `gitops.overwriteManualChanges`).

A repository that cannot be fetched during a refresh keeps its last `drift` and says why in
`reachable`; nothing is reported as drifted because of it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from components.gitops.plan import INPUT_KEYS, GitOpsError, Spec, plain, redact_url
from components.gitops.workspace import workspace


def drift_lines(owned: Mapping[str, str], remote: Mapping[str, str | None], branch: str) -> dict[str, str]:
    """Per owned path whose content at the branch tip is not what was pushed: one line on how."""
    lines = {}
    for path, pushed in sorted(owned.items()):
        found = remote.get(path)
        if found == pushed:
            continue
        if found is None:
            lines[path] = f"{path}: removed from branch {branch}"
        else:
            lines[path] = f"{path}: changed on branch {branch} (sha256 {found[:8]}, pushed {pushed[:8]})"
    return lines


def read_tree(props: Mapping[str, Any]) -> dict[str, Any]:
    """The outputs after a refresh: the stored ones, with `drift` and `reachable` as found now."""
    outs = {key: value for key, value in plain(dict(props)).items() if key != "__provider"}
    owned: dict[str, str] = dict(outs.get("owned") or {})
    spec = Spec.from_props(outs)
    try:
        with workspace(spec) as ws:
            base = ws.fetch()
            remote = ws.remote_hashes(base, set(owned))
    except GitOpsError as error:
        outs["reachable"] = f"unreachable: {error}"
        outs["drift"] = dict(outs.get("drift") or {})
        return outs
    outs["reachable"] = f"read {redact_url(spec.repo_url)} at {base[:12] if base else 'no commit'}"
    outs["drift"] = drift_lines(owned, remote, spec.branch)
    return outs


def read_inputs(outs: Mapping[str, Any]) -> dict[str, Any]:
    """The inputs a refresh leaves: the stored ones and `drift`, which the program's next inputs lack,
    so a preview's diff lists each drifted file as it goes away."""
    return {**{key: outs.get(key) for key in INPUT_KEYS}, "drift": dict(outs.get("drift") or {})}


def drifted_paths(olds: Mapping[str, Any]) -> frozenset[str]:
    """The owned files the last refresh found changed or removed: the ones an update puts back."""
    return frozenset(plain(dict(olds)).get("drift") or {})
