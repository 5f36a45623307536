"""Upgrading Space Harbor itself on a running cluster: agents that held the server token.

Earlier versions gave every agent the server token (k3s treats it as cluster admin). A cluster
is installed by the earlier rendering (the program with its renderer swapped for the earlier
one), then the first `up` of today's program: servers gain `agent-token` and restart, then agents
switch to the agent token, restart and register with it. The `up`s are the real `pulumi up` when
the engine's tools are built, else the replay (tests/testbed/conftest.py `engine_cluster`).
"""

from __future__ import annotations

import shlex
import time
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from tests.testbed.conftest import engine_cluster, heartbeat, standin_server
from tests.testbed.nodes import Testbed
from tests.testbed.stack import stack_config
from tests.testbed.stack_engine import ProgramPatch, StackEngine

pytestmark = pytest.mark.testbed

NODES = ["n1", "n2", "n3"]
AGENTS = ["n2", "n3"]

# config.yaml as the earlier versions rendered it: one token for every node, no agent-token.
BEFORE_AGENT_TOKENS = ProgramPatch(
    "components.k3s.render_config_yaml",
    """
import yaml

import components.render.k3s as render_k3s


def replacement(config, node, *, server_token, agent_token):
    settings = yaml.safe_load(
        render_k3s.render_config_yaml(config, node, server_token=server_token, agent_token=agent_token)
    )
    settings["token"] = server_token
    settings.pop("agent-token", None)
    return "# Managed by Space Harbor (Pulumi). Local edits are overwritten.\\n" + yaml.safe_dump(
        settings, sort_keys=True, default_flow_style=False
    )
""",
)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StackEngine]:
    yield from engine_cluster(NODES, tmp_path_factory.mktemp("migrations"), git=False)


def config_of(tb: Testbed, name: str) -> dict[str, Any]:
    return yaml.safe_load(tb.ssh(name, "cat /etc/rancher/k3s/config.yaml").stdout)


def test_the_first_up_after_the_change_moves_agents_to_the_agent_token(cluster: StackEngine) -> None:
    tb = cluster.tb
    # Encryption was off in clusters of that age; the preflight would (rightly) refuse turning it on.
    config = stack_config(tb, k3s={"airgap": True, "secretsEncryption": False})

    cluster.up(config, patch=BEFORE_AGENT_TOKENS)
    server_token = config_of(tb, "n1")["token"]
    for agent in AGENTS:
        assert config_of(tb, agent)["token"] == server_token, "the old rendering should hand agents the server token"

    started = time.time()
    report = cluster.up(config)
    # Only the installs change: a config.yaml each, no upgrade, drain or mesh step (the drift
    # records follow the new config.yaml's fingerprint; they dial nobody).
    changed = {name for name in report.updates if not name.endswith(("-preflight", "-drift"))}
    assert changed == {"n1-k3s", "n2-k3s", "n3-k3s"}, changed
    assert not ({"n1-k3s", "n2-k3s", "n3-k3s"} & set(report.replaces + report.creates + report.deletes))
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
    deadline = time.monotonic() + 40
    while min(heartbeat(tb, agent) for agent in AGENTS) <= started + 1:
        assert time.monotonic() < deadline, "an agent stopped checking in after the token change"
        time.sleep(1)
    if not standin_server(tb):
        # What a stolen agent token is worth is k3s's rule, modelled only by the stand-in's own
        # registration; the real API server behind the stand-in takes either token for its fake
        # kubelet, so there is nothing of k3s's to probe here.
        return
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
