"""The resource graph `__main__.py` registers, under mocks, in preview and up mode."""

from __future__ import annotations

import configparser
import copy
import json
from typing import Any

import pytest
import yaml

from components.access import DERIVED_TUNNEL_PORTS
from tests.conftest import GIT_KEY_MARKER, SSH_KEY_MARKER, STACKS, TOKEN_MARKER, fake_host_key
from tests.harness import UNKNOWN, ProgramRun, run_program
from tests.helpers import command_env

MODES = {"preview": True, "up": False}
COMMAND = "command:remote:Command"


def _run(stack: str, mode: str, mutate=None) -> tuple[dict[str, Any], ProgramRun]:
    config = copy.deepcopy(STACKS[stack]())
    if mutate:
        mutate(config)
    return config, run_program(config, preview=MODES[mode])


@pytest.fixture(params=[(s, m) for s in STACKS for m in MODES], ids=lambda p: f"{p[0]}-{p[1]}")
def stack_run(request: pytest.FixtureRequest) -> tuple[dict[str, Any], ProgramRun, str]:
    stack, mode = request.param
    config, run = _run(stack, mode)
    return config, run, mode


def test_every_node_gets_mesh_firewall_and_k3s(stack_run) -> None:
    config, run, _ = stack_run
    names = {c.name for c in run.commands()}
    mesh_on = config.get("mesh", {}).get("enabled", True)
    for node in config["nodes"]:
        assert f"{node['name']}-firewall" in names
        assert f"{node['name']}-k3s" in names
        assert (f"{node['name']}-mesh" in names) == mesh_on


def test_commands_carry_the_real_scripts_and_their_actions(stack_run) -> None:
    _, run, mode = stack_run
    first = run.named("server-1-k3s")
    assert first.inputs["create"] == "bash -s -- install"
    assert first.inputs["delete"] == "bash -s -- uninstall"
    if mode == "up":
        script = (run.named("server-1-k3s").inputs["stdin"]).split("__harbor_main() {", 1)[1]
        assert "set -euo pipefail" in script
        assert "k3s" in script


def test_connections_use_the_node_address_and_a_secret_key(stack_run) -> None:
    config, run, _ = stack_run
    hosts = {node["name"]: node["host"] for node in config["nodes"]}
    for command in run.commands():
        connection = command.inputs["connection"]
        assert connection["user"] == "root"
        assert connection["port"] == 22
        assert SSH_KEY_MARKER in connection["privateKey"]
        # The SDK marks the whole connection secret once the key inside it is.
        assert "connection" in command.secret_inputs, f"{command.name}: the SSH key is not secret"
        on_first_server = (
            "-node-object",
            "-registered",
            "-drain",
            "-uncordon",
            "cluster-departures",
            "api-credential",
            "cluster-id-guard",
        )
        if command.name.endswith(on_first_server):
            # Drain, uncordon and delete run on the first server, not on the node being removed.
            assert connection["host"] == hosts["server-1"], command.name
        else:
            node = next(name for name in hosts if command.name.startswith(f"{name}-"))
            assert connection["host"] == hosts[node], command.name


def test_agents_join_the_first_server_and_wait_for_it(stack_run) -> None:
    config, run, mode = stack_run
    server = run.named("server-1-k3s")
    for node in config["nodes"][1:]:
        install = run.named(f"{node['name']}-k3s")
        assert run.depends_on(install, server), f"{node['name']} install does not wait for the server"
        if config.get("mesh", {}).get("enabled", True):
            assert run.depends_on(install, run.named(f"{node['name']}-mesh"))
            assert run.depends_on(install, run.named("server-1-mesh"))
        if mode == "up":
            settings = yaml.safe_load(command_env(install)["HARBOR_K3S_CONFIG"])
            first = config["nodes"][0]
            address = first.get("meshAddress") or first.get("privateAddress")
            assert settings["server"] == f"https://{address}:6443"
            assert settings["token"]


def test_decommission_order_is_drain_uninstall_delete_node(stack_run) -> None:
    config, run, _ = stack_run
    for node in config["nodes"][1:]:
        name = node["name"]
        node_object, install, registered = (
            run.named(f"{name}-{kind}") for kind in ("node-object", "k3s", "registered")
        )
        assert node_object.inputs["delete"] == "bash -s -- delete-node"
        assert registered.inputs["delete"] == "bash -s -- drain"
        # Both matter only while the cluster lives: a whole-stack destroy skips them.
        assert node_object.deleted_with == registered.deleted_with == run.named("cluster-id").urn
        # Pulumi deletes dependents first: registered (drain), then install (uninstall), then node-object.
        assert run.depends_on(registered, install)
        assert run.depends_on(install, node_object)
        assert not run.depends_on(node_object, install)
        assert install.delete_before_replace
        # ...and the node's own mesh and firewall only after its Node object is gone.
        for kind in ("mesh", "firewall"):
            if f"{name}-{kind}" in {c.name for c in run.commands()}:
                assert run.depends_on(node_object, run.named(f"{name}-{kind}"))


@pytest.mark.parametrize("stack", [s for s in STACKS if s != "mesh-off"])
def test_mesh_configs_list_exactly_the_other_members(stack: str) -> None:
    # Mesh files are rendered from keys that exist only after `up`, so this is an up-mode check.
    config, run = _run(stack, "up")
    members = {node["name"]: node for node in config["nodes"]}
    keys = run.outputs["meshPublicKeys"]
    for name in members:
        parser = configparser.ConfigParser(strict=False)
        text = command_env(run.named(f"{name}-mesh"))["HARBOR_WG_CONFIG"]
        # configparser merges repeated [Peer] sections; count them from the text instead.
        peers = [block for block in text.split("[Peer]")[1:]]
        expected = {f"{m['meshAddress']}/32": m for other, m in members.items() if other != name}
        assert len(peers) == len(expected)
        for block in peers:
            fields = dict(line.split(" = ", 1) for line in block.strip().splitlines() if " = " in line)
            peer = expected.pop(fields["AllowedIPs"])
            assert fields["Endpoint"] == f"{peer['host']}:51871"
            assert fields["PublicKey"] == keys[peer["name"]]
        assert expected == {}
        parser.read_string(text.split("[Peer]")[0])
        assert parser["Interface"]["ListenPort"] == "51871"


def test_k8s_provider_and_resources_depend_on_the_server(stack_run) -> None:
    _, run, _ = stack_run
    server = run.named("server-1-k3s")
    provider = run.named("cluster")
    assert provider.type == "pulumi:providers:kubernetes"
    assert run.depends_on(provider, server)
    k8s = [r for r in run.resources if r.type.startswith("kubernetes:")]
    # The ConfigFile "argocd-core" is gone: its objects are resources of their own (components/argocd.py).
    assert {r.name for r in k8s} >= {
        "argocd-namespace",
        "argocd-core:applications.argoproj.io",
        "argocd-core:argocd/argocd-repo-server",
        "argocd-repository",
        "argocd-root-project",
        "argocd-root-application",
    }
    for resource in k8s:
        assert run.depends_on(resource, server) or resource.inputs.get("provider", "").startswith(provider.urn), (
            resource.name
        )


def test_config_secrets_never_reach_a_non_secret_input(stack_run) -> None:
    _, run, _ = stack_run
    for resource in run.resources:
        text = resource.public_text()
        for marker in (SSH_KEY_MARKER, GIT_KEY_MARKER):
            assert marker not in text, f"{marker} is readable in {resource.type} {resource.name}"


def test_given_token_stays_secret_everywhere() -> None:
    def with_token(config: dict[str, Any]) -> None:
        config["k3s"] = {"token": TOKEN_MARKER}

    _, run = _run("server-3-agents", "up", with_token)
    installs = [c for c in run.commands() if c.name.endswith("-k3s")]
    assert len(installs) == 4
    for install in installs:
        assert "stdin" in install.secret_inputs
        # Only servers hold the server token; agents join with the (generated) agent token.
        assert (TOKEN_MARKER in install.inputs["stdin"]) == install.name.startswith("server-")
    assert [r.name for r in run.of_type("random:index/randomPassword:RandomPassword")] == ["k3s-agent-token"]
    for resource in run.resources:
        assert TOKEN_MARKER not in resource.public_text(), resource.name


def test_api_credential_read_keeps_its_stdout_secret_and_out_of_logs() -> None:
    # Mocks do not apply additional_secret_outputs; the request must still ask for it.
    _, run = _run("single", "up")
    read = run.named("api-credential")
    assert read.inputs["create"] == "bash -s -- api-credential"
    assert "stdout" in read.additional_secret_outputs
    assert read.inputs["logging"] == "none"
    assert "delete" not in read.inputs and "update" not in read.inputs
    # It needs the first server Ready; the Kubernetes provider needs it.
    assert run.depends_on(read, run.named("server-1-registered"))
    assert run.depends_on(run.named("cluster"), read)


def test_no_step_sends_its_previous_output_to_sshd() -> None:
    # pulumi-command would otherwise set PULUMI_COMMAND_STDOUT on every update and delete: for
    # the credential step, that is a kubeconfig in an SSH environment request.
    _, run = _run("server-3-agents", "up")
    for command in run.commands():
        assert command.inputs.get("addPreviousOutputInEnv") is False, command.name


def test_generated_token_comes_from_pulumi_random() -> None:
    _, run = _run("server-3-agents", "up")
    token, agent_token = run.named("k3s-token"), run.named("k3s-agent-token")
    assert {"k3sToken", "k3sAgentToken"} <= run.secret_outputs
    server = yaml.safe_load(command_env(run.named("server-1-k3s"))["HARBOR_K3S_CONFIG"])
    agent = yaml.safe_load(command_env(run.named("agent-1-k3s"))["HARBOR_K3S_CONFIG"])
    assert server["token"] == run.outputs["k3sToken"]
    assert server["agent-token"] == agent["token"] == run.outputs["k3sAgentToken"]
    assert run.outputs["k3sToken"] != run.outputs["k3sAgentToken"]
    assert token.type == agent_token.type == "random:index/randomPassword:RandomPassword"
    assert run.depends_on(run.named("server-1-k3s"), token)


def test_preview_registers_the_whole_graph_with_unknown_outputs() -> None:
    _, preview = _run("server-3-agents", "preview")
    _, up = _run("server-3-agents", "up")
    assert sorted((r.type, r.name) for r in preview.resources) == sorted((r.type, r.name) for r in up.resources)
    # Before `up`, nothing computed is known: the mesh file waits for its key.
    assert UNKNOWN in json.dumps(preview.named("agent-1-mesh").inputs.get("stdin", UNKNOWN))


def test_four_node_stack_registers_the_full_graph() -> None:
    _, run = _run("server-3-agents", "up")
    by_type: dict[str, int] = {}
    for resource in run.resources:
        by_type[resource.type] = by_type.get(resource.type, 0) + 1
    # per node: preflight, mesh, firewall, and the seven k3s steps (node-object, shipped, k3s, drain,
    # upgrade, uncordon, registered); then the API credential read, the drain of departed nodes
    # and the guard of the cluster's id
    assert by_type[COMMAND] == 4 * (3 + 7) + 3
    # per node: the pinned installer, copied
    assert by_type["command:remote:CopyToRemote"] == 4
    assert by_type["random:index/randomBytes:RandomBytes"] == 4
    assert by_type["space-harbor:index:K3sNode"] == 4
    assert by_type["space-harbor:index:NodePreflight"] == 1
    assert by_type["space-harbor:index:NodeFirewall"] == 4
    assert by_type["space-harbor:index:WireGuardMesh"] == 1


def test_components_are_parents_of_their_commands() -> None:
    _, run = _run("server-3-agents", "up")
    mesh = run.of_type("space-harbor:index:WireGuardMesh")[0]
    assert run.named("agent-2-mesh").parent == mesh.urn
    agent = next(r for r in run.of_type("space-harbor:index:K3sNode") if r.name == "agent-2-k3s-node")
    for kind in ("node-object", "ship-installer", "shipped", "k3s", "drain", "upgrade", "uncordon", "registered"):
        assert run.named(f"agent-2-{kind}").parent == agent.urn
    preflight = run.of_type("space-harbor:index:NodePreflight")[0]
    assert run.named("agent-2-preflight").parent == preflight.urn


def test_stack_outputs() -> None:
    def with_operator(config: dict[str, Any]) -> None:
        config["mesh"] = {"operators": [{"name": "laptop", "meshAddress": "10.175.0.1"}]}

    _, run = _run("server-3-agents", "up", with_operator)
    assert {"kubeconfig", "operatorConfigs", "k3sToken"} <= run.secret_outputs
    assert "nodes" not in run.secret_outputs
    assert run.outputs["nodes"][1] == {"name": "agent-1", "role": "agent", "meshAddress": "10.160.1.1"}
    # The stack's own tunnel port, from its name: the kubeconfig, the output and the tunnel agree.
    port = int(run.outputs["apiTunnel"]["localPort"])  # numbers come back from the engine as floats
    assert port in DERIVED_TUNNEL_PORTS
    kubeconfig = yaml.safe_load(run.outputs["kubeconfig"])
    assert kubeconfig["clusters"][0]["cluster"]["server"] == f"https://127.0.0.1:{port}"
    laptop = run.outputs["operatorConfigs"]["laptop"]
    assert "Address = 10.175.0.1/32" in laptop
    assert laptop.count("[Peer]") == 4
    # scripts/kubeconfig writes the context and opens the tunnel the output describes (no key in it).
    assert run.outputs["argocdDashboard"].startswith("./scripts/kubeconfig test && ")
    assert "--kube-context harbor-test" in run.outputs["argocdDashboard"]
    assert run.outputs["apiTunnel"] == {
        "host": "192.0.2.10",
        "port": 22,
        "user": "root",
        "hostKey": fake_host_key("server-1"),
        "localPort": port,
        "stack": "space-harbor/test",
        "sshKeyConfig": "sshPrivateKey",
    }
    assert "apiTunnel" not in run.secret_outputs
    # The provider's kubeconfig names the tunnel, which the program opens to the first server.
    [(target, tunnel_port)] = run.tunnels
    assert (target.host, target.port, target.user, tunnel_port) == ("192.0.2.10", 22, "root", port)
    assert SSH_KEY_MARKER in target.private_key
    assert "argocd admin dashboard --core" in run.outputs["argocdDashboard"]


def test_api_access_mesh_points_kubeconfig_at_the_mesh_address() -> None:
    def via_mesh(config: dict[str, Any]) -> None:
        config["k3s"] = {"apiAccess": "mesh"}

    _, run = _run("single", "up", via_mesh)
    kubeconfig = yaml.safe_load(run.outputs["kubeconfig"])
    assert kubeconfig["clusters"][0]["cluster"]["server"] == "https://10.160.0.1:6443"
    assert run.tunnels == []


def test_operator_with_own_public_key_gets_no_generated_key() -> None:
    own_key = "bG9uZ2Vub3VnaGtleWZvcndpcmVndWFyZDMyYnl0ZXM="

    def with_operator(config: dict[str, Any]) -> None:
        config["mesh"] = {"operators": [{"name": "laptop", "meshAddress": "10.175.0.1", "publicKey": own_key}]}

    _, run = _run("single", "up", with_operator)
    assert [r.name for r in run.of_type("random:index/randomBytes:RandomBytes")] == ["server-1-wg-key"]
    assert own_key in command_env(run.named("server-1-mesh"))["HARBOR_WG_CONFIG"]
    assert "<your private key" in run.outputs["operatorConfigs"]["laptop"]


def test_firewall_disabled_registers_no_firewall() -> None:
    def no_firewall(config: dict[str, Any]) -> None:
        config["firewall"] = {"enabled": False}

    _, run = _run("server-3-agents", "up", no_firewall)
    assert not [c for c in run.commands() if c.name.endswith("-firewall")]


@pytest.mark.parametrize("mode", MODES)
def test_node_packages_reach_every_k3s_install_only_while_a_component_needs_them(mode: str) -> None:
    def with_longhorn(config: dict[str, Any]) -> None:
        config["components"]["longhorn"] = {"enabled": True}

    config, run = _run("server-3-agents", mode, with_longhorn)
    _, plain = _run("server-3-agents", mode)
    for node in config["nodes"]:
        install = run.named(f"{node['name']}-k3s")
        assert install.inputs["update"] == "bash -s -- reconfigure"
        if mode == "up":
            assert command_env(install)["HARBOR_NODE_PACKAGES"] == "nfs-common open-iscsi"
            assert "HARBOR_NODE_PACKAGES" not in command_env(plain.named(f"{node['name']}-k3s"))
            # the upgrade step never installs packages; its stdin stays as it was
            assert "HARBOR_NODE_PACKAGES" not in command_env(run.named(f"{node['name']}-upgrade"))
    # the same resources either way: a component's node packages change inputs, never identities
    assert {r.urn for r in run.resources} == {r.urn for r in plain.resources}
