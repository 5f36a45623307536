"""The real Pulumi CLI, driven as a user types it, against testbed nodes.

`./scripts/engine env` says where the CLI, its language host and the plugins are; this module runs
`pulumi` with exactly that environment, a local file backend and the passphrase secrets provider,
inside the testbed's controller namespace (so the program, its plugins and the API tunnel can reach
only the testbed's bridge). Secrets go to `pulumi config set --secret` on stdin, never in argv.

The project is a copy of this repository's program in a temporary folder, so that stack files,
state and the vendored upstream files never land in the work tree. The copy's pins are the real
ones wherever `./scripts/vendor` can get the file (here: Argo CD's core-install.yaml of each
release, through the Go module proxy, since GitHub is out of reach), so the API server holds
upstream's CRDs with their full schemas. The test fixtures stand in only for:

- the k3s installer, always: the testbed's k3s is a stand-in, installed by its own installer;
- a pin the fetch cannot get, each on its own (here: the backup CRD, which neither GitHub nor the
  Go module proxy serves), from tests/fixtures/upstream at the same version.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent.parent
ENGINE = ROOT / "scripts" / "engine"
FIXTURE_PINS = ROOT / "tests" / "fixtures" / "upstream"
# Kinds of pin the testbed always replaces by its own: the k3s installer installs the k3s stand-in.
TESTBED_KINDS = ("k3s-installer",)
STANDIN_INSTALLER = ROOT / "tests" / "testbed" / "standin" / "k3s-install-standin.sh"
PROJECT_FILES = ("Pulumi.yaml", "__main__.py", "requirements.txt", "components", "manifests", "scripts")
PASSPHRASE = "space-harbor-real-engine-tier"  # a test stack's passphrase, not a secret of anyone's


def engine_environment() -> dict[str, str]:
    """The environment `eval "$(./scripts/engine env)"` gives a shell; raises when the tools are missing."""
    status = subprocess.run([str(ENGINE), "status"], capture_output=True, text=True, check=False)
    if status.returncode != 0:
        raise RuntimeError(f"the real-engine tools are not built ({ENGINE} status): {status.stdout}{status.stderr}")
    shown = subprocess.run(
        ["bash", "-c", f'eval "$({ENGINE} env)" && env -0'],
        capture_output=True,
        check=True,
        env={"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/root")},
    )
    return dict(item.split("=", 1) for item in shown.stdout.decode().split("\0") if "=" in item)


def control_plane_binaries() -> dict[str, Path]:
    """kine, kube-apiserver, kube-controller-manager, kube-scheduler, kubectl from the engine's PATH."""
    path = engine_environment()["PATH"]
    found = {}
    for name in ("kine", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl"):
        where = shutil.which(name, path=path)
        if where is None:
            raise RuntimeError(f"{name} is not among the engine's tools (./scripts/engine build)")
        found[name] = Path(where).resolve()
    return found


def copy_project(target: Path) -> Path:
    """This program in `target`, vendored there: the real upstream files it can fetch, fixtures for the rest."""
    target.mkdir(parents=True, exist_ok=True)
    for name in PROJECT_FILES:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, target / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, target / name)
    (target / ".venv").symlink_to(ROOT / ".venv")
    fixtures = target / "manifests" / "upstream"
    fixtures.mkdir()
    for fixture in FIXTURE_PINS.iterdir():
        shutil.copy2(fixture, fixtures / fixture.name)
    shutil.copy2(STANDIN_INSTALLER, fixtures / STANDIN_INSTALLER.name)
    fixture_pins = yaml.safe_load((FIXTURE_PINS / "upstream.yaml").read_text())
    for versions in fixture_pins.values():
        for fields in versions.values():
            fields["url"] = "upstream/" + fields["url"].replace("../../testbed/standin/", "")
    pins = yaml.safe_load((ROOT / "manifests" / "upstream.yaml").read_text())
    for kind in TESTBED_KINDS:
        pins[kind] = fixture_pins[kind]
    pins_file = target / "manifests" / "upstream.yaml"
    pins_file.write_text(yaml.safe_dump(pins, sort_keys=False))
    vendor = [str(target / "scripts" / "vendor")]
    first = subprocess.run(vendor, cwd=target, capture_output=True, text=True, check=False)
    if first.returncode != 0:
        cache = target / ".cache" / "upstream"
        for kind, versions in pins.items():
            for version, fields in versions.items():
                if not (cache / fields["sha256"]).exists():
                    versions[version] = fixture_pins[kind][version]
        pins_file.write_text(yaml.safe_dump(pins, sort_keys=False))
        second = subprocess.run(vendor, cwd=target, capture_output=True, text=True, check=False)
        if second.returncode != 0:
            raise AssertionError(f"./scripts/vendor failed with fixtures in place:\n{first.stderr}{second.stderr}")
    return target


@dataclass
class Result:
    argv: list[str]
    returncode: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


class Pulumi:
    """`pulumi` in one project folder and one netns, state in a folder of its own."""

    def __init__(self, project: Path, state: Path, netns: str | None) -> None:
        self.project = project
        self.netns = netns
        state.mkdir(parents=True, exist_ok=True)
        home = state.parent / f"{state.name}-home"
        home.mkdir(exist_ok=True)
        self.env = engine_environment() | {
            "PULUMI_BACKEND_URL": f"file://{state}",
            "PULUMI_CONFIG_PASSPHRASE": PASSPHRASE,
            "PULUMI_SKIP_CONFIRMATIONS": "true",
            "HOME": str(home),
            "NO_COLOR": "1",
        }
        self.env.pop("PULUMI_ACCESS_TOKEN", None)

    def run(self, *args: str, input: str | None = None, check: bool = True, timeout: float = 1500) -> Result:
        argv = ["pulumi", "--non-interactive", *args]
        prefix = ["ip", "netns", "exec", self.netns] if self.netns else []
        done = subprocess.run(
            [*prefix, *argv],
            cwd=self.project,
            env=self.env,
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        result = Result(argv, done.returncode, done.stdout, done.stderr)
        if check and done.returncode != 0:
            raise AssertionError(f"{' '.join(argv)} exited {done.returncode}:\n{result.output[-8000:]}")
        return result

    def stack_init(self, stack: str) -> None:
        self.run("stack", "init", stack, "--secrets-provider", "passphrase")

    def export(self) -> dict[str, Any]:
        return json.loads(self.run("stack", "export", "--show-secrets").stdout)

    def resources(self) -> list[dict[str, Any]]:
        return self.export()["deployment"].get("resources") or []
