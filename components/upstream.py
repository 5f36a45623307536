"""Upstream files the program applies (Argo CD's core-install.yaml, ...): pinned, fetched once, verified on every read.

The repository records only facts about each file, in `manifests/upstream.yaml`: for a kind of
file and a version, the URL, the sha256 and the size. `./scripts/vendor` (`python -m
components.upstream fetch`) downloads each pinned file once into a content-addressed cache,
`.cache/upstream/<sha256>`, checking it before it lands there. The program then reads only that
local copy, and checks its sha256 again on every read: `pulumi preview` and `pulumi up` never touch
the network for these files, and a file altered after the fetch is refused.

A file pinned at a GitHub URL (`https://raw.githubusercontent.com/<owner>/<repo>/<ref>/<path>`)
has a second source: when that download fails (a machine that reaches package registries but not
GitHub), the fetch asks `go mod download` for the repository's Go module at the same ref, if `go` is
on PATH, and takes `<path>` from it. Only on failure: the direct URL stays the source of record, and
a machine that reaches GitHub needs no Go. The file from the module gets the same sha256 and size
check, so the second source can add availability, never a different file.

A URL in a pins file may be relative: it is resolved against the pins file's own location
(tests point at their own fixtures that way).

Standard library and PyYAML only, so that the fetch runs before anything else is set up.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
PINS_FILE = ROOT / "manifests" / "upstream.yaml"
CACHE_DIR = ROOT / ".cache" / "upstream"
VENDOR_COMMAND = "./scripts/vendor"
# A pinned file is a manifest or a script; anything much bigger is not what was pinned.
MAX_BYTES = 64 * 1024 * 1024
FETCH_TIMEOUT_SECONDS = 60
# A module zip of a big repository (argo-cd's is about 30 MB) on a slow link.
GO_TIMEOUT_SECONDS = 900
GITHUB_RAW = re.compile(r"https://raw\.githubusercontent\.com/([^/]+)/([^/]+)/([^/]+)/(.+)")


class UpstreamError(RuntimeError):
    """A pinned file is unknown, missing, altered, or could not be fetched; the message says what to do."""


@dataclass(frozen=True)
class Pin:
    kind: str
    version: str
    url: str
    sha256: str
    size: int

    @property
    def label(self) -> str:
        return f"{self.kind} {self.version}"


@dataclass(frozen=True)
class GoModuleFile:
    """Where a file of a GitHub repository sits in that repository's Go module."""

    repository: str  # github.com/<owner>/<repo>, the module path without a major-version suffix
    ref: str  # a tag or a commit: `go mod download` takes either as a version query
    path: str  # inside the repository, which is the module's root

    def module_paths(self) -> list[str]:
        """Module paths to ask for, likeliest first: a vN tag (N >= 2) names a module path ending in /vN."""
        major = re.match(r"v(\d+)\.", self.ref)
        if major and int(major.group(1)) >= 2:
            return [f"{self.repository}/v{major.group(1)}", self.repository]
        return [self.repository]


def go_module_file(url: str) -> GoModuleFile | None:
    """The Go module source of a raw.githubusercontent.com URL; None for any other URL."""
    match = GITHUB_RAW.fullmatch(url)
    if match is None:
        return None
    owner, repo, ref, path = match.groups()
    return GoModuleFile(f"github.com/{owner}/{repo}", ref, path)


def _go_mod_download(go: str, module: str, ref: str, workdir: Path) -> tuple[Path | None, str]:
    """The extracted module's folder, or None and why not."""
    # -mod=mod: `go` may not consult a vendor folder or refuse to touch the throwaway go.mod; the
    # rest of the environment (GOPROXY, GOMODCACHE, GONOSUMDB...) is the user's.
    environment = os.environ | {"GOFLAGS": "-mod=mod"}
    try:
        done = subprocess.run(
            [go, "mod", "download", "-json", f"{module}@{ref}"],
            cwd=workdir,
            env=environment,
            capture_output=True,
            text=True,
            timeout=GO_TIMEOUT_SECONDS,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        return None, str(error)
    try:
        answer = json.loads(done.stdout)
    except json.JSONDecodeError:
        return None, (done.stderr or done.stdout).strip() or f"go exited {done.returncode}"
    if not isinstance(answer, dict) or answer.get("Error") or not answer.get("Dir"):
        error = answer.get("Error") if isinstance(answer, dict) else None
        return None, str(error or done.stderr.strip() or "no module folder in go's answer")
    return Path(answer["Dir"]), ""


def sha256_of(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


def _parse_pins(path: Path) -> dict[str, dict[str, Pin]]:
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as error:
        raise UpstreamError(f"{path}: cannot read the pins: {error}") from None
    if not isinstance(document, dict):
        raise UpstreamError(f"{path}: expected a mapping of kind -> version -> {{url, sha256, size}}")
    pins: dict[str, dict[str, Pin]] = {}
    for kind, versions in document.items():
        if not isinstance(versions, dict) or not versions:
            raise UpstreamError(f"{path}: {kind}: expected a mapping of version -> {{url, sha256, size}}")
        pins[str(kind)] = {}
        for version, fields in versions.items():
            where = f"{path}: {kind}.{version}"
            if not isinstance(fields, dict) or set(fields) != {"url", "sha256", "size"}:
                raise UpstreamError(f"{where}: expected exactly the keys url, sha256, size")
            digest = str(fields["sha256"]).lower()
            if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
                raise UpstreamError(f"{where}.sha256: {fields['sha256']!r} is not a sha256 in hex")
            if not isinstance(fields["size"], int) or fields["size"] <= 0:
                raise UpstreamError(f"{where}.size: {fields['size']!r} is not a size in bytes")
            pins[str(kind)][str(version)] = Pin(str(kind), str(version), str(fields["url"]), digest, fields["size"])
    return pins


class PinnedFiles:
    """One pins file and the cache its files are fetched into."""

    def __init__(self, pins_file: Path, cache_dir: Path) -> None:
        self.pins_file = pins_file
        self.cache_dir = cache_dir

    @cached_property
    def pins(self) -> dict[str, dict[str, Pin]]:
        return _parse_pins(self.pins_file)

    def versions(self, kind: str) -> tuple[str, ...]:
        return tuple(self.pins.get(kind, {}))

    def pin(self, kind: str, version: str) -> Pin:
        if kind not in self.pins:
            raise UpstreamError(f"no upstream file of kind {kind!r} is pinned in {self.pins_file}")
        if version not in self.pins[kind]:
            pinned = ", ".join(self.versions(kind))
            raise UpstreamError(f"{kind} {version} is not pinned in {self.pins_file}; pinned: {pinned}")
        return self.pins[kind][version]

    def source_url(self, pin: Pin) -> str:
        """The pin's URL, a relative one resolved against the pins file."""
        return urllib.parse.urljoin(self.pins_file.resolve().as_uri(), pin.url)

    def cached_path(self, pin: Pin) -> Path:
        return self.cache_dir / pin.sha256

    def _problem(self, pin: Pin, content: bytes) -> str | None:
        """Why `content` is not the pinned file, or None."""
        digest = sha256_of(content)
        if digest != pin.sha256 or len(content) != pin.size:
            return f"sha256 {digest} and {len(content)} bytes, pinned {pin.sha256} and {pin.size} bytes"
        return None

    def read_bytes(self, kind: str, version: str) -> bytes:
        pin = self.pin(kind, version)
        path = self.cached_path(pin)
        try:
            content = path.read_bytes()
        except FileNotFoundError:
            raise UpstreamError(
                f"{pin.label} is not on this machine (expected {path}); run {VENDOR_COMMAND} "
                "to fetch the pinned upstream files and check their sha256"
            ) from None
        problem = self._problem(pin, content)
        if problem is not None:
            raise UpstreamError(
                f"{pin.label}: {path} was altered after it was fetched ({problem}); delete it and run "
                f"{VENDOR_COMMAND} again"
            )
        return content

    def read(self, kind: str, version: str) -> str:
        return self.read_bytes(kind, version).decode("utf-8")

    def verified_path(self, kind: str, version: str) -> Path:
        """The cached file of a pin, checked now: for a file that is shipped as it is (a FileAsset)."""
        self.read_bytes(kind, version)
        return self.cached_path(self.pin(kind, version))

    def _download(self, pin: Pin) -> tuple[bytes, str]:
        """The pinned file's verified content and where it came from."""
        url = self.source_url(pin)
        try:
            with urllib.request.urlopen(url, timeout=FETCH_TIMEOUT_SECONDS) as response:  # noqa: S310 (pinned URL, checked below)
                content: bytes = response.read(MAX_BYTES + 1)
        except (urllib.error.URLError, OSError) as error:
            source = go_module_file(url)
            if source is None:
                raise UpstreamError(f"{pin.label}: could not fetch {url}: {error}") from None
            return self._from_go_module(pin, source, f"{url}: {error}")
        problem = self._problem(pin, content)
        if problem is not None:
            raise UpstreamError(f"{pin.label}: {url} served {problem}; refusing it (nothing was written)")
        return content, url

    def _from_go_module(self, pin: Pin, source: GoModuleFile, direct_failure: str) -> tuple[bytes, str]:
        """The file from the repository's Go module at the pin's ref, checked like a direct download."""

        def both_failed(why: str) -> UpstreamError:
            return UpstreamError(
                f"{pin.label}: could not fetch it from either source: {direct_failure}; Go module proxy: {why}"
            )

        go = shutil.which("go")
        if go is None:
            raise both_failed(f"`go` is not on PATH, so {source.repository} at {source.ref} was not asked for")
        failures = []
        with tempfile.TemporaryDirectory(prefix="space-harbor-vendor-") as workdir:
            # An empty module of its own, so that no go.mod around the working directory is read or changed.
            Path(workdir, "go.mod").write_text("module space-harbor-vendor\n", encoding="utf-8")
            candidates = source.module_paths()
            while candidates:
                module = candidates.pop(0)
                folder, why = _go_mod_download(go, module, source.ref, Path(workdir))
                if folder is not None:
                    break
                failures.append(" ".join(why.split()))  # go's message names module@ref
                # At a commit, go names the module path a post-v1 go.mod declares: ask for that one.
                declared = re.search(rf'"({re.escape(source.repository)}/v\d+)"', why)
                if declared and declared.group(1) not in candidates and declared.group(1) != module:
                    candidates.insert(0, declared.group(1))
            else:
                raise both_failed("; ".join(failures))
        where = folder / source.path
        label = f"{source.path} of Go module {module}@{source.ref}"
        try:
            with where.open("rb") as handle:
                content = handle.read(MAX_BYTES + 1)
        except OSError as error:
            # A nested module's files and vendor folders are not in a module zip.
            raise both_failed(f"{source.path} is not in the module ({error})") from None
        problem = self._problem(pin, content)
        if problem is not None:
            raise UpstreamError(f"{pin.label}: {label} has {problem}; refusing it (nothing was written)")
        return content, label

    def _write_atomically(self, pin: Pin, content: bytes) -> None:
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        # Written beside its final name and renamed: a reader sees the whole file or none.
        handle, temporary = tempfile.mkstemp(dir=self.cache_dir, prefix=f".{pin.sha256}.")
        try:
            with os.fdopen(handle, "wb") as out:
                out.write(content)
                out.flush()
                os.fsync(out.fileno())
            os.chmod(temporary, 0o644)
            os.replace(temporary, self.cached_path(pin))
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise

    def fetch(self, report: Callable[[str], None] = print) -> list[UpstreamError]:
        """Make every pinned file present and verified in the cache; return the problems (none: success).

        A file already cached and verified is not fetched again. A cached file that fails its check is
        replaced by a fresh, verified download.
        """
        problems: list[UpstreamError] = []
        for versions in self.pins.values():
            for pin in versions.values():
                path = self.cached_path(pin)
                if path.exists():
                    if self._problem(pin, path.read_bytes()) is None:
                        report(f"{pin.label}: present, sha256 {pin.sha256}")
                        continue
                    report(f"{pin.label}: {path} does not match its pin; fetching it again")
                try:
                    content, source = self._download(pin)
                    self._write_atomically(pin, content)
                except UpstreamError as error:
                    problems.append(error)
                    continue
                report(f"{pin.label}: fetched {source}, sha256 {pin.sha256}")
        return problems


# The pins and cache the program reads. Tests swap this object for their own fixtures in-process.
STORE = PinnedFiles(PINS_FILE, CACHE_DIR)


def read_pinned(kind: str, version: str) -> str:
    """The verified text of a pinned upstream file; raises `UpstreamError` when it is missing or altered."""
    return STORE.read(kind, version)


def pinned_versions(kind: str) -> tuple[str, ...]:
    return STORE.versions(kind)


def sole_pin(kind: str) -> Pin:
    """The one pin of `kind`: for files the program uses in a single version (the k3s installer)."""
    versions = STORE.versions(kind)
    if len(versions) != 1:
        found = ", ".join(versions) or "none"
        raise UpstreamError(f"exactly one {kind} must be pinned in {STORE.pins_file}; found: {found}")
    return STORE.pin(kind, versions[0])


def pinned_path(kind: str, version: str) -> Path:
    """The verified local copy of a pinned file; raises `UpstreamError` when it is missing or altered."""
    return STORE.verified_path(kind, version)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m components.upstream", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("fetch", help="download every pinned file once, check its sha256, cache it")
    commands.add_parser("list", help="print kind, version, url, sha256 and size of every pin")
    args = parser.parse_args(argv)
    try:
        if args.command == "list":
            for versions in STORE.pins.values():
                for pin in versions.values():
                    print(pin.kind, pin.version, STORE.source_url(pin), pin.sha256, pin.size)
            return 0
        problems = STORE.fetch()
    except UpstreamError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
