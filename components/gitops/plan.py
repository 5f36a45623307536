"""The plan of a GitOps commit, pure: the provider's inputs checked, and what changes in the tree.

`validate` and `Spec` turn the dynamic provider's inputs into one checked value; `plan_changes`
says, from the sha256 of each path at the remote tip, what to write and remove and which owned
files someone changed by hand; `commit_message` describes the plan. No git, no I/O
(components/gitops/workspace.py does the git side).
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

from pulumi.runtime.rpc import is_rpc_secret, unwrap_rpc_secret

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
# `repo_url` only when it names another repository, not when it spells the same one otherwise
# (`repository_location`).
REPLACE_KEYS = ("repo_url", "branch", "path")
DEFAULT_AUTHOR = ("Space Harbor", "space-harbor@localhost")
# In the tree's folder: which resource owns the folder now, and what it wrote (`TreeMarker`). Not a
# YAML file, so Argo CD, which reads the folder's YAML and JSON, never applies it.
MARKER_NAME = ".space-harbor-tree"
_URL_PASSWORD = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<user>[^/@\s:]*):[^/@\s]*@")


class GitOpsError(Exception):
    """A git operation failed or was refused; the message is free of credentials."""


# --- inputs --------------------------------------------------------------------------------


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


def repository_location(url: str) -> str:
    """Where `url` points, whatever its spelling: `host/path` for SSH and HTTPS, the folder for a local path.

    One repository has many spellings: `git@host:org/repo.git`, `ssh://git@host/org/repo`,
    `https://host/org/repo/`. Scheme, user, port, a trailing slash and the `.git` suffix are
    dropped, the host is lowercased; the path keeps its case. An scp-like path is read relative to
    the login's home, as git hosting services do (`host:org/repo` is `ssh://host/org/repo`).
    """
    url = url.strip()
    transport = transport_of(url)
    if transport == "local":
        folder = url.split("://", 1)[1] if "://" in url else url
        return "local:" + posixpath.normpath(folder).rstrip("/")
    if "://" in url:
        rest = url.split("://", 1)[1]
        authority, _, path = rest.partition("/")
    else:
        authority, _, path = url.partition(":")
    host = authority.rsplit("@", 1)[-1]
    # without the port; an IPv6 host is bracketed
    host = host[: host.index("]") + 1] if host.startswith("[") else host.split(":", 1)[0]
    path = path.strip("/").removeprefix("~/").rstrip("/")
    path = path.removesuffix(".git").rstrip("/")
    return f"{host.lower()}/{path}"


def same_location(olds: Mapping[str, Any], news: Mapping[str, Any]) -> bool:
    """Whether two inputs name the same folder of the same branch of the same repository."""
    try:
        same_repo = repository_location(str(olds["repo_url"])) == repository_location(str(news["repo_url"]))
    except (KeyError, ValueError):
        return False
    return (
        same_repo
        and olds.get("branch") == news.get("branch")
        and str(olds.get("path") or "").strip("/") == str(news.get("path") or "").strip("/")
    )


def replaced_keys(olds: Mapping[str, Any], news: Mapping[str, Any], changed: list[str]) -> list[str]:
    """The keys of `changed` that point the tree at another place; a respelling of the same place is none."""
    unknown = [key for key in REPLACE_KEYS if is_unknown(news.get(key))]
    if unknown:
        return unknown
    if same_location(olds, news):
        return []
    moved = [key for key in changed if key in REPLACE_KEYS]
    if "repo_url" in moved and _location_or_none(olds) == _location_or_none(news):
        moved.remove("repo_url")
    if "path" in moved and str(olds.get("path") or "").strip("/") == str(news.get("path") or "").strip("/"):
        moved.remove("path")
    return moved


def _location_or_none(props: Mapping[str, Any]) -> str | None:
    try:
        return repository_location(str(props["repo_url"]))
    except (KeyError, ValueError):
        return None


def redact_url(url: str) -> str:
    """The URL without any password in its user info."""
    return _URL_PASSWORD.sub(lambda m: f"{m['scheme']}{m['user']}:***@", url)


def plain(value: Any) -> Any:
    """Drop Pulumi's secret wrapper, should the engine hand one over."""
    if isinstance(value, Mapping):
        if is_rpc_secret(value):
            return plain(unwrap_rpc_secret(value))
        return {key: plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [plain(item) for item in value]
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
        props = plain(dict(props))
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


def is_unknown(value: Any) -> bool:
    return type(value).__name__ == "Unknown"


def validate(props: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(input key, problem) for every input that cannot work; unknown (preview) values pass."""
    problems: list[tuple[str, str]] = []

    def known(key: str) -> bool:
        return key in props and props[key] is not None and not is_unknown(props[key])

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
    if is_unknown(url) or is_unknown(path):
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
                if not isinstance(content, str) and not is_unknown(content):
                    problems.append(("files", f"{name!r}: content must be text"))
                if PurePosixPath(name).name == MARKER_NAME:
                    problems.append(("files", f"{name!r}: {MARKER_NAME} is the provider's own file"))
    create_only = props.get("create_only")
    if known("create_only") and known("files") and isinstance(files, Mapping):
        missing = sorted(set(create_only) - set(files))
        if missing:
            problems.append(("create_only", f"{', '.join(missing)} not in files"))
    credentials = plain(props.get("credentials"))
    if not is_unknown(credentials):
        credentials = credentials if isinstance(credentials, Mapping) else {}
        if transport == "ssh" and not credentials.get("ssh_private_key"):
            problems.append(("credentials", "an SSH URL needs ssh_private_key"))
        if transport == "https" and not (credentials.get("username") and credentials.get("password")):
            problems.append(("credentials", "an HTTPS URL needs username and password"))
    if transport == "ssh" and not is_unknown(props.get("known_hosts")) and not props.get("known_hosts"):
        problems.append(
            (
                "known_hosts",
                f"is required for the SSH URL {redact_url(url)}: set gitops.knownHosts to the git server's "
                "host key line(s), e.g. from `ssh-keyscan -t ed25519 <host>` checked against the fingerprint "
                "the server's admin publishes",
            )
        )
    return problems


# --- the plan ------------------------------------------------------------------------------


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


@dataclass(frozen=True)
class TreeMarker:
    """The owner file of a tree's folder: the stack that writes it (its `message_prefix`), the
    resource that wrote it (`tree`, an id made at that resource's create), and what that one owns.

    A replacement at the same place (`pulumi up --replace`, or a location the URL rules cannot tell
    is the same) creates the new resource first and deletes the old one after the program, with
    the old outputs. The new one takes over what the marker says the old one wrote (so those files
    are not "changed by hand") and writes its own id; the old one's delete then finds the folder
    taken and removes nothing, where it would otherwise remove every file the new one just wrote.
    It is rewritten only with a commit that changes the tree anyway, so it adds no commit of its own.
    """

    owner: str
    tree: str
    owned: dict[str, str] = field(default_factory=dict)
    created: tuple[str, ...] = ()

    def render(self) -> str:
        body = {"owner": self.owner, "tree": self.tree, "owned": dict(sorted(self.owned.items()))}
        body["created"] = sorted(self.created)
        header = "# Space Harbor's record of which GitOps tree owns this folder; it writes this file.\n"
        return header + json.dumps(body, indent=1, sort_keys=True) + "\n"

    @classmethod
    def parse(cls, text: str | bytes | None) -> TreeMarker | None:
        """The marker in `text`; None when missing or unreadable (then nobody is known to own the folder)."""
        if text is None:
            return None
        if isinstance(text, bytes):
            text = text.decode("utf-8", errors="replace")
        body = "\n".join(line for line in text.splitlines() if not line.startswith("#"))
        try:
            data = json.loads(body)
            owned = {str(path): str(digest) for path, digest in dict(data.get("owned") or {}).items()}
            created = tuple(str(path) for path in data.get("created") or ())
            return cls(str(data["owner"]), str(data["tree"]), owned, created)
        except (ValueError, KeyError, TypeError, AttributeError):
            return None


def marker_path(spec: Spec) -> str:
    return f"{spec.path}/{MARKER_NAME}"


def commit_message(spec: Spec, plan: Plan) -> str:
    verb = "remove" if plan.removals and not plan.writes else "update"
    lines = [f"{spec.message_prefix} {verb} {spec.path}", ""]
    lines += [f"- write {path}" for path in plan.writes]
    lines += [f"- remove {path}" for path in plan.removals]
    return "\n".join(lines) + "\n"
