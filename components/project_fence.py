"""ProjectFence: the admission policies and bindings of components/render/project_fence.py, in the cluster.

Like the Pod Security fence (components/pod_security.py): cluster-scoped objects applied by the stack's
Kubernetes provider, `deleted_with` the cluster-lifetime resource.
"""

from __future__ import annotations

import pulumi
import pulumi_kubernetes as k8s

from components.render.admission import render_binding
from components.render.project_fence import (
    ProjectFenceArgs,
    render_applications_policy,
    render_projects_policy,
)


class ProjectFence(pulumi.ComponentResource):
    policies: list[pulumi.Resource]
    bindings: list[pulumi.Resource]

    def __init__(
        self,
        name: str,
        args: ProjectFenceArgs,
        provider: k8s.Provider,
        *,
        cluster_lifetime: pulumi.Resource | None = None,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__("space-harbor:index:ProjectFence", name, None, opts)
        child = pulumi.ResourceOptions(parent=self, provider=provider, deleted_with=cluster_lifetime)
        self.policies, self.bindings = [], []
        for kind, policy in (
            ("applications", render_applications_policy(args)),
            ("projects", render_projects_policy(args)),
        ):
            created = k8s.admissionregistration.v1.ValidatingAdmissionPolicy(
                f"{name}-{kind}-policy", metadata=policy["metadata"], spec=policy["spec"], opts=child
            )
            binding = render_binding(policy)
            self.policies.append(created)
            self.bindings.append(
                k8s.admissionregistration.v1.ValidatingAdmissionPolicyBinding(
                    f"{name}-{kind}-binding",
                    metadata=binding["metadata"],
                    spec=binding["spec"],
                    opts=pulumi.ResourceOptions.merge(child, pulumi.ResourceOptions(depends_on=[created])),
                )
            )
        self.register_outputs({})
