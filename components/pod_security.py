"""PodSecurityFence: the admission policy and binding of components/render/pod_security.py, in the cluster.

Both objects are cluster-scoped, applied by the stack's Kubernetes provider, and `deleted_with` the
cluster-lifetime resource like Argo CD's objects (components/argocd.py says why): a destroy drops
them from state without calling an API that is gone by then.
"""

from __future__ import annotations

import pulumi
import pulumi_kubernetes as k8s

from components.render.admission import render_binding
from components.render.pod_security import render_policy


class PodSecurityFence(pulumi.ComponentResource):
    policy: pulumi.Resource
    binding: pulumi.Resource

    def __init__(
        self,
        name: str,
        controller_username: str,
        provider: k8s.Provider,
        *,
        cluster_lifetime: pulumi.Resource | None = None,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__("space-harbor:index:PodSecurityFence", name, None, opts)
        child = pulumi.ResourceOptions(parent=self, provider=provider, deleted_with=cluster_lifetime)
        policy = render_policy(controller_username)
        self.policy = k8s.admissionregistration.v1.ValidatingAdmissionPolicy(
            f"{name}-policy", metadata=policy["metadata"], spec=policy["spec"], opts=child
        )
        binding = render_binding(policy)
        self.binding = k8s.admissionregistration.v1.ValidatingAdmissionPolicyBinding(
            f"{name}-binding",
            metadata=binding["metadata"],
            spec=binding["spec"],
            opts=pulumi.ResourceOptions.merge(child, pulumi.ResourceOptions(depends_on=[self.policy])),
        )
        self.register_outputs({})
