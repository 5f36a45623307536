"""The node scripts: shellcheck, and their behaviour where this machine can show it for real.

The behaviour tests run as root inside fresh network, mount and PID namespaces ("the sandbox"):
/etc and /usr/local are overlays whose writes land in a tmpfs of the sandbox, /run is a fresh
tmpfs (so no systemd is visible and wireguard-go's sockets stay private), and every process the
scripts start dies with the sandbox's PID 1. Nothing on the host changes, and no packet leaves
the namespaces. k3s itself cannot run here; its scripts are driven with fakes of `systemctl`,
`k3s` and the installer that record what they are asked to do.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

from components.config import load_config
from components.render.nftables import TABLE_NAME, render_nftables
from components.render.remote import script_payload
from components.shipped import ShippedFile
from components.upstream import sha256_of
from tests.conftest import base_config
from tests.helpers import SCRIPTS, STANDALONE_LIBRARY, FakeK3s, namespace_problem, shellcheck, status_line

SCRIPT_NAMES = ["mesh.sh", "firewall.sh", "k3s.sh", "k3s-lifecycle.sh", "argocd-sync.sh"]


# --- lint ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", [*SCRIPT_NAMES, "lib.sh"])
def test_script_is_shellcheck_clean(name: str) -> None:
    result = shellcheck("-x", str(SCRIPTS / name))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("name", SCRIPT_NAMES)
def test_delivered_payload_is_shellcheck_clean(name: str, tmp_path: Path) -> None:
    # What the node really runs: assignments, then the body inside a function (components/render/remote.py).
    script = (SCRIPTS / name).read_text()
    # a parameter the script really reads, assigned ahead of it as the program does
    parameter = re.search(r"\$\{(HARBOR_[A-Z0-9_]+)", script)
    assert parameter, f"{name} reads no HARBOR_* parameter"
    payload = tmp_path / "payload.sh"
    payload.write_text(script_payload(script, {parameter.group(1): "value"}))
    # SC1091: the standalone `. lib.sh` is not followed; in the payload it never runs, lib.sh is inside.
    result = shellcheck("-s", "bash", "-e", "SC1091", str(payload))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("name", SCRIPT_NAMES)
def test_script_header_and_final_status_line(name: str) -> None:
    text = (SCRIPTS / name).read_text()
    assert text.startswith("#!/usr/bin/env bash\n")
    assert "\nset -euo pipefail\n" in text
    assert f"\nharbor_script={name}\n" in text or f'\nharbor_script="{name}"\n' in text
    assert text.endswith("\nharbor_finish\n")
    assert text.count(STANDALONE_LIBRARY) == 1
    # Anything that only works at a script's top level breaks inside the payload's function.
    for construct in ("BASH_SOURCE", '"$0"', "${0"):
        assert construct not in text.replace(STANDALONE_LIBRARY, ""), construct


@pytest.mark.parametrize("name", SCRIPT_NAMES)
def test_unknown_action_is_refused_by_name(name: str) -> None:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HARBOR_NFT_TABLE": "space_harbor",
        "HARBOR_WG_INTERFACE": "wg-harbor",
        "HARBOR_NODE_NAME": "agent-1",
    }
    result = subprocess.run(
        ["bash", str(SCRIPTS / name), "explode"], capture_output=True, text=True, env=env, timeout=30
    )
    assert result.returncode != 0
    assert "unknown action 'explode'" in result.stderr
    assert "changed" not in result.stdout


# --- the sandbox -----------------------------------------------------------------------------


_UNSHARE = ["unshare", "--net", "--mount", "--pid", "--fork", "--propagation", "private"]


SANDBOX_PROBLEM = namespace_problem([*_UNSHARE, "true"], ("unshare", "ip"), "network, mount and PID namespaces")
needs_sandbox = pytest.mark.skipif(SANDBOX_PROBLEM is not None, reason=SANDBOX_PROBLEM or "")
needs_nft = pytest.mark.skipif(
    shutil.which("nft") is None and not Path("/usr/sbin/nft").exists(), reason="needs nft (apt package nftables)"
)
needs_wireguard = pytest.mark.skipif(
    any(shutil.which(tool) is None for tool in ("wg", "wg-quick", "wireguard-go")) or not Path("/dev/net/tun").exists(),
    reason="needs wg and wg-quick (apt wireguard-tools), wireguard-go (apt wireguard-go) and /dev/net/tun",
)

_PRELUDE = """
set -euo pipefail
export PATH="$FAKEBIN:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Overlays need an upper directory on a real file system: a tmpfs of this sandbox.
mount -t tmpfs tmpfs "$SCRATCH"
for dir in etc usr-local var-lib; do mkdir -p "$SCRATCH/$dir/upper" "$SCRATCH/$dir/work"; done
mount -t overlay overlay -o "lowerdir=/etc,upperdir=$SCRATCH/etc/upper,workdir=$SCRATCH/etc/work" /etc
mount -t overlay overlay -o "lowerdir=/usr/local,upperdir=$SCRATCH/usr-local/upper,workdir=$SCRATCH/usr-local/work" \
    /usr/local
mount -t overlay overlay -o "lowerdir=/var/lib,upperdir=$SCRATCH/var-lib/upper,workdir=$SCRATCH/var-lib/work" /var/lib
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /var/tmp
ip link set lo up

# step NAME CMD...: run CMD, keep its stdout, stderr and exit code under $OUT.
step() {
    local name=$1
    shift
    set +e
    "$@" >"$OUT/$name.out" 2>"$OUT/$name.err"
    echo $? >"$OUT/$name.rc"
    set -e
}
# payload NAME FILE ACTION: what pulumi-command runs, `bash -s -- ACTION` with the payload on stdin.
payload() {
    step "$1" bash -c 'bash -s -- "$1" <"$2"' _ "$3" "$2"
}
"""


@dataclass
class Steps:
    out: Path

    def rc(self, name: str) -> int:
        return int((self.out / f"{name}.rc").read_text())

    def stdout(self, name: str) -> str:
        return (self.out / f"{name}.out").read_text()

    def stderr(self, name: str) -> str:
        return (self.out / f"{name}.err").read_text()

    def status(self, name: str) -> str:
        """The final status line, after checking that the step succeeded."""
        assert self.rc(name) == 0, f"step {name} failed:\n{self.stderr(name)}"
        return self.stdout(name).strip().splitlines()[-1]


def _sandbox(tmp_path: Path, body: str, timeout: int = 240) -> Steps:
    out = tmp_path / "out"
    scratch = tmp_path / "scratch"
    fakebin = tmp_path / "fakebin"
    for path in (out, scratch, fakebin):
        path.mkdir(exist_ok=True)
    env = {**os.environ, "OUT": str(out), "SCRATCH": str(scratch), "FAKEBIN": str(fakebin), "S": str(SCRIPTS)}
    result = subprocess.run(
        [*_UNSHARE, "--mount-proc", "bash", "-c", _PRELUDE + textwrap.dedent(body)],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )
    assert result.returncode == 0, f"sandbox failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
    return Steps(out)


def _payload_file(tmp_path: Path, name: str, script: str, env: dict[str, str]) -> Path:
    path = tmp_path / name
    path.write_text(script_payload((SCRIPTS / script).read_text(), env))
    return path


def _executable(path: Path, text: str) -> None:
    path.write_text(textwrap.dedent(text).lstrip())
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


# --- firewall.sh -----------------------------------------------------------------------------


@needs_sandbox
@needs_nft
def test_firewall_apply_is_idempotent_and_remove_touches_only_our_table(tmp_path: Path) -> None:
    config = load_config(base_config(agents=1))
    ruleset = render_nftables(config, config.first_server)
    changed = ruleset.replace("tcp dport { 80, 443 }", "tcp dport { 80, 443, 8443 }")
    env = {"HARBOR_NFT_TABLE": TABLE_NAME}
    p1 = _payload_file(tmp_path, "fw1", "firewall.sh", {**env, "HARBOR_NFT_RULESET": ruleset})
    p2 = _payload_file(tmp_path, "fw2", "firewall.sh", {**env, "HARBOR_NFT_RULESET": changed})
    bad = _payload_file(tmp_path, "bad", "firewall.sh", {**env, "HARBOR_NFT_RULESET": "table inet space_harbor { x }"})
    foreign = _payload_file(
        tmp_path, "foreign", "firewall.sh", {**env, "HARBOR_NFT_RULESET": ruleset + "table ip other {}\n"}
    )
    steps = _sandbox(
        tmp_path,
        f"""
        # Someone else's table with a rule in it: it must survive everything below.
        nft add table ip foreign
        nft add chain ip foreign input '{{ type filter hook input priority 10; policy accept; }}'
        nft add rule ip foreign input tcp dport 9999 counter accept
        payload apply1 {p1} apply
        step live1 nft list table inet {TABLE_NAME}
        step mode stat -c '%a %U' /etc/space-harbor/firewall.nft
        payload apply2 {p1} apply
        payload apply3 {p2} apply
        step live3 nft list table inet {TABLE_NAME}
        payload bad {bad} apply
        payload foreign-in-ruleset {foreign} apply
        step live-after-bad nft list table inet {TABLE_NAME}
        # The table was deleted behind our back: an unchanged file must not hide that.
        nft delete table inet {TABLE_NAME}
        payload reapply {p2} apply
        step tables1 nft list tables
        payload remove1 {p1} remove
        payload remove2 {p1} remove
        step tables2 nft list tables
        step foreign nft list table ip foreign
        step leftovers bash -c 'ls -A /etc/space-harbor 2>&1 || true'
        """,
    )
    assert steps.status("apply1") == "space-harbor: firewall.sh apply: changed"
    assert "tcp dport 22 accept" in steps.stdout("live1")
    assert "policy drop" in steps.stdout("live1")
    assert steps.stdout("mode").split() == ["600", "root"]
    assert steps.status("apply2") == "space-harbor: firewall.sh apply: unchanged"
    assert steps.status("apply3") == "space-harbor: firewall.sh apply: changed"
    assert "8443" in steps.stdout("live3")
    # A ruleset nft rejects, or one that names another table, leaves the live table as it was.
    for name in ("bad", "foreign-in-ruleset"):
        assert steps.rc(name) != 0
        assert "error:" in steps.stderr(name)
    assert steps.stdout("live-after-bad") == steps.stdout("live3")
    assert "exactly one table" in steps.stderr("foreign-in-ruleset")
    assert steps.status("reapply") == "space-harbor: firewall.sh apply: changed"
    assert f"table inet {TABLE_NAME}" in steps.stdout("tables1")
    assert steps.status("remove1") == "space-harbor: firewall.sh remove: changed"
    assert steps.status("remove2") == "space-harbor: firewall.sh remove: unchanged"
    assert TABLE_NAME not in steps.stdout("tables2")
    assert "table ip foreign" in steps.stdout("tables2")
    assert "tcp dport 9999" in steps.stdout("foreign")
    assert "No such file" in steps.stdout("leftovers")


# --- mesh.sh ---------------------------------------------------------------------------------


def _wg_keys() -> tuple[str, str]:
    private = subprocess.run(["wg", "genkey"], capture_output=True, text=True, check=True).stdout.strip()
    public = subprocess.run(["wg", "pubkey"], input=private, capture_output=True, text=True, check=True).stdout.strip()
    return private, public


def _wg_config(private: str, address: str, port: int, mtu: int, peers: list[tuple[str, str, str | None]]) -> str:
    lines = ["[Interface]", f"Address = {address}", f"ListenPort = {port}", f"MTU = {mtu}", f"PrivateKey = {private}"]
    for public, allowed, endpoint in peers:
        lines += ["", "[Peer]", f"PublicKey = {public}", f"AllowedIPs = {allowed}"]
        if endpoint:
            lines += [f"Endpoint = {endpoint}", "PersistentKeepalive = 1"]
    return "\n".join(lines) + "\n"


_TCP_CHECK = textwrap.dedent(
    """
    import socket, sys, threading
    server = socket.socket()
    server.bind((sys.argv[1], 7000))
    server.listen(1)
    def serve():
        conn, _ = server.accept()
        conn.sendall(conn.recv(64).upper())
        conn.close()
    threading.Thread(target=serve, daemon=True).start()
    print("ready", flush=True)
    threading.Event().wait(60)
    """
)


@needs_sandbox
@needs_wireguard
def test_mesh_brings_up_a_real_tunnel_and_changes_it_without_bouncing(tmp_path: Path) -> None:
    """Two nodes (network namespaces joined by a veth pair), WireGuard through wireguard-go."""
    key_a, pub_a = _wg_keys()
    key_b, pub_b = _wg_keys()
    _, pub_c = _wg_keys()
    peer_b = (pub_b, "10.160.0.2/32", "192.168.77.2:51872")
    a1 = _wg_config(key_a, "10.160.0.1/12", 51871, 1420, [peer_b])
    b1 = _wg_config(key_b, "10.160.0.2/12", 51872, 1420, [(pub_a, "10.160.0.1/32", "192.168.77.1:51871")])
    # Adds a peer whose AllowedIPs reach outside the mesh subnet (needs a route) and lowers the MTU.
    a2 = _wg_config(key_a, "10.160.0.1/12", 51871, 1380, [peer_b, (pub_c, "10.160.0.3/32, 10.200.0.0/24", None)])
    a3 = _wg_config(key_a, "10.160.0.1/12", 51871, 1380, [peer_b])
    a4 = _wg_config(key_a, "10.160.0.9/12", 51871, 1380, [peer_b])
    files = {}
    for name, interface, text in (("a1", "wgh-a", a1), ("b1", "wgh-b", b1), ("a2", "wgh-a", a2)):
        files[name] = _payload_file(
            tmp_path, f"mesh-{name}", "mesh.sh", {"HARBOR_WG_INTERFACE": interface, "HARBOR_WG_CONFIG": text}
        )
    (tmp_path / "tcp.py").write_text(_TCP_CHECK)
    (tmp_path / "a3.conf").write_text(a3)
    (tmp_path / "a4.conf").write_text(a4)
    steps = _sandbox(
        tmp_path,
        f"""
        ip netns add a
        ip netns add b
        ip link add va netns a type veth peer name vb netns b
        ip -n a addr add 192.168.77.1/24 dev va
        ip -n b addr add 192.168.77.2/24 dev vb
        for ns in a b; do ip -n $ns link set lo up; done
        ip -n a link set va up
        ip -n b link set vb up
        # Each node's interface has its own name: both nodes share this sandbox's /etc and /run.
        in_a() {{ ip netns exec a "$@"; }}
        standalone_a() {{ HARBOR_WG_INTERFACE=wgh-a HARBOR_WG_CONFIG="$(cat "$1")" in_a bash "$S/mesh.sh" "$2"; }}
        idx() {{ ip -n a -o link show wgh-a | cut -d: -f1; }}
        handshake() {{ in_a wg show wgh-a latest-handshakes | awk -v k="{pub_b}" '$1 == k {{ print $2 }}'; }}
        # Bytes received from peer b: a bounced interface or a re-added peer starts again at 0.
        received() {{ in_a wg show wgh-a transfer | awk -v k="{pub_b}" '$1 == k {{ print $2 }}'; }}

        step up-a in_a bash -c 'bash -s -- apply <{files["a1"]}'
        step up-b ip netns exec b bash -c 'bash -s -- apply <{files["b1"]}'
        step mode stat -c '%a' /etc/wireguard/wgh-a.conf
        for _ in $(seq 100); do [ "$(handshake)" -gt 0 ] 2>/dev/null && break; sleep 0.1; done
        ip netns exec b {sys.executable} {tmp_path}/tcp.py 10.160.0.2 > {tmp_path}/tcp.log &
        for _ in $(seq 50); do grep -q ready {tmp_path}/tcp.log && break; sleep 0.1; done
        step tunnel in_a {sys.executable} -c '
        import socket; s = socket.create_connection(("10.160.0.2", 7000), timeout=5)
        s.sendall(b"through the mesh"); print(s.recv(64).decode())'
        step again-a in_a bash -c 'bash -s -- apply <{files["a1"]}'
        step idx-1 idx
        step hs-1 handshake
        step rx-1 received

        step add-peer in_a bash -c 'bash -s -- apply <{files["a2"]}'
        step idx-2 idx
        step rx-2 received
        step peers-2 in_a wg show wgh-a peers
        step mtu-2 in_a cat /sys/class/net/wgh-a/mtu
        step routes-2 ip -n a route show dev wgh-a
        step add-peer-again in_a bash -c 'bash -s -- apply <{files["a2"]}'

        step drop-peer standalone_a {tmp_path}/a3.conf apply
        step peers-3 in_a wg show wgh-a peers
        step routes-3 ip -n a route show dev wgh-a
        step readdress standalone_a {tmp_path}/a4.conf apply
        step addr-4 ip -n a -o -4 addr show dev wgh-a
        step idx-4 idx

        step remove-1 standalone_a {tmp_path}/a4.conf remove
        step remove-2 standalone_a {tmp_path}/a4.conf remove
        step link-after-remove bash -c 'ip -n a link show wgh-a 2>&1 || true'
        step conf-after-remove bash -c 'ls /etc/wireguard'
        """,
    )
    assert steps.status("up-a") == "space-harbor: mesh.sh apply: changed"
    assert steps.status("up-b") == "space-harbor: mesh.sh apply: changed"
    assert steps.stdout("mode").strip() == "600"
    assert steps.status("tunnel") == "THROUGH THE MESH"
    assert steps.status("again-a") == "space-harbor: mesh.sh apply: unchanged"

    # A new peer and a new MTU, applied in place: same interface, peer b's counters keep counting.
    assert steps.status("add-peer") == "space-harbor: mesh.sh apply: changed"
    assert "wg syncconf" in steps.stderr("add-peer")
    assert steps.stdout("idx-2") == steps.stdout("idx-1")
    assert int(steps.stdout("hs-1")) > 0
    assert int(steps.stdout("rx-2")) >= int(steps.stdout("rx-1")) > 0
    assert set(steps.stdout("peers-2").split()) == {pub_b, pub_c}
    assert steps.stdout("mtu-2").strip() == "1380"
    assert "10.200.0.0/24" in steps.stdout("routes-2")
    assert "10.160.0.0/12" in steps.stdout("routes-2")
    assert steps.status("add-peer-again") == "space-harbor: mesh.sh apply: unchanged"

    assert steps.status("drop-peer") == "space-harbor: mesh.sh apply: changed"
    assert steps.stdout("peers-3").split() == [pub_b]
    assert "10.200.0.0/24" not in steps.stdout("routes-3")
    assert "10.160.0.0/12" in steps.stdout("routes-3")
    assert steps.status("readdress") == "space-harbor: mesh.sh apply: changed"
    assert " 10.160.0.9/12 " in steps.stdout("addr-4")
    assert "10.160.0.1/" not in steps.stdout("addr-4")
    assert steps.stdout("idx-4") == steps.stdout("idx-1")

    assert steps.status("remove-1") == "space-harbor: mesh.sh remove: changed"
    assert steps.status("remove-2") == "space-harbor: mesh.sh remove: unchanged"
    assert "does not exist" in steps.stdout("link-after-remove")
    assert steps.stdout("conf-after-remove").split() == ["wgh-b.conf"]


# --- k3s.sh ----------------------------------------------------------------------------------

# systemd as far as k3s.sh can see it: unit state in /run/fake-systemd, every call logged.
_FAKE_SYSTEMCTL = """
    #!/usr/bin/env bash
    set -euo pipefail
    state=/run/fake-systemd
    mkdir -p "$state"
    echo "$*" >>"$OUT/systemctl.log"
    args=()
    for arg in "$@"; do case "$arg" in --*) ;; *) args+=("${arg%.service}") ;; esac; done
    case "${args[0]}" in
    daemon-reload | reset-failed) ;;
    enable) touch "$state/${args[1]}.enabled" ;;
    disable) rm -f "$state/${args[1]}.enabled" ;;
    is-enabled) [ -e "$state/${args[1]}.enabled" ] ;;
    is-active) [ -e "$state/${args[1]}.active" ] ;;
    start | restart)
        touch "$state/${args[1]}.active"
        # k3s writes the admin kubeconfig when the server starts.
        if [ "${args[1]}" = k3s ]; then echo "apiVersion: v1 # fake kubeconfig" >/etc/rancher/k3s/k3s.yaml; fi ;;
    stop) rm -f "$state/${args[1]}.active" ;;
    list-unit-files) if [ -e "/etc/systemd/system/${args[1]}.service" ]; then echo "${args[1]}.service enabled"; fi ;;
    *) echo "fake systemctl: $*" >&2; exit 1 ;;
    esac
"""

_FAKE_K3S = """
    #!/usr/bin/env bash
    echo "k3s version $(cat /usr/local/share/fake-k3s-version) (fake)"
    echo "go version go1.22 (fake)"
"""

# Records what it was asked; makes the unit and an uninstall script (which, like the real one,
# removes /etc/rancher/k3s and itself).
_FAKE_INSTALLER = """
    #!/bin/sh
    set -e
    echo "exec=$INSTALL_K3S_EXEC version=$INSTALL_K3S_VERSION skip_download=${INSTALL_K3S_SKIP_DOWNLOAD:-}" \
        "skip_start=${INSTALL_K3S_SKIP_START:-} k3s_url=${K3S_URL:-unset} k3s_token=${K3S_TOKEN:-unset}" \
        >>"$OUT/installer.log"
    if [ "$INSTALL_K3S_EXEC" = server ]; then name=k3s; else name=k3s-$INSTALL_K3S_EXEC; fi
    mkdir -p /etc/systemd/system
    echo "[Service]" >/etc/systemd/system/$name.service
    uninstall=/usr/local/bin/$name-uninstall.sh
    {
        echo '#!/bin/sh'
        echo 'echo uninstall >>"$OUT/uninstall.log"'
        echo "rm -rf /etc/rancher/k3s /etc/systemd/system/$name.service $uninstall"
    } >"$uninstall"
    chmod 755 "$uninstall"
    systemctl enable $name
    systemctl daemon-reload
"""


# The fake installer as the program ships it: staged under its sha256, which k3s.sh checks.
FAKE_INSTALLER = ShippedFile(
    "installer", Path("fake-installer"), sha256_of(textwrap.dedent(_FAKE_INSTALLER).lstrip().encode())
)


def _k3s_env(role: str, config: str, version: str = "v1.31.4+k3s1", **extra: str) -> dict[str, str]:
    return {
        "HARBOR_K3S_ROLE": role,
        "HARBOR_K3S_VERSION": version,
        "HARBOR_K3S_CONFIG": config,
        "HARBOR_K3S_AIRGAP": "true",
        **FAKE_INSTALLER.parameters(),
        "HARBOR_K3S_WAIT_TIMEOUT": "5",
        **extra,
    }


def _k3s_fakes(tmp_path: Path) -> str:
    """Fake systemctl on PATH; returns the shell lines that stage the fake binary and installer."""
    _executable(tmp_path / "fakebin" / "systemctl", _FAKE_SYSTEMCTL)
    _executable(tmp_path / "fake-k3s", _FAKE_K3S)
    _executable(tmp_path / "fake-installer", _FAKE_INSTALLER)
    return f"""
        mkdir -p /run/systemd/system /usr/local/bin
        # the staging directory as the node's `shipped` step makes it (prepare-staging)
        install -d -m 755 /var/lib/space-harbor
        install -d -m 700 /var/lib/space-harbor/staging
        cp {tmp_path}/fake-k3s /usr/local/bin/k3s
        cp {tmp_path}/fake-installer {FAKE_INSTALLER.staged_path}
        echo v1.31.4+k3s1 >/usr/local/share/fake-k3s-version
        : >"$OUT/systemctl.log"
        : >"$OUT/installer.log"
    """


@needs_sandbox
def test_k3s_server_installs_once_restarts_only_on_change_and_uninstalls(tmp_path: Path) -> None:
    (tmp_path / "fakebin").mkdir()
    config1 = "token: MARKER-TOKEN\nnode-name: server-1\n"
    config2 = config1 + "node-label:\n- zone=a\n"
    p = {
        name: _payload_file(tmp_path, f"k3s-{name}", "k3s.sh", env)
        for name, env in {
            "v1": _k3s_env("server", config1),
            "v2": _k3s_env("server", config2),
            "up": _k3s_env("server", config2, version="v1.31.5+k3s1"),
            "agent": _k3s_env("agent", config2),
        }.items()
    }
    steps = _sandbox(
        tmp_path,
        _k3s_fakes(tmp_path)
        + f"""
        count() {{ grep -c "$1" "$2" || true; }}
        payload install-1 {p["v1"]} install
        step mode stat -c '%a' /etc/rancher/k3s/config.yaml
        step config cat /etc/rancher/k3s/config.yaml
        payload install-2 {p["v1"]} install
        step restarts-2 count '^restart k3s' "$OUT/systemctl.log"
        # The update of a new config: written, restarted, never reinstalled.
        payload reconfigure-1 {p["v2"]} reconfigure
        step restarts-3 count '^restart k3s' "$OUT/systemctl.log"
        # A new version reaches the install step as an update too: it must not upgrade.
        payload reconfigure-2 {p["up"]} reconfigure
        # The upgrade step does. The air-gapped binary is still the old version: refused, nothing run.
        payload upgrade-early {p["up"]} upgrade
        echo v1.31.5+k3s1 >/usr/local/share/fake-k3s-version
        payload upgrade {p["up"]} upgrade
        payload upgrade-again {p["up"]} upgrade
        step config-upgraded cat /etc/rancher/k3s/config.yaml
        # Back to the older release: refused before anything is written or run.
        payload downgrade {p["v2"]} install
        payload downgrade-upgrade {p["v2"]} upgrade
        step config-after-downgrade cat /etc/rancher/k3s/config.yaml
        # The same node as an agent: a role is never changed in place.
        payload role {p["agent"]} reconfigure
        payload uninstall-1 {p["v1"]} uninstall
        payload uninstall-2 {p["v1"]} uninstall
        step leftovers bash -c 'ls /etc/rancher/k3s/config.yaml 2>&1 || true'
        step share-after-uninstall bash -c 'ls /usr/local/share/space-harbor 2>&1 || true'
        # An update on a node whose k3s is gone repairs it at the stack's version, from the staged
        # installer that the uninstall left for exactly this.
        payload reconfigure-repair {p["up"]} reconfigure
        step kept-installer sha256sum /usr/local/share/space-harbor/k3s-install.sh
        step kept-mode stat -c '%a %U' /usr/local/share/space-harbor/k3s-install.sh
        payload remove-shipped {p["up"]} remove-shipped
        payload remove-shipped-again {p["up"]} remove-shipped
        step staged-left bash -c 'ls -A /var/tmp /var/lib/space-harbor 2>&1 || true'
        """,
    )
    installs = (steps.out / "installer.log").read_text().splitlines()
    assert steps.status("install-1") == "space-harbor: k3s.sh install: changed"
    assert steps.stdout("mode").strip() == "600"
    assert steps.stdout("config") == config1
    assert "MARKER-TOKEN" not in steps.stdout("install-1") + steps.stderr("install-1")
    # Installer flags carry nothing; config.yaml carries everything, K3S_URL/TOKEN are not passed.
    assert installs[0] == (
        "exec=server version=v1.31.4+k3s1 skip_download=true skip_start=true k3s_url=unset k3s_token=unset"
    )
    assert steps.status("install-2") == "space-harbor: k3s.sh install: unchanged"
    assert steps.stdout("restarts-2").strip() == "1"
    assert steps.status("reconfigure-1") == "space-harbor: k3s.sh reconfigure: changed"
    assert steps.stdout("restarts-3").strip() == "2"
    assert steps.status("reconfigure-2") == "space-harbor: k3s.sh reconfigure: unchanged"
    assert steps.rc("upgrade-early") != 0
    assert "reports 'k3s version v1.31.4+k3s1 (fake)', the stack wants v1.31.5+k3s1" in steps.stderr("upgrade-early")
    assert steps.status("upgrade") == "space-harbor: k3s.sh upgrade: changed"
    assert steps.status("upgrade-again") == "space-harbor: k3s.sh upgrade: unchanged"
    for step in ("downgrade", "downgrade-upgrade"):
        assert steps.rc(step) != 0
        assert "refusing to downgrade k3s from v1.31.5+k3s1 to v1.31.4+k3s1" in steps.stderr(step)
    assert steps.stdout("config-after-downgrade") == steps.stdout("config-upgraded")
    assert steps.rc("role") != 0
    assert "this node runs k3s as server and the stack says agent" in steps.stderr("role")
    assert installs[1].startswith("exec=server version=v1.31.5+k3s1 ")
    assert steps.status("uninstall-1") == "space-harbor: k3s.sh uninstall: changed"
    assert (steps.out / "uninstall.log").read_text() == "uninstall\n"
    assert steps.status("uninstall-2") == "space-harbor: k3s.sh uninstall: unchanged"
    assert "No such file" in steps.stdout("leftovers")
    assert "No such file" in steps.stdout("share-after-uninstall")
    assert steps.status("reconfigure-repair") == "space-harbor: k3s.sh reconfigure: changed"
    assert installs[2].startswith("exec=server version=v1.31.5+k3s1 ")
    assert len(installs) == 3
    assert steps.stdout("kept-installer").split()[0] == FAKE_INSTALLER.sha256
    assert steps.stdout("kept-mode").split() == ["700", "root"]
    assert steps.status("remove-shipped") == "space-harbor: k3s.sh remove-shipped: changed"
    assert steps.status("remove-shipped-again") == "space-harbor: k3s.sh remove-shipped: unchanged"
    assert "/var/tmp:\n\n" in steps.stdout("staged-left") + "\n"
    assert "cannot access '/var/lib/space-harbor'" in steps.stdout("staged-left")


@needs_sandbox
def test_k3s_agent_installs_the_agent_unit_and_refuses_what_it_cannot_do(tmp_path: Path) -> None:
    (tmp_path / "fakebin").mkdir()
    config = "server: https://10.160.0.1:6443\ntoken: T\n"
    agent = _payload_file(tmp_path, "agent", "k3s.sh", _k3s_env("agent", config))
    other = "0" * 64
    unstaged = _payload_file(
        tmp_path, "unstaged", "k3s.sh", _k3s_env("agent", config, HARBOR_K3S_INSTALLER="/var/tmp/nothing-here.sh")
    )
    wrong_pin = _payload_file(
        tmp_path, "wrong-pin", "k3s.sh", _k3s_env("agent", config, HARBOR_K3S_INSTALLER_SHA256=other)
    )
    steps = _sandbox(
        tmp_path,
        _k3s_fakes(tmp_path)
        + f"""
        payload no-script {unstaged} install
        # The staged file is not what the stack pinned (altered on the way, or by the SSH user).
        payload wrong-pin {wrong_pin} install
        step after-refusals bash -c \
            'ls /usr/local/share/space-harbor /etc/rancher/k3s 2>&1 || true; cat "$OUT/installer.log"'
        payload install-1 {agent} install
        payload install-2 {agent} install
        step active bash -c 'ls /run/fake-systemd'
        # A stopped service is brought back, without re-running the installer.
        systemctl stop k3s-agent
        payload install-3 {agent} install
        payload uninstall {agent} uninstall
        rm -rf /run/systemd/system
        payload no-systemd {agent} install
        """,
    )
    assert steps.rc("no-script") != 0
    assert "the staged copy /var/tmp/nothing-here.sh is not on this node" in steps.stderr("no-script")
    assert steps.rc("wrong-pin") != 0
    assert f"has sha256 {FAKE_INSTALLER.sha256}, the stack pinned {other}; refusing to use it" in steps.stderr(
        "wrong-pin"
    )
    # Refused before k3s, its config or the kept installer were touched.
    assert steps.stdout("after-refusals").count("No such file") == 2
    assert "exec=" not in steps.stdout("after-refusals")
    assert steps.status("install-1") == "space-harbor: k3s.sh install: changed"
    assert steps.status("install-2") == "space-harbor: k3s.sh install: unchanged"
    assert steps.stdout("active").split() == ["k3s-agent.active", "k3s-agent.enabled"]
    assert steps.status("install-3") == "space-harbor: k3s.sh install: changed"
    installs = (steps.out / "installer.log").read_text().splitlines()
    assert len(installs) == 1
    assert installs[0].startswith("exec=agent version=v1.31.4+k3s1 skip_download=true skip_start=true k3s_url=unset")
    assert steps.status("uninstall") == "space-harbor: k3s.sh uninstall: changed"
    assert steps.rc("no-systemd") != 0
    assert "systemd is not running" in steps.stderr("no-systemd")


# dpkg's view of installed packages: a file per package under /run/fake-dpkg; apt-get adds them.
_FAKE_DPKG_QUERY = """
    #!/usr/bin/env bash
    [ -e "/run/fake-dpkg/${*: -1}" ] && printf 'install ok installed'
"""
_FAKE_APT_GET = """
    #!/usr/bin/env bash
    echo "$*" >>"$OUT/apt.log"
    [ ! -e /run/fake-apt-broken ] || { echo "E: Unable to locate package" >&2; exit 100; }
    mkdir -p /run/fake-dpkg
    for arg in "$@"; do case "$arg" in install | -*) ;; *) touch "/run/fake-dpkg/$arg" ;; esac; done
"""


@needs_sandbox
def test_k3s_installs_the_packages_components_need_before_k3s_and_only_once(tmp_path: Path) -> None:
    (tmp_path / "fakebin").mkdir()
    _executable(tmp_path / "fakebin" / "dpkg-query", _FAKE_DPKG_QUERY)
    _executable(tmp_path / "fakebin" / "apt-get", _FAKE_APT_GET)
    config = "token: T\nnode-name: agent-1\nserver: https://10.160.0.1:6443\n"
    p = {
        name: _payload_file(tmp_path, name, "k3s.sh", _k3s_env("agent", config, **extra))
        for name, extra in {
            "longhorn": {"HARBOR_NODE_PACKAGES": "nfs-common open-iscsi"},
            "more": {"HARBOR_NODE_PACKAGES": "nfs-common open-iscsi cryptsetup"},
            "none": {},
            "bad": {"HARBOR_NODE_PACKAGES": "nfs-common; rm -rf /"},
        }.items()
    }
    steps = _sandbox(
        tmp_path,
        _k3s_fakes(tmp_path)
        + f"""
        : >"$OUT/apt.log"
        payload bad {p["bad"]} install
        touch /run/fake-apt-broken
        payload broken {p["longhorn"]} install
        step no-k3s-yet bash -c 'ls /etc/rancher/k3s/config.yaml 2>&1 || true'
        rm /run/fake-apt-broken
        : >"$OUT/apt.log"
        payload install-1 {p["longhorn"]} install
        step apt-1 cat "$OUT/apt.log"
        payload install-2 {p["longhorn"]} install
        payload reconfigure-more {p["more"]} reconfigure
        payload reconfigure-none {p["none"]} reconfigure
        step apt-2 cat "$OUT/apt.log"
        """,
    )
    assert steps.rc("bad") != 0
    assert "HARBOR_NODE_PACKAGES must be Debian package names" in steps.stderr("bad")
    # A package that cannot be installed stops the step before k3s is touched.
    assert steps.rc("broken") != 0
    assert "No such file" in steps.stdout("no-k3s-yet")
    assert (steps.out / "installer.log").read_text().count("exec=agent") == 1
    assert steps.status("install-1") == "space-harbor: k3s.sh install: changed"
    assert steps.stdout("apt-1").splitlines() == ["install -y --no-install-recommends nfs-common open-iscsi"]
    assert steps.status("install-2") == "space-harbor: k3s.sh install: unchanged"
    # a component added later: only its package; one removed: nothing is uninstalled, nothing changes
    assert steps.status("reconfigure-more") == "space-harbor: k3s.sh reconfigure: changed"
    assert steps.status("reconfigure-none") == "space-harbor: k3s.sh reconfigure: unchanged"
    assert steps.stdout("apt-2").splitlines() == [
        "install -y --no-install-recommends nfs-common open-iscsi",
        "install -y --no-install-recommends cryptsetup",
    ]


# --- k3s-lifecycle.sh --------------------------------------------------------------------------

# Against the fake `k3s kubectl` of tests/helpers.py (the `fake_k3s` fixture); the upgrade, label
# and credential actions are in tests/unit/test_lifecycle_upgrade.py.

OLD_VERSION = "v1.31.4+k3s1"


def test_lifecycle_node_object_checks_the_api(fake_k3s: FakeK3s) -> None:
    assert status_line(fake_k3s.run("node-object")) == "space-harbor: k3s-lifecycle.sh node-object: unchanged"
    assert fake_k3s.calls() == ["get nodes -o name"]


def test_lifecycle_wait_ready_waits_for_the_node_and_is_bounded(fake_k3s: FakeK3s) -> None:
    fake_k3s.add("agent-1", OLD_VERSION)
    assert status_line(fake_k3s.run("wait-ready")) == "space-harbor: k3s-lifecycle.sh wait-ready: unchanged"
    fake_k3s.set_ready("agent-1", False)
    result = fake_k3s.run("wait-ready", HARBOR_READY_TIMEOUT="2")
    assert result.returncode != 0
    assert "node agent-1 did not become Ready within 2s (Ready=False; step wait-ready)" in result.stderr
    result = fake_k3s.run("wait-ready", node="agent-9", HARBOR_READY_TIMEOUT="1")
    assert "Ready=not registered" in result.stderr


def test_lifecycle_drain_drains_with_the_timeout_and_skips_a_missing_node(fake_k3s: FakeK3s) -> None:
    fake_k3s.add("agent-1", OLD_VERSION)
    drained = fake_k3s.run("drain", HARBOR_DRAIN_TIMEOUT="45")
    assert status_line(drained) == "space-harbor: k3s-lifecycle.sh drain: changed"
    assert "drain agent-1 --ignore-daemonsets --delete-emptydir-data --timeout=45s" in fake_k3s.calls()
    assert fake_k3s.node("agent-1")["spec"]["unschedulable"] is True
    assert status_line(fake_k3s.run("drain", node="agent-9")) == "space-harbor: k3s-lifecycle.sh drain: unchanged"


def test_lifecycle_failed_drain_is_an_error_unless_forced(fake_k3s: FakeK3s) -> None:
    fake_k3s.add("agent-1", OLD_VERSION)
    (fake_k3s.state / "drain-fails").write_text("")
    result = fake_k3s.run("drain")
    assert result.returncode != 0
    assert "draining node agent-1 failed or timed out after 30s (step drain)" in result.stderr
    assert "decommission.force" in result.stderr
    forced = fake_k3s.run("drain", HARBOR_FORCE="true")
    assert status_line(forced) == "space-harbor: k3s-lifecycle.sh drain: changed"
    assert "warning (HARBOR_FORCE=true, continuing)" in forced.stderr
    # An API that does not answer: an error naming node and step, or a warning when forced.
    (fake_k3s.state / "api-down").write_text("")
    down = fake_k3s.run("drain")
    assert down.returncode != 0
    assert "node agent-1 exists (step drain)" in down.stderr
    assert status_line(fake_k3s.run("drain", HARBOR_FORCE="true")) == "space-harbor: k3s-lifecycle.sh drain: unchanged"


def test_lifecycle_delete_node_is_idempotent(fake_k3s: FakeK3s) -> None:
    # a node that leaves: drained by its registration's delete before its Node object goes
    fake_k3s.add("agent-1", OLD_VERSION, annotations={"space-harbor/drained-to-leave": "true"})
    assert status_line(fake_k3s.run("delete-node")) == "space-harbor: k3s-lifecycle.sh delete-node: changed"
    assert not (fake_k3s.state / "nodes" / "agent-1.json").exists()
    assert status_line(fake_k3s.run("delete-node")) == "space-harbor: k3s-lifecycle.sh delete-node: unchanged"
    assert "delete node agent-1 --ignore-not-found" in fake_k3s.calls()


def test_lifecycle_refuses_bad_parameters(fake_k3s: FakeK3s) -> None:
    assert "DNS-1123" in fake_k3s.run("drain", node="Bad_Name").stderr
    assert "HARBOR_DRAIN_TIMEOUT" in fake_k3s.run("drain", HARBOR_DRAIN_TIMEOUT="soon").stderr
    assert "HARBOR_FORCE" in fake_k3s.run("drain", HARBOR_FORCE="yes").stderr


# --- k3s.sh: k3s_take, every branch ------------------------------------------------------------

# Another installer (a new pin) and another binary: same behaviour, another sha256, so another
# staged name. Each leaves a mark of its own where the test can see which one ran.
_FAKE_INSTALLER_V2 = _FAKE_INSTALLER.replace(
    '>>"$OUT/installer.log"', '>>"$OUT/installer.log"; echo v2 >>"$OUT/which.log"'
)
FAKE_INSTALLER_V2 = ShippedFile(
    "installer", Path("fake-installer-v2"), sha256_of(textwrap.dedent(_FAKE_INSTALLER_V2).lstrip().encode())
)
_FAKE_K3S_SHIPPED = _FAKE_K3S + '    echo "shipped binary" >&2\n'
FAKE_BINARY = ShippedFile(
    "binary", Path("fake-k3s-shipped"), sha256_of(textwrap.dedent(_FAKE_K3S_SHIPPED).lstrip().encode())
)
FAKE_IMAGES_TEXT = "images, the pinned archive\n"
FAKE_IMAGES = ShippedFile("images", Path("images.tar.zst"), sha256_of(FAKE_IMAGES_TEXT.encode()))
KEPT_INSTALLER = "/usr/local/share/space-harbor/k3s-install.sh"
IMAGES_IN_PLACE = "/var/lib/rancher/k3s/agent/images/space-harbor-airgap-images.tar.zst"


def _k3s_take_run(tmp_path: Path, body: str) -> Steps:
    """An installed server (installer v1 kept), then `body`; payloads v1, v2 (a new installer pin),
    v2-up (an upgrade with it) and airgap (an upgrade that also ships the binary and the images)."""
    (tmp_path / "fakebin").mkdir()
    _executable(tmp_path / "fake-installer-v2", _FAKE_INSTALLER_V2)
    _executable(tmp_path / "fake-k3s-shipped", _FAKE_K3S_SHIPPED)
    (tmp_path / "images").write_text(FAKE_IMAGES_TEXT)
    config = "token: T\nnode-name: server-1\n"
    v2 = FAKE_INSTALLER_V2.parameters()
    payloads = {
        "v1": _k3s_env("server", config),
        "v2": _k3s_env("server", config, **v2),
        "v2-up": _k3s_env("server", config, version="v1.31.5+k3s1", **v2),
        "airgap": _k3s_env(
            "server", config, version="v1.31.5+k3s1", **v2, **FAKE_BINARY.parameters(), **FAKE_IMAGES.parameters()
        ),
    }
    variables = "".join(
        f"{name.replace('-', '_')}={_payload_file(tmp_path, name, 'k3s.sh', env)}\n" for name, env in payloads.items()
    )
    return _sandbox(
        tmp_path,
        _k3s_fakes(tmp_path)
        + variables
        + f"""
        : >"$OUT/which.log"
        sum() {{ sha256sum "$1" | cut -d' ' -f1; }}
        stage_v2() {{ cp {tmp_path}/fake-installer-v2 {FAKE_INSTALLER_V2.staged_path}; }}
        payload install "$v1" install
        """
        + textwrap.dedent(body),
    )


@needs_sandbox
def test_k3s_take_uses_a_kept_copy_with_the_pinned_sha256_without_the_staged_one(tmp_path: Path) -> None:
    steps = _k3s_take_run(
        tmp_path,
        f"""
        rm {FAKE_INSTALLER.staged_path}
        payload kept-right "$v1" reconfigure
        """,
    )
    assert steps.status("install") == "space-harbor: k3s.sh install: changed"
    assert steps.status("kept-right") == "space-harbor: k3s.sh reconfigure: unchanged"


@needs_sandbox
def test_k3s_take_replaces_a_kept_copy_altered_on_the_node_or_refuses_it(tmp_path: Path) -> None:
    steps = _k3s_take_run(
        tmp_path,
        f"""
        echo 'echo altered >>"$OUT/which.log"' >>{KEPT_INSTALLER}
        payload kept-wrong "$v1" reconfigure
        step kept-after-repair sum {KEPT_INSTALLER}
        # With no staged copy to replace it from: refused, never run.
        echo 'echo altered >>"$OUT/which.log"' >>{KEPT_INSTALLER}
        rm {FAKE_INSTALLER.staged_path}
        payload kept-wrong-unstaged "$v1" reconfigure
        step which cat "$OUT/which.log"
        """,
    )
    assert steps.status("kept-wrong") == "space-harbor: k3s.sh reconfigure: changed"
    assert f"k3s installer: {KEPT_INSTALLER} is the pinned file" in steps.stderr("kept-wrong")
    assert steps.stdout("kept-after-repair").strip() == FAKE_INSTALLER.sha256
    assert steps.rc("kept-wrong-unstaged") != 0
    assert f"{KEPT_INSTALLER} is not the pinned file" in steps.stderr("kept-wrong-unstaged")
    assert steps.stdout("which") == ""


@needs_sandbox
def test_k3s_take_puts_a_new_pin_over_the_old_kept_copy_binary_and_images(tmp_path: Path) -> None:
    steps = _k3s_take_run(
        tmp_path,
        f"""
        stage_v2
        payload new-pin "$v2" reconfigure
        step kept-after-new-pin sum {KEPT_INSTALLER}
        echo v1.31.5+k3s1 >/usr/local/share/fake-k3s-version
        payload upgrade "$v2_up" upgrade
        step which cat "$OUT/which.log"
        """,
    )
    assert steps.status("new-pin") == "space-harbor: k3s.sh reconfigure: changed"
    assert steps.stdout("kept-after-new-pin").strip() == FAKE_INSTALLER_V2.sha256
    assert steps.status("upgrade") == "space-harbor: k3s.sh upgrade: changed"
    assert steps.stdout("which").split() == ["v2"]


@needs_sandbox
def test_k3s_take_replaces_a_binary_and_an_images_archive_that_are_not_the_pinned_ones(tmp_path: Path) -> None:
    steps = _k3s_take_run(
        tmp_path,
        f"""
        # An upgrade that ships the binary, over a binary in place that is not it, and an images
        # archive of the same name that is not the pinned one.
        stage_v2
        cp {tmp_path}/fake-k3s-shipped {FAKE_BINARY.staged_path}
        cp {tmp_path}/images {FAKE_IMAGES.staged_path}
        mkdir -p /var/lib/rancher/k3s/agent/images
        echo 'an older archive under the same name' >{IMAGES_IN_PLACE}
        echo v1.31.5+k3s1 >/usr/local/share/fake-k3s-version
        payload airgap "$airgap" upgrade
        step binary-in-place sum /usr/local/bin/k3s
        step images-in-place sum {IMAGES_IN_PLACE}
        payload airgap-again "$airgap" upgrade
        """,
    )
    assert steps.status("airgap") == "space-harbor: k3s.sh upgrade: changed"
    assert steps.stdout("binary-in-place").strip() == FAKE_BINARY.sha256
    assert steps.stdout("images-in-place").strip() == FAKE_IMAGES.sha256
    assert steps.status("airgap-again") == "space-harbor: k3s.sh upgrade: unchanged"


# --- k3s.sh: the private staging directory ------------------------------------------------------

STAGING = "/var/lib/space-harbor/staging"


@needs_sandbox
def test_staging_is_private_and_k3s_take_refuses_links_and_other_accounts_files(tmp_path: Path) -> None:
    (tmp_path / "fakebin").mkdir()
    config = "token: T\nnode-name: agent-1\nserver: https://10.160.0.1:6443\n"
    install = _payload_file(tmp_path, "install", "k3s.sh", _k3s_env("agent", config))
    legacy_path = "/var/tmp/space-harbor-k3s-installer-0123456789abcdef.sh"
    from_var_tmp = _payload_file(
        tmp_path, "var-tmp", "k3s.sh", _k3s_env("agent", config, HARBOR_K3S_INSTALLER=legacy_path)
    )
    prepare = {
        user: _payload_file(tmp_path, f"prepare-{user}", "k3s.sh", {"HARBOR_STAGING_USER": user})
        for user in ("root", "nobody", "no-such-user")
    }
    staged = FAKE_INSTALLER.staged_path
    steps = _sandbox(
        tmp_path,
        _k3s_fakes(tmp_path)
        + f"""
        rm -rf /var/lib/space-harbor
        payload prepare-1 {prepare["root"]} prepare-staging
        payload prepare-2 {prepare["root"]} prepare-staging
        step modes stat -c '%n %U %a' /var/lib/space-harbor {STAGING}
        payload prepare-unknown {prepare["no-such-user"]} prepare-staging

        # A link in place of the staged installer (to a perfectly good copy): refused.
        cp {tmp_path}/fake-installer "$SCRATCH/elsewhere.sh"
        ln -s "$SCRATCH/elsewhere.sh" {staged}
        payload link {install} install
        rm {staged}
        # Another account's file: refused, whatever it holds.
        cp {tmp_path}/fake-installer {staged}
        chown nobody {staged}
        payload foreign {install} install
        # The SSH user's own (the directory's owner): taken.
        payload prepare-nobody {prepare["nobody"]} prepare-staging
        step owner stat -c '%U %a' {STAGING}
        payload owned {install} install
        # A staged path outside the directory (where older versions staged): refused.
        cp {tmp_path}/fake-installer {legacy_path}
        rm /usr/local/share/space-harbor/k3s-install.sh
        payload var-tmp {from_var_tmp} reconfigure

        # What an older version left in /var/tmp, and a link planted there: remove-shipped takes
        # both away and follows no link.
        ln -s /etc/hostname /var/tmp/space-harbor-k3s-binary-fedcba9876543210
        cp /etc/hostname "$SCRATCH/hostname-before"
        payload remove {install} remove-shipped
        step left bash -c 'ls -A /var/tmp; ls -d /var/lib/space-harbor 2>&1 || true'
        step hostname-intact cmp /etc/hostname "$SCRATCH/hostname-before"

        # A link in place of the directory: prepare-staging refuses it.
        mkdir -p /var/lib/space-harbor "$SCRATCH/attacker"
        ln -s "$SCRATCH/attacker" {STAGING}
        payload prepare-link {prepare["root"]} prepare-staging
        """,
    )
    assert steps.status("prepare-1") == "space-harbor: k3s.sh prepare-staging: changed"
    assert steps.status("prepare-2") == "space-harbor: k3s.sh prepare-staging: unchanged"
    assert steps.stdout("modes").splitlines() == ["/var/lib/space-harbor root 755", f"{STAGING} root 700"]
    assert steps.rc("prepare-unknown") != 0
    assert "HARBOR_STAGING_USER must be the SSH user" in steps.stderr("prepare-unknown")

    assert steps.rc("link") != 0
    assert f"{staged} is not a regular file (a symlink?); refusing to use it" in steps.stderr("link")
    assert steps.rc("foreign") != 0
    assert f"{staged} belongs to nobody, not to root (the SSH user) or root" in steps.stderr("foreign")
    assert steps.status("prepare-nobody") == "space-harbor: k3s.sh prepare-staging: changed"
    assert steps.stdout("owner").strip() == "nobody 700"
    assert steps.status("owned") == "space-harbor: k3s.sh install: changed"
    assert steps.rc("var-tmp") != 0
    assert f"{legacy_path} is not in the private staging directory {STAGING}" in steps.stderr("var-tmp")

    assert steps.status("remove") == "space-harbor: k3s.sh remove-shipped: changed"
    assert steps.stdout("left").splitlines() == ["ls: cannot access '/var/lib/space-harbor': No such file or directory"]
    assert steps.rc("hostname-intact") == 0
    assert steps.rc("prepare-link") != 0
    assert f"{STAGING} is not a directory (a symlink?)" in steps.stderr("prepare-link")


def test_k3s_sh_and_the_copy_steps_name_the_same_staging_directory() -> None:
    from components.shipped import STAGING_DIR

    text = (SCRIPTS / "k3s.sh").read_text()
    parent = re.search(r"^k3s_staging_parent=(\S+)$", text, re.MULTILINE)
    child = re.search(r'^k3s_staging_dir="\$k3s_staging_parent/(\S+)"$', text, re.MULTILINE)
    assert parent and child
    assert f"{parent.group(1)}/{child.group(1)}" == STAGING_DIR == FAKE_INSTALLER.staged_path.rsplit("/", 1)[0]


# --- preflight.sh: a firewall that nftables.service took away ------------------------------------


@needs_sandbox
@needs_nft
def test_preflight_reports_a_firewall_that_stopping_nftables_flushed(tmp_path: Path) -> None:
    from components.config import SKIPPABLE_PREFLIGHT_CHECKS
    from components.render.preflight import preflight_env

    config = load_config(base_config(agents=1))
    node = config.nodes[1]
    only_firewall = ",".join(check for check in SKIPPABLE_PREFLIGHT_CHECKS if check != "firewall")
    check = tmp_path / "preflight"
    check.write_text(
        script_payload(
            (SCRIPTS / "preflight.sh").read_text(),
            {**preflight_env(config, node), "HARBOR_PREFLIGHT_SKIP": only_firewall},
        )
    )
    apply = _payload_file(
        tmp_path,
        "fw",
        "firewall.sh",
        {"HARBOR_NFT_TABLE": TABLE_NAME, "HARBOR_NFT_RULESET": render_nftables(config, node)},
    )
    steps = _sandbox(
        tmp_path,
        f"""
        payload never-applied {check} check
        payload apply {apply} apply
        payload loaded {check} check
        # What `systemctl stop nftables` runs on Debian (ExecStop): every table goes.
        nft flush ruleset
        payload flushed {check} check
        step files-after bash -c 'ls -A /etc/space-harbor'
        step tables-after nft list tables
        """,
    )
    assert "firewall: ok (no Space Harbor firewall applied here yet)" in steps.stdout("never-applied")
    assert steps.rc("never-applied") == 0
    assert steps.status("apply") == "space-harbor: firewall.sh apply: changed"
    assert f"firewall: ok (table inet {TABLE_NAME} is loaded)" in steps.stdout("loaded")
    assert steps.rc("flushed") == 1
    assert (
        f"space-harbor: preflight agent-1: firewall: this node's firewall (table inet {TABLE_NAME}, stored in "
        "/etc/space-harbor/firewall.nft) is not loaded" in steps.stderr("flushed")
    )
    assert "systemctl restart space-harbor-firewall" in steps.stderr("flushed")
    # read-only: it loaded nothing and wrote nothing (firewall.sh wrote the table and its live record)
    assert steps.stdout("files-after").split() == ["firewall.live", "firewall.nft"]
    assert TABLE_NAME not in steps.stdout("tables-after")
