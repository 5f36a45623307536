"""The stack config a testbed user would write, and the program run + runner built from it."""

from __future__ import annotations

import copy
import shlex
from typing import Any

from components.config import DEFAULT_K3S_VERSION
from components.shipped import ShippedFile, file_sha256
from tests.harness import ProgramRun, run_program
from tests.testbed.nodes import GIT_ADDRESS, GIT_REPO, STANDIN_INSTALLER, Testbed, call_in_netns
from tests.testbed.runner import Runner

MESH_INTERFACE = "wg-harbor"
MESH_BASE = "10.160.0."
K3S_VERSION = DEFAULT_K3S_VERSION


def stack_config(tb: Testbed, *, node_names: list[str] | None = None, **overrides: Any) -> dict[str, Any]:
    """Config for the booted nodes (the first is the server), k3s air-gapped, git on the git node."""
    nodes = tb.stack_nodes(mesh_base=MESH_BASE)
    if node_names is not None:
        nodes = [n for n in nodes if n["name"] in node_names]
    git_known_hosts = (
        tb.git_known_hosts()
        if tb.git
        else f"{GIT_ADDRESS} ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"
    )
    config: dict[str, Any] = {
        "domain": "harbor.test",
        "sshPrivateKey": tb.client_key,
        "nodes": nodes,
        "k3s": {"airgap": True, "version": K3S_VERSION},
        "gitops": {
            "repoUrl": f"root@{GIT_ADDRESS}:{GIT_REPO}",
            "sshPrivateKey": tb.client_key,
            "knownHosts": git_known_hosts,
        },
        "components": {
            "traefik": {"acmeEmail": "ops@harbor.test"},
            "infracheck": {"host": "health.harbor.test"},
        },
    }
    for key, value in overrides.items():
        config[key] = copy.deepcopy(value)
    return config


def program(tb: Testbed, config: dict[str, Any]) -> tuple[ProgramRun, Runner]:
    """Evaluate the program in up mode and wrap its commands in a runner that dials from the controller.

    The program itself runs inside the controller namespace too: whatever it might dial while
    evaluating (it should dial nothing under mocks) can only reach the testbed's bridge.
    """
    run = call_in_netns(tb.ctl, run_program, config)
    runner = Runner(run.resources, ssh_prefix=["ip", "netns", "exec", tb.ctl], workdir=tb.workdir)
    return run, runner


def names(runner: Runner, *suffixes: str, nodes: list[str] | None = None) -> list[str]:
    """Command names ending in one of `suffixes` (e.g. "-mesh"), optionally only these nodes'."""
    found = [n for n in runner.by_name if n.endswith(suffixes)]
    if nodes is not None:
        found = [n for n in found if any(n == f"{node}{s}" for node in nodes for s in suffixes)]
    return sorted(found)


def quote(text: str) -> str:
    return shlex.quote(text)


def stage_installer(tb: Testbed, node: str) -> dict[str, str]:
    """Stage the (stand-in) installer on `node` as the copy step does; the k3s.sh parameters naming it.

    For tests that run k3s.sh on a node directly, without the program's steps.
    """
    shipped = ShippedFile("installer", STANDIN_INSTALLER, file_sha256(STANDIN_INSTALLER))
    # into the private directory, as the node's `shipped` step makes it (k3s.sh prepare-staging)
    directory = "install -d -m 755 /var/lib/space-harbor && install -d -m 700 /var/lib/space-harbor/staging"
    tb.ssh(node, f"{directory} && cat >{shipped.staged_path}", input=STANDIN_INSTALLER.read_text())
    return shipped.parameters()
