"""`k3s.airgap` as files: the program ships the binary and images, the nodes check and install them.

Two booted nodes with nothing of k3s on them (n1 the server, n2 an agent) and no way to download
anything. The stack names a k3s binary (the stand-in, built for the version) and an image archive
on the machine that runs Pulumi; each config change is applied with `up`: the real `pulumi up`
when the engine's tools are built, else the replay (tests/testbed/conftest.py `engine_cluster`).
pulumi-command's CopyToRemote copies on create, and on update only for a new file or path; it has
no delete. The installer is the pinned one the program always ships (the test pin is the stand-in
installer).
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.testbed.conftest import engine_cluster, inventory
from tests.testbed.nodes import AIRGAP_BINARY, KEPT_INSTALLER, STANDIN_K3S, Testbed
from tests.testbed.stack import K3S_VERSION, stack_config
from tests.testbed.stack_engine import Report, StackEngine

pytestmark = pytest.mark.testbed

NODES = ["n1", "n2"]
NEW_VERSION = "v1.32.1+k3s1"
IMAGES_DIR = "/var/lib/rancher/k3s/agent/images"


def standin_binary(directory: Path, version: str) -> Path:
    """The k3s stand-in as a k3s binary of `version`, as an operator downloads k3s for an air gap."""
    text = STANDIN_K3S.read_text().replace(
        'STANDIN_VERSION="${K3S_STANDIN_VERSION:-v1.31.4+k3s1}"',
        f'STANDIN_VERSION="${{K3S_STANDIN_VERSION:-{version}}}"',
    )
    assert version in text
    path = directory / f"k3s-{version}"
    path.write_text(text)
    return path


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@dataclass
class Stack:
    cluster: StackEngine
    files: Path  # the operator's downloads, on the machine that runs Pulumi
    # every path an install could write to, on each node before the first up
    before: dict[str, set[str]] = field(default_factory=dict)

    @property
    def engine_kind(self) -> str:
        return self.cluster.engine_kind

    @property
    def tb(self) -> Testbed:
        return self.cluster.tb

    @property
    def config(self) -> dict[str, Any]:
        return self.cluster.config

    def up(self, config: dict[str, Any]) -> Report:
        return self.cluster.up(config)

    def staged(self, node: str) -> list[str]:
        listing = "ls /var/lib/space-harbor/staging /var/tmp 2>/dev/null | grep '^space-harbor-' || true"
        return sorted(self.tb.ssh(node, listing).stdout.split())


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    # Nothing of k3s on the nodes: the stack ships it.
    for cluster in engine_cluster(NODES, tmp_path_factory.mktemp("airgap"), git=False, stage_k3s=False):
        yield Stack(cluster, tmp_path_factory.mktemp("airgap-files"))


def airgap_config(stack: Stack, binary: Path, images: Path | None) -> dict[str, Any]:
    files: dict[str, str] = {"binary": str(binary)}
    if images is not None:
        files["images"] = str(images)
    config = stack_config(stack.tb, node_names=NODES)
    config["k3s"] = {**config["k3s"], "airgap": files}
    return config


def test_day_one_ships_binary_and_images_and_installs_without_network(stack: Stack) -> None:
    tb = stack.tb
    stack.before = {n: inventory(tb, n) for n in NODES}
    binary = standin_binary(stack.files, K3S_VERSION)
    images = stack.files / "k3s-airgap-images-amd64.tar.zst"
    images.write_bytes(b"not really zstd: the stand-in imports nothing, k3s would import this\n" * 64)
    report = stack.up(airgap_config(stack, binary, images))

    for name in NODES:
        assert {f"{name}-ship-installer", f"{name}-ship-binary", f"{name}-ship-images"} <= set(report.creates)
        # each copy ran before the install that takes it
        for kind in ("installer", "binary", "images"):
            assert report.result(f"{name}-ship-{kind}").finished <= report.result(f"{name}-k3s").started
        listing = tb.ssh(
            name,
            f"sha256sum {AIRGAP_BINARY} {IMAGES_DIR}/space-harbor-airgap-images.tar.zst; "
            f"stat -c '%n %a %U' {AIRGAP_BINARY} {IMAGES_DIR}/space-harbor-airgap-images.tar.zst {KEPT_INSTALLER}",
        ).stdout.split()
        assert listing[0] == sha256(binary) and listing[2] == sha256(images), listing
        assert listing[4:] == [
            AIRGAP_BINARY, "755", "root",
            f"{IMAGES_DIR}/space-harbor-airgap-images.tar.zst", "644", "root",
            KEPT_INSTALLER, "700", "root",
        ]  # fmt: skip
        unit = "k3s" if name == "n1" else "k3s-agent"
        assert tb.ssh(name, f"systemctl is-active {unit}").stdout.strip() == "active"
        version = tb.ssh(name, f"{AIRGAP_BINARY} --version").stdout
        assert K3S_VERSION in version
        assert len(stack.staged(name)) == 3, stack.staged(name)


def test_a_rerun_copies_nothing_and_runs_no_k3s_step(stack: Stack) -> None:
    report = stack.up(copy.deepcopy(stack.config))
    touched = {name for name in report.ran() if "-ship" in name or name.endswith(("-k3s", "-upgrade"))}
    assert touched == set(), touched


def test_an_upgrade_ships_the_new_binary_and_prunes_the_old(stack: Stack) -> None:
    tb = stack.tb
    binary = standin_binary(stack.files, NEW_VERSION)
    config = copy.deepcopy(stack.config)
    config["k3s"]["version"] = NEW_VERSION
    config["k3s"]["airgap"]["binary"] = str(binary)
    old_staged = {n: stack.staged(n) for n in NODES}
    report = stack.up(config)
    for name in NODES:
        assert f"{name}-ship-binary" in report.ran(), "a new binary is a new file and path: copied again"
        assert f"{name}-ship-images" not in report.ran(), "the images did not change"
        assert report.result(f"{name}-ship-binary").finished <= report.result(f"{name}-upgrade").started
        assert tb.ssh(name, f"sha256sum {AIRGAP_BINARY}").stdout.split()[0] == sha256(binary)
        assert NEW_VERSION in tb.ssh(name, f"{AIRGAP_BINARY} --version").stdout
        staged = stack.staged(name)
        assert len(staged) == 3 and staged != old_staged[name], staged
        assert f"space-harbor-k3s-binary-{sha256(binary)[:16]}" in staged


def test_dropping_the_images_removes_them_and_restarts(stack: Stack) -> None:
    tb = stack.tb
    config = copy.deepcopy(stack.config)
    del config["k3s"]["airgap"]["images"]
    report = stack.up(config)
    for name in NODES:
        out = report.result(f"{name}-k3s").stderr
        assert "space-harbor-airgap-images.tar.zst (no longer shipped)" in out, out
        assert tb.ssh(name, f"ls -A {IMAGES_DIR}").stdout == ""
    assert {n for n in report.deletes if n.endswith("-ship-images")} == {f"{n}-ship-images" for n in NODES}


def test_removing_the_agent_leaves_nothing_of_what_was_shipped(stack: Stack) -> None:
    tb = stack.tb
    config = copy.deepcopy(stack.config)
    config["nodes"] = [n for n in config["nodes"] if n["name"] != "n2"]
    report = stack.up(config)
    assert {"n2-k3s", "n2-shipped", "n2-ship-installer", "n2-ship-binary"} <= set(report.deletes)
    # the copies' deletes dial nobody; the shipped step's delete removes the staged files
    assert "n2-ship-binary" not in report.ran() and "n2-shipped" in report.ran()
    # (the packages the mesh and firewall installed stay, as on any decommissioned node)
    left = {p for p in inventory(tb, "n2") - stack.before["n2"] if any(s in p for s in ("k3s", "rancher", "harbor"))}
    assert not left, sorted(left)
    assert stack.staged("n2") == []
