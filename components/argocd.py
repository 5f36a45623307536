"""ArgoCD: the pinned Argo CD Core objects, the known hosts, the repository credentials and the root Application.

Core has no API server, UI or SSO; operators reach it with `argocd admin dashboard --core`
through their own kubeconfig, so nothing of Argo CD is ever exposed.

What the real engine does here, and mocks would not show:
- Each object of the pinned core-install.yaml is its own resource, named as the children of the
  `kubernetes:yaml/v2:ConfigFile` "argocd-core" that applied the file before, with an alias to that
  parent: an existing stack updates them in place. Without it every object would be deleted and
  created again, and deleting the Application CRD deletes every Application. The CRDs also keep
  `retain_on_delete`, so that no delete ever reaches them.
- `argocd-ssh-known-hosts-cm` has one owner, this component: server-side apply gives each resource
  its own field manager, and two resources writing `data.ssh_known_hosts` conflict.
- Every object is `deleted_with` the caller's cluster-lifetime resource: when the cluster goes, the
  engine drops them from state without a call to its API, which is gone by then (deletes run after
  the program, and `pulumi destroy` runs no program, so no tunnel either).

"Sync now" (`gitops.syncOnApply`, `sync_after_commit`) is not a Kubernetes resource of Pulumi's: a
sync is the Application's `operation` field, which the application controller clears when the
sync is done, and the refresh annotation is removed by the controller too. pulumi-kubernetes
applies server-side with a field manager of its own per resource, so a Patch resource would
conflict with the controller on those very fields, and would hold them in its state. It is a step
on the first server instead, whose kubectl writes the fields once per new commit.
"""

from __future__ import annotations

from typing import Any

import pulumi
import pulumi_kubernetes as k8s

from components.config import ARGOCD_CORE_FILE, HarborConfig
from components.remote import node_command
from components.render.argocd import (
    CONFIG_FILE_NAME,
    CONFIG_FILE_TYPE,
    CoreManifest,
    parse_core_manifest,
    resource_name,
)
from components.render.gitops import (
    ARGOCD_NAMESPACE,
    ROOT_APPLICATION,
    platform_application_names,
    platform_applications_selector,
    render_known_hosts_configmap,
    render_repository_secret,
    render_root_application,
    render_root_project,
)
from components.upstream import read_pinned

NAMESPACE = ARGOCD_NAMESPACE
SYNC_STEP = "argocd-sync"


def load_core_manifest(version: str) -> CoreManifest:
    """The pinned core-install.yaml of `version`, verified and parsed; `UpstreamError` when not vendored."""
    return parse_core_manifest(version, read_pinned(ARGOCD_CORE_FILE, version))


def _raw_object(
    type_token: str, name: str, body: dict[str, Any], opts: pulumi.ResourceOptions
) -> pulumi.CustomResource:
    """One Kubernetes object from its manifest, with the props pulumi-kubernetes's YAML support sends (camelCase)."""
    props: dict[str, Any] = dict(body)
    if body.get("kind") == "Secret" and str(body.get("apiVersion")) == "v1":
        # As the ConfigFile did: a Secret's data never sits in state in the clear.
        for key in ("data", "stringData"):
            if key in props:
                props[key] = pulumi.Output.secret(props[key])
        opts = pulumi.ResourceOptions.merge(
            opts, pulumi.ResourceOptions(additional_secret_outputs=["data", "stringData"])
        )
    return pulumi.CustomResource(type_token, name, props, opts)


class ArgoCD(pulumi.ComponentResource):
    root_application: pulumi.Resource
    root_project: pulumi.Resource
    core_objects: dict[tuple[str, str], pulumi.Resource]  # by (type token, resource name)
    known_hosts: pulumi.Resource

    def __init__(
        self,
        name: str,
        config: HarborConfig,
        provider: k8s.Provider,
        core: CoreManifest,
        depends_on: list[pulumi.Resource] | None = None,
        *,
        cluster_lifetime: pulumi.Resource | None = None,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__("space-harbor:index:ArgoCD", name, None, opts)
        child = pulumi.ResourceOptions(parent=self, provider=provider, deleted_with=cluster_lifetime)

        def after(*resources: pulumi.Resource, **extra: Any) -> pulumi.ResourceOptions:
            return pulumi.ResourceOptions.merge(child, pulumi.ResourceOptions(depends_on=list(resources), **extra))

        # The identity these objects had as children of the ConfigFile (components/render/argocd.py).
        was_in_config_file = [pulumi.Alias(parent=pulumi.create_urn(CONFIG_FILE_NAME, CONFIG_FILE_TYPE, parent=self))]

        namespace = k8s.core.v1.Namespace("argocd-namespace", metadata={"name": NAMESPACE}, opts=child)
        self.core_objects = {}
        for item in core.objects:
            self.core_objects[item.type_token, item.resource_name] = _raw_object(
                item.type_token,
                item.resource_name,
                item.body,
                after(namespace, aliases=was_in_config_file, retain_on_delete=True if item.is_crd else None),
            )

        configmap = render_known_hosts_configmap(config, core.default_known_hosts)
        self.known_hosts = _raw_object(
            "kubernetes:core/v1:ConfigMap",
            resource_name(configmap["metadata"]["name"], NAMESPACE),
            configmap,
            after(namespace, aliases=was_in_config_file),
        )

        gitops = config.gitops
        if not gitops.argocd_has_own_credential:
            pulumi.log.warn(
                f"Argo CD reads the GitOps repository with the write credential ({gitops.write_credential_keys}); "
                f"give it a read-only one in {gitops.argocd_credential_keys}"
            )
        repository = render_repository_secret(config)
        secret = k8s.core.v1.Secret(
            "argocd-repository",
            metadata=repository["metadata"],
            type=repository.get("type"),
            string_data=pulumi.Output.secret(repository["stringData"]),
            opts=after(namespace),
        )

        # Argo CD serves Applications and AppProjects once its CRDs and controllers are in.
        core_ready = [*self.core_objects.values(), self.known_hosts, secret]
        project = render_root_project(config)
        self.root_project = k8s.apiextensions.CustomResource(
            "argocd-root-project",
            api_version=project["apiVersion"],
            kind=project["kind"],
            metadata=project["metadata"],
            spec=project["spec"],
            opts=after(*core_ready),
        )
        root = render_root_application(config)
        self.root_application = k8s.apiextensions.CustomResource(
            "argocd-root-application",
            api_version=root["apiVersion"],
            kind=root["kind"],
            metadata=root["metadata"],
            spec=root["spec"],
            opts=after(*core_ready, self.root_project, *(depends_on or [])),
        )
        self.register_outputs({})


def sync_after_commit(
    config: HarborConfig,
    commit: pulumi.Input[str | None],
    after: list[pulumi.Resource],
    cluster_lifetime: pulumi.Resource,
) -> pulumi.Resource:
    """The `argocd-sync` step on the first server: refresh the root, sync what is out of sync (argocd-sync.sh).

    The commit the GitOps tree landed as is one of its parameters, so the step's stdin changes, and
    the engine runs its update (the same `sync`), when a new commit landed; an `up` that commits
    nothing leaves it alone. pulumi-command also runs it again on any other change of its stdin
    (the script, the timeout) or of its connection (the first server, its key, its bastion): the
    script records the commit it synced on the root Application and does nothing for a commit
    recorded there already, so only a new commit syncs. It has no delete: nothing of it stays to
    remove. A preview dials no node: pulumi-command runs nothing then, and the commit is not known
    before the push.
    """
    env: dict[str, pulumi.Input[str]] = {
        # None only in a preview, where the provider has not pushed yet (and nothing runs).
        "HARBOR_GITOPS_REVISION": pulumi.Output.from_input(commit).apply(lambda sha: sha or ""),
        "HARBOR_ARGOCD_NAMESPACE": NAMESPACE,
        "HARBOR_ROOT_APPLICATION": ROOT_APPLICATION,
        "HARBOR_CHILD_SELECTOR": platform_applications_selector(),
        "HARBOR_CHILD_APPLICATIONS": "\n".join(platform_application_names(config)),
        "HARBOR_SYNC_TIMEOUT": str(config.gitops.sync_timeout_seconds),
    }
    return node_command(
        SYNC_STEP,
        config,
        config.first_server,
        "argocd-sync.sh",
        create="sync",
        update="sync",
        delete=None,
        env=env,
        secret=False,
        # Goes with the cluster like the Argo CD objects it writes (the engine wants the target first).
        opts=pulumi.ResourceOptions(depends_on=[*after, cluster_lifetime], deleted_with=cluster_lifetime),
    )
