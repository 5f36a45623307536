"""Space Harbor: stack config -> validated model -> components -> stack outputs. Wiring only."""

from __future__ import annotations

import pulumi
import pulumi_kubernetes as k8s
import pulumi_random as random
from pulumi.runtime.config import CONFIG, get_config_env

from components.argocd import NAMESPACE as ARGOCD_NAMESPACE
from components.argocd import ArgoCD, load_core_manifest
from components.config import PROJECT, ConfigError, HarborConfig, load_config, read_pulumi_config
from components.firewall import NodeFirewall
from components.gitops import GitOpsRepository
from components.k3s import K3sAgent, K3sJoinedServer, K3sServer, drain_departed_nodes, upgrade_waits
from components.mesh import WireGuardMesh
from components.render.argocd import CoreManifestError
from components.render.k3s import API_PORT, kubeconfig_for
from components.render.platform import secret_specs
from components.sealed_secrets import SealedSecretManifest, SealedSecretsKey
from components.tunnel import SshTarget, ensure_tunnel
from components.upstream import UpstreamError


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


config = stack_config()
try:
    # Read (and checked against its sha256) before any resource exists; never fetched here.
    argocd_core = load_core_manifest(config.argocd.version)
except (UpstreamError, CoreManifestError) as error:
    raise pulumi.RunError(f"argocd.version {config.argocd.version}: {error}") from None
stack = pulumi.get_stack()
first = config.first_server

token: pulumi.Output[str] = (
    pulumi.Output.secret(config.k3s.token.get_secret_value())
    if config.k3s.token is not None
    else random.RandomPassword("k3s-token", length=48, special=False).result
)

# A node removed from the stack is drained before the others' mesh and firewall drop it.
departures = [drain_departed_nodes(config)]
mesh = WireGuardMesh("mesh", config, after=departures) if config.mesh.enabled else None
firewalls = (
    {node.name: NodeFirewall(f"{node.name}-firewall", config, node, after=departures) for node in config.nodes}
    if config.firewall.enabled
    else {}
)


def prerequisites(node_name: str) -> list[pulumi.Resource]:
    """What must be on a node, and on the first server, before k3s goes on it."""
    needed: list[pulumi.Resource] = []
    for name in dict.fromkeys([node_name, first.name]):
        if mesh is not None:
            needed.append(mesh.applied[name])
        if name in firewalls:
            needed.append(firewalls[name])
    return needed


server = K3sServer(f"{first.name}-server", config, first, token, depends_on=prerequisites(first.name))
registered: dict[str, pulumi.Resource] = {first.name: server.registered}
# Servers first, one at a time, then agents upgradeConcurrency at a time (components/k3s.py).
for node_name, waits in upgrade_waits(config).items():
    node = next(n for n in config.nodes if n.name == node_name)
    joined = K3sJoinedServer if node.role == "server" else K3sAgent
    registered[node.name] = joined(
        f"{node.name}-{node.role}",
        config,
        node,
        token,
        after=[registered[name] for name in waits],
        depends_on=prerequisites(node.name),
    ).registered

if config.k3s.api_access == "mesh":
    api_server = f"https://{first.mesh_address}:{API_PORT}"
else:
    api_server = f"https://127.0.0.1:{config.k3s.tunnel_port}"
    tunnel_target = SshTarget(
        host=first.host,
        port=config.ssh_port(first),
        user=config.ssh_user(first),
        private_key=config.ssh_key(first).get_secret_value(),
        host_key=first.ssh_host_key,
    )


def cluster_kubeconfig(raw: str) -> str:
    if config.k3s.api_access == "ssh-tunnel":
        # The provider gets this kubeconfig only after the tunnel it names is listening.
        ensure_tunnel(tunnel_target, config.k3s.tunnel_port)
    return kubeconfig_for(raw, api_server, context=f"harbor-{stack}")


kubeconfig = pulumi.Output.secret(server.raw_kubeconfig.apply(cluster_kubeconfig))
# Namespace-less objects of the Argo CD manifests land in its namespace; nothing else is applied here.
cluster = k8s.Provider(
    "cluster",
    kubeconfig=kubeconfig,
    namespace=ARGOCD_NAMESPACE,
    enable_server_side_apply=True,
    opts=pulumi.ResourceOptions(depends_on=[server]),
)

# The Sealed Secrets key pair lives in state (its backup) and reaches the cluster before Argo CD
# deploys the controller, which adopts it. Secrets from stack config go to git only sealed with it.
# In-cluster objects go with the cluster: their deletes then need no API (components/argocd.py).
cluster_lifetime = server.install
sealing = (
    SealedSecretsKey("sealed-secrets", cluster, cluster_lifetime=cluster_lifetime)
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

gitops = GitOpsRepository("gitops", config, sealed=pulumi.Output.all(**sealed_files) if sealed_files else None)
ArgoCD(
    "argocd",
    config,
    cluster,
    argocd_core,
    depends_on=[gitops, *([sealing] if sealing is not None else [])],
    cluster_lifetime=cluster_lifetime,
)

ssh_target = f"{config.ssh_user(first)}@{first.host}"
kube = f"KUBECONFIG=~/.kube/harbor-{stack}.yaml"
if config.k3s.api_access == "ssh-tunnel":
    tunnel = f"ssh -fN -L {config.k3s.tunnel_port}:127.0.0.1:{API_PORT} -p {config.ssh_port(first)} {ssh_target}"
    dashboard = f"{tunnel} && {kube} argocd admin dashboard --core --namespace {ARGOCD_NAMESPACE}"
else:
    dashboard = f"{kube} argocd admin dashboard --core --namespace {ARGOCD_NAMESPACE}  # with the mesh up"

pulumi.export("kubeconfig", kubeconfig)
pulumi.export("k3sToken", server.token)
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
# For `kubeseal --cert`: users seal their own secrets offline with the same key.
pulumi.export("sealedSecretsCert", sealing.cert_pem if sealing is not None else None)
