"""Nodes behind a bastion, under mocks: every connection that dials such a node carries pulumi-command's
`proxy`, secret; the tunnel and its stack output go through it; and what the engine does with an
existing stack when a bastion is added (an update of every step that dials the node, no replace).

The same steps over real SSH, through a real bastion, are tests/testbed/test_bastion_on_nodes.py.
"""

from __future__ import annotations

import copy
import json
import logging
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from components.config import load_config
from components.remote import DIAL_ERROR_LIMIT, PER_DIAL_TIMEOUT
from components.render.nftables import render_nftables
from tests.conftest import EXAMPLE_HOST_KEY, SSH_KEY_MARKER, base_config, fake_host_key, fake_private_key
from tests.harness import ProgramRun, Registered, run_program
from tests.testbed.engine import _command_changed

BASTION_KEY = "MARKER-STACK-BASTION-KEY-0c4a"
OWN_BASTION_KEY = "MARKER-NODE-BASTION-KEY-77e1"
BASTION_HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHr1ZKYrCeZ1d6aJx7o5m7VoVWoS2ZrGkzQ6Yw0Qm3uP"


def bastion_config() -> dict[str, Any]:
    """server-1 and agent-3 behind the stack's bastion, agent-1 direct, agent-2 behind its own."""
    config = base_config(agents=3)
    config["ssh"] = {
        "user": "admin",
        "bastion": {
            "host": "198.51.100.5",
            "port": 2222,
            "user": "jump",
            "hostKey": BASTION_HOST_KEY,
            "privateKey": fake_private_key(BASTION_KEY),
        },
    }
    config["nodes"][1]["bastion"] = False
    config["nodes"][2]["bastion"] = {"host": "bastion-2.example.org", "privateKey": fake_private_key(OWN_BASTION_KEY)}
    return config


# The pulumi-command resources that dial a node: commands, and the copies that ship files to it.
STEP_TYPES = ("command:remote:Command", "command:remote:CopyToRemote")
# The steps of a node that run on the first server, not on the node itself (components/k3s.py).
ON_FIRST_SERVER = ("node-object", "drain", "uncordon", "registered")


def steps(run: ProgramRun) -> list[Registered]:
    return [r for r in run.resources if r.type in STEP_TYPES]


def proxies(run: ProgramRun) -> dict[str, dict[str, Any] | None]:
    """Each step's `connection.proxy`, by name."""
    return {c.name: c.inputs["connection"].get("proxy") for c in steps(run)}


def own_steps(run: ProgramRun, node: str) -> set[str]:
    """The steps that run on `node` itself (its preflight, mesh, firewall, copies, k3s, upgrade)."""
    return {r.name for r in steps(run) if r.name.startswith(f"{node}-")} - {f"{node}-{s}" for s in ON_FIRST_SERVER}


def test_every_step_that_dials_a_node_behind_a_bastion_goes_through_it() -> None:
    config = bastion_config()
    run = run_program(config)
    hosts = {node["name"]: node["host"] for node in config["nodes"]}
    stack_bastion = {
        "host": "198.51.100.5",
        "port": 2222,
        "user": "jump",
        "hostKey": BASTION_HOST_KEY,
        "privateKey": fake_private_key(BASTION_KEY),
        "dialErrorLimit": DIAL_ERROR_LIMIT,
        "perDialTimeout": PER_DIAL_TIMEOUT,
    }
    own_bastion = {
        "host": "bastion-2.example.org",
        "port": 22,
        "user": "admin",  # ssh.user: the stack's login, as for the nodes
        "privateKey": fake_private_key(OWN_BASTION_KEY),
        "dialErrorLimit": DIAL_ERROR_LIMIT,
        "perDialTimeout": PER_DIAL_TIMEOUT,
    }
    expected = {hosts["server-1"]: stack_bastion, hosts["agent-3"]: stack_bastion, hosts["agent-2"]: own_bastion}
    by_host: dict[str, set[str]] = {}
    for command in steps(run):
        connection = command.inputs["connection"]
        by_host.setdefault(connection["host"], set()).add(command.name)
        assert connection.get("proxy") == expected.get(connection["host"]), command.name
        # The whole connection is a secret input (it holds both keys); no key is readable outside it.
        assert "connection" in command.secret_inputs, command.name
        for marker in (BASTION_KEY, OWN_BASTION_KEY, SSH_KEY_MARKER):
            assert marker not in command.public_text(), f"{marker} readable in {command.name}"
    # The first server's steps for every node (drains, registrations, the API credential) go
    # through the server's bastion too, so nothing dials a node behind a bastion directly.
    on_server = by_host[hosts["server-1"]]
    assert {"agent-1-registered", "agent-1-node-object", "api-credential", "cluster-departures"} <= on_server
    assert by_host[hosts["agent-1"]] == own_steps(run, "agent-1")
    assert {"agent-1-preflight", "agent-1-k3s"} < own_steps(run, "agent-1")
    assert any(r.type == STEP_TYPES[1] for r in steps(run)), "no copy to check"


def test_opting_out_gives_exactly_the_direct_connection() -> None:
    """`bastion: false` under a stack bastion is the connection a stack without bastions has: no
    `proxy` key at all, so an existing stack that never had a bastion sees no change of any input."""
    plain = run_program(base_config(agents=1))
    assert all(proxy is None for proxy in proxies(plain).values())
    assert all("proxy" not in c.inputs["connection"] for c in steps(plain))
    opted_out = base_config(agents=1)
    opted_out["ssh"] = {"bastion": {"host": "198.51.100.5"}}
    opted_out["nodes"][1]["bastion"] = False
    run = run_program(opted_out)
    for name in ("agent-1-mesh", "agent-1-k3s", "agent-1-preflight"):
        assert run.named(name).inputs == plain.named(name).inputs, name
    assert run.named("agent-1-registered").inputs != plain.named("agent-1-registered").inputs  # runs on server-1


def test_the_api_tunnel_and_its_output_go_through_the_bastion() -> None:
    run = run_program(bastion_config())
    [(target, port)] = run.tunnels
    assert (target.host, target.user) == ("192.0.2.10", "admin")
    assert target.bastion is not None
    assert (target.bastion.host, target.bastion.port, target.bastion.user) == ("198.51.100.5", 2222, "jump")
    assert target.bastion.host_key == BASTION_HOST_KEY
    assert BASTION_KEY in target.bastion.private_key and SSH_KEY_MARKER in target.private_key

    output = run.outputs["apiTunnel"]
    assert output["localPort"] == port
    assert "apiTunnel" not in run.secret_outputs
    for marker in (BASTION_KEY, SSH_KEY_MARKER):
        assert marker not in json.dumps(output)
    assert output["bastion"] == {
        "host": "198.51.100.5",
        "port": 2222,
        "user": "jump",
        "hostKey": BASTION_HOST_KEY,
        "sshKeyConfig": "ssh.bastion.privateKey",
    }
    # By hand: the same loopback port, the same server, through the same bastion.
    assert shlex.split(output["sshCommand"]) == [
        "ssh", "-N", "-L", f"127.0.0.1:{port}:127.0.0.1:6443",
        "-J", "jump@198.51.100.5:2222", "-p", "22", "admin@192.0.2.10",
    ]  # fmt: skip
    # Only the pinned hops get a known_hosts line; a port other than 22 is bracketed.
    assert output["knownHosts"] == [
        f"[198.51.100.5]:2222 {BASTION_HOST_KEY}",
        f"192.0.2.10 {fake_host_key('server-1')}",
    ]


def test_the_bastion_key_config_names_where_the_key_lives() -> None:
    """scripts/kubeconfig reads the bastion's key with `pulumi config get <sshKeyConfig> --path`."""

    def key_config(change: Any) -> str:
        config = base_config(agents=1)
        change(config)
        return str(run_program(config).outputs["apiTunnel"]["bastion"]["sshKeyConfig"])

    assert key_config(lambda c: c.__setitem__("ssh", {"bastion": {"host": "jump.example.org"}})) == "sshPrivateKey"
    own = {"host": "jump.example.org", "privateKey": fake_private_key(OWN_BASTION_KEY)}
    assert key_config(lambda c: c["nodes"][0].__setitem__("bastion", own)) == "nodes[0].bastion.privateKey"


def test_an_ipv6_bastion_is_bracketed_for_ssh_j() -> None:
    config = base_config()
    config["ssh"] = {"bastion": {"host": "2001:db8::5", "hostKey": EXAMPLE_HOST_KEY}}
    output = run_program(config).outputs["apiTunnel"]
    assert "root@[2001:db8::5]:22" in shlex.split(output["sshCommand"])
    assert output["knownHosts"] == [f"2001:db8::5 {EXAMPLE_HOST_KEY}", f"192.0.2.10 {fake_host_key('server-1')}"]


def test_no_bastion_leaves_the_tunnel_output_as_it_was() -> None:
    output = run_program(base_config()).outputs["apiTunnel"]
    assert set(output) == {"host", "port", "user", "hostKey", "localPort", "stack", "sshKeyConfig"}


# --- what the engine does with an existing stack --------------------------------------------------


def _changes(before: ProgramRun, after: ProgramRun) -> dict[str, str]:
    """pulumi-command's diff of each step, matched by URN: "update" or "replace"; unchanged left out."""
    old = {c.urn: c for c in steps(before)}
    assert set(old) == {c.urn for c in steps(after)}, "a bastion must not change any identity"
    return {c.name: change for c in steps(after) if (change := _command_changed(old[c.urn], c))}


def _runs(command: Registered) -> str | None:
    """The action an update runs: `update`, else `create` (pulumi-command); None dials nobody."""
    line = command.inputs.get("update") or command.inputs.get("create")
    return line.rsplit(" ", 1)[-1] if line else None


def test_adding_a_bastion_updates_every_step_that_dials_the_node_and_nothing_else() -> None:
    """A change of `connection` is an update, which re-runs the step's update (or create) command; only
    `triggers` replaces. So a bastion added to an existing stack re-runs every step that dials a node
    behind it, with the node's own parameters unchanged: each script finds its work done."""
    before_config = base_config(agents=2)
    before = run_program(before_config)

    one_agent = copy.deepcopy(before_config)
    one_agent["nodes"][2]["bastion"] = {"host": "198.51.100.5"}
    changes = _changes(before, run_program(one_agent))
    assert set(changes.values()) == {"update"}
    # Only agent-2's own steps: the first server's steps for agent-2 still dial the server directly.
    assert set(changes) == own_steps(before, "agent-2")

    everyone = copy.deepcopy(before_config)
    everyone["ssh"] = {"bastion": {"host": "198.51.100.5"}}
    after = run_program(everyone)
    changes = _changes(before, after)
    assert set(changes.values()) == {"update"}, "a bastion must never replace a step (a k3s replace uninstalls)"
    assert set(changes) == {c.name for c in steps(after)}
    old = {c.urn: c for c in steps(before)}
    for step in steps(after):
        differs = {key for key in step.inputs if step.inputs[key] != old[step.urn].inputs.get(key)}
        # For a copy that also means no copy: pulumi-command copies again only for a new file or path.
        assert differs == {"connection"}, f"{step.name}: {differs}"
    # What the updates run: each an action its script documents as idempotent (a second run
    # changes nothing: tests/testbed/test_bastion_on_nodes.py sees it on a real node).
    actions = {command.name: _runs(command) for command in after.commands()}
    assert actions["server-1-k3s"] == "reconfigure"  # never an install: the version stays
    assert actions["agent-1-upgrade"] == "upgrade"  # nothing when the node runs k3s.version
    assert actions["agent-1-drain"] == "prepare-upgrade"  # nothing when the node runs k3s.version
    # `shipped` makes its staging directory again: nothing to do when it is there (a sandbox test).
    assert {name for name, action in actions.items() if action == "prepare-staging"} == {
        c.name for c in after.commands() if c.name.endswith("-shipped")
    }
    # the cluster id's guard has only a delete: its update dials nobody
    assert {name for name, action in actions.items() if action is None} == {"cluster-id-guard"}
    assert set(actions.values()) - {None} == {
        "check", "apply", "prepare-staging", "reconfigure", "upgrade", "prepare-upgrade", "confirm-upgrade",
        "reconcile", "node-object", "drain-departed", "api-credential",
    }  # fmt: skip


def test_the_firewall_is_the_same_behind_a_bastion() -> None:
    """The node's firewall keeps its own sshd ports open to everyone, bastion or not: the program cannot
    know the address the bastion's connections arrive from, and a wrong guess would lock out the only
    way in. Keeping a node's SSH away from the internet is the network's job (README)."""
    plain = load_config(base_config(agents=1))
    behind = base_config(agents=1)
    behind["ssh"] = {"bastion": {"host": "198.51.100.5"}}
    with_bastion = load_config(behind)
    for node, same in zip(plain.nodes, with_bastion.nodes, strict=True):
        assert render_nftables(plain, node) == render_nftables(with_bastion, same)


def test_the_example_stack_reaches_harbor_2_through_its_bastion() -> None:
    root = Path(__file__).resolve().parents[2]
    text = (root / "examples" / "tour.yaml").read_text()
    document = yaml.safe_load(text)
    raw = {key.split(":", 1)[1]: value for key, value in document["config"].items()}
    raw["sshPrivateKey"] = raw["gitops"]["sshPrivateKey"] = fake_private_key("example")
    config = load_config(raw)
    routes = {node.name: config.bastion(node) for node in config.nodes}
    assert routes["harbor-1"] is None and routes["harbor-3"] is None
    jump = routes["harbor-2"]
    assert jump is not None and (jump.host, jump.port, jump.user) == ("198.51.100.5", 22, "jump")
    assert jump.private_key == config.ssh_private_key and jump.host_key is not None
    # The commented stack-wide block is valid as it stands once uncommented.
    lines = text.splitlines()
    start = lines.index("    # bastion:")
    block = [lines[start].replace("    # ", "", 1)]
    for line in lines[start + 1 :]:
        if not line.startswith("    #   "):
            break
        block.append(line.replace("    # ", "", 1))
    raw["ssh"] = {**raw["ssh"], **yaml.safe_load("\n".join(block))}
    del raw["nodes"][1]["bastion"]
    config = load_config(raw)
    assert {node.name: getattr(config.bastion(node), "host", None) for node in config.nodes} == {
        "harbor-1": "198.51.100.5",
        "harbor-2": "198.51.100.5",
        "harbor-3": "198.51.100.5",
    }


def test_an_unpinned_bastion_warns_once_naming_the_key_to_set(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    config = base_config(agents=2)
    config["ssh"] = {"bastion": {"host": "198.51.100.5"}}
    config["nodes"][2]["bastion"] = {"host": "198.51.100.6", "hostKey": EXAMPLE_HOST_KEY}
    run_program(config, preview=True)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "bastion" in r.getMessage()]
    # server-1 and agent-1 share the stack's bastion: one warning for it; agent-2's is pinned.
    assert warnings == [
        "ssh.bastion has no hostKey: the bastion itself is not authenticated; pin it with ssh.bastion.hostKey"
    ]
