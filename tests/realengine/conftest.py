"""The real-engine tier: the real `pulumi` CLI against testbed nodes with a real API server.

Every test here is marked `realengine` and `testbed`. `./scripts/test` selects the tier only when
`./scripts/engine status` says the tools are built, and says in its last line whether it ran; a
test that finds them missing fails (it never skips into a pass).
"""

from __future__ import annotations

import copy
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.realengine.cli import ROOT, Pulumi, control_plane_binaries, copy_project
from tests.testbed.nodes import Testbed, missing_requirements
from tests.testbed.stack import K3S_VERSION, stack_config

# Secrets as a user sets them: `pulumi config set --secret` (the value on stdin).
SECRET_KEYS = {"sshPrivateKey", "gitops.sshPrivateKey"}


@dataclass
class RealStack:
    """One testbed, one project copy, one stack: what a user has after `pulumi stack init`."""

    tb: Testbed
    pulumi: Pulumi
    config: dict[str, Any]
    name: str = "realtier"

    def apply_config(self, config: dict[str, Any]) -> None:
        """Make `config` the whole stack config, as a user does: the stack file edited by hand for
        plain values, `pulumi config set --secret` (value on stdin) for each secret."""
        stack_file = self.pulumi.project / f"Pulumi.{self.name}.yaml"
        salt = yaml.safe_load(stack_file.read_text()).get("encryptionsalt")
        plain = copy.deepcopy(config)
        secrets = {}
        for path in SECRET_KEYS:
            *parents, leaf = path.split(".")
            holder = plain
            for key in parents:
                holder = holder.get(key, {})
            if leaf in holder:
                secrets[path] = holder.pop(leaf)
        document = {"encryptionsalt": salt, "config": {f"space-harbor:{k}": v for k, v in plain.items()}}
        stack_file.write_text(yaml.safe_dump(document, sort_keys=False))
        for path, value in sorted(secrets.items()):
            self.pulumi.run("config", "set", "--secret", "--path", f"space-harbor:{path}", input=value)
        self.config = config


def stop_tunnels(stack: RealStack) -> None:
    """Stop the API tunnels the program started for this stack (they outlive it, by design): each
    by the port its record names, through the tunnel's own `stop`, which signals the recorded pid."""
    stop_tunnels_of(Path(stack.pulumi.env["HOME"]), stack.pulumi.project, stack.pulumi.env["PATH"])


def stop_tunnels_of(home: Path, project: Path, path: str) -> None:
    """Stop the API tunnels recorded under `home` (a user's HOME), from the project folder `project`."""
    for record in sorted((home / ".cache" / "space-harbor").glob("tunnel-*.json")):
        port = record.stem.removeprefix("tunnel-")
        subprocess.run(
            [str(ROOT / ".venv" / "bin" / "python"), "-m", "components.tunnel", "stop", port],
            cwd=project,
            env={"PATH": path, "HOME": str(home)},
            capture_output=True,
            check=False,
        )


def booted(nodes: list[str], *, stage_k3s: bool = True) -> Iterator[Testbed]:
    reason = missing_requirements()
    if reason:
        pytest.fail(reason)
    tb = Testbed(k3s_version=K3S_VERSION, control_plane=control_plane_binaries())
    try:
        tb.start()
        tb.add_nodes(nodes, stage_k3s=stage_k3s)
        tb.add_git_server()
        yield tb
    finally:
        tb.close()


def real_stack(tb: Testbed, tmp: Path) -> RealStack:
    project = copy_project(tmp / "project")
    pulumi = Pulumi(project, tmp / "state", tb.ctl)
    stack = RealStack(tb, pulumi, {})
    pulumi.stack_init(stack.name)
    stack.apply_config(stack_config(tb))
    return stack


def stack_on(nodes: list[str], tmp: Path, *, up: bool, stage_k3s: bool = True) -> Iterator[RealStack]:
    """A module's cluster: booted nodes (the first the server; the k3s binary placed unless
    `stage_k3s` is false) and a git server, a stack initialised for them and, with `up`, applied;
    afterwards its tunnels stopped and the nodes torn down."""
    for tb in booted(nodes, stage_k3s=stage_k3s):
        stack = real_stack(tb, tmp)
        try:
            if up:
                stack.pulumi.run("up", "--yes", "--skip-preview")
            yield stack
        finally:
            stop_tunnels(stack)


@pytest.fixture(scope="module")
def cluster4(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealStack]:
    """n1 (server) and n2..n4 (agents), a git server, a stack initialised for them (not yet up)."""
    yield from stack_on(["n1", "n2", "n3", "n4"], tmp_path_factory.mktemp("real"), up=False)
