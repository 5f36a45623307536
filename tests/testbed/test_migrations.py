"""Upgrading Space Harbor itself on a running cluster: agents that held the server token.

Earlier versions gave every agent the server token (k3s treats it as cluster admin). The first
`pulumi up` after the change is replayed here with the engine's rules, on a cluster that the
earlier rendering installed: servers gain `agent-token` and restart, then agents switch to the
agent token, restart and register with it. An agent token cannot join a server.
"""

from __future__ import annotations

import json
import shlex
import time
from typing import Any
from unittest import mock

import pytest
import yaml

import components.render.k3s as render_k3s
from tests.harness import ProgramRun, run_program
from tests.testbed.engine import Engine
from tests.testbed.nodes import Testbed, call_in_netns
from tests.testbed.stack import stack_config

pytestmark = pytest.mark.testbed

AGENTS = ["n2", "n3"]


def render_before_agent_tokens(config: Any, node: Any, *, server_token: str, agent_token: str) -> str:
    """config.yaml as the earlier versions rendered it: one token for every node, no agent-token."""
    settings = yaml.safe_load(
        render_k3s.render_config_yaml(config, node, server_token=server_token, agent_token=agent_token)
    )
    settings["token"] = server_token
    settings.pop("agent-token", None)
    return "# Managed by Space Harbor (Pulumi). Local edits are overwritten.\n" + yaml.safe_dump(
        settings, sort_keys=True, default_flow_style=False
    )


def config_of(tb: Testbed, name: str) -> dict[str, Any]:
    return yaml.safe_load(tb.ssh(name, "cat /etc/rancher/k3s/config.yaml").stdout)


def heartbeat(tb: Testbed, name: str) -> float:
    record = json.loads(tb.ssh("n1", f"cat /var/lib/rancher/k3s/standin/nodes/{name}.json").stdout)
    return float(record["heartbeat"])


def test_the_first_up_after_the_change_moves_agents_to_the_agent_token(testbed3: Testbed) -> None:
    tb = testbed3
    # Encryption was off in clusters of that age; the preflight would (rightly) refuse turning it on.
    config = stack_config(tb, k3s={"airgap": True, "secretsEncryption": False})
    engine = Engine(ssh_prefix=["ip", "netns", "exec", tb.ctl], workdir=tb.workdir)

    with mock.patch("components.k3s.render_config_yaml", render_before_agent_tokens):
        before: ProgramRun = call_in_netns(tb.ctl, run_program, config)
    engine.up(before)
    server_token = config_of(tb, "n1")["token"]
    for agent in AGENTS:
        assert config_of(tb, agent)["token"] == server_token, "the old rendering should hand agents the server token"

    after: ProgramRun = call_in_netns(tb.ctl, run_program, config)
    started = time.time()
    report = engine.up(after)
    # Only the installs change: a config.yaml each, no upgrade, drain or mesh step.
    changed = {name for name in report.updates if not name.endswith("-preflight")}
    assert changed == {"n1-k3s", "n2-k3s", "n3-k3s"}, changed
    # The server restarts with the agent token before any agent switches to it.
    for agent in AGENTS:
        assert report.result("n1-k3s").finished <= report.result(f"{agent}-k3s").started

    agent_token = config_of(tb, "n1")["agent-token"]
    assert agent_token and agent_token != server_token
    for agent in AGENTS:
        settings = config_of(tb, agent)
        assert settings["token"] == agent_token
        assert server_token not in tb.ssh(agent, "cat /etc/rancher/k3s/config.yaml").stdout
        assert tb.ssh(agent, "systemctl is-active k3s-agent").stdout.strip() == "active"
    # The agents keep checking in with the agent token (a refused token stops their heartbeats).
    deadline = time.monotonic() + 30
    while min(heartbeat(tb, agent) for agent in AGENTS) <= started + 1:
        assert time.monotonic() < deadline, "an agent stopped checking in after the token change"
        time.sleep(1)
    # What a stolen agent token is worth: it cannot register a server.
    probe = (
        "import json, sys, urllib.request, urllib.error\n"
        "data = json.dumps({'name': 'intruder', 'role': 'server', 'token': sys.argv[1]}).encode()\n"
        "req = urllib.request.Request(sys.argv[2], data=data, headers={'Content-Type': 'application/json'})\n"
        "try:\n    print(urllib.request.urlopen(req, timeout=5).status)\n"
        "except urllib.error.HTTPError as error:\n    print(error.code)\n"
    )
    server = config_of(tb, "n2")["server"].replace("https://", "http://") + "/standin/register"
    answer = tb.ssh("n2", f"python3 -c {shlex.quote(probe)} {agent_token} {server}").stdout.strip()
    assert answer == "401"
