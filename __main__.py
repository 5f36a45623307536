"""Space Harbor: stack config -> validated model -> components -> stack outputs. Wiring only."""

from __future__ import annotations

import sys

import pulumi
import pulumi_kubernetes as k8s
import pulumi_random as random
from pulumi.runtime.config import CONFIG, get_config_env
from pydantic import SecretStr

from components.access import (
    api_tunnel_output,
    api_tunnel_port,
    api_tunnel_target,
    stack_identity,
    unpinned_bastions,
    unpinned_node_warnings,
)
from components.argocd import NAMESPACE as ARGOCD_NAMESPACE
from components.argocd import ArgoCD, load_core_manifest, sync_after_commit
from components.cluster_steps import (
    KUBERNETES_CLUSTER_IDENTIFIER,
    cluster_identity,
    drain_departed_nodes,
    read_api_credential,
    refuse_cluster_id_replacement,
)
from components.config import PROJECT, ConfigError, HarborConfig, Node, load_config, read_pulumi_config
from components.firewall import NodeFirewall, forgotten_firewall
from components.gitops import GitOpsRepository
from components.k3s import k3s_cluster
from components.mesh import WireGuardMesh
from components.node_drift import NodeDrift, RepairInputs, node_expectations
from components.pod_security import PodSecurityFence
from components.preflight import NodePreflight
from components.project_fence import ProjectFence
from components.render.argocd import CoreManifestError, application_controller_username
from components.render.k3s import API_PORT, kubeconfig_for
from components.render.platform import secret_specs
from components.render.project_fence import project_fence_args
from components.sealed_secrets import SealedSecretManifest, SealedSecretsKey
from components.shipped import K3S_INSTALLER_KIND, k3s_shipped_files
from components.tunnel import TunnelError, check_tunnel_port, ensure_tunnel
from components.upstream import UpstreamError, pinned_path, sole_pin


def stack_config() -> HarborConfig:
    """Read and validate every key of the project namespace; refuse before any resource exists."""
    raw = read_pulumi_config(pulumi.runtime.get_config)
    # Unknown keys are read too, so that a typo like `mesh.listenport` is refused, not ignored.
    prefix = f"{PROJECT}:"
    for source in (get_config_env(), CONFIG.get()):
        raw |= {key[len(prefix) :]: value for key, value in source.items() if key.startswith(prefix)}
    try:
        return load_config(raw)
    except ConfigError as error:
        raise pulumi.RunError(str(error)) from None


# The SDK checks every new dependency for a cycle by walking the graph below it, recursively: the
# upgrade chain (three steps per agent at upgradeConcurrency 1) goes deeper than Python's default
# of 1000 frames at about 400 nodes.
sys.setrecursionlimit(max(sys.getrecursionlimit(), 20_000))

config = stack_config()
# Only with ssh.allowUnpinnedHostKeys: an unpinned node is refused otherwise. Every run says so.
for warning in unpinned_node_warnings(config):
    pulumi.log.warn(warning)
try:
    # Read (and checked against its sha256) before any resource exists; never fetched here.
    argocd_core = load_core_manifest(config.argocd.version)
    argocd_controller = application_controller_username(argocd_core)
except (UpstreamError, CoreManifestError) as error:
    raise pulumi.RunError(f"argocd.version {config.argocd.version}: {error}") from None
try:
    installer_pin = sole_pin(K3S_INSTALLER_KIND)
    shipped = k3s_shipped_files(
        config.k3s, pinned_path(K3S_INSTALLER_KIND, installer_pin.version), installer_pin.sha256
    )
except UpstreamError as error:
    raise pulumi.RunError(f"the k3s installer: {error}") from None
stack = pulumi.get_stack()
first = config.first_server
# Which stack a tunnel serves, and the loopback port of this stack's own.
tunnel_stack = stack_identity(pulumi.get_project(), stack)
tunnel_port = api_tunnel_port(config, tunnel_stack)
if config.k3s.api_access == "ssh-tunnel":
    tunnel_target = api_tunnel_target(config)
    try:
        # Before any resource: another stack's tunnel, or another program, on this stack's port.
        check_tunnel_port(tunnel_target, tunnel_port, tunnel_stack)
    except TunnelError as error:
        raise pulumi.RunError(str(error)) from None


def join_token(name: str, given: SecretStr | None) -> pulumi.Output[str]:
    """A join token from stack config, or one generated (and kept secret) in state."""
    value = (
        given.get_secret_value() if given is not None else random.RandomPassword(name, length=48, special=False).result
    )
    return pulumi.Output.secret(value)


server_token = join_token("k3s-token", config.k3s.token)
agent_token = join_token("k3s-agent-token", config.k3s.agent_token)
forget = list(config.decommission.forget)

# Nothing changes on any node until every node has passed its preflight; then a node removed from
# the stack is drained before the others' mesh and firewall drop it.
cluster_id = cluster_identity()
cluster_id_guard = refuse_cluster_id_replacement(config, cluster_id)
preflight = NodePreflight("preflight", config, forget, after=[cluster_id, cluster_id_guard])
departures = [drain_departed_nodes(config, after=[preflight])]
# Each node's k3s, mesh and firewall step takes HARBOR_REPAIR from the node's drift record
# (components/node_drift.py), which is registered below, once the mesh keys it fingerprints exist.
repairs = RepairInputs(node.name for node in config.nodes)
mesh = (
    WireGuardMesh(
        "mesh",
        config,
        forget,
        after=departures,
        repair={node.name: repairs.parameter(node.name, "mesh") for node in config.nodes},
    )
    if config.mesh.enabled
    else None
)
firewalls = (
    {
        node.name: NodeFirewall(
            f"{node.name}-firewall",
            config,
            node,
            after=departures,
            repair=repairs.parameter(node.name, "firewall"),
        )
        for node in config.nodes
    }
    if config.firewall.enabled
    else {}
)
if config.firewall.enabled:
    for forgotten in forget:
        forgotten_firewall(forgotten)


def prerequisites(node: Node) -> list[pulumi.Resource]:
    """What must be on a node, and on the first server, before k3s goes on it."""
    needed: list[pulumi.Resource] = [*departures]
    for name in dict.fromkeys([node.name, first.name]):
        if mesh is not None:
            needed.append(mesh.applied[name])
        if name in firewalls:
            needed.append(firewalls[name])
    return needed


k3s_nodes = k3s_cluster(
    config,
    server_token,
    agent_token,
    prerequisites,
    lifetime=cluster_id,
    shipped=shipped,
    gate=departures,
    repair=lambda name: repairs.parameter(name, "k3s"),
)
drift = NodeDrift(
    "drift",
    config,
    {
        node.name: node_expectations(
            config,
            node,
            server_token,
            agent_token,
            mesh.node_configs[node.name] if mesh is not None else None,
            mesh.public_keys if mesh is not None else None,
        )
        for node in config.nodes
    },
)
repairs.resolve(drift.records)
api_credential = read_api_credential(config, after=[k3s_nodes[first.name].registered])

for unpinned in unpinned_bastions(config):
    pulumi.log.warn(
        f"{unpinned} has no hostKey: the bastion itself is not authenticated; pin it with {unpinned}.hostKey"
    )
if config.k3s.api_access == "mesh":
    api_server = f"https://{first.mesh_address}:{API_PORT}"
else:
    api_server = f"https://127.0.0.1:{tunnel_port}"


def cluster_kubeconfig(raw: str) -> str:
    # The provider gets this kubeconfig only after the tunnel it names is listening. The tunnel is
    # a process of its own, so deletes after the program still reach the API through it. Preview
    # reaches nothing it does not need: it starts no tunnel (the provider previews without the
    # cluster unless a tunnel is already open).
    if config.k3s.api_access == "ssh-tunnel" and not pulumi.runtime.is_dry_run():
        ensure_tunnel(tunnel_target, tunnel_port, stack=tunnel_stack, warn=pulumi.log.warn)
    return kubeconfig_for(raw, api_server, context=f"harbor-{stack}")


kubeconfig = pulumi.Output.secret(api_credential.stdout.apply(cluster_kubeconfig))
# Namespace-less objects of the Argo CD manifests land in its namespace; nothing else is applied here.
cluster = k8s.Provider(
    "cluster",
    kubeconfig=kubeconfig,
    namespace=ARGOCD_NAMESPACE,
    enable_server_side_apply=True,
    # Replaced only if this changes, which it never does (components/cluster_steps.py says why).
    cluster_identifier=KUBERNETES_CLUSTER_IDENTIFIER,
    # A change of a ConfigMap's or Secret's data (the known hosts, the repository credential,
    # the sealing key) is then an update in place, not a delete and a create that would leave
    # Argo CD without them in between. Objects marked `immutable` are still replaced.
    enable_config_map_mutable=True,
    enable_secret_mutable=True,
    opts=pulumi.ResourceOptions(depends_on=[api_credential]),
)

# The Sealed Secrets key pair lives in state (its backup) and reaches the cluster before Argo CD
# deploys the controller, which adopts it. Secrets from stack config go to git only sealed with it.
# In-cluster objects go with the cluster (its id): their deletes then need no API, which a
# destroy, running no program, has no tunnel to (components/argocd.py).
sealing = (
    SealedSecretsKey("sealed-secrets", cluster, cluster_lifetime=cluster_id)
    if config.components.sealed_secrets.enabled
    else None
)
sealed_files: dict[str, pulumi.Output[str]] = {}
for spec in secret_specs(config):
    assert sealing is not None  # config validation requires sealedSecrets for these components
    sealed_files[spec.path] = SealedSecretManifest(
        f"sealed-{spec.namespace}-{spec.name}",
        cert_pem=sealing.cert_pem,
        namespace=spec.namespace,
        name=spec.name,
        data=pulumi.Output.secret(dict(spec.data)),
    ).manifest

# Before the root Application, so that no Namespace Argo CD ever applies escapes the fence.
pod_security = PodSecurityFence("pod-security", argocd_controller, cluster, cluster_lifetime=cluster_id)
project_fence = ProjectFence(
    "project-fence", project_fence_args(config, argocd_controller), cluster, cluster_lifetime=cluster_id
)
# The fence names this run's platform Applications and AppProjects exactly as the commit holds them,
# so it is in force before the commit: a root that synced the commit first would find them refused,
# and Argo CD does not retry a failed automated sync of the same commit.
gitops = GitOpsRepository(
    "gitops",
    config,
    sealed=pulumi.Output.all(**sealed_files) if sealed_files else None,
    after=[project_fence],
)
argocd = ArgoCD(
    "argocd",
    config,
    cluster,
    argocd_core,
    depends_on=[gitops, pod_security, project_fence, *([sealing] if sealing is not None else [])],
    cluster_lifetime=cluster_id,
)
if config.gitops.sync_on_apply:
    # After the push and once Argo CD and its root are in: the step's stdin carries the commit.
    sync_after_commit(config, gitops.commit, after=[gitops, argocd], cluster_lifetime=cluster_id)

# scripts/kubeconfig writes the stack's context and, for ssh-tunnel, opens the tunnel first.
context = f"harbor-{stack}"
dashboard = (
    f"./scripts/kubeconfig {stack} && "
    f"argocd admin dashboard --core --kube-context {context} --namespace {ARGOCD_NAMESPACE}"
)
api_tunnel = api_tunnel_output(config, tunnel_stack)

pulumi.export("kubeconfig", kubeconfig)
pulumi.export("clusterId", cluster_id.result)
pulumi.export("k3sToken", server_token)
pulumi.export("k3sAgentToken", agent_token)
pulumi.export(
    "nodes",
    [
        {"name": n.name, "role": n.role, "meshAddress": str(n.mesh_address) if n.mesh_address else None}
        for n in config.nodes
    ],
)
pulumi.export("operatorConfigs", mesh.operator_configs if mesh is not None else pulumi.Output.secret({}))
pulumi.export("meshPublicKeys", mesh.public_keys if mesh is not None else {})
pulumi.export("argocdDashboard", dashboard)
pulumi.export("kubeContext", context)
pulumi.export("apiTunnel", api_tunnel)
# For `kubeseal --cert`: users seal their own secrets offline with the same key.
pulumi.export("sealedSecretsCert", sealing.cert_pem if sealing is not None else None)
