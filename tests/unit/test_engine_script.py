"""scripts/engine: the cache keyed by the recipe, the exports of `env`, and `status`.

Each test copies the script into a scratch repository whose build/ holds tiny recipes
(build.sh writes a shell script instead of running Go), with a fake `go` whose version the
test chooses: no Go build runs and nothing outside the scratch directory is touched.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers import shellcheck

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "engine"
FAMILIES = {
    "pulumi": ["pulumi", "pulumi-language-python"],
    "provider-kubernetes": ["pulumi-resource-kubernetes"],
    "kubernetes": ["kube-apiserver"],
}


@dataclass
class Repo:
    root: Path
    cache: Path
    bin: Path
    runs: Path  # one line per build.sh run

    def env(self, **extra: str) -> dict[str, str]:
        env = {
            "HOME": str(self.root),
            "PATH": f"{self.bin}:/usr/bin:/bin",
            "SPACE_HARBOR_ENGINE_CACHE": str(self.cache),
            "FAKE_GO_VERSION": "go1.26.8",
        }
        env.update(extra)
        return env

    def run(self, *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.root / "scripts" / "engine"), *args],
            capture_output=True,
            text=True,
            env=self.env(**extra),
            timeout=60,
        )

    def key(self, family: str, **extra: str) -> str:
        result = self.run("key", family, **extra)
        assert result.returncode == 0, result.stderr
        return result.stdout.strip()


def write_recipe(root: Path, family: str, executables: list[str]) -> None:
    family_dir = root / "build" / family
    family_dir.mkdir(parents=True)
    (family_dir / "go.mod").write_text(f"module spaceharbor.local/build/{family}\n")
    lines = ["#!/usr/bin/env bash", "set -euo pipefail", f'echo {family} >>"$RUNS"']
    for name in executables:
        lines.append(f"printf '#!/bin/sh\\necho {name} from {family}\\n' >\"$OUT/{name}\"")
        lines.append(f'chmod +x "$OUT/{name}"')
    (family_dir / "build.sh").write_text("\n".join(lines) + "\n")
    (family_dir / "build.sh").chmod(0o755)


@pytest.fixture
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Repo:
    root = tmp_path / "repo"
    (root / "scripts").mkdir(parents=True)
    shutil.copy2(SCRIPT, root / "scripts" / "engine")
    for family, executables in FAMILIES.items():
        write_recipe(root, family, executables)
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    go = fake_bin / "go"
    go.write_text('#!/bin/sh\necho "go version $FAKE_GO_VERSION linux/amd64"\n')
    go.chmod(0o755)
    runs = tmp_path / "runs"
    runs.touch()
    monkeypatch.setenv("RUNS", str(runs))
    return Repo(root=root, cache=tmp_path / "cache", bin=fake_bin, runs=runs)


def build(repo: Repo) -> None:
    result = subprocess.run(
        [str(repo.root / "scripts" / "engine"), "build"],
        capture_output=True,
        text=True,
        env={**repo.env(), "RUNS": str(repo.runs)},
        timeout=60,
    )
    assert result.returncode == 0, result.stderr


def parse_exports(text: str) -> dict[str, str]:
    """The variables the printed lines set, as bash itself sees them after eval."""
    script = f"{text}\nenv -0"
    out = subprocess.run(["bash", "-c", script], capture_output=True, env={"PATH": "/usr/bin:/bin"}, check=True)
    return dict(item.split("=", 1) for item in out.stdout.decode().split("\0") if "=" in item)


@pytest.mark.parametrize(
    "script", [SCRIPT, *sorted((ROOT / "build").glob("*/build.sh"))], ids=lambda p: str(p.relative_to(ROOT))
)
def test_scripts_are_shellcheck_clean(script: Path) -> None:
    result = shellcheck("-x", str(script))
    assert result.returncode == 0, result.stdout


def test_the_key_changes_with_the_recipe_and_the_go_version(repo: Repo) -> None:
    before = repo.key("pulumi")
    assert repo.key("pulumi") == before
    assert repo.key("kubernetes") != before

    go_mod = repo.root / "build" / "pulumi" / "go.mod"
    go_mod.write_text(go_mod.read_text() + "\nrequire example.test/x v1.0.0\n")
    edited = repo.key("pulumi")
    assert edited != before

    (repo.root / "build" / "pulumi" / "main.go").write_text("package main\n")
    added = repo.key("pulumi")
    assert added not in {before, edited}

    # A module nested in the family's directory (the language host's) is part of its recipe.
    nested = repo.root / "build" / "pulumi" / "language-python"
    nested.mkdir()
    (nested / "host.go").write_text("package main\n")
    assert repo.key("pulumi") not in {before, edited, added}

    assert repo.key("pulumi", FAKE_GO_VERSION="go1.27.0") != repo.key("pulumi")


def test_the_key_sees_the_executable_bit(repo: Repo) -> None:
    before = repo.key("pulumi")
    (repo.root / "build" / "pulumi" / "build.sh").chmod(0o644)
    assert repo.key("pulumi") != before


def test_a_second_build_is_a_no_op_and_an_edit_rebuilds_only_that_family(repo: Repo) -> None:
    build(repo)
    assert sorted(repo.runs.read_text().split()) == sorted(FAMILIES)
    entry = repo.cache / f"pulumi-{repo.key('pulumi')}"
    assert (entry / ".complete").is_file()
    assert (entry / "pulumi").is_file()

    build(repo)
    assert sorted(repo.runs.read_text().split()) == sorted(FAMILIES), "the second build ran a recipe again"

    go_mod = repo.root / "build" / "kubernetes" / "go.mod"
    go_mod.write_text(go_mod.read_text() + "// edited\n")
    build(repo)
    assert repo.runs.read_text().split().count("kubernetes") == 2
    assert repo.runs.read_text().split().count("pulumi") == 1


def test_a_failed_build_leaves_nothing_that_looks_complete(repo: Repo) -> None:
    script = repo.root / "build" / "kine" / "build.sh"
    write_recipe(repo.root, "kine", ["kine"])
    script.write_text(script.read_text().replace('chmod +x "$OUT/kine"', 'chmod +x "$OUT/kine"\nexit 3'))
    result = repo.run("build", RUNS=str(repo.runs))
    assert result.returncode != 0
    assert "kine" in result.stderr
    assert not list(repo.cache.glob("kine-*")), "a failed build left a cache entry"
    # The other families were still built.
    assert (repo.cache / f"pulumi-{repo.key('pulumi')}" / ".complete").is_file()


def test_env_runs_the_built_cli_offline_and_carries_no_access_token(repo: Repo) -> None:
    build(repo)
    result = repo.run("env", PULUMI_ACCESS_TOKEN="pul-secret-token")
    assert result.returncode == 0, result.stderr
    assert "pul-secret-token" not in result.stdout
    exports = parse_exports("export PULUMI_ACCESS_TOKEN=pul-secret-token\n" + result.stdout)
    assert "PULUMI_ACCESS_TOKEN" not in exports
    assert exports["PULUMI_SKIP_UPDATE_CHECK"] == "true"
    assert exports["PULUMI_DISABLE_AUTOMATIC_PLUGIN_ACQUISITION"] == "true"
    assert exports["PULUMI_BACKEND_URL"].startswith("file:///")
    # The file backend needs the directory to exist already.
    assert Path(exports["PULUMI_BACKEND_URL"].removeprefix("file://")).is_dir()
    assert Path(exports["PULUMI_HOME"]).is_absolute()

    # The CLI, the language host, the plugin and the testbed's control plane resolve to the built ones.
    path = exports["PATH"]
    for name, family in [
        ("pulumi", "pulumi"),
        ("pulumi-language-python", "pulumi"),
        ("pulumi-resource-kubernetes", "provider-kubernetes"),
        ("kube-apiserver", "kubernetes"),
    ]:
        found = shutil.which(name, path=path)
        assert found == str(repo.cache / f"{family}-{repo.key(family)}" / name)
        assert subprocess.run([found], capture_output=True, text=True).stdout == f"{name} from {family}\n"


def test_env_uses_a_pulumi_already_on_path(repo: Repo, tmp_path: Path) -> None:
    build(repo)
    own = tmp_path / "own-bin"
    own.mkdir()
    (own / "pulumi").write_text("#!/bin/sh\n")
    (own / "pulumi").chmod(0o755)
    result = repo.run("env", PATH=f"{own}:{repo.bin}:/usr/bin:/bin")
    assert result.returncode == 0, result.stderr
    exports = parse_exports(result.stdout)
    assert "PULUMI_DISABLE_AUTOMATIC_PLUGIN_ACQUISITION" not in exports, "the user's pulumi must fetch plugins"
    # The user's pulumi stays first and no built plugin shadows the ones it fetches; the
    # testbed's control plane is still found.
    path = exports["PATH"]
    assert shutil.which("pulumi", path=path) == str(own / "pulumi")
    assert shutil.which("pulumi-resource-kubernetes", path=path) is None
    kube_apiserver = repo.cache / f"kubernetes-{repo.key('kubernetes')}" / "kube-apiserver"
    assert shutil.which("kube-apiserver", path=path) == str(kube_apiserver)
    assert "PULUMI_ACCESS_TOKEN" not in exports

    forced = parse_exports(
        repo.run("env", PATH=f"{own}:{repo.bin}:/usr/bin:/bin", SPACE_HARBOR_ENGINE_PULUMI="built").stdout
    )
    assert shutil.which("pulumi", path=forced["PATH"]) == str(repo.cache / f"pulumi-{repo.key('pulumi')}" / "pulumi")


def test_env_fails_clearly_before_the_cli_is_built(repo: Repo) -> None:
    result = repo.run("env")
    assert result.returncode != 0
    assert "./scripts/engine build" in result.stderr
    assert "export" not in result.stdout.replace("export PULUMI_", "")


def test_status_exits_non_zero_while_something_is_missing(repo: Repo) -> None:
    before = repo.run("status")
    assert before.returncode != 0
    build(repo)
    after = repo.run("status")
    # The stand-in providers and kine have no recipe in this scratch repository.
    assert after.returncode != 0
    assert "provider-command" in after.stdout
    assert "no recipe" in after.stdout
    for family in ["provider-command", "provider-random", "provider-tls", "kine"]:
        write_recipe(repo.root, family, [family])
    build(repo)
    complete = repo.run("status")
    assert complete.returncode == 0, complete.stdout
    assert complete.stdout.count("built: ") == 7


def test_which_finds_a_built_executable(repo: Repo) -> None:
    assert repo.run("which", "kube-apiserver").returncode != 0
    build(repo)
    result = repo.run("which", "kube-apiserver")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(repo.cache / f"kubernetes-{repo.key('kubernetes')}" / "kube-apiserver")
    assert os.access(result.stdout.strip(), os.X_OK)
