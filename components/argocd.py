"""ArgoCD: the pinned Argo CD Core manifests, the repository credentials and the root Application.

Core has no API server, UI or SSO; operators reach it with `argocd admin dashboard --core`
through their own kubeconfig, so nothing of Argo CD is ever exposed.
"""

from __future__ import annotations

import pulumi
import pulumi_kubernetes as k8s

from components.config import HarborConfig
from components.render.gitops import (
    render_known_hosts_configmap,
    render_repository_secret,
    render_root_application,
)

NAMESPACE = "argocd"


def core_manifest_url(version: str) -> str:
    return f"https://raw.githubusercontent.com/argoproj/argo-cd/{version}/manifests/core-install.yaml"


class ArgoCD(pulumi.ComponentResource):
    root_application: pulumi.Resource

    def __init__(
        self,
        name: str,
        config: HarborConfig,
        provider: k8s.Provider,
        depends_on: list[pulumi.Resource] | None = None,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__("space-harbor:index:ArgoCD", name, None, opts)
        child = pulumi.ResourceOptions(parent=self, provider=provider)
        namespace = k8s.core.v1.Namespace("argocd-namespace", metadata={"name": NAMESPACE}, opts=child)
        core = k8s.yaml.v2.ConfigFile(
            "argocd-core",
            file=core_manifest_url(config.argocd.version),
            opts=pulumi.ResourceOptions.merge(child, pulumi.ResourceOptions(depends_on=[namespace])),
        )
        repository = render_repository_secret(config)
        secret = k8s.core.v1.Secret(
            "argocd-repository",
            metadata=repository["metadata"],
            type=repository.get("type"),
            string_data=pulumi.Output.secret(repository["stringData"]),
            opts=pulumi.ResourceOptions.merge(child, pulumi.ResourceOptions(depends_on=[namespace])),
        )
        after_core = pulumi.ResourceOptions.merge(child, pulumi.ResourceOptions(depends_on=[core]))
        known_hosts = render_known_hosts_configmap(config)
        waits_for: list[pulumi.Resource] = [core, secret, *(depends_on or [])]
        if known_hosts is not None:
            # The ConfigMap ships with core-install.yaml; patch our hosts in rather than own it.
            waits_for.append(
                k8s.core.v1.ConfigMapPatch(
                    "argocd-ssh-known-hosts",
                    metadata=known_hosts["metadata"],
                    data=known_hosts["data"],
                    opts=after_core,
                )
            )
        root = render_root_application(config)
        self.root_application = k8s.apiextensions.CustomResource(
            "argocd-root-application",
            api_version=root["apiVersion"],
            kind=root["kind"],
            metadata=root["metadata"],
            spec=root["spec"],
            opts=pulumi.ResourceOptions.merge(child, pulumi.ResourceOptions(depends_on=waits_for)),
        )
        self.register_outputs({})
