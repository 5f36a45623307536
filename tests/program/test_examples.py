"""The example stacks in examples/ load through the config model and evaluate under mocks, and a
stack that opts out of host-key pins is warned about each unpinned node on every run."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from components.config import load_config
from tests.conftest import base_config, fake_private_key
from tests.harness import run_program

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "examples").glob("*.yaml"))


def example(path: Path) -> dict[str, Any]:
    """The example's config as the program reads it, with the secrets the quick start sets."""
    document = yaml.safe_load(path.read_text())
    raw = {key.split(":", 1)[1]: value for key, value in document["config"].items()}
    raw["sshPrivateKey"] = fake_private_key("example-ssh")
    raw["gitops"]["sshPrivateKey"] = fake_private_key("example-git")
    raw["gitops"]["argocdSshPrivateKey"] = fake_private_key("example-argocd")
    return raw


# A value of the examples' world: their domain and organisation, documentation addresses (RFC 5737),
# the example repository's host (GitHub: its host key follows the repository).
EXAMPLE_WORLD = re.compile(r"example\.org|example-org|\b(?:192\.0\.2|198\.51\.100|203\.0\.113)\.\d|github\.com")


def test_the_minimal_examples_and_the_tour_are_there() -> None:
    assert {p.name for p in EXAMPLES} >= {"single-node.yaml", "three-vps.yaml", "tour.yaml"}


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_an_example_loads_and_pins_every_node(path: Path) -> None:
    config = load_config(example(path))
    assert all(node.ssh_host_key for node in config.nodes)
    assert not config.ssh.allow_unpinned_host_keys


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_an_example_previews_under_mocks(path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    run = run_program(example(path), preview=True)
    names = {node["name"] for node in example(path)["nodes"]}
    assert {f"{name}-preflight" for name in names} <= {r.name for r in run.commands()}
    assert not [r for r in caplog.records if "sshHostKey" in r.getMessage()]


def test_the_minimal_examples_have_no_tour_features() -> None:
    # Copied as they are, nothing silently keeps pods off a node or needs a machine beside the nodes.
    for name in ("single-node.yaml", "three-vps.yaml"):
        raw = example(next(p for p in EXAMPLES if p.name == name))
        for node in raw["nodes"]:
            assert set(node) <= {"name", "role", "host", "meshAddress", "sshHostKey"}, node
        assert "ssh" not in raw and "mesh" not in raw


@pytest.mark.parametrize("preview", [True, False], ids=["preview", "up"])
def test_each_unpinned_node_is_warned_about_on_every_run(preview: bool, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    config = base_config(agents=2)
    del config["nodes"][0]["sshHostKey"], config["nodes"][2]["sshHostKey"]
    config["ssh"] = {"allowUnpinnedHostKeys": True}
    run_program(config, preview=preview)
    warnings = [r.getMessage() for r in caplog.records if "sshHostKey is not set" in r.getMessage()]
    assert len(warnings) == 2
    assert warnings[0].startswith("nodes[0].sshHostKey is not set: server-1 is dialled with no host-key check")
    assert "and so is the API tunnel" in warnings[0]
    assert warnings[1].startswith("nodes[2].sshHostKey is not set: agent-2")
    assert "ssh-keyscan -t ed25519 192.0.2.22" in warnings[1]


@pytest.mark.parametrize("path", [p for p in EXAMPLES if p.name != "tour.yaml"], ids=lambda p: p.name)
def test_every_value_a_newcomer_replaces_is_marked_edit(path: Path) -> None:
    """The quick start's step 4 edits the lines marked EDIT: each value of the example's world is on
    one. The nodes' host keys are not: step 6 pins them with ssh-keyscan."""
    for line in path.read_text().splitlines():
        value = line.split(" #", 1)[0]
        if not value.strip() or value.lstrip().startswith("#"):
            continue
        if EXAMPLE_WORLD.search(value):
            assert "# EDIT" in line, f"{path.name}: a newcomer must change this line, not marked EDIT: {line}"
        if "sshHostKey:" in value:
            assert "# EDIT" not in line and "step 6" in line, f"{path.name}: {line}"
