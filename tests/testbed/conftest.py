"""Fixtures of the real-host testbed: booted nodes, the program's commands, snapshots of node state.

Every test here is marked `testbed` and skips with the reason when not root or when a tool is
missing. One testbed per module: booting is cheap (about 1-4 s for 1-8 nodes in parallel) but
applying the stack is not, so the tests of a module share nodes and run in file order.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from tests.testbed.nodes import Node, Testbed, missing_requirements
from tests.testbed.stack import K3S_VERSION

SNAPSHOT_SCRIPT = r"""
find /etc /usr/local /srv /var/lib/rancher /var/lib/space-harbor -xdev -type f \
    ! -path '/var/lib/rancher/k3s/standin/*' -print0 2>/dev/null | sort -z | xargs -0 -r sha256sum
echo '##units'
systemctl list-units --type=service --all --no-legend --plain | awk '{print $1}' \
    | grep -v -e '^user@' -e '^user-runtime-dir@' | while read -r unit; do
        props=$(systemctl show -p ActiveState,ActiveEnterTimestamp,InvocationID,MainPID --value "$unit")
        echo "$unit $(echo "$props" | tr '\n' ' ')"
    done
echo '##links'
ip -o link show | awk '{print $1, $2}'
echo '##nft'
nft list ruleset | sha256sum
"""

INVENTORY_SCRIPT = r"""
find /etc /usr/local /var/lib/rancher /var/lib/kubelet /run/k3s /var/lib/space-harbor -xdev \
    \( -type f -o -type l -o -type d \) 2>/dev/null | sort
echo '##units'
systemctl list-unit-files --no-legend --plain 2>/dev/null | awk '{print $1}' | sort
"""


@dataclass
class Snapshot:
    files: dict[str, str] = field(default_factory=dict)
    units: dict[str, str] = field(default_factory=dict)
    links: list[str] = field(default_factory=list)
    nft: str = ""


def snapshot(tb: Testbed, node: Node | str) -> Snapshot:
    """Hashes of the node's configuration files, each service's start, links, and the nft ruleset."""
    out = tb.ssh(node, SNAPSHOT_SCRIPT).stdout
    snap = Snapshot()
    section = "files"
    for line in out.splitlines():
        if line.startswith("##"):
            section = line[2:]
            continue
        if not line.strip():
            continue
        if section == "files":
            digest, path = line.split(None, 1)
            snap.files[path] = digest
        elif section == "units":
            unit, _, rest = line.partition(" ")
            snap.units[unit] = rest
        elif section == "links":
            snap.links.append(line)
        elif section == "nft":
            snap.nft = line.split()[0]
    return snap


def inventory(tb: Testbed, node: Node | str) -> set[str]:
    """Every path under the places an install writes to, and every unit file."""
    return set(tb.ssh(node, INVENTORY_SCRIPT).stdout.splitlines())


def digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _testbed(nodes: list[str], *, git: bool) -> Iterator[Testbed]:
    reason = missing_requirements()
    if reason:
        pytest.skip(reason)
    tb = Testbed(k3s_version=K3S_VERSION)
    try:
        tb.start()
        tb.add_nodes(nodes)
        if git:
            tb.add_git_server()
        yield tb
    finally:
        tb.close()


@pytest.fixture(scope="module")
def testbed4() -> Iterator[Testbed]:
    """Four booted nodes n1..n4 (n1 will be the server) and a git server, for one module."""
    yield from _testbed(["n1", "n2", "n3", "n4"], git=True)
