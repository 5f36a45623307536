"""K3sNode: one node's k3s steps (install, upgrade chain, registration, decommission), from config.yaml.

Every node, the first server included, gets the same commands, so a reordered `nodes`
list, a change of `k3s.firstServer` or of the node that steps run on changes inputs only and never
a resource's identity (a new identity would be a delete, and a k3s delete is an uninstall):

  preflight    (on the node)          create: read-only checks (NodePreflight, components/preflight.py)
  shipped      (on the node)          create: the private staging directory   delete: remove the staged files
  ship-*       (to the node)          create/update: copy the pinned installer (air-gapped: the binary
                                              and images) into it (components/shipped.py)
  node-object  (on the first server)  create: check the API            delete: delete the Node object
  k3s          (on the node)          create: install what the enabled components need on every node,
                                              then k3s from config.yaml at k3s.version
                                      update: reconfigure (config.yaml, registries.yaml; never the
                                              version; the installer again when nodes[i].reinstall changed)
                                      delete: uninstall
  drain        (on the first server)  update: before an upgrade, refuse a downgrade, cordon and drain
  upgrade      (on the node)          update: install the new k3s.version
  uncordon     (on the first server)  update: confirm Ready at the new version, uncordon
  registered   (on the first server)  create/update: Ready, labels, taints   delete: drain

Install and upgrade are separate resources because Pulumi's graph is static: creates follow the
same dependencies as updates. `drain`, `upgrade` and `uncordon` have no create command, so on day
one they cost nothing (pulumi-command dials nobody for a missing command) and every node installs
in parallel; on a version change their updates run in the chain `upgrade_chain` gives: the first
server, the other servers one at a time, then agents `k3s.upgradeConcurrency` at a time. The
install's update never changes the version, so a version change moves nodes only through that
chain. A node added later installs the current version at once.

Pulumi deletes dependents first, so a removed node is drained (registered), uninstalled (k3s), and
then its Node object deleted (node-object), before its mesh and firewall go. The steps that only
matter while the cluster lives (node-object, drain, uncordon, registered) are `deleted_with` the
cluster's id (`cluster-id`, components/cluster_steps.py): that goes only when the whole cluster
goes (`pulumi destroy`), and then they are skipped instead of draining nodes one by one or failing
against an API that is being torn down.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field

import pulumi

from components.config import HarborConfig, Node
from components.remote import disarmed_command, first_server_command, node_command, node_copy
from components.render.k3s import optional_install_parameters, reinstall_parameter, render_config_yaml
from components.render.platform import node_packages
from components.shipped import ShippedFile

NODE_TYPE = "space-harbor:index:K3sNode"
# Before the first server was chosen by name, each role had a component type of its own; these
# aliases keep every existing node's steps (and so its k3s) through the change of type.
LEGACY_COMPONENTS = (
    ("space-harbor:index:K3sServer", "server"),
    ("space-harbor:index:K3sJoinedServer", "server"),
    ("space-harbor:index:K3sAgent", "agent"),
)
STEPS = ("node-object", "shipped", "k3s", "drain", "upgrade", "uncordon", "registered")


def node_component_name(node_name: str) -> str:
    # Not a prefix of the step names: the engine renames an aliased parent's children by that prefix.
    return f"{node_name}-k3s-node"


def legacy_aliases(node_name: str) -> list[pulumi.Alias]:
    return [pulumi.Alias(name=f"{node_name}-{suffix}", type_=type_) for type_, suffix in LEGACY_COMPONENTS]


def cluster_order(config: HarborConfig) -> list[Node]:
    """The first server, the other servers, then the agents, each group by name: never by list position."""
    first = config.first_server
    others = sorted((n for n in config.servers if n.name != first.name), key=lambda n: n.name)
    return [first, *others, *sorted(config.agents, key=lambda n: n.name)]


def upgrade_chain(config: HarborConfig) -> dict[str, list[str]]:
    """For each node, the nodes whose upgrade must be confirmed (uncordoned) before its own starts.

    Servers go one at a time after the first, so etcd keeps quorum; agents go after every server,
    at most `k3s.upgradeConcurrency` at once.
    """
    order = cluster_order(config)
    servers = [n.name for n in order if n.role == "server"]
    agents = [n.name for n in order if n.role == "agent"]
    chain: dict[str, list[str]] = {servers[0]: []}
    for previous, server in itertools.pairwise(servers):
        chain[server] = [previous]
    window = config.k3s.upgrade_concurrency
    for index, agent in enumerate(agents):
        chain[agent] = [servers[-1]] + ([agents[index - window]] if index >= window else [])
    return chain


def _lifecycle_env(config: HarborConfig, node: Node) -> dict[str, pulumi.Input[str]]:
    return {
        "HARBOR_NODE_NAME": node.name,
        "HARBOR_DRAIN_TIMEOUT": str(config.decommission.drain_timeout_seconds),
        "HARBOR_FORCE": "true" if config.decommission.force else "false",
    }


@dataclass
class K3sNodeArgs:
    """What one node's steps need: the validated config, the node, and the steps they wait for."""

    config: HarborConfig
    node: Node
    server_token: pulumi.Input[str]
    agent_token: pulumi.Input[str]
    # mesh, firewall (and through them every preflight) of this node and of the first server
    prerequisites: list[pulumi.Resource]
    # before the install: the first server's k3s (for node-object) and Ready (for joins)
    first_install: pulumi.Resource | None = None
    join_after: list[pulumi.Resource] = field(default_factory=list)
    # before the drain of an upgrade: the `uncordon` steps of the nodes `upgrade_chain` names
    upgrade_after: list[pulumi.Resource] = field(default_factory=list)
    # what the cluster-lifetime steps are deleted with: the cluster's id (`cluster-id`)
    cluster_lifetime: pulumi.Resource | None = None
    # copied to the node before its install: the pinned installer, air-gap binary and images
    shipped: tuple[ShippedFile, ...] = ()
    # what the copies wait for: every node's preflight (they need neither mesh nor firewall)
    gate: list[pulumi.Resource] = field(default_factory=list)
    # HARBOR_REPAIR of the install step: None until a refresh found k3s drifted (components/drift.py)
    repair: pulumi.Input[str | None] | None = None


class K3sNode(pulumi.ComponentResource):
    """A node's k3s steps; see the module documentation for their order."""

    install: pulumi.Resource
    uncordon: pulumi.Resource
    registered: pulumi.Resource

    def __init__(self, args: K3sNodeArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        node, config = args.node, args.config
        super().__init__(
            NODE_TYPE,
            node_component_name(node.name),
            None,
            pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(aliases=legacy_aliases(node.name))),
        )
        is_first = node.name == config.first_server.name
        lifecycle = _lifecycle_env(config, node)
        # The engine wants a deletedWith target to exist before the resource: depend on it too.
        with_cluster = pulumi.ResourceOptions(
            parent=self,
            deleted_with=args.cluster_lifetime,
            depends_on=_present(args.cluster_lifetime),
        )

        def node_object(after: list[pulumi.Resource]) -> pulumi.Resource:
            # Deleted after the uninstall and before the node's own mesh and firewall.
            return first_server_command(
                f"{node.name}-node-object",
                config,
                lifecycle,
                pulumi.ResourceOptions.merge(
                    with_cluster, pulumi.ResourceOptions(depends_on=[*args.prerequisites, *after])
                ),
                create="node-object",
                delete="delete-node",
            )

        config_yaml = pulumi.Output.all(args.server_token, args.agent_token).apply(
            lambda tokens: render_config_yaml(config, node, server_token=tokens[0], agent_token=tokens[1])
        )
        # The staged files' lifetime on the node: created first, as the private directory they are
        # staged into (prepare-staging); deleted after the uninstall (the install depends on it),
        # so a replaced install still finds them and a node that leaves keeps none of them. Its
        # copies come after it and are replaced with it: a replacement of this step removes the
        # staged files (delete first), makes the directory again, then the files are copied again.
        staged = (
            [
                node_command(
                    f"{node.name}-shipped",
                    config,
                    node,
                    "k3s.sh",
                    create="prepare-staging",
                    delete="remove-shipped",
                    env={"HARBOR_STAGING_USER": config.ssh_user(node)},
                    secret=False,
                    opts=pulumi.ResourceOptions(parent=self, depends_on=args.gate or args.prerequisites),
                )
            ]
            if args.shipped
            else []
        )
        # Staged on the node before anything runs there that needs them; k3s.sh checks their sha256.
        copies = [
            node_copy(
                f"{node.name}-ship-{shipped.kind}",
                config,
                node,
                shipped.source,
                shipped.staged_path,
                pulumi.ResourceOptions(
                    parent=self, depends_on=staged or args.gate or args.prerequisites, replace_with=staged or None
                ),
            )
            for shipped in args.shipped
        ]
        shipped_env = {key: value for shipped in args.shipped for key, value in shipped.parameters().items()}
        install_env: dict[str, pulumi.Input[str | None]] = {
            "HARBOR_K3S_ROLE": node.role,
            "HARBOR_K3S_VERSION": config.k3s.version,
            "HARBOR_K3S_CONFIG": config_yaml,
            "HARBOR_K3S_AIRGAP": "true" if config.k3s.skips_download else "false",
            **shipped_env,
        }
        packages = node_packages(config)
        if packages:
            # Only then: a stack without such a component keeps the step's stdin as it was.
            install_env["HARBOR_NODE_PACKAGES"] = " ".join(packages)
        # registries.yaml and the reinstall counter, likewise only when used
        install_env |= optional_install_parameters(config, node)
        if args.repair is not None:
            # Left out of stdin while None: an unrepaired node's step keeps its inputs as they were.
            install_env["HARBOR_REPAIR"] = args.repair

        def install(after: list[pulumi.Resource]) -> pulumi.Resource:
            return node_command(
                f"{node.name}-k3s",
                config,
                node,
                "k3s.sh",
                create="install",
                update="reconfigure",
                delete="uninstall",
                env=install_env,
                secret=True,
                # Replaced delete-first (node_command: it has a delete): the uninstall, then the
                # install, never the new install undone by the old uninstall.
                opts=pulumi.ResourceOptions(
                    parent=self,
                    depends_on=[*args.prerequisites, *copies, *staged, *after, *args.join_after],
                ),
            )

        if is_first:
            # The first server's API must exist before its own Node object can be checked.
            self.install = install([])
            node_object(after=[self.install])
        else:
            self.install = install([node_object(after=_present(args.first_install))])

        version = {**lifecycle, "HARBOR_K3S_VERSION": config.k3s.version}
        drain = first_server_command(
            f"{node.name}-drain",
            config,
            {**version, "HARBOR_DRAIN": "false" if is_first else "true"},
            pulumi.ResourceOptions.merge(with_cluster, pulumi.ResourceOptions(depends_on=args.upgrade_after)),
            create=None,
            update="prepare-upgrade",
            delete=None,
        )
        upgrade = node_command(
            f"{node.name}-upgrade",
            config,
            node,
            "k3s.sh",
            create=None,
            update="upgrade",
            delete=None,
            env={
                **{key: install_env[key] for key in ("HARBOR_K3S_ROLE", "HARBOR_K3S_VERSION", "HARBOR_K3S_AIRGAP")},
                **shipped_env,
                # an upgrade in the same run as a reinstall is that reinstall: it records the counter
                **reinstall_parameter(node),
            },
            secret=False,
            opts=pulumi.ResourceOptions(parent=self, depends_on=[drain, self.install, *copies]),
        )
        self.uncordon = first_server_command(
            f"{node.name}-uncordon",
            config,
            version,
            pulumi.ResourceOptions.merge(with_cluster, pulumi.ResourceOptions(depends_on=[upgrade])),
            create=None,
            update="confirm-upgrade",
            delete=None,
        )
        self.registered = first_server_command(
            f"{node.name}-registered",
            config,
            {
                **lifecycle,
                "HARBOR_NODE_LABELS": "\n".join(f"{key}={value}" for key, value in sorted(node.labels.items())),
                "HARBOR_NODE_TAINTS": "\n".join(node.taints),
            },
            pulumi.ResourceOptions.merge(with_cluster, pulumi.ResourceOptions(depends_on=[self.install])),
            create="reconcile",
            # The first server's registration goes with the cluster; any other node is drained.
            delete=None if is_first else "drain",
        )
        self.register_outputs({})


class ForgottenK3sNode(pulumi.ComponentResource):
    """The steps of a node in `decommission.forget`, disarmed: the same identities, nothing to run.

    pulumi-command deletes with the inputs stored at the last create or update, so a node that left
    the stack while unreachable would be dialled by every delete. Registering its steps again with
    no create, update or delete is an update that dials nobody and stores "nothing to do"; once the
    name leaves `decommission.forget`, the engine drops them without touching the node.
    """

    def __init__(self, node_name: str, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(
            NODE_TYPE,
            node_component_name(node_name),
            None,
            pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(aliases=legacy_aliases(node_name))),
        )
        for step in STEPS:
            disarmed_command(f"{node_name}-{step}", node_name, pulumi.ResourceOptions(parent=self))
        self.register_outputs({})


def k3s_cluster(
    config: HarborConfig,
    server_token: pulumi.Input[str],
    agent_token: pulumi.Input[str],
    prerequisites: Callable[[Node], list[pulumi.Resource]],
    lifetime: pulumi.Resource,
    shipped: tuple[ShippedFile, ...] = (),
    gate: list[pulumi.Resource] | None = None,
    repair: Callable[[str], pulumi.Input[str | None]] | None = None,
) -> dict[str, K3sNode]:
    """Every node's steps, wired in cluster order; forgotten nodes' steps disarmed.

    `lifetime` (the cluster's id) is what the steps that only matter while the cluster lives are
    deleted with; it must exist before them (see `components.cluster_steps.cluster_identity`).
    """
    chain = upgrade_chain(config)
    first = config.first_server
    built: dict[str, K3sNode] = {}
    servers: list[str] = []
    for node in cluster_order(config):
        join_after: list[pulumi.Resource] = []
        if node.name != first.name:
            join_after.append(built[first.name].registered)
        if node.role == "server" and servers:
            # Joining servers go one at a time: etcd adds one member after another.
            join_after.append(built[servers[-1]].registered)
        if node.role == "agent":
            # After every server's upgrade: an agent never runs a newer k3s than the servers.
            join_after += [built[name].uncordon for name in servers]
        built[node.name] = K3sNode(
            K3sNodeArgs(
                config=config,
                node=node,
                server_token=server_token,
                agent_token=agent_token,
                prerequisites=prerequisites(node),
                first_install=None if node.name == first.name else built[first.name].install,
                join_after=list(dict.fromkeys(join_after)),
                upgrade_after=[built[name].uncordon for name in chain[node.name]],
                cluster_lifetime=lifetime,
                shipped=shipped,
                gate=list(gate or []),
                repair=repair(node.name) if repair is not None else None,
            )
        )
        if node.role == "server":
            servers.append(node.name)
    for name in config.decommission.forget:
        ForgottenK3sNode(name)
    return built


def _present(resource: pulumi.Resource | None) -> list[pulumi.Resource]:
    return [resource] if resource is not None else []
