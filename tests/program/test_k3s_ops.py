"""Issue 13's k3s settings in the registered graph: which steps they reach, as what, and what a
change of each one touches. Pulumi updates a step whose inputs changed and replaces one only for
`triggers` (or a new identity), so "touches" is "changes the inputs of", and identities must stay.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
import yaml

from tests.conftest import base_config, etcd_config
from tests.harness import ProgramRun, run_program
from tests.helpers import command_env

PASSWORD = "MARKER-REGISTRY-PASSWORD-3f7d"
REGISTRIES = {
    "mirrors": {"docker.io": {"endpoint": ["https://mirror.example.org:5000"]}},
    "configs": {
        "mirror.example.org:5000": {
            "auth": {"username": "puller", "password": PASSWORD},
            "tls": {"caFile": "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"},
        }
    },
}


def _with_k3s(config: dict[str, Any], **settings: Any) -> dict[str, Any]:
    changed = copy.deepcopy(config)
    changed["k3s"] = {**changed.get("k3s", {}), **copy.deepcopy(settings)}
    return changed


def _changed(before: ProgramRun, after: ProgramRun) -> set[str]:
    """Names of the resources whose inputs differ; the URNs must be the same set.

    The nodes' drift records follow their steps' fingerprints and dial nobody: left out.
    """
    assert {r.urn for r in before.resources} == {r.urn for r in after.resources}
    old = {r.urn: r.inputs for r in before.resources if r.custom}
    records = {r.urn for r in after.drift_records()}
    return {r.name for r in after.resources if r.custom and r.urn not in records and old[r.urn] != r.inputs}


def _k3s_config(run: ProgramRun, node: str) -> dict[str, Any]:
    return yaml.safe_load(command_env(run.named(f"{node}-k3s"))["HARBOR_K3S_CONFIG"])


def _nodes(config: dict[str, Any]) -> list[str]:
    return [node["name"] for node in config["nodes"]]


# --- defaults: existing stacks see no difference ----------------------------------------------------


def test_the_defaults_spelled_out_change_no_input_of_an_existing_stack() -> None:
    config = base_config(agents=2)
    explicit = _with_k3s(config, serviceLoadBalancer="none")
    for node in explicit["nodes"]:
        node["reinstall"] = 0
    assert _changed(run_program(config), run_program(explicit)) == set()


# --- k3s.registries -------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["preview", "up"])
def test_registries_reach_every_node_in_the_secret_stdin_of_its_k3s_step(mode: str) -> None:
    config = _with_k3s(base_config(agents=2), registries=REGISTRIES)
    run = run_program(config, preview=mode == "preview")
    for name in _nodes(config):
        install = run.named(f"{name}-k3s")
        assert "stdin" in install.secret_inputs, name
        # Neither the command line nor anything a non-secret reader sees holds the password.
        assert PASSWORD not in install.public_text()
        for action in ("create", "update", "delete"):
            assert PASSWORD not in str(install.inputs.get(action))
        if mode == "up":
            env = command_env(install)
            registries = yaml.safe_load(env["HARBOR_K3S_REGISTRIES"])
            assert registries["configs"]["mirror.example.org:5000"]["auth"]["password"] == PASSWORD
            assert env["HARBOR_K3S_REGISTRY_FILES"].startswith("mirror.example.org_5000/ca.crt ")
            # the upgrade step installs a version, it writes no registries
            assert "HARBOR_K3S_REGISTRIES" not in command_env(run.named(f"{name}-upgrade"))
    for resource in run.resources:
        if resource.name.endswith("-k3s") and resource.custom:
            continue
        assert PASSWORD not in resource.public_text(), resource.name
        assert PASSWORD not in str(resource.inputs), resource.name


def test_a_registries_change_updates_only_the_k3s_steps() -> None:
    config = base_config(agents=2)
    before = run_program(config)
    with_registries = run_program(_with_k3s(config, registries=REGISTRIES))
    k3s_steps = {f"{name}-k3s" for name in _nodes(config)}
    # The preflight carries no registries; every node's k3s step does, and nothing else changes.
    assert _changed(before, with_registries) == k3s_steps
    for step in k3s_steps:
        assert "triggers" not in with_registries.named(step).inputs
    # And removing the key again is the same update back (the script removes the file it wrote).
    assert _changed(with_registries, run_program(config)) == k3s_steps


# --- k3s.registrationAddress ----------------------------------------------------------------------


def test_with_a_registration_address_moving_the_first_server_leaves_the_other_joins_alone() -> None:
    config = _with_k3s(etcd_config(), registrationAddress="api.example.org")
    run = run_program(config)
    for name in ("server-2", "server-3", "agent-1"):
        assert _k3s_config(run, name)["server"] == "https://api.example.org:6443", name
    moved = copy.deepcopy(config)
    moved["k3s"]["firstServer"] = "server-2"
    after = run_program(moved)
    # server-2 now bootstraps (cluster-init, no server:) and server-1 joins through the address;
    # server-3's and the agent's config.yaml stay the same bytes.
    assert "server" not in _k3s_config(after, "server-2")
    assert _k3s_config(after, "server-1")["server"] == "https://api.example.org:6443"
    for name in ("server-3", "agent-1"):
        assert command_env(after.named(f"{name}-k3s")) == command_env(run.named(f"{name}-k3s")), name
    # Only inputs move: the lifecycle steps dial server-2; no identity changes.
    changed = _changed(run, after)
    assert {"server-3-k3s", "agent-1-k3s"}.isdisjoint(changed)
    assert {"server-1-k3s", "server-2-k3s", "agent-1-registered", "api-credential"} <= changed


def test_without_a_registration_address_moving_the_first_server_rewrites_every_join() -> None:
    """What the README says: each joining node's `server:` follows k3s.firstServer (k3s.sh writes a
    change of that line alone without a restart)."""
    config = etcd_config()
    moved = copy.deepcopy(config)
    moved["k3s"]["firstServer"] = "server-2"
    before, after = run_program(config), run_program(moved)
    for name in ("server-1", "server-3", "agent-1"):
        assert _k3s_config(after, name)["server"] == "https://10.160.0.2:6443", name
    assert {f"{n}-k3s" for n in _nodes(config)} <= _changed(before, after)


def test_adding_a_registration_address_changes_the_joins_and_the_server_certificates_only() -> None:
    config = etcd_config()
    before = run_program(config)
    after = run_program(_with_k3s(config, registrationAddress="api.example.org:7443"))
    changed = _changed(before, after)
    assert changed == {f"{n}-k3s" for n in _nodes(config)}
    for name in ("server-1", "server-2", "server-3"):
        assert "api.example.org" in _k3s_config(after, name)["tls-san"]
    agent = _k3s_config(after, "agent-1")
    old_agent = _k3s_config(before, "agent-1")
    # on the agent only `server:` differs, which k3s.sh writes without restarting it
    assert {k: v for k, v in agent.items() if k != "server"} == {k: v for k, v in old_agent.items() if k != "server"}
    assert agent["server"] == "https://api.example.org:7443"


# --- k3s.serviceLoadBalancer ----------------------------------------------------------------------


def test_klipper_enables_servicelb_on_every_server_and_leaves_the_firewall_as_it_is() -> None:
    config = etcd_config()
    before = run_program(config)
    after = run_program(_with_k3s(config, serviceLoadBalancer="klipper"))
    for name in ("server-1", "server-2", "server-3"):
        assert _k3s_config(after, name)["disable"] == ["traefik"], name
        assert _k3s_config(before, name)["disable"] == ["traefik", "servicelb"], name
    # Only the servers' config.yaml changes. The firewall already judges host ports (klipper's)
    # by their original port: only firewall.publicTcpPorts answer from outside, with or without it.
    assert _changed(before, after) == {"server-1-k3s", "server-2-k3s", "server-3-k3s"}
    for name in _nodes(config):
        assert after.named(f"{name}-firewall").inputs == before.named(f"{name}-firewall").inputs


# --- nodes[i].reinstall ---------------------------------------------------------------------------


def test_a_reinstall_is_an_update_of_that_nodes_install_and_upgrade_steps_never_a_replacement() -> None:
    config = base_config(agents=2)
    before = run_program(config)
    raised = copy.deepcopy(config)
    raised["nodes"][1]["reinstall"] = 1
    after = run_program(raised)
    assert _changed(before, after) == {"agent-1-k3s", "agent-1-upgrade"}
    install = after.named("agent-1-k3s")
    assert command_env(install)["HARBOR_K3S_REINSTALL"] == "1"
    assert command_env(after.named("agent-1-upgrade"))["HARBOR_K3S_REINSTALL"] == "1"
    # An update runs `reconfigure`, which reinstalls; nothing replaces (and so uninstalls) the step.
    assert install.inputs["update"] == "bash -s -- reconfigure"
    assert "triggers" not in install.inputs
    assert install.urn == before.named("agent-1-k3s").urn
    assert "HARBOR_K3S_REINSTALL" not in command_env(after.named("agent-2-k3s"))
