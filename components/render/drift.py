"""Drift of a node, pure: what the program applies as fingerprints, and what a read found, compared.

`expectations` turns what the steps apply into fingerprints that hold no secret (the sha256 of a
file that holds a token or a key, never the file). components/scripts/drift-read.sh prints what a
node runs now as facts; `parse_facts` reads them and `compare` says, per artefact, `AS_APPLIED`
or one line on what differs. `next_repair` says which steps run again after a refresh found
drift. No I/O here: the dynamic provider (components/drift.py) does the SSH.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

AS_APPLIED = "as applied"

# Every artefact the read covers, and the node step whose (idempotent) script puts it back.
STEP_OF = {
    "config.yaml": "k3s",
    "registries.yaml": "k3s",
    "k3s-version": "k3s",
    "k3s-service": "k3s",
    "wireguard": "mesh",
    "wireguard-unit": "mesh",
    "nftables": "firewall",
    "firewall-unit": "firewall",
}
STEPS = ("k3s", "mesh", "firewall")

K3S_DIR = "/etc/rancher/k3s"
FIREWALL_FILE = "/etc/space-harbor/firewall.nft"
FIREWALL_UNIT = "space-harbor-firewall.service"


def as_written(text: str) -> str:
    """The file that harbor_write_if_changed (lib.sh) writes for `text`: one final newline."""
    return text.removesuffix("\n") + "\n"


def fingerprint(text: str) -> str:
    """The sha256 of the file written for `text`, as `sha256sum` prints it on the node."""
    return hashlib.sha256(as_written(text).encode("utf-8")).hexdigest()


def short(value: str) -> str:
    """A fingerprint or key shortened for a message line."""
    return value[:8]


def firewall_file_text(table: str, ruleset: str) -> str:
    """/etc/space-harbor/firewall.nft as firewall.sh stores it (its `fw_transaction`)."""
    return (
        f"# Space Harbor: replaces table inet {table} atomically; nothing else.\n"
        f"table inet {table} {{}}\n"
        f"delete table inet {table}\n"
        f"{ruleset.removesuffix(chr(10))}\n"
    )


def firewall_unit_text(table: str, nft_bin: str) -> str:
    """The boot unit firewall.sh installs (its `fw_unit_text`), for the nft at `nft_bin`."""
    return f"""# Managed by Space Harbor. Loads table inet {table} at boot, and again after nftables.service
# (whose /etc/nftables.conf usually starts with "flush ruleset") starts, restarts or reloads.
[Unit]
Description=Space Harbor node firewall (nftables table inet {table})
DefaultDependencies=no
Wants=network-pre.target
Before=network-pre.target shutdown.target
After=nftables.service
PartOf=nftables.service
ReloadPropagatedFrom=nftables.service
Conflicts=shutdown.target

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart={nft_bin} -f /etc/space-harbor/firewall.nft
ExecReload={nft_bin} -f /etc/space-harbor/firewall.nft

[Install]
WantedBy=sysinit.target
"""


@dataclass(frozen=True)
class MeshExpectation:
    interface: str
    wg_config: str  # the wg-quick file (holds the private key: only its sha256 is kept)
    public_key: str
    listen_port: int
    peers: Mapping[str, tuple[str, str]]  # peer name -> (public key, allowed IPs)


def expectations(
    *,
    node: str,
    role: str,
    config_yaml: str,
    registries_yaml: str | None,
    version: str,
    mesh: MeshExpectation | None,
    nft_table: str | None,
    nft_ruleset: str | None,
) -> dict[str, Any]:
    """The `expected` input of a node's drift resource: per artefact, fingerprints and no secret."""
    unit = "k3s" if role == "server" else "k3s-agent"
    expected: dict[str, Any] = {
        "config.yaml": {"sha256": fingerprint(config_yaml)},
        "registries.yaml": {"sha256": fingerprint(registries_yaml) if registries_yaml else None},
        "k3s-version": {"version": version},
        "k3s-service": {"unit": unit, "role": role},
    }
    if mesh is not None:
        expected["wireguard"] = {
            "interface": mesh.interface,
            "file": fingerprint(mesh.wg_config),
            "public_key": mesh.public_key,
            "listen_port": str(mesh.listen_port),
            # One line per peer, "<name> <public key> <allowed IPs>": one string, not N nested
            # values, which the SDK would walk one by one for every node (N^2 in all).
            "peers": "".join(f"{name} {key} {allowed}\n" for name, (key, allowed) in sorted(mesh.peers.items())),
        }
        expected["wireguard-unit"] = {"unit": f"wg-quick@{mesh.interface}"}
    if nft_table is not None and nft_ruleset is not None:
        expected["nftables"] = {"table": nft_table, "file": fingerprint(firewall_file_text(nft_table, nft_ruleset))}
        expected["firewall-unit"] = {"unit": FIREWALL_UNIT.removesuffix(".service")}
    return expected


def read_parameters(expected: Mapping[str, Any]) -> dict[str, str]:
    """drift-read.sh's parameters, from the stored `expected` alone (a refresh runs no program)."""
    parameters = {"HARBOR_K3S_ROLE": str(expected["k3s-service"]["role"])}
    if "wireguard" in expected:
        parameters["HARBOR_WG_INTERFACE"] = str(expected["wireguard"]["interface"])
    if "nftables" in expected:
        parameters["HARBOR_NFT_TABLE"] = str(expected["nftables"]["table"])
    return parameters


@dataclass
class Facts:
    """What drift-read.sh printed: one value list per fact, and the live peers."""

    values: dict[str, list[str]] = field(default_factory=dict)
    peers: dict[str, str] = field(default_factory=dict)  # public key -> allowed IPs

    def get(self, key: str, index: int = 0, default: str = "absent") -> str:
        found = self.values.get(key) or []
        return found[index] if index < len(found) else default


def parse_facts(stdout: str) -> Facts:
    facts = Facts()
    for line in stdout.splitlines():
        parts = line.split()
        if not parts or "." not in parts[0]:
            continue
        if parts[0] == "wg.peer" and len(parts) >= 2:
            facts.peers[parts[1]] = parts[2] if len(parts) > 2 else ""
        else:
            facts.values[parts[0]] = parts[1:]
    return facts


def _file(node: str, path: str, found: str, want: str | None, verb: str = "edited on the node") -> str:
    if found == "absent":
        return f"{node}: {path} missing"
    return f"{node}: {path} {verb} (sha256 {short(found)}, applied {short(want or '')})"


def _unit(node: str, unit: str, facts: Facts, key: str) -> list[str]:
    active, enabled = facts.get(key, 0, "unknown"), facts.get(key, 1, "unknown")
    problems = []
    if active != "active":
        problems.append(f"{node}: {unit}.service {active}")
    if enabled != "enabled":
        problems.append(f"{node}: {unit}.service not enabled at boot ({enabled})")
    return problems


def _k3s(node: str, artefact: str, want: Mapping[str, Any], facts: Facts) -> list[str]:
    if artefact == "config.yaml":
        found = facts.get("k3s.config")
        return [] if found == want["sha256"] else [_file(node, f"{K3S_DIR}/config.yaml", found, want["sha256"])]
    if artefact == "registries.yaml":
        found, ours = facts.get("k3s.registries"), facts.get("k3s.registries", 1, "no")
        path = f"{K3S_DIR}/registries.yaml"
        # The engine keeps no null in a stored map: an unset file's sha256 comes back absent.
        if want.get("sha256") is None:
            # Unset: only a file that Space Harbor wrote must be gone; anybody else's stays.
            return [f"{node}: {path} written by Space Harbor is back, none applied"] if ours == "yes" else []
        return [] if found == want["sha256"] else [_file(node, path, found, want["sha256"])]
    if artefact == "k3s-version":
        found = facts.get("k3s.version")
        if found == want["version"]:
            return []
        if found == "absent":
            return [f"{node}: no k3s binary answers at /usr/local/bin/k3s, {want['version']} applied"]
        return [f"{node}: k3s {found} running, {want['version']} applied"]
    return _unit(node, want["unit"], facts, "k3s.unit")


def _wireguard(node: str, want: Mapping[str, Any], facts: Facts) -> list[str]:
    interface = want["interface"]
    problems = []
    found = facts.get("wg.file")
    if found != want["file"]:
        problems.append(_file(node, f"/etc/wireguard/{interface}.conf", found, want["file"]))
    if facts.get("wg.link") != "present":
        return [*problems, f"{node}: interface {interface} missing"]
    key = facts.get("wg.public-key")
    if key != want["public_key"]:
        problems.append(f"{node}: {interface} has the public key {short(key)}…, applied {short(want['public_key'])}…")
    port = facts.get("wg.listen-port")
    if port != want["listen_port"]:
        problems.append(f"{node}: {interface} listens on {port}, applied {want['listen_port']}")
    live = dict(facts.peers)
    for name, key, applied in (line.split(" ", 2) for line in str(want["peers"]).splitlines() if line):
        allowed = live.pop(key, None)
        if allowed is None:
            problems.append(f"{node}: {interface} lacks the peer {name} (key {short(key)}…)")
        elif sorted(allowed.split(",")) != sorted(applied.split(",")):
            problems.append(f"{node}: {interface} lets the peer {name} send from {allowed}, applied {applied}")
    problems += [f"{node}: {interface} has a peer the stack does not know (key {short(key)}…)" for key in sorted(live)]
    return problems


def _nftables(node: str, want: Mapping[str, Any], facts: Facts) -> list[str]:
    table = want["table"]
    problems = []
    found = facts.get("nft.file")
    if found != want["file"]:
        problems.append(_file(node, FIREWALL_FILE, found, want["file"]))
    if facts.get("nft.table") != "present":
        return [*problems, f"{node}: nftables table {table} missing"]
    loaded, live = facts.get("nft.loaded"), facts.get("nft.live")
    if facts.get("nft.rules", 0, "0") == "0":
        problems.append(f"{node}: nftables table {table} has no rules (flushed)")
    elif loaded != "absent" and loaded != live:
        problems.append(
            f"{node}: nftables table {table} changed on the node (sha256 {short(live)}, loaded {short(loaded)})"
        )
    return problems


def _firewall_unit(node: str, want: Mapping[str, Any], table: str, facts: Facts) -> list[str]:
    unit = want["unit"]
    problems = []
    nft_bin = facts.get("nft.bin")
    found = facts.get("nft.unit-file")
    path = f"/etc/systemd/system/{unit}.service"
    if found == "absent" or nft_bin == "absent":
        problems.append(f"{node}: {path} missing")
    else:
        applied = fingerprint(firewall_unit_text(table, nft_bin))
        if found != applied:
            problems.append(_file(node, path, found, applied))
    return problems + _unit(node, unit, facts, "nft.unit")


def compare(node: str, expected: Mapping[str, Any], facts: Facts) -> dict[str, str]:
    """Per artefact of `expected`: `AS_APPLIED`, or one line (several joined by '; ') on what differs."""
    observed = {}
    for artefact, want in expected.items():
        if artefact in ("config.yaml", "registries.yaml", "k3s-version", "k3s-service"):
            problems = _k3s(node, artefact, want, facts)
        elif artefact == "wireguard":
            problems = _wireguard(node, want, facts)
        elif artefact == "wireguard-unit":
            problems = _unit(node, want["unit"], facts, "wg.unit")
        elif artefact == "nftables":
            problems = _nftables(node, want, facts)
        elif artefact == "firewall-unit":
            problems = _firewall_unit(node, want, expected["nftables"]["table"], facts)
        else:
            continue
        observed[artefact] = "; ".join(problems) if problems else AS_APPLIED
    return observed


def drifted(observed: Mapping[str, str] | None) -> list[str]:
    """The artefacts whose last read differed from what was applied."""
    return sorted(artefact for artefact, seen in (observed or {}).items() if seen != AS_APPLIED)


def zero_repair() -> dict[str, int]:
    return dict.fromkeys(STEPS, 0)


def next_repair(repair: Mapping[str, Any] | None, observed: Mapping[str, str] | None) -> dict[str, int]:
    """The repair counters after a read that observed `observed`: +1 for each step with a drifted artefact."""
    counters = zero_repair() | {step: int(value) for step, value in (repair or {}).items() if step in STEPS}
    for step in sorted({STEP_OF[artefact] for artefact in drifted(observed) if artefact in STEP_OF}):
        counters[step] += 1
    return counters


def repair_parameter(counter: int | None) -> str | None:
    """HARBOR_REPAIR for a step's stdin, only once the step was repaired: a stack that never was
    keeps its steps' stdin as it was, so adding drift detection re-runs no step."""
    return str(counter) if counter else None
