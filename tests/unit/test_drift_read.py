"""drift-read.sh on a fake node (files under a fake root, stand-ins for ip, wg, nft, systemctl),
its facts compared with what the program applied (components/render/drift.py).

The stand-ins log every call, so the tests can tell that the read only ever looks.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from components.render.drift import (
    AS_APPLIED,
    MeshExpectation,
    compare,
    expectations,
    firewall_file_text,
    firewall_unit_text,
    parse_facts,
    read_parameters,
)
from components.render.remote import node_script, script_payload
from tests.conftest import TOKEN_MARKER

NODE = "n2"
VERSION = "v1.31.4+k3s1"
CONFIG_YAML = f"token: {TOKEN_MARKER}\nnode-name: n2\nserver: https://10.160.0.1:6443\n"
REGISTRIES = "# Managed by Space Harbor (Pulumi) from k3s.registries.\nmirrors: {}\n"
PRIVATE_KEY = "MARKER-WG-PRIVATE-KEY-0b1c="
OWN_KEY = "Own2Own2Own2Own2Own2Own2Own2Own2Own2Own2Ow0="
PEERS = {"n1": ("Xy12Xy12Xy12Xy12Xy12Xy12Xy12Xy12Xy12Xy12Xy0=", "10.160.0.1/32"),
         "n3": ("Zz34Zz34Zz34Zz34Zz34Zz34Zz34Zz34Zz34Zz34Zz0=", "10.160.0.3/32")}  # fmt: skip
WG_FILE = f"[Interface]\nPrivateKey = {PRIVATE_KEY}\n"
CHAIN = "\tchain input {\n\t\ttype filter hook input priority filter; policy drop;\n"
RULESET = "table inet space_harbor {\n" + CHAIN + "\t\ttcp dport 22 accept\n\t}\n}\n"
# What `nft -s list table` prints for it (here the same text), and once flushed: no rule left.
LISTING = RULESET
FLUSHED = "table inet space_harbor {\n" + CHAIN + "\t}\n}\n"

STUBS = {
    "ip": """
echo "ip $*" >>"$FAKE/calls"
[ "$1 $2 $3" = "link show dev" ] && [ -e "$FAKE/link-$4" ] && exit 0
exit 1
""",
    "wg": """
echo "wg $*" >>"$FAKE/calls"
[ "$1" = show ] || exit 1
case "$3" in
public-key) cat "$FAKE/wg-public-key" ;;
listen-port) echo 51820 ;;
allowed-ips) cat "$FAKE/wg-peers" ;;
*) exit 1 ;;
esac
""",
    "nft": """
echo "nft $*" >>"$FAKE/calls"
[ "$*" = "-s list table inet space_harbor" ] && [ -f "$FAKE/listing" ] && exec cat "$FAKE/listing"
exit 1
""",
    "systemctl": """
echo "systemctl $*" >>"$FAKE/calls"
case "$1" in
is-active) cat "$FAKE/unit-$2.active" 2>/dev/null || echo inactive ;;
is-enabled) cat "$FAKE/unit-$2.enabled" 2>/dev/null || echo disabled ;;
*) exit 1 ;;
esac
""",
}


@dataclass
class FakeNode:
    root: Path
    fake: Path
    bin: Path

    def write(self, path: str, text: str, mode: int = 0o600) -> None:
        target = self.root / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        target.chmod(mode)

    def state(self, name: str, text: str) -> None:
        (self.fake / name).write_text(text)

    def unit(self, unit: str, active: str = "active", enabled: str = "enabled") -> None:
        self.state(f"unit-{unit}.active", active + "\n")
        self.state(f"unit-{unit}.enabled", enabled + "\n")

    def calls(self) -> list[str]:
        path = self.fake / "calls"
        return path.read_text().splitlines() if path.exists() else []

    def files(self) -> dict[str, str]:
        return {
            str(p.relative_to(self.root)): hashlib.sha256(p.read_bytes()).hexdigest() + oct(p.stat().st_mode)
            for p in sorted(self.root.rglob("*"))
            if p.is_file()
        }


def applied_expectation() -> dict:
    return expectations(
        node=NODE,
        role="agent",
        config_yaml=CONFIG_YAML,
        registries_yaml=REGISTRIES,
        version=VERSION,
        mesh=MeshExpectation("wg-harbor", WG_FILE, OWN_KEY, 51820, PEERS),
        nft_table="space_harbor",
        nft_ruleset=RULESET,
    )


@pytest.fixture
def node(tmp_path: Path) -> FakeNode:
    """A node as the steps leave it: every artefact as applied."""
    fake = FakeNode(tmp_path / "root", tmp_path / "fake", tmp_path / "bin")
    for folder in (fake.root, fake.fake, fake.bin):
        folder.mkdir()
    for name, body in STUBS.items():
        (fake.bin / name).write_text("#!/bin/bash\n" + body)
        (fake.bin / name).chmod(0o755)
    (fake.root / "run/systemd/system").mkdir(parents=True)
    fake.write("/etc/rancher/k3s/config.yaml", CONFIG_YAML)
    fake.write("/etc/rancher/k3s/registries.yaml", REGISTRIES)
    fake.write(
        "/usr/local/bin/k3s", f"#!/bin/sh\necho 'k3s version {VERSION} (1a2b3c4d)'\necho 'go version go1.22'\n", 0o755
    )
    fake.write("/etc/wireguard/wg-harbor.conf", WG_FILE)
    fake.write("/etc/space-harbor/firewall.nft", firewall_file_text("space_harbor", RULESET))
    fake.write("/etc/space-harbor/firewall.live", hashlib.sha256(LISTING.encode()).hexdigest() + "\n")
    fake.write(
        "/etc/systemd/system/space-harbor-firewall.service",
        firewall_unit_text("space_harbor", str(fake.bin / "nft")),
        0o644,
    )
    fake.state("link-wg-harbor", "")
    fake.state("wg-public-key", OWN_KEY + "\n")
    fake.state("wg-peers", "".join(f"{key}\t{allowed}\n" for key, allowed in PEERS.values()))
    fake.state("listing", LISTING)
    for unit in ("k3s-agent.service", "wg-quick@wg-harbor.service", "space-harbor-firewall.service"):
        fake.unit(unit)
    return fake


def read(node: FakeNode) -> tuple[dict[str, str], str]:
    """The node read as the provider reads it: the payload on stdin, `bash -s -- read`."""
    payload = script_payload(
        node_script("drift-read.sh"), {**read_parameters(applied_expectation()), "HARBOR_DRIFT_ROOT": str(node.root)}
    )
    env = {"PATH": f"{node.bin}:{os.environ['PATH']}", "FAKE": str(node.fake), "LC_ALL": "C"}
    done = subprocess.run(["bash", "-s", "--", "read"], input=payload, capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    return compare(NODE, applied_expectation(), parse_facts(done.stdout)), done.stdout


def drifts(observed: dict[str, str]) -> dict[str, str]:
    return {artefact: line for artefact, line in observed.items() if line != AS_APPLIED}


def test_a_node_as_applied_reads_clean_and_the_read_changes_nothing(node: FakeNode) -> None:
    before = node.files()
    observed, out = read(node)
    assert observed == dict.fromkeys(applied_expectation(), AS_APPLIED)
    assert node.files() == before
    # Only looks: every call to a tool that could change something is a read.
    for call in node.calls():
        tool, *args = call.split()
        if tool == "systemctl":
            assert args[0] in ("is-active", "is-enabled"), call
        elif tool == "wg":
            assert args[0] == "show", call
        elif tool == "nft":
            assert args[:2] == ["-s", "list"], call
        else:
            assert args[:2] == ["link", "show"], call
    assert TOKEN_MARKER not in out and PRIVATE_KEY not in out


def test_an_edited_config_yaml_is_named_with_fingerprints_only(node: FakeNode) -> None:
    node.write("/etc/rancher/k3s/config.yaml", CONFIG_YAML + "node-label: [edited=by-hand]\n")
    found = drifts(read(node)[0])
    assert list(found) == ["config.yaml"]
    line = found["config.yaml"]
    assert line.startswith("n2: /etc/rancher/k3s/config.yaml edited on the node (sha256 ")
    assert TOKEN_MARKER not in line and "edited=by-hand" not in line


def test_a_removed_config_yaml_and_an_edited_registries_yaml(node: FakeNode) -> None:
    (node.root / "etc/rancher/k3s/config.yaml").unlink()
    node.write("/etc/rancher/k3s/registries.yaml", REGISTRIES + "configs: {}\n")
    found = drifts(read(node)[0])
    assert found["config.yaml"] == "n2: /etc/rancher/k3s/config.yaml missing"
    assert found["registries.yaml"].startswith("n2: /etc/rancher/k3s/registries.yaml edited on the node")


def test_a_stopped_service_and_another_version(node: FakeNode) -> None:
    node.unit("k3s-agent.service", active="inactive")
    node.write("/usr/local/bin/k3s", "#!/bin/sh\necho 'k3s version v1.31.3+k3s1 (0f0f0f0f)'\n", 0o755)
    found = drifts(read(node)[0])
    assert found == {
        "k3s-service": "n2: k3s-agent.service inactive",
        "k3s-version": f"n2: k3s v1.31.3+k3s1 running, {VERSION} applied",
    }


def test_a_removed_peer_and_a_foreign_one(node: FakeNode) -> None:
    key, allowed = PEERS["n3"]
    node.state(
        "wg-peers", f"{PEERS['n1'][0]}\t10.160.0.1/32\nAbCdAbCdAbCd0000000000000000000000000000000=\t10.9.9.9/32\n"
    )
    found = drifts(read(node)[0])
    assert found == {
        "wireguard": f"n2: wg-harbor lacks the peer n3 (key {key[:8]}…); "
        "n2: wg-harbor has a peer the stack does not know (key AbCdAbCd…)"
    }
    assert allowed not in found["wireguard"]


def test_a_missing_interface_and_a_stopped_unit(node: FakeNode) -> None:
    (node.fake / "link-wg-harbor").unlink()
    node.unit("wg-quick@wg-harbor.service", active="inactive", enabled="disabled")
    found = drifts(read(node)[0])
    assert found == {
        "wireguard": "n2: interface wg-harbor missing",
        "wireguard-unit": "n2: wg-quick@wg-harbor.service inactive; "
        "n2: wg-quick@wg-harbor.service not enabled at boot (disabled)",
    }


def test_a_flushed_a_changed_and_a_deleted_table(node: FakeNode) -> None:
    node.state("listing", FLUSHED)
    assert drifts(read(node)[0]) == {"nftables": "n2: nftables table space_harbor has no rules (flushed)"}
    node.state("listing", LISTING.replace("22", "2222"))
    assert drifts(read(node)[0])["nftables"].startswith("n2: nftables table space_harbor changed on the node")
    (node.fake / "listing").unlink()
    assert drifts(read(node)[0]) == {"nftables": "n2: nftables table space_harbor missing"}


def test_a_table_loaded_before_the_record_existed_is_judged_by_its_rules(node: FakeNode) -> None:
    (node.root / "etc/space-harbor/firewall.live").unlink()
    node.state("listing", LISTING.replace("22", "2222"))
    assert drifts(read(node)[0]) == {}


def test_an_edited_firewall_unit(node: FakeNode) -> None:
    path = node.root / "etc/systemd/system/space-harbor-firewall.service"
    path.write_text(path.read_text().replace("WantedBy=sysinit.target", "WantedBy=multi-user.target"))
    found = drifts(read(node)[0])
    assert list(found) == ["firewall-unit"]
    assert found["firewall-unit"].startswith("n2: /etc/systemd/system/space-harbor-firewall.service edited on the node")


def test_the_python_renderings_are_the_files_firewall_sh_writes(tmp_path: Path) -> None:
    """The unit and the stored ruleset as firewall.sh's own functions print them."""
    script = node_script("firewall.sh")
    functions = "\n".join(
        script[script.index(f"{name}() {{") :].split("\n}\n", 1)[0] + "\n}"
        for name in ("fw_unit_text", "fw_transaction")
    )
    (tmp_path / "nft").write_text("#!/bin/sh\n")
    (tmp_path / "nft").chmod(0o755)
    setup = "fw_table=space_harbor\nfw_file=/etc/space-harbor/firewall.nft\n"
    shell = f'{setup}{functions}\nfw_unit_text\necho "#--"\nfw_transaction\n'
    done = subprocess.run(
        ["bash", "-c", shell],
        capture_output=True,
        text=True,
        check=True,
        env={"PATH": f"{tmp_path}:/usr/bin:/bin", "HARBOR_NFT_RULESET": RULESET},
    )
    unit, stored = done.stdout.split("#--\n")
    assert unit == firewall_unit_text("space_harbor", str(tmp_path / "nft"))
    assert stored == firewall_file_text("space_harbor", RULESET)


def test_facts_of_a_mesh_and_firewall_that_are_off_are_not_read(node: FakeNode) -> None:
    expected = applied_expectation()
    for artefact in ("wireguard", "wireguard-unit", "nftables", "firewall-unit"):
        del expected[artefact]
    assert read_parameters(expected) == {"HARBOR_K3S_ROLE": "agent"}


def without_nulls(value: object) -> object:
    """A value as the engine stores it in state: no null is kept in a map."""
    if isinstance(value, dict):
        return {key: without_nulls(item) for key, item in value.items() if item is not None}
    return value


def test_expectations_as_the_engine_stores_them_without_registries(node: FakeNode) -> None:
    # No k3s.registries: its sha256 is None, which the real engine drops from the stored map.
    stored = without_nulls(
        expectations(
            node=NODE,
            role="agent",
            config_yaml=CONFIG_YAML,
            registries_yaml=None,
            version=VERSION,
            mesh=MeshExpectation("wg-harbor", WG_FILE, OWN_KEY, 51820, PEERS),
            nft_table="space_harbor",
            nft_ruleset=RULESET,
        )
    )
    assert isinstance(stored, dict) and "sha256" not in stored["registries.yaml"]
    _, out = read(node)
    observed = compare(NODE, stored, parse_facts(out))
    # the file the fixture left is one Space Harbor wrote, and none is applied now
    assert (
        observed["registries.yaml"]
        == f"{NODE}: /etc/rancher/k3s/registries.yaml written by Space Harbor is back, none applied"
    )
    assert observed["config.yaml"] == AS_APPLIED
