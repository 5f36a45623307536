"""The git side of a GitOps commit: transport, a throwaway bare repository, and the push loop.

`sync_tree` fetches the branch into a private bare repository, plans with
components/gitops/plan.py, builds the new tree in a private index, commits only when the tree
changed, and pushes without force, rebasing on a moved remote up to `MAX_PUSH_ATTEMPTS` times.
SSH runs with the key in a 0600 file, only the given known_hosts and no ssh config; HTTPS gets its
password from a GIT_ASKPASS script that reads the environment and answers only the repository's
own host. Global and system git config are ignored, and git's messages are scrubbed of every
credential.
"""

from __future__ import annotations

import io
import os
import secrets
import shlex
import shutil
import stat
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import git
from gitdb.base import IStream

from components.gitops.plan import (
    INPUT_KEYS,
    GitOpsError,
    Plan,
    Spec,
    TreeMarker,
    commit_message,
    marker_path,
    plain,
    plan_changes,
    redact_url,
    sha256,
)

MAX_PUSH_ATTEMPTS = 5
FILE_MODE = "100644"


def ssh_command(key_file: str, known_hosts_file: str) -> str:
    """GIT_SSH_COMMAND: this key only, host key pinned to this file, never a prompt."""
    return " ".join(
        [
            "ssh",
            # No ~/.ssh/config: its KnownHostsCommand, IdentityFile, ProxyCommand or Match exec
            # would add trusted host keys, offer other keys or run commands.
            "-F /dev/null",
            "-i",
            shlex.quote(key_file),
            "-o IdentitiesOnly=yes",
            "-o StrictHostKeyChecking=yes",
            f"-o UserKnownHostsFile={shlex.quote(known_hosts_file)}",
            "-o GlobalKnownHostsFile=/dev/null",
            "-o UpdateHostKeys=no",
            "-o BatchMode=yes",
            "-o ConnectTimeout=30",
        ]
    )


# What git (and ssh under it) says, and the stack config key that fixes it. First match wins.
_GIT_FAILURES: tuple[tuple[tuple[str, ...], str, str], ...] = (
    (
        ("Host key verification failed", "REMOTE HOST IDENTIFICATION HAS CHANGED", "host key is known"),
        "ssh",
        "gitops.knownHosts does not hold the git server's host key: set it to the output of "
        "`ssh-keyscan <git host>` (a port other than 22 needs a `[host]:port` line)",
    ),
    (
        ("Permission denied (publickey",),
        "ssh",
        "the git server refused the key in gitops.sshPrivateKey: add its public half to the repository "
        "as a deploy key with write access",
    ),
    (
        (
            "read only",
            "read-only",
            "denied to deploy key",
            "Write access to repository not granted",
            "not allowed to push",
        ),
        "",
        "the repository refused the push: the credential in {credential} needs write access (Argo CD's own "
        "read-only one belongs in {argocd})",
    ),
    (
        ("Authentication failed", "returned error: 401", "returned error: 403", "could not read Username"),
        "https",
        "the git server refused gitops.username and gitops.password: a username and a token with write access",
    ),
    (
        ("Repository not found", "does not appear to be a git repository", "not found", "does not exist"),
        "",
        "check gitops.repoUrl, and that {credential} has access to that repository",
    ),
    (
        (
            "Could not resolve",
            "Connection refused",
            "Connection timed out",
            "timed out",
            "Network is unreachable",
            "No route to host",
        ),
        "",
        "this machine cannot reach the git server of gitops.repoUrl (name, address, port or a firewall)",
    ),
)


def what_to_change(detail: str, transport: str) -> str | None:
    """The stack config to change for a failed git command, from git's own (scrubbed) message."""
    credential, argocd = (
        ("gitops.sshPrivateKey", "gitops.argocdSshPrivateKey")
        if transport == "ssh"
        else ("gitops.username/gitops.password", "gitops.argocdUsername/gitops.argocdPassword")
    )
    lowered = detail.lower()
    for needles, only, hint in _GIT_FAILURES:
        if only and only != transport:
            continue
        if any(needle.lower() in lowered for needle in needles):
            return hint.format(credential=credential, argocd=argocd)
    return None


ASKPASS_SCRIPT = """#!/bin/sh
# git asks "Username for 'https://host': " and "Password for 'https://user@host': ". Only the
# repository's own origin gets an answer: a redirect can send git to another host, which would
# then be handed the password.
url=${1#*"'"}
url=${url%"'"*}
scheme=${url%%://*}
host=${url#*://}
host=${host##*@}
if [ "$scheme://$host" != "$HARBOR_GIT_ORIGIN" ]; then
  echo "space-harbor: git asked for the credentials of $scheme://$host, not of $HARBOR_GIT_ORIGIN; refused" >&2
  exit 1
fi
case "$1" in
  Username*) printf '%s\\n' "$HARBOR_GIT_USERNAME" ;;
  *) printf '%s\\n' "$HARBOR_GIT_PASSWORD" ;;
esac
"""


def credential_origin(repo_url: str) -> str:
    """`scheme://host[:port]` of an HTTPS URL, as git names it when it asks for credentials."""
    parts = urlsplit(repo_url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"


def transport_env(
    transport: str,
    *,
    key_file: str | None = None,
    known_hosts_file: str | None = None,
    askpass: str | None = None,
    username: str | None = None,
    password: str | None = None,
    origin: str | None = None,
) -> dict[str, str]:
    """Environment of every git command: isolated from the user's git config, no prompts."""
    env = {
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": os.devnull,
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_ALTERNATE_OBJECT_DIRECTORIES": "",
        "LC_ALL": "C",
        "LANGUAGE": "C",
    }
    if transport == "ssh":
        if key_file is None or known_hosts_file is None:
            raise ValueError("ssh transport needs a key file and a known_hosts file")
        env["GIT_SSH_COMMAND"] = ssh_command(key_file, known_hosts_file)
    elif transport == "https":
        if askpass is None or username is None or password is None or origin is None:
            raise ValueError("https transport needs the askpass script, a username, a password and the origin")
        env |= {
            "GIT_ASKPASS": askpass,
            "SSH_ASKPASS": askpass,
            "HARBOR_GIT_USERNAME": username,
            "HARBOR_GIT_PASSWORD": password,
            "HARBOR_GIT_ORIGIN": origin,
        }
    return env


class Workspace:
    """A temporary bare repository with the transport set up; removed on exit, secrets with it."""

    def __init__(self, spec: Spec) -> None:
        self.spec = spec
        self.dir = Path(tempfile.mkdtemp(prefix="space-harbor-git-"))
        os.chmod(self.dir, stat.S_IRWXU)
        self._secrets = [*spec.secrets(), str(self.dir)]
        try:
            self._open()
        except BaseException:
            shutil.rmtree(self.dir, ignore_errors=True)  # the key file must not outlive a failed start
            raise

    def _open(self) -> None:
        spec = self.spec
        git_dir = self.dir / "repo.git"
        env = self._transport()
        env |= {
            # Explicit, so that a GIT_DIR & co. of the caller's environment cannot redirect anything.
            "GIT_DIR": str(git_dir),
            "GIT_OBJECT_DIRECTORY": str(git_dir / "objects"),
            "GIT_INDEX_FILE": str(self.dir / "index"),
            "GIT_AUTHOR_NAME": spec.author_name,
            "GIT_AUTHOR_EMAIL": spec.author_email,
            "GIT_COMMITTER_NAME": spec.author_name,
            "GIT_COMMITTER_EMAIL": spec.author_email,
        }
        runner = git.Git(str(self.dir))
        runner.update_environment(**env)
        runner.execute(["git", "init", "--quiet", "--bare", str(git_dir)])
        self.repo = git.Repo(str(git_dir))
        self.repo.git.update_environment(**env)
        self.run("remote", "add", "origin", spec.repo_url)

    def _write_private(self, name: str, text: str, mode: int = 0o600) -> str:
        path = self.dir / name
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        return str(path)

    def _transport(self) -> dict[str, str]:
        spec = self.spec
        if spec.transport == "ssh":
            key = spec.credentials["ssh_private_key"]
            key_file = self._write_private("id_key", key if key.endswith("\n") else key + "\n")
            hosts = "\n".join(line.strip() for line in (spec.known_hosts or "").splitlines() if line.strip())
            known_hosts = self._write_private("known_hosts", hosts + "\n")
            return transport_env("ssh", key_file=key_file, known_hosts_file=known_hosts)
        if spec.transport == "https":
            askpass = self._write_private("askpass.sh", ASKPASS_SCRIPT, 0o700)
            return transport_env(
                "https",
                askpass=askpass,
                username=spec.credentials["username"],
                password=spec.credentials["password"],
                origin=credential_origin(spec.repo_url),
            )
        return transport_env("local")

    def close(self) -> None:
        self.repo.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def scrub(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return redact_url(text)

    def run(self, *args: str, **kwargs: Any) -> str:
        """One git command; its failure becomes a GitOpsError that carries no credential."""
        try:
            return self.repo.git.execute(["git", *args], **kwargs)
        except git.GitCommandError as error:
            stderr = error.stderr if isinstance(error.stderr, str) else str(error.stderr or "")
            detail = self.scrub(stderr.strip().removeprefix("stderr: ").strip("'").strip())
            hint = what_to_change(detail, self.spec.transport)
            raise GitOpsError(
                f"git {args[0]} failed for {redact_url(self.spec.repo_url)} (exit {error.status})"
                + (f": {detail}" if detail else "")
                + (f"\n{hint}" if hint else "")
            ) from None

    def remote_tip(self) -> str | None:
        out = self.run("ls-remote", "--heads", "origin", f"refs/heads/{self.spec.branch}")
        for line in out.splitlines():
            sha, _, ref = line.partition("\t")
            if ref == f"refs/heads/{self.spec.branch}":
                return sha
        return None

    def fetch(self) -> str | None:
        """The tip of the branch on the remote, fetched here; None for a missing branch or empty repo."""
        tip = self.remote_tip()
        if tip is not None:
            self.run("fetch", "--no-tags", "--depth=1", "origin", f"+refs/heads/{self.spec.branch}:refs/harbor/base")
            tip = self.run("rev-parse", "--verify", "refs/harbor/base^{commit}")
        return tip

    def remote_hashes(self, base: str | None, paths: set[str]) -> dict[str, str | None]:
        hashes: dict[str, str | None] = dict.fromkeys(paths)
        if base is None:
            return hashes
        tree = self.repo.commit(base).tree
        for path in paths:
            try:
                item = tree / path
            except KeyError:
                continue
            if item.type != "blob":
                hashes[path] = f"not-a-file:{item.type}"
                continue
            hashes[path] = sha256(item.data_stream.read())
        return hashes

    def read(self, base: str | None, path: str) -> bytes | None:
        """The content of the file `path` at `base`; None when there is no such file."""
        if base is None:
            return None
        try:
            item = self.repo.commit(base).tree / path
        except KeyError:
            return None
        return item.data_stream.read() if item.type == "blob" else None

    def store(self, content: bytes) -> str:
        return self.repo.odb.store(IStream("blob", len(content), io.BytesIO(content))).hexsha.decode("ascii")

    def build(self, base: str | None, plan: Plan) -> str | None:
        """The tree after the plan as a commit on `base`, or None when the tree would not change."""
        if not plan.writes and not plan.removals:
            return None
        if base is None:
            self.run("read-tree", "--empty")
        else:
            self.run("read-tree", base)
        # One NUL-separated --index-info batch: "<mode> <blob>\t<path>", mode 0 removes the entry.
        records = [f"{FILE_MODE} {self.store(content)}\t{path}" for path, content in plan.writes.items()]
        records += [f"0 {'0' * 40}\t{path}" for path in plan.removals]
        batch = self.dir / "index-info"
        batch.write_bytes(("\0".join(records) + "\0").encode("utf-8"))
        with batch.open("rb") as stdin:
            self.run("update-index", "-z", "--index-info", istream=stdin)
        tree = self.run("write-tree")
        if base is not None and tree == self.run("rev-parse", f"{base}^{{tree}}"):
            return None
        message = commit_message(self.spec, plan)
        parents = ["-p", base] if base is not None else []
        return self.run("commit-tree", tree, *parents, "-m", message)

    def push(self, commit: str, base: str | None) -> bool:
        """Push without force. False when the branch moved away from `base` meanwhile (the caller rebases)."""
        try:
            self.run("push", "--porcelain", "origin", f"{commit}:refs/heads/{self.spec.branch}")
            return True
        except GitOpsError as error:
            try:
                moved = self.remote_tip() != base
            except GitOpsError:
                raise error from None
            if moved:
                return False
            raise


@contextmanager
def workspace(spec: Spec) -> Iterator[Workspace]:
    ws = Workspace(spec)
    try:
        yield ws
    finally:
        ws.close()


def sync_tree(
    props: Mapping[str, Any],
    previous: Mapping[str, Any] | None,
    *,
    removing: bool = False,
    repairs: frozenset[str] = frozenset(),
) -> dict:
    """Make the branch hold `props["files"]` (or, `removing`, none of its owned files); return the outputs.

    `previous` is the resource's own last outputs (None for a create). The folder's marker
    (`TreeMarker`) says which resource of the stack owns the folder: a create takes over what
    another one of the stack recorded there, and a delete of a resource that no longer owns the
    folder removes nothing. `repairs`: owned files a refresh found changed by hand
    (components/gitops/drift.py), which the user has seen in the preview: written back without
    counting as a manual change.
    """
    spec = Spec.from_props(props)
    previous = plain(dict(previous or {}))
    # This resource's id in the marker, made at its create (and at the first write of a state from
    # before markers), then kept.
    tree_id = str(previous.get("tree") or secrets.token_hex(8))
    marker_file = marker_path(spec)
    desired = {} if removing else spec.files
    with workspace(spec) as ws:
        for _attempt in range(MAX_PUSH_ATTEMPTS):
            base = ws.fetch()
            marker_text = ws.read(base, marker_file)
            found = TreeMarker.parse(marker_text)
            previous_owned: dict[str, str] = dict(previous.get("owned") or {})
            previous_created = frozenset(previous.get("created") or ())
            taken = found is not None and found.owner == spec.message_prefix and found.tree != tree_id
            if taken and removing:
                # Another resource of this stack owns the folder now (the old half of a replacement
                # at the same place): the files are no longer this resource's to remove.
                return {**{key: props.get(key) for key in INPUT_KEYS}, "commit": base, "owned": {}, "created": []}
            if taken and not previous:
                # The new half of that replacement: what the other one wrote is this one's now.
                assert found is not None
                previous_owned, previous_created = dict(found.owned), frozenset(found.created)
            relevant = set(desired) | set(previous_owned)
            plan = plan_changes(
                ws.remote_hashes(base, relevant), desired, spec.create_only, previous_owned, previous_created
            )
            if removing and plan.manual:
                # A file someone edited is theirs now: a delete leaves it as they wrote it. Refusing
                # would leave a pending delete that fails on every later `up` (its stored inputs,
                # `overwrite_manual_changes` included, never change), and a move could not finish.
                plan.removals = [path for path in plan.removals if path not in plan.manual]
                plan.manual = []
            manual = [path for path in plan.manual if path not in repairs]
            if manual and not spec.overwrite_manual_changes:
                raise GitOpsError(
                    f"{len(manual)} file(s) Space Harbor owns in {redact_url(spec.repo_url)} "
                    f"(branch {spec.branch}) were changed by hand: {', '.join(manual)}. "
                    "Move your change out of the owned files (or into stack config) and revert them, "
                    "or set gitops.overwriteManualChanges to true to overwrite them."
                )
            if removing:
                # ours, or unreadable; another stack's marker is its own
                if marker_text is not None and (found is None or found.owner == spec.message_prefix):
                    plan.removals.append(marker_file)
            else:
                marker = TreeMarker(spec.message_prefix, tree_id, plan.owned, tuple(plan.created)).render()
                ours = found is not None and (found.owner, found.tree) == (spec.message_prefix, tree_id)
                if marker_text != marker.encode("utf-8") and (plan.writes or plan.removals or not ours):
                    plan.writes[marker_file] = marker.encode("utf-8")
            commit = ws.build(base, plan)
            if commit is None:
                head = base
                break
            if ws.push(commit, base):
                head = commit
                break
        else:
            raise GitOpsError(
                f"the branch {spec.branch} of {redact_url(spec.repo_url)} moved during each of "
                f"{MAX_PUSH_ATTEMPTS} attempts to push; run `pulumi up` again"
            )
    return {
        **{key: props.get(key) for key in INPUT_KEYS},
        "commit": head,
        "owned": plan.owned,
        "created": sorted(plan.created),
        "tree": tree_id,
    }
