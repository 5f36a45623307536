"""What Space Harbor's admission policies share: the API version, the condition that scopes a policy
to Argo CD's application controller, and the binding that puts a policy in force."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

API_VERSION = "admissionregistration.k8s.io/v1"


def controller_condition(controller_username: str) -> dict[str, str]:
    """A `matchConditions` entry: the policy judges only the writes of Argo CD's application controller."""
    return {
        "name": "applied-by-argocd",
        "expression": f"request.userInfo.username == {json.dumps(controller_username)}",
    }


def render_binding(policy: Mapping[str, Any]) -> dict[str, Any]:
    """The binding that puts `policy` in force, cluster-wide, refusing (not only warning or auditing)."""
    name = policy["metadata"]["name"]
    return {
        "apiVersion": API_VERSION,
        "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": {"name": name},
        "spec": {"policyName": name, "validationActions": ["Deny"]},
    }


def validating_policy(
    name: str,
    *,
    match: dict[str, Any],
    conditions: list[dict[str, str]],
    variables: list[dict[str, str]],
    validations: list[dict[str, str]],
) -> dict[str, Any]:
    """A ValidatingAdmissionPolicy that fails closed: an error evaluating it refuses the write
    rather than letting it through."""
    return {
        "apiVersion": API_VERSION,
        "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": name},
        "spec": {
            "failurePolicy": "Fail",
            "matchConstraints": match,
            "matchConditions": conditions,
            "variables": variables,
            "validations": validations,
        },
    }


def forbidden(expression: str, message: str, message_expression: str) -> dict[str, str]:
    """A validation refusing with `Forbidden` when `expression` is false; `message` is the fixed
    text shown when `message_expression` cannot be evaluated."""
    return {
        "expression": expression,
        "message": message,
        "messageExpression": message_expression,
        "reason": "Forbidden",
    }
