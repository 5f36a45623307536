"""The refactor of issue 14 changes no resource identity: every reference stack registers exactly
the URNs it registered before (tests/program/fixtures/refactor-urns-*.txt, taken from the code
before the refactor). A URN that changes is a delete plus a create on every existing stack, and
for a k3s step that is an uninstall.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.conftest import STACKS, etcd_config
from tests.harness import run_program
from tests.unit.test_platform_render import full_raw

FIXTURES = Path(__file__).parent / "fixtures"


def operators_forget_first_server() -> dict[str, Any]:
    """Three etcd servers bootstrapped by the second, two operators, and a node gone for good."""
    config = etcd_config()
    config["nodes"].append({"name": "agent-2", "role": "agent", "host": "192.0.2.22", "meshAddress": "10.160.1.2"})
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


def _pinned(name: str) -> set[str]:
    lines = (FIXTURES / f"refactor-urns-{name}.txt").read_text().splitlines()
    return {line for line in lines if line and not line.startswith("#")}


@pytest.mark.parametrize("preview", [True, False], ids=["preview", "up"])
@pytest.mark.parametrize("stack", sorted(REFERENCE_STACKS))
def test_the_program_registers_exactly_the_pinned_urns(stack: str, preview: bool) -> None:
    registered = [r.urn for r in run_program(REFERENCE_STACKS[stack](), preview=preview).resources]
    assert len(registered) == len(set(registered)), "a URN registered twice"
    pinned = _pinned(stack)
    assert sorted(set(registered) - pinned) == [], "new identities"
    assert sorted(pinned - set(registered)) == [], "lost identities"
