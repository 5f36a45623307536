"""The Pod Security fence: the admission policy that refuses a Namespace Argo CD writes without a Pod Security level.

Users' Applications may deploy only into namespaces outside the platform's (the `applications`
AppProject), and the Namespaces themselves come from `<path>/apps/user/` through the root
Application, or from an Application's `CreateNamespace=true` (with `managedNamespaceMetadata`).
Either way Argo CD's application controller is the one that creates or updates them, so this
ValidatingAdmissionPolicy checks exactly that user's Namespace writes: the label
`pod-security.kubernetes.io/enforce` must be `restricted` or `baseline`, so that the API server's
built-in PodSecurity admission refuses privileged, hostPath and host-namespace pods there.

The platform's namespaces (every component of the registry, enabled or not, as the AppProject's
deny list) and Argo CD's own are exempt: Longhorn, say, runs privileged pods by design, and no
user Application may deploy into them. Namespaces written by anyone else (an admin's kubectl,
Pulumi) are not this policy's business.
"""

from __future__ import annotations

import json
from typing import Any

from components.platform import REGISTRY
from components.render.admission import controller_condition, forbidden, validating_policy
from components.render.gitops import ARGOCD_NAMESPACE

POLICY_NAME = "space-harbor-namespace-pod-security"
ENFORCE_LABEL = "pod-security.kubernetes.io/enforce"
# Both refuse privileged containers, hostPath volumes and host namespaces; `privileged` refuses nothing.
ALLOWED_LEVELS = ("restricted", "baseline")


def exempt_namespaces() -> list[str]:
    """Argo CD's namespace and every platform component's: the namespaces the fence leaves alone."""
    return sorted({component.namespace for component in REGISTRY} | {ARGOCD_NAMESPACE})


def _cel(value: str | list[str]) -> str:
    # A JSON string or list of strings is a CEL literal too: same quotes, same escapes.
    return json.dumps(value)


def refusal_message() -> str:
    """The fixed part of the refusal, which Argo CD shows in the sync error: the label and its values."""
    levels = " or ".join(ALLOWED_LEVELS)
    return (
        f"Argo CD may apply a Namespace only with the label {ENFORCE_LABEL} set to {levels} "
        f"(Space Harbor's Pod Security fence): set it in the Namespace's metadata.labels, or in the "
        f"Application's syncPolicy.managedNamespaceMetadata.labels with CreateNamespace=true"
    )


def render_policy(controller_username: str) -> dict[str, Any]:
    """The ValidatingAdmissionPolicy: Namespace CREATE and UPDATE by `controller_username`, exempt names aside."""
    label = _cel(ENFORCE_LABEL)
    return validating_policy(
        POLICY_NAME,
        match={
            # A PATCH (client- or server-side apply) reaches admission as CREATE or UPDATE.
            "resourceRules": [
                {
                    "apiGroups": [""],
                    "apiVersions": ["v1"],
                    "operations": ["CREATE", "UPDATE"],
                    "resources": ["namespaces"],
                }
            ],
            "matchPolicy": "Equivalent",
        },
        conditions=[
            controller_condition(controller_username),
            {"name": "not-exempt", "expression": f"!(object.metadata.name in {_cel(exempt_namespaces())})"},
        ],
        variables=[
            {
                "name": "level",
                "expression": (
                    f"has(object.metadata.labels) && {label} in object.metadata.labels"
                    f" ? object.metadata.labels[{label}] : ''"
                ),
            }
        ],
        # The object as it would be stored: an UPDATE that drops or lowers the label fails too.
        validations=[
            forbidden(
                f"variables.level in {_cel(list(ALLOWED_LEVELS))}",
                refusal_message(),
                f"'Namespace ' + object.metadata.name + ': ' + {_cel(refusal_message())}"
                " + (variables.level == '' ? '; it has none' : '; it has ' + variables.level)",
            )
        ],
    )
