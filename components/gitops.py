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
- Delete commits the removal of the files it owns (never the create-only ones) and pushes.
- Transport: SSH with the key in a 0600 file, `StrictHostKeyChecking=yes` and only the given
  known_hosts (there is no trust-on-first-use: without `known_hosts` an SSH URL is refused);
  HTTPS with username and password handed to git by a GIT_ASKPASS script from environment
  variables, never in the URL or on a command line. Global and system git config are ignored.
- Credentials are never in commit messages or errors (git's messages are scrubbed). They stay in
  the state as the `credentials` output, which the component marks secret, because `pulumi
  destroy` has nothing but the state to push the removal with.

The module creates nothing at import: Pulumi pickles the provider by reference.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import shlex
import shutil
import stat
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import git
import pulumi
import pulumi.dynamic
from gitdb.base import IStream
from pulumi.runtime.rpc import is_rpc_secret, unwrap_rpc_secret

from components.config import HarborConfig
from components.render.gitops import create_only_paths, known_hosts_text, render_tree

MAX_PUSH_ATTEMPTS = 5
INPUT_KEYS = (
    "repo_url",
    "branch",
    "path",
    "files",
    "create_only",
    "credentials",
    "known_hosts",
    "overwrite_manual_changes",
    "author_name",
    "author_email",
    "message_prefix",
)
# A change of these points the resource at other files: create the new ones, then delete the old.
REPLACE_KEYS = ("repo_url", "branch", "path")
DEFAULT_AUTHOR = ("Space Harbor", "space-harbor@localhost")
FILE_MODE = "100644"
_URL_PASSWORD = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<user>[^/@\s:]*):[^/@\s]*@")


class GitOpsError(Exception):
    """A git operation failed or was refused; the message is free of credentials."""


# --- pure helpers --------------------------------------------------------------------------


def sha256(content: str | bytes) -> str:
    data = content.encode("utf-8") if isinstance(content, str) else content
    return hashlib.sha256(data).hexdigest()


def transport_of(url: str) -> str:
    """`ssh`, `https` (also plain http) or `local` (a path or file://), the way git reads URLs."""
    if "://" in url:
        scheme = url.split("://", 1)[0].lower()
        if scheme in ("http", "https"):
            return "https"
        if scheme == "file":
            return "local"
        if scheme in ("ssh", "git+ssh", "ssh+git"):
            return "ssh"
        raise ValueError(f"unsupported git URL scheme {scheme!r}")
    # git's rule: a colon before the first slash makes it scp-like ([user@]host:path)
    head = url.split("/", 1)[0]
    if ":" in head:
        return "ssh"
    return "local"


def redact_url(url: str) -> str:
    """The URL without any password in its user info."""
    return _URL_PASSWORD.sub(lambda m: f"{m['scheme']}{m['user']}:***@", url)


def ssh_command(key_file: str, known_hosts_file: str) -> str:
    """GIT_SSH_COMMAND: this key only, host key pinned to this file, never a prompt."""
    return " ".join(
        [
            "ssh",
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


ASKPASS_SCRIPT = """#!/bin/sh
# git asks "Username for ...:" and "Password for ...:"; the answers come from the environment.
case "$1" in
  Username*) printf '%s\\n' "$HARBOR_GIT_USERNAME" ;;
  *) printf '%s\\n' "$HARBOR_GIT_PASSWORD" ;;
esac
"""


def transport_env(
    transport: str,
    *,
    key_file: str | None = None,
    known_hosts_file: str | None = None,
    askpass: str | None = None,
    username: str | None = None,
    password: str | None = None,
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
        if askpass is None or username is None or password is None:
            raise ValueError("https transport needs the askpass script, a username and a password")
        env |= {
            "GIT_ASKPASS": askpass,
            "SSH_ASKPASS": askpass,
            "HARBOR_GIT_USERNAME": username,
            "HARBOR_GIT_PASSWORD": password,
        }
    return env


def _plain(value: Any) -> Any:
    """Drop Pulumi's secret wrapper, should the engine hand one over."""
    if isinstance(value, Mapping):
        if is_rpc_secret(value):
            return _plain(unwrap_rpc_secret(value))
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    return value


@dataclass(frozen=True)
class Spec:
    """The validated inputs of one resource."""

    repo_url: str
    branch: str
    path: str
    files: dict[str, str]
    create_only: frozenset[str]
    credentials: dict[str, str]
    known_hosts: str | None
    overwrite_manual_changes: bool
    author_name: str
    author_email: str
    message_prefix: str
    transport: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "transport", transport_of(self.repo_url))

    @classmethod
    def from_props(cls, props: Mapping[str, Any]) -> Spec:
        props = _plain(dict(props))
        problems = validate(props)
        if problems:
            raise GitOpsError("invalid GitOps inputs: " + "; ".join(f"{key}: {why}" for key, why in problems))
        return cls(
            repo_url=props["repo_url"],
            branch=props["branch"],
            path=props["path"].strip("/"),
            files=dict(props["files"]),
            create_only=frozenset(props.get("create_only") or ()),
            credentials=dict(props.get("credentials") or {}),
            known_hosts=props.get("known_hosts") or None,
            overwrite_manual_changes=bool(props.get("overwrite_manual_changes")),
            author_name=props.get("author_name") or DEFAULT_AUTHOR[0],
            author_email=props.get("author_email") or DEFAULT_AUTHOR[1],
            message_prefix=props.get("message_prefix") or "space-harbor:",
        )

    def secrets(self) -> list[str]:
        """Every value that must never show up in a message, longest first."""
        found: list[str] = []
        for key, value in self.credentials.items():
            if key == "username" or not value:
                continue
            found.append(value)
            found.extend(line.strip() for line in value.splitlines() if len(line.strip()) >= 8)
        return sorted(set(found), key=len, reverse=True)


def _is_unknown(value: Any) -> bool:
    return type(value).__name__ == "Unknown"


def validate(props: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(input key, problem) for every input that cannot work; unknown (preview) values pass."""
    problems: list[tuple[str, str]] = []

    def known(key: str) -> bool:
        return key in props and props[key] is not None and not _is_unknown(props[key])

    for key in ("repo_url", "branch", "path"):
        if not known(key):
            if key not in props or props[key] is None:
                problems.append((key, "is required"))
            continue
        if not isinstance(props[key], str) or not props[key].strip():
            problems.append((key, "must be a non-empty string"))
    if problems:
        return problems
    url, path = props["repo_url"], props["path"]
    if _is_unknown(url) or _is_unknown(path):
        return problems
    try:
        transport = transport_of(url)
    except ValueError as error:
        return [("repo_url", str(error))]
    if redact_url(url) != url:
        problems.append(("repo_url", "must not carry a password; use gitops.username and gitops.password"))
    folder = PurePosixPath(path.strip("/"))
    if path.startswith("/") or any(part in ("", ".", "..", ".git") for part in path.strip("/").split("/")):
        problems.append(("path", f"{path!r} must be a relative folder without '..' or '.git'"))
    files = props.get("files")
    if known("files"):
        if not isinstance(files, Mapping):
            problems.append(("files", "must map paths to contents"))
        else:
            for name, content in files.items():
                parts = name.split("/")
                if (
                    name.startswith("/")
                    or any(part in ("", ".", "..", ".git") for part in parts)
                    or not PurePosixPath(name).is_relative_to(folder)
                    or PurePosixPath(name) == folder
                ):
                    problems.append(("files", f"{name!r} is not a file inside {str(folder)!r}"))
                if not isinstance(content, str) and not _is_unknown(content):
                    problems.append(("files", f"{name!r}: content must be text"))
    create_only = props.get("create_only")
    if known("create_only") and known("files") and isinstance(files, Mapping):
        missing = sorted(set(create_only) - set(files))
        if missing:
            problems.append(("create_only", f"{', '.join(missing)} not in files"))
    credentials = _plain(props.get("credentials"))
    if not _is_unknown(credentials):
        credentials = credentials if isinstance(credentials, Mapping) else {}
        if transport == "ssh" and not credentials.get("ssh_private_key"):
            problems.append(("credentials", "an SSH URL needs ssh_private_key"))
        if transport == "https" and not (credentials.get("username") and credentials.get("password")):
            problems.append(("credentials", "an HTTPS URL needs username and password"))
    if transport == "ssh" and not _is_unknown(props.get("known_hosts")) and not props.get("known_hosts"):
        problems.append(
            (
                "known_hosts",
                f"is required for the SSH URL {redact_url(url)}: set gitops.knownHosts to the git server's "
                "host key line(s), e.g. from `ssh-keyscan -t ed25519 <host>` checked against the fingerprint "
                "the server's admin publishes",
            )
        )
    return problems


# --- the work: one throwaway bare repository per operation ---------------------------------


@dataclass
class Plan:
    writes: dict[str, bytes] = field(default_factory=dict)
    removals: list[str] = field(default_factory=list)
    manual: list[str] = field(default_factory=list)
    owned: dict[str, str] = field(default_factory=dict)
    created: list[str] = field(default_factory=list)


def plan_changes(
    remote: Mapping[str, str | None],
    desired: Mapping[str, str],
    create_only: frozenset[str],
    previous_owned: Mapping[str, str],
    previous_created: frozenset[str],
) -> Plan:
    """What to write and remove, given the sha256 of every relevant path at the remote tip (None: absent).

    `desired` maps path -> content. Pure, so that the rules are easy to read and test.
    """
    plan = Plan()
    for path in sorted(desired):
        content = desired[path].encode("utf-8")
        want = sha256(content)
        have = remote.get(path)
        if path in create_only:
            # Written once: when missing and never written before. A user who deleted it meant it.
            if have is None and path not in previous_created:
                plan.writes[path] = content
            plan.created.append(path)
            continue
        plan.owned[path] = want
        if have == want:
            continue
        recorded = previous_owned.get(path)
        if (recorded is None and have is not None) or (recorded is not None and have != recorded):
            plan.manual.append(path)
        plan.writes[path] = content
    for path in sorted(set(previous_owned) - set(plan.owned) - create_only):
        have = remote.get(path)
        if have is None:
            continue
        if have != previous_owned[path]:
            plan.manual.append(path)
        plan.removals.append(path)
    plan.manual.sort()
    return plan


class _Workspace:
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
            raise GitOpsError(
                f"git {args[0]} failed for {redact_url(self.spec.repo_url)} (exit {error.status})"
                + (f": {detail}" if detail else "")
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


def commit_message(spec: Spec, plan: Plan) -> str:
    verb = "remove" if plan.removals and not plan.writes else "update"
    lines = [f"{spec.message_prefix} {verb} {spec.path}", ""]
    lines += [f"- write {path}" for path in plan.writes]
    lines += [f"- remove {path}" for path in plan.removals]
    return "\n".join(lines) + "\n"


@contextmanager
def workspace(spec: Spec) -> Iterator[_Workspace]:
    ws = _Workspace(spec)
    try:
        yield ws
    finally:
        ws.close()


def sync_tree(props: Mapping[str, Any], previous: Mapping[str, Any] | None, *, removing: bool = False) -> dict:
    """Make the branch hold `props["files"]` (or, `removing`, none of its owned files); return the outputs."""
    spec = Spec.from_props(props)
    previous = _plain(dict(previous or {}))
    previous_owned: dict[str, str] = dict(previous.get("owned") or {})
    previous_created = frozenset(previous.get("created") or ())
    desired = {} if removing else spec.files
    relevant = set(desired) | set(previous_owned)
    with workspace(spec) as ws:
        for _attempt in range(MAX_PUSH_ATTEMPTS):
            base = ws.fetch()
            plan = plan_changes(
                ws.remote_hashes(base, relevant), desired, spec.create_only, previous_owned, previous_created
            )
            if plan.manual and not spec.overwrite_manual_changes:
                raise GitOpsError(
                    f"{len(plan.manual)} file(s) Space Harbor owns in {redact_url(spec.repo_url)} "
                    f"(branch {spec.branch}) were changed by hand: {', '.join(plan.manual)}. "
                    "Move your change out of the owned files (or into stack config) and revert them, "
                    "or set gitops.overwriteManualChanges to true to overwrite them."
                )
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
    }


def resource_id(props: Mapping[str, Any]) -> str:
    return f"{redact_url(str(props['repo_url']))}#{props['branch']}:{str(props['path']).strip('/')}"


class GitTreeProvider(pulumi.dynamic.ResourceProvider):
    """Dynamic provider: the files of one folder of one branch. Stateless; all state is in props."""

    def check(self, _olds: dict[str, Any], news: dict[str, Any]) -> pulumi.dynamic.CheckResult:
        failures = [pulumi.dynamic.CheckFailure(key, why) for key, why in validate(_plain(news))]
        return pulumi.dynamic.CheckResult(news, failures)

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> pulumi.dynamic.DiffResult:
        olds, news = _plain(olds), _plain(news)
        changed = [key for key in INPUT_KEYS if _is_unknown(news.get(key)) or olds.get(key) != news.get(key)]
        replaces = [key for key in changed if key in REPLACE_KEYS]
        return pulumi.dynamic.DiffResult(changes=bool(changed), replaces=replaces, delete_before_replace=False)

    def create(self, props: dict[str, Any]) -> pulumi.dynamic.CreateResult:
        outs = sync_tree(props, None)
        return pulumi.dynamic.CreateResult(resource_id(props), outs)

    def update(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> pulumi.dynamic.UpdateResult:
        return pulumi.dynamic.UpdateResult(sync_tree(news, olds))

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

    def __init__(self, name: str, props: dict[str, Any], opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(GitTreeProvider(), name, {**props, "commit": None, "owned": None, "created": None}, opts)


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
    ) -> None:
        """`sealed`: SealedSecret YAML by repo path, for the paths of `secret_specs(config)`."""
        super().__init__("space-harbor:index:GitOpsRepository", name, None, opts)
        inputs = tree_inputs(config, pulumi.get_stack())
        inputs["credentials"] = pulumi.Output.secret(inputs["credentials"])
        if sealed is not None:
            # Ciphertext only: the files stay readable in the preview's diff.
            inputs["files"] = pulumi.Output.from_input(sealed).apply(lambda files: render_tree(config, files))
        tree = GitTree(
            f"{name}-tree",
            inputs,
            opts=pulumi.ResourceOptions(parent=self, additional_secret_outputs=["credentials"]),
        )
        self.tree = tree
        self.commit = tree.commit
        self.files = tree.owned
        self.branch = config.gitops.branch
        self.register_outputs({"commit": self.commit, "files": self.files, "branch": self.branch})
