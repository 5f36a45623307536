"""Fixtures of the real-host testbed: booted nodes, the program's commands, snapshots of node state.

Every test here is marked `testbed` and skips with the reason when not root or when a tool is
missing; as root a skip is a failure (tests/conftest.py), since ./scripts/test installs what they
need there. One testbed per module: booting is cheap (about 1-4 s for 1-8 nodes in parallel) but
applying the stack is not, so the tests of a module share nodes and run in file order.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import pytest

from tests.realengine.conftest import stack_on
from tests.realengine.driver import RealEngine, real_engine_built
from tests.testbed.engine import Replay
from tests.testbed.nodes import Node, Testbed, missing_requirements
from tests.testbed.stack import K3S_VERSION, MESH_BASE, MESH_INTERFACE
from tests.testbed.stack_engine import StackEngine

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
find /etc /usr/local /var/lib/rancher /var/lib/kubelet /run/k3s /var/lib/space-harbor /var/tmp -xdev \
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


def snapshot_changes(before: Snapshot, after: Snapshot) -> list[str]:
    """What differs between two snapshots of a node, one line per file, unit, link set or ruleset."""
    problems = []
    for path in sorted(set(before.files) | set(after.files)):
        if before.files.get(path) != after.files.get(path):
            problems.append(f"file {path} changed")
    for unit in sorted(set(before.units) | set(after.units)):
        if before.units.get(unit) != after.units.get(unit):
            problems.append(f"unit {unit}: {before.units.get(unit)!r} -> {after.units.get(unit)!r}")
    if before.links != after.links:
        problems.append(f"links {before.links} -> {after.links}")
    if before.nft != after.nft:
        problems.append("nftables ruleset changed")
    return problems


def inventory(tb: Testbed, node: Node | str) -> set[str]:
    """Every path under the places an install writes to, and every unit file."""
    return set(tb.ssh(node, INVENTORY_SCRIPT).stdout.splitlines())


def digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def booted_testbed(nodes: list[str], *, git: bool, stage_k3s: bool = True) -> Iterator[Testbed]:
    """Booted nodes (the k3s binary pre-placed unless `stage_k3s` is false), closed after use."""
    reason = missing_requirements()
    if reason:
        pytest.skip(reason)
    tb = Testbed(k3s_version=K3S_VERSION)
    try:
        tb.start()
        tb.add_nodes(nodes, stage_k3s=stage_k3s)
        if git:
            tb.add_git_server()
        yield tb
    finally:
        tb.close()


def standin_server(tb: Testbed) -> bool:
    """Whether n1 runs the k3s stand-in's own server (its node records, its token registration),
    not the real API server the stand-in runs when the real engine's tools are built."""
    return "apiVersion" not in tb.ssh("n1", "k3s kubectl get node n1 -o json").stdout


def heartbeat(tb: Testbed, name: str) -> float:
    """When `name`'s kubelet last checked in with the server (epoch seconds): the Ready condition's
    heartbeat in the real API, else the stand-in server's record of it."""
    if standin_server(tb):
        record = json.loads(tb.ssh("n1", f"cat /var/lib/rancher/k3s/standin/nodes/{name}.json").stdout)
        return float(record["heartbeat"])
    node = json.loads(tb.ssh("n1", f"k3s kubectl get node {name} -o json").stdout)
    (ready,) = [c for c in node["status"]["conditions"] if c["type"] == "Ready"]
    assert ready["status"] == "True", ready
    return datetime.fromisoformat(ready["lastHeartbeatTime"].replace("Z", "+00:00")).timestamp()


def engine_cluster(nodes: list[str], tmp: Path, *, git: bool, stage_k3s: bool = True) -> Iterator[StackEngine]:
    """A module's stack under the real `pulumi` CLI when `./scripts/engine status` says the tools
    are built (the nodes then boot with the real control plane, and a git server), else under the
    replay (a fresh machine, where the real tier does not run either). Nothing is applied yet."""
    if real_engine_built():
        for stack in stack_on(nodes, tmp, up=False, stage_k3s=stage_k3s):
            yield RealEngine(stack)
    else:
        for tb in booted_testbed(nodes, git=git, stage_k3s=stage_k3s):
            yield Replay(tb)


@pytest.fixture(scope="module")
def testbed4() -> Iterator[Testbed]:
    """Four booted nodes n1..n4 (n1 will be the server) and a git server, for one module."""
    yield from booted_testbed(["n1", "n2", "n3", "n4"], git=True)


@pytest.fixture(scope="module")
def testbed3() -> Iterator[Testbed]:
    """Three booted nodes n1..n3 (n1 will be the server), no git server, for one module."""
    yield from booted_testbed(["n1", "n2", "n3"], git=False)


@pytest.fixture(scope="module")
def testbed1() -> Iterator[Testbed]:
    """One booted node n1 (the server), no git server, for one module."""
    yield from booted_testbed(["n1"], git=False)


@pytest.fixture(scope="module")
def testbed2_git() -> Iterator[Testbed]:
    """Two booted nodes n1, n2 (n1 the server) and a git server, for one module."""
    yield from booted_testbed(["n1", "n2"], git=True)


# --- the mesh, seen from the nodes ---------------------------------------------------------------


def mesh_address(tb: Testbed, name: str) -> str:
    return f"{MESH_BASE}{tb.nodes[name].index}"


def wg_peers(tb: Testbed, node: str) -> dict[str, dict[str, int | str]]:
    """Peers of the node's mesh interface by public key: endpoint, handshake (epoch s), rx, tx."""
    lines = tb.ssh(node, f"wg show {MESH_INTERFACE} dump").stdout.splitlines()
    peers: dict[str, dict[str, int | str]] = {}
    for line in lines[1:]:
        key, _psk, endpoint, _allowed, handshake, rx, tx, _keepalive = line.split("\t")
        peers[key] = {"endpoint": endpoint, "handshake": int(handshake), "rx": int(rx), "tx": int(tx)}
    return peers


def mesh_pings(tb: Testbed, source: str, target: str) -> bool:
    address = mesh_address(tb, target)
    return tb.ssh(source, f"ping -c1 -W2 -I {MESH_INTERFACE} {address}", check=False).returncode == 0


MESH_REACH = r"""
deadline=$(( $(date +%s) + {within} ))
for address in {targets}; do
    until ping -c1 -W1 -I {iface} "$address" >/dev/null 2>&1; do
        [ "$(date +%s)" -lt "$deadline" ] || {{ echo "no answer from $address over {iface}"; exit 1; }}
        sleep 0.2
    done
done
"""


def wait_mesh(tb: Testbed, nodes: list[str], *, within: float) -> float:
    """Every node pings every other's mesh address through WireGuard; seconds it took. Fails after `within`.

    One SSH session per node, all at once, each looping on the node until its peers answer, so a
    lossy bridge costs retried pings rather than a new SSH connection for each one.
    """
    started = time.monotonic()
    deadline = started + within

    def reach(source: str) -> None:
        targets = " ".join(mesh_address(tb, t) for t in nodes if t != source)
        while True:
            left = max(1, int(deadline - time.monotonic()))
            script = MESH_REACH.format(within=left, targets=targets, iface=MESH_INTERFACE)
            result = tb.ssh(source, script, check=False, timeout=left + 60)
            if result.returncode == 0:
                return
            # 255: this SSH session failed (a lost connection), not the mesh: try again in time.
            assert result.returncode == 255 and time.monotonic() < deadline, (
                f"{source} cannot reach every node over the mesh within {within}s: {result.stdout}{result.stderr}"
            )

    with ThreadPoolExecutor(max_workers=max(1, len(nodes))) as pool:
        list(pool.map(reach, nodes))
    return time.monotonic() - started
