"""The refactor of issue 14 changes no resource identity: every reference stack registers exactly
the URNs it registered before (tests/program/fixtures/refactor-urns-*.txt, taken from the code
before the refactor). A URN that changes is a delete plus a create on every existing stack, and
for a k3s step that is an uninstall.

Resources added since are listed in ADDED, each with why: a new identity is a create on every
existing stack, which must be meant.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import STACKS, etcd_config, pinned
from tests.harness import run_program
from tests.unit.test_platform_render import full_raw

FIXTURES = Path(__file__).parent / "fixtures"


def operators_forget_first_server() -> dict[str, Any]:
    """Three etcd servers bootstrapped by the second, two operators, and a node gone for good."""
    config = etcd_config()
    config["nodes"].append(
        pinned({"name": "agent-2", "role": "agent", "host": "192.0.2.22", "meshAddress": "10.160.1.2"})
    )
    config["k3s"]["firstServer"] = "server-2"
    config["mesh"] = {
        "operators": [
            {"name": "laptop", "meshAddress": "10.175.0.1"},
            {"name": "ci", "meshAddress": "10.175.0.2", "publicKey": "q5u3mzLzHRdW0LdCFD6PlQ0/VFBr6ppOJdz9/HDDiFs="},
        ]
    }
    config["decommission"] = {"forget": ["agent-9"]}
    return config


REFERENCE_STACKS = {
    **STACKS,
    "all-components": full_raw,
    "operators-forget-first-server": operators_forget_first_server,
}


# Identities added after the refactor, by the last part of the URN (type::name).
ADDED = {
    # issue 11.7: the pinned k3s installer (and air-gap files) copied to every node
    "command:remote:CopyToRemote::<node>-ship-installer": re.compile(
        r"K3sNode\$command:remote:CopyToRemote::[a-z0-9-]+-ship-installer$"
    ),
    # ... and the step whose delete removes the staged copies when the node leaves
    "command:remote:Command::<node>-shipped": re.compile(r"K3sNode\$command:remote:Command::[a-z0-9-]+-shipped$"),
    # issue 20: each node's drift record (read by `pulumi refresh`) and the component that holds them
    "space-harbor:index:NodeDrift::drift": re.compile(r"::space-harbor:index:NodeDrift::drift$"),
    "pulumi-python:dynamic:Resource::<node>-drift": re.compile(
        r"NodeDrift\$pulumi-python:dynamic:Resource::[a-z0-9-]+-drift$"
    ),
    # issue 19.4: the step that stops an up replacing the cluster's id (its delete fails)
    "command:remote:Command::cluster-id-guard": re.compile(r"::command:remote:Command::cluster-id-guard$"),
    # issue 22.4: the Pod Security fence on the Namespaces Argo CD applies (component, policy, binding)
    "space-harbor:index:PodSecurityFence::pod-security": re.compile(
        r"::space-harbor:index:PodSecurityFence::pod-security$"
    ),
    "kubernetes:admissionregistration.k8s.io/v1:ValidatingAdmissionPolicy*::pod-security-*": re.compile(
        r"PodSecurityFence\$kubernetes:admissionregistration\.k8s\.io/v1:"
        r"(ValidatingAdmissionPolicy::pod-security-policy|ValidatingAdmissionPolicyBinding::pod-security-binding)$"
    ),
    # issue 22.4: the project fence on the Applications and AppProjects Argo CD applies (component,
    # a policy and a binding for each kind)
    "space-harbor:index:ProjectFence::project-fence": re.compile(r"::space-harbor:index:ProjectFence::project-fence$"),
    "kubernetes:admissionregistration.k8s.io/v1:ValidatingAdmissionPolicy*::project-fence-*": re.compile(
        r"ProjectFence\$kubernetes:admissionregistration\.k8s\.io/v1:"
        r"ValidatingAdmissionPolicy(Binding)?::project-fence-(applications|projects)-(policy|binding)$"
    ),
}


def _added(urn: str) -> bool:
    return any(pattern.search(urn) for pattern in ADDED.values())


def _pinned(name: str) -> set[str]:
    lines = (FIXTURES / f"refactor-urns-{name}.txt").read_text().splitlines()
    return {line for line in lines if line and not line.startswith("#")}


@pytest.mark.parametrize("preview", [True, False], ids=["preview", "up"])
@pytest.mark.parametrize("stack", sorted(REFERENCE_STACKS))
def test_the_program_registers_exactly_the_pinned_urns(stack: str, preview: bool) -> None:
    registered = [r.urn for r in run_program(REFERENCE_STACKS[stack](), preview=preview).resources]
    assert len(registered) == len(set(registered)), "a URN registered twice"
    pinned = _pinned(stack)
    assert sorted(urn for urn in set(registered) - pinned if not _added(urn)) == [], "new identities"
    assert sorted(pinned - set(registered)) == [], "lost identities"
