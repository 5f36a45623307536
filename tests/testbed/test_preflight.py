"""The preflight on booted nodes: a healthy node passes, and each check fails on a node made to fail it.

The script goes exactly as the program sends it: the payload of components/render/remote.py on
stdin of `bash -s -- check` over SSH. Each failure is staged on the node and undone afterwards:
bind mounts made inside the node's own mount namespace (nsenter) over /proc/swaps, /proc/cgroups
and os-release, shims in /usr/local/sbin (ahead of /usr/bin in root's PATH), a listener in a
transient unit, a lowered MTU, a changed hostname, a k3s record. The nodes are compared with
their state at the start of the module before the last test, which installs the k3s stand-in.
"""

from __future__ import annotations

import contextlib
import re
import shlex
import time
from collections.abc import Iterator
from typing import Any

import pytest

from components.config import PREFLIGHT_CHECKS, load_config
from components.render.k3s import render_config_yaml
from components.render.preflight import preflight_env
from components.render.remote import node_script, script_payload
from tests.testbed.conftest import Snapshot, snapshot
from tests.testbed.nodes import Testbed
from tests.testbed.stack import K3S_VERSION, stack_config, stage_installer

pytestmark = pytest.mark.testbed

NODES = ["n1", "n2", "n3"]
RECORD = "/etc/rancher/k3s/.space-harbor-installed"
# Files outside the snapshot that a careless script could write (logind's and the journal's own
# bookkeeping under /run comes and goes with every SSH login, so it is left out).
SCRATCH_LISTING = (
    "find /tmp /var/tmp /root /run -xdev \\( -path /run/systemd -o -path /run/user -o -path /run/log \\) -prune "
    "-o -print 2>/dev/null | sort"
)
CGROUP_FIX = (
    "enable it on the kernel command line with cgroup_memory=1 cgroup_enable=memory (on a Raspberry Pi: "
    "at the end of the one line in /boot/firmware/cmdline.txt, or /boot/cmdline.txt on older images) and reboot"
)


class Bed:
    """The module's testbed, its healthy stack config, and the nodes' state at the start."""

    def __init__(self, tb: Testbed) -> None:
        self.tb = tb
        # The default mesh.mtu (1420) fits a 1500-byte link; were the testbed's links narrower, an
        # honest stack would lower mesh.mtu so that WireGuard over IPv4 fits, as the mtu check asks.
        self.link_mtu = link_mtu(tb, "n1")
        self.mesh_mtu = min(1420, self.link_mtu - 60)
        self.config = stack_config(tb, mesh={"mtu": self.mesh_mtu})
        self.start = {name: snapshot(tb, name) for name in NODES}

    def run(self, node: str, config: dict[str, Any] | None = None) -> Result:
        model = load_config(config or self.config)
        env = preflight_env(model, next(n for n in model.nodes if n.name == node))
        payload = script_payload(node_script("preflight.sh"), env)
        result = self.tb.ssh(node, "bash -s -- check", input=payload, check=False, timeout=120)
        return Result(node, result.returncode, result.stdout, result.stderr)


class Result:
    def __init__(self, node: str, returncode: int, stdout: str, stderr: str) -> None:
        self.node, self.returncode, self.stdout, self.stderr = node, returncode, stdout, stderr

    @property
    def problems(self) -> list[str]:
        """The lines naming a problem on this node (warnings excluded)."""
        prefix = f"space-harbor: preflight {self.node}: "
        return [line for line in self.stderr.splitlines() if line.startswith(prefix) and ": warning: " not in line]

    def ok_line(self, check: str) -> str:
        prefix = f"space-harbor: preflight {self.node}: {check}: "
        found = [line for line in self.stdout.splitlines() if line.startswith(prefix)]
        assert len(found) == 1, f"{check}: {found}\n{self}"
        return found[0]

    def failed_only(self, *expected: str) -> None:
        """Exit 1, exactly these problem lines, and the failure count last."""
        assert self.returncode == 1, str(self)
        assert self.problems == list(expected), str(self)
        noun = "check" if len(expected) == 1 else "checks"
        assert self.stderr.splitlines()[-1] == (
            f"space-harbor: preflight.sh check: {len(expected)} {noun} failed on {self.node}"
        )

    def passed(self) -> None:
        assert self.returncode == 0, str(self)
        assert self.problems == [], str(self)
        assert self.stdout.splitlines()[-1] == "space-harbor: preflight.sh check: ok"

    def __str__(self) -> str:
        return f"exit {self.returncode}\n--- stdout\n{self.stdout}--- stderr\n{self.stderr}"


@pytest.fixture(scope="module")
def bed(testbed3: Testbed) -> Bed:
    return Bed(testbed3)


# --- staging failures, always undone --------------------------------------------------------------


@contextlib.contextmanager
def bind_over(tb: Testbed, node: str, target: str, text: str) -> Iterator[None]:
    """`text` bind-mounted over `target` inside the node's mount namespace (SSH sessions see it)."""
    fake = f"/run/shtb-preflight-{abs(hash(target))}"
    tb.node_exec(node, ["sh", "-c", f"printf %s {shlex.quote(text)} > {fake} && mount --bind {fake} {target}"])
    try:
        yield
    finally:
        tb.node_exec(node, ["sh", "-c", f"umount {target}; rm -f {fake}"], check=False)


@contextlib.contextmanager
def shims(tb: Testbed, node: str, scripts: dict[str, str]) -> Iterator[None]:
    """Executables in /usr/local/sbin, which root's PATH searches before /usr/bin and /bin."""
    paths = [f"/usr/local/sbin/{name}" for name in scripts]
    try:
        for path, body in zip(paths, scripts.values(), strict=True):
            tb.ssh(node, f"cat > {path} && chmod 755 {path}", input="#!/bin/sh\n" + body)
        yield
    finally:
        tb.ssh(node, "rm -f " + " ".join(paths), check=False)


@contextlib.contextmanager
def listener(tb: Testbed, node: str, unit: str, proto: str, port: int) -> Iterator[None]:
    """A python3 socket bound to `port` in a transient unit of its own."""
    kind = "SOCK_STREAM" if proto == "tcp" else "SOCK_DGRAM"
    listen = "s.listen(5); " if proto == "tcp" else ""
    code = (
        f"import socket, time; s = socket.socket(socket.AF_INET, socket.{kind}); "
        f"s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(('0.0.0.0', {port})); "
        f"{listen}time.sleep(3600)"
    )
    flag = "t" if proto == "tcp" else "u"
    tb.ssh(node, f"systemd-run --quiet --collect --unit={unit} python3 -c {shlex.quote(code)}")
    try:
        wait_for(tb, node, f"ss -Hln{flag} 'sport = :{port}' | grep -q .")
        yield
    finally:
        tb.ssh(node, f"systemctl stop {unit}", check=False)
        wait_for(tb, node, f"! ss -Hln{flag} 'sport = :{port}' | grep -q .")


@contextlib.contextmanager
def k3s_files(tb: Testbed, node: str, files: dict[str, str]) -> Iterator[None]:
    """Files of an earlier k3s install (the record, config.yaml, a unit); the node had none."""
    assert (
        tb.ssh(node, "test ! -e /etc/rancher && test ! -e /etc/systemd/system/k3s.service", check=False).returncode == 0
    )
    try:
        for path, text in files.items():
            tb.ssh(node, f"mkdir -p $(dirname {path}) && cat > {path}", input=text)
        yield
    finally:
        paths = " ".join(path for path in files if not path.startswith("/etc/rancher/"))
        tb.ssh(node, f"rm -rf /etc/rancher {paths}", check=False)


def link_mtu(tb: Testbed, node: str) -> int:
    # From netlink: the container's /sys/class/net shows the host's network namespace.
    out = tb.ssh(node, "ip -o link show dev eth0").stdout
    return int(re.search(r" mtu (\d+) ", out).group(1))  # type: ignore[union-attr]


def wait_for(tb: Testbed, node: str, condition: str, within: float = 10) -> None:
    deadline = time.monotonic() + within
    while tb.ssh(node, condition, check=False).returncode != 0:
        assert time.monotonic() < deadline, f"{node}: `{condition}` still false after {within}s"
        time.sleep(0.2)


def scratch(tb: Testbed, node: str) -> str:
    return tb.ssh(node, SCRATCH_LISTING).stdout


def assert_same(before: Snapshot, after: Snapshot, node: str) -> None:
    assert after.files == before.files, f"{node}: files changed"
    assert after.units == before.units, f"{node}: units changed"
    assert after.links == before.links, f"{node}: links changed"
    assert after.nft == before.nft, f"{node}: nft ruleset changed"


# --- the healthy path, and read-only --------------------------------------------------------------


def test_healthy_nodes_pass_every_check_and_the_nodes_do_not_change(bed: Bed) -> None:
    tb = bed.tb
    for name in NODES:
        before, listing = snapshot(tb, name), scratch(tb, name)
        result = bed.run(name)
        result.passed()
        for check in PREFLIGHT_CHECKS:
            assert ": ok (" in result.ok_line(check), result.ok_line(check)
        # Honest about why: the nspawn container's clock is the host's.
        assert result.ok_line("timeSync").endswith(
            "timeSync: ok (in a systemd-nspawn container the host keeps the clock)"
        )
        assert result.ok_line("os") == f"space-harbor: preflight {name}: os: ok (Debian GNU/Linux 12 (bookworm))"
        assert result.ok_line("hostname") == f"space-harbor: preflight {name}: hostname: ok ({name})"
        assert f"mtu: ok (eth0 has MTU {bed.link_mtu}, at least {bed.mesh_mtu + 60})" in result.ok_line("mtu")
        assert_same(before, snapshot(tb, name), name)
        assert scratch(tb, name) == listing, f"{name}: a file appeared or vanished in /tmp, /var/tmp, /run or /root"
    # n1 is the only server: it bootstraps, with no other server to ask.
    assert bed.run("n1").ok_line("bootstrap").endswith("bootstrap: ok (no other server)")
    assert bed.run("n2").ok_line("bootstrap").endswith("bootstrap: ok (not the bootstrap server)")


# --- each check, failing --------------------------------------------------------------------------


def test_os_other_distributions_and_old_releases_fail(bed: Bed) -> None:
    tb = bed.tb
    target = tb.ssh("n2", "readlink -f /etc/os-release").stdout.strip()
    cases = {
        'PRETTY_NAME="Fedora Linux 40 (Server Edition)"\nID=fedora\nVERSION_ID=40\n': (
            "this node runs Fedora Linux 40 (Server Edition) (ID=fedora, VERSION_ID=40)"
        ),
        'PRETTY_NAME="Debian GNU/Linux 10 (buster)"\nID=debian\nVERSION_ID="10"\n': (
            "this node runs Debian GNU/Linux 10 (buster) (ID=debian, VERSION_ID=10)"
        ),
        'PRETTY_NAME="Ubuntu 18.04.6 LTS"\nID=ubuntu\nVERSION_ID="18.04"\n': (
            "this node runs Ubuntu 18.04.6 LTS (ID=ubuntu, VERSION_ID=18.04)"
        ),
    }
    for text, what in cases.items():
        with bind_over(tb, "n2", target, text):
            bed.run("n2").failed_only(
                f"space-harbor: preflight n2: os: {what}, which Space Harbor does not support; use Debian >= 11 or "
                "Ubuntu >= 20.04 (the node scripts rely on their apt packages and systemd), or add os to "
                "preflight.skip at your own risk"
            )
    with bind_over(tb, "n2", target, 'PRETTY_NAME="Ubuntu 22.04.4 LTS"\nID=ubuntu\nVERSION_ID="22.04"\n'):
        bed.run("n2").passed()


def test_arch_without_a_k3s_binary_fails(bed: Bed) -> None:
    tb = bed.tb
    uname = 'if [ "$1" = -m ]; then echo {arch}; else exec /usr/bin/uname "$@"; fi\n'
    with shims(tb, "n2", {"uname": uname.format(arch="riscv64")}):
        bed.run("n2").failed_only(
            "space-harbor: preflight n2: arch: uname -m reports riscv64, for which k3s publishes no binary "
            "(it does for amd64, arm64, armhf and s390x); run this node on one of those architectures"
        )
    with shims(tb, "n2", {"uname": uname.format(arch="armv6l")}):
        bed.run("n2").failed_only(
            "space-harbor: preflight n2: arch: uname -m reports armv6l, and k3s's 32-bit ARM binary (armhf) needs "
            "ARMv7 or newer; run this node on ARMv7 or newer (a Raspberry Pi 2 or later), or on amd64, arm64 or s390x"
        )
    with shims(tb, "n2", {"uname": uname.format(arch="armv7l")}):
        result = bed.run("n2")
        result.passed()
        assert result.ok_line("arch").endswith("arch: ok (armv7l: the k3s armhf binary)")


def test_cgroups_without_the_memory_cgroup_fail(bed: Bed) -> None:
    tb = bed.tb
    fstype = tb.ssh("n2", "stat -fc %T /sys/fs/cgroup").stdout.strip()
    if fstype == "cgroup2fs":
        target, text = "/sys/fs/cgroup/cgroup.controllers", "cpuset cpu io pids\n"
        what = (
            "cgroup v2 is mounted but its memory controller is missing "
            "(/sys/fs/cgroup/cgroup.controllers: cpuset cpu io pids)"
        )
    else:
        # cgroup v1 (this testbed's nodes, on a v1 host): the kernel's table as a Raspberry Pi kernel shows it.
        table = tb.ssh("n2", "cat /proc/cgroups").stdout
        text = re.sub(r"^(memory\t\d+\t\d+\t)1$", r"\g<1>0", table, flags=re.MULTILINE)
        assert text != table
        target, what = "/proc/cgroups", "the memory cgroup is disabled (/proc/cgroups: memory enabled=0)"
    with bind_over(tb, "n2", target, text):
        bed.run("n2").failed_only(f"space-harbor: preflight n2: cgroups: {what}, and k3s needs it; {CGROUP_FIX}")
    bed.run("n2").passed()


def test_active_swap_fails(bed: Bed) -> None:
    swaps = (
        "Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n"
        "/dev/vda2                               partition\t2097148\t\t0\t\t-2\n"
        "/swapfile                               file\t\t524284\t\t0\t\t-3\n"
    )
    with bind_over(bed.tb, "n2", "/proc/swaps", swaps):
        bed.run("n2").failed_only(
            "space-harbor: preflight n2: swap: swap is active: /dev/vda2 (2097148 KiB), /swapfile (524284 KiB), "
            "and the kubelet expects none; run swapoff -a and remove or comment out the swap lines in /etc/fstab "
            "(and disable zram or dphys-swapfile if present) so it stays off after a reboot, or add swap to "
            "preflight.skip"
        )


def test_ports_held_by_others_fail_naming_the_holder(bed: Bed) -> None:
    tb = bed.tb
    with listener(tb, "n1", "harbor-testbed-preflight-6443", "tcp", 6443):
        result = bed.run("n1")
        assert result.returncode == 1 and len(result.problems) == 1, str(result)
        assert re.fullmatch(
            r"space-harbor: preflight n1: ports: TCP port 6443 \(the k3s API\) is in use by python3 \(pid \d+, "
            r"harbor-testbed-preflight-6443\.service\); stop or move what holds it, since k3s must bind it, or add "
            r"ports to preflight\.skip if it will be free when k3s starts",
            result.problems[0],
        ), result.problems[0]
        # An agent needs no API port: the same listener on an agent is none of its business.
        with listener(tb, "n2", "harbor-testbed-preflight-6443", "tcp", 6443):
            bed.run("n2").passed()
    with listener(tb, "n2", "harbor-testbed-preflight-8472", "udp", 8472):
        result = bed.run("n2")
        assert len(result.problems) == 1 and result.returncode == 1, str(result)
        assert re.fullmatch(
            r"space-harbor: preflight n2: ports: UDP port 8472 \(flannel's VXLAN\) is in use by python3 \(pid \d+, "
            r"harbor-testbed-preflight-8472\.service\); stop or move what holds it, since flannel must bind it, or "
            r"choose another k3s\.flannelBackend",
            result.problems[0],
        ), result.problems[0]
    with listener(tb, "n3", "harbor-testbed-preflight-51871", "udp", 51871):
        result = bed.run("n3")
        assert len(result.problems) == 1 and result.returncode == 1, str(result)
        assert re.fullmatch(
            r"space-harbor: preflight n3: ports: UDP port 51871 \(the WireGuard mesh, mesh\.listenPort\) is in use "
            r"by python3 \(pid \d+, harbor-testbed-preflight-51871\.service\); stop what holds it, or set "
            r"mesh\.listenPort to a free port",
            result.problems[0],
        ), result.problems[0]


def test_mesh_port_held_by_our_own_wireguard_passes_and_by_another_interface_fails(bed: Bed) -> None:
    tb = bed.tb
    for iface, ours in (("wg-harbor", True), ("wg-other", False)):
        unit = "harbor-testbed-preflight-wg"
        tb.ssh("n3", f"systemd-run --quiet --collect --unit={unit} wireguard-go -f {iface}")
        try:
            wait_for(tb, "n3", f"ip link show dev {iface}")
            tb.ssh(
                "n3",
                f"wg genkey > /run/shtb-wg.key && wg set {iface} listen-port 51871 private-key /run/shtb-wg.key; "
                f"rm -f /run/shtb-wg.key; ip link set {iface} up",
            )
            wait_for(tb, "n3", "ss -Hlnup 'sport = :51871' | grep -q wireguard-go")
            result = bed.run("n3")
            if ours:
                result.passed()
                assert "ports: ok (" in result.ok_line("ports")
            else:
                assert len(result.problems) == 1 and result.returncode == 1, str(result)
                assert re.fullmatch(
                    r"space-harbor: preflight n3: ports: UDP port 51871 \(the WireGuard mesh, mesh\.listenPort\) is "
                    rf"in use by wireguard-go \(pid \d+, {unit}\.service\); stop what holds it, or set "
                    r"mesh\.listenPort to a free port",
                    result.problems[0],
                ), result.problems[0]
        finally:
            tb.ssh("n3", f"systemctl stop {unit}", check=False)
            wait_for(tb, "n3", f"! ip link show dev {iface} >/dev/null 2>&1")


def test_time_not_synchronised_fails_outside_a_container(bed: Bed) -> None:
    # A VM without NTP: systemd-detect-virt finds no container, timedatectl reports no sync.
    not_a_container = 'if [ "$1" = --container ]; then echo none; exit 1; fi; echo kvm\n'
    timedatectl = 'if [ "$*" = "show -p NTPSynchronized --value" ]; then echo {synced}; else exit 1; fi\n'
    with shims(bed.tb, "n2", {"systemd-detect-virt": not_a_container, "timedatectl": timedatectl.format(synced="no")}):
        bed.run("n2").failed_only(
            "space-harbor: preflight n2: timeSync: the clock is not synchronised (timedatectl: NTPSynchronized=no; "
            "no chrony or ntpd reports sync); certificates, tokens and etcd need a correct clock: enable NTP "
            "(timedatectl set-ntp true with systemd-timesyncd, or install chrony) and wait until it syncs, or add "
            "timeSync to preflight.skip"
        )
    with shims(bed.tb, "n2", {"systemd-detect-virt": not_a_container, "timedatectl": timedatectl.format(synced="yes")}):
        result = bed.run("n2")
        result.passed()
        assert result.ok_line("timeSync").endswith("timeSync: ok (timedatectl: NTPSynchronized=yes)")


def test_hostname_other_than_the_node_name_fails_unless_skipped(bed: Bed) -> None:
    tb = bed.tb
    tb.node_exec("n3", ["hostname", "web-7"])
    try:
        bed.run("n3").failed_only(
            "space-harbor: preflight n3: hostname: the hostname of this node is 'web-7', but the stack names it 'n3'; "
            "run hostnamectl set-hostname n3, or rename the node in nodes, or add hostname to its preflightSkip "
            "(k3s registers it as 'n3' either way)"
        )
        skipped = stack_config(tb, mesh={"mtu": bed.mesh_mtu})
        next(node for node in skipped["nodes"] if node["name"] == "n3")["preflightSkip"] = ["hostname"]
        result = bed.run("n3", skipped)
        result.passed()
        assert result.ok_line("hostname") == "space-harbor: preflight n3: hostname: skipped (preflight.skip)"
    finally:
        tb.node_exec("n3", ["hostname", "n3"])
    # A fully qualified hostname whose first label is the node's name is the same host, in any case.
    tb.node_exec("n3", ["hostname", "N3.harbor.test"])
    try:
        bed.run("n3").passed()
    finally:
        tb.node_exec("n3", ["hostname", "n3"])


def test_mtu_too_small_for_the_mesh_fails(bed: Bed) -> None:
    tb = bed.tb
    lowered = bed.mesh_mtu + 59
    tb.node_exec("n3", ["ip", "link", "set", "eth0", "mtu", str(lowered)])
    try:
        need = bed.mesh_mtu + 60
        bed.run("n3").failed_only(
            f"space-harbor: preflight n3: mtu: eth0 (holds the endpoint {tb.nodes['n3'].address}) has MTU {lowered}, "
            f"but mesh.mtu {bed.mesh_mtu} needs at least {need} ({bed.mesh_mtu} + 60 bytes of WireGuard over IPv4); "
            f"set mesh.mtu to {lowered - 60} or less, or raise the MTU of eth0"
        )
        # With the mesh off there is no tunnel to fit.
        mesh_off = stack_config(tb, mesh={"enabled": False})
        for node in mesh_off["nodes"]:
            del node["meshAddress"]
        result = bed.run("n3", mesh_off)
        result.passed()
        assert result.ok_line("mtu").endswith("mtu: ok (the mesh is off)")
    finally:
        tb.node_exec("n3", ["ip", "link", "set", "eth0", "mtu", str(bed.link_mtu)])


def test_role_change_in_place_is_refused(bed: Bed) -> None:
    tb = bed.tb
    # n1 is a server in the stack; k3s.sh recorded an agent install there.
    with k3s_files(tb, "n1", {RECORD: f"agent {K3S_VERSION}\n"}):
        bed.run("n1").failed_only(
            "space-harbor: preflight n1: role: the role of node n1 is server in the stack but it runs k3s as agent "
            f"({RECORD}); a role change is not done in place: remove the node from nodes, run pulumi up (it is "
            "decommissioned), then add it back with the new role"
        )
    # n2 is an agent; someone installed a k3s server there without Space Harbor (only its unit exists).
    with k3s_files(tb, "n2", {"/etc/systemd/system/k3s.service": "[Service]\nExecStart=/usr/local/bin/k3s server\n"}):
        bed.run("n2").failed_only(
            "space-harbor: preflight n2: role: the role of node n2 is agent in the stack but it runs k3s as server "
            "(/etc/systemd/system/k3s.service); a role change is not done in place: remove the node from nodes, run "
            "pulumi up (it is decommissioned), then add it back with the new role"
        )


def test_bootstrap_next_to_a_running_server_is_refused(bed: Bed) -> None:
    tb = bed.tb
    # Three etcd servers without the mesh: their cluster addresses are the testbed addresses.
    config = stack_config(
        tb,
        k3s={"airgap": True, "version": K3S_VERSION, "datastore": "etcd", "firstServer": "n1"},
        mesh={"enabled": False},
    )
    for node in config["nodes"]:
        node["role"] = "server"
        del node["meshAddress"]
    assert load_config(config).first_server.name == "n1"
    result = bed.run("n1", config)
    result.passed()
    assert result.ok_line("bootstrap").endswith("bootstrap: ok (no other server answers on port 6443)")
    # n2 answers on 6443, as a server of a running cluster does.
    with listener(tb, "n2", "harbor-testbed-preflight-api", "tcp", 6443):
        bed.run("n1", config).failed_only(
            "space-harbor: preflight n1: bootstrap: this node is the bootstrap server and has no k3s yet, but the "
            f"server at {tb.nodes['n2'].address} already answers on port 6443: a cluster runs there, and this node "
            "would start a second, separate one; set k3s.firstServer to a server that is already installed"
        )
        # The bootstrap server that is installed already is the cluster; nothing to refuse.
        with k3s_files(
            tb, "n1", {RECORD: f"server {K3S_VERSION}\n", "/etc/rancher/k3s/config.yaml": "secrets-encryption: true\n"}
        ):
            bed.run("n1", config).passed()


def test_secrets_encryption_cannot_be_switched_on_for_a_running_server(bed: Bed) -> None:
    tb = bed.tb
    plain = "# Managed by Space Harbor (Pulumi). Local edits are overwritten.\nnode-name: n1\n"
    with k3s_files(tb, "n1", {RECORD: f"server {K3S_VERSION}\n", "/etc/rancher/k3s/config.yaml": plain}):
        # The stand-in has no `secrets-encrypt`, like a k3s that does not answer: nothing says Enabled.
        bed.run("n1").failed_only(
            "space-harbor: preflight n1: secretsEncryption: k3s runs on this server without secrets encryption (no "
            "secrets-encryption: true in /etc/rancher/k3s/config.yaml, and k3s secrets-encrypt status does not "
            "report Enabled), but k3s.secretsEncryption is true, and k3s cannot turn encryption on for a running "
            "cluster before its 2026 releases; set k3s.secretsEncryption to false to keep the cluster as it is, or "
            "follow the migration in docs/upgrading.md (Secrets encryption on an existing cluster) and then set it"
        )
        keep = stack_config(
            tb, mesh={"mtu": bed.mesh_mtu}, k3s={"airgap": True, "version": K3S_VERSION, "secretsEncryption": False}
        )
        result = bed.run("n1", keep)
        result.passed()
        assert result.ok_line("secretsEncryption").endswith("secretsEncryption: ok (k3s.secretsEncryption is false)")
    with k3s_files(
        tb,
        "n1",
        {RECORD: f"server {K3S_VERSION}\n", "/etc/rancher/k3s/config.yaml": plain + "secrets-encryption: true\n"},
    ):
        result = bed.run("n1")
        result.passed()
        assert "has secrets-encryption: true" in result.ok_line("secretsEncryption")


def test_several_problems_give_one_line_each_and_change_nothing(bed: Bed) -> None:
    tb = bed.tb
    uname = 'if [ "$1" = -m ]; then echo mips64; else exec /usr/bin/uname "$@"; fi\n'
    swaps = "Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n/dev/zram0 partition\t1048572\t0\t100\n"
    tb.node_exec("n3", ["hostname", "other"])
    try:
        with shims(tb, "n3", {"uname": uname}), bind_over(tb, "n3", "/proc/swaps", swaps):
            before, listing = snapshot(tb, "n3"), scratch(tb, "n3")
            result = bed.run("n3")
            result.failed_only(
                "space-harbor: preflight n3: arch: uname -m reports mips64, for which k3s publishes no binary (it does "
                "for amd64, arm64, armhf and s390x); run this node on one of those architectures",
                "space-harbor: preflight n3: swap: swap is active: /dev/zram0 (1048572 KiB), and the kubelet expects "
                "none; run swapoff -a and remove or comment out the swap lines in /etc/fstab (and disable zram or "
                "dphys-swapfile if present) so it stays off after a reboot, or add swap to preflight.skip",
                "space-harbor: preflight n3: hostname: the hostname of this node is 'other', but the stack names it "
                "'n3'; run hostnamectl set-hostname n3, or rename the node in nodes, or add hostname to its "
                "preflightSkip (k3s registers it as 'n3' either way)",
            )
            # the other checks still ran and passed
            for check in ("os", "cgroups", "ports", "timeSync", "mtu", "role", "bootstrap", "secretsEncryption"):
                assert ": ok (" in result.ok_line(check)
            assert_same(before, snapshot(tb, "n3"), "n3")
            assert scratch(tb, "n3") == listing
    finally:
        tb.node_exec("n3", ["hostname", "n3"])


def test_every_node_is_as_it_was_before_the_module(bed: Bed) -> None:
    for name in NODES:
        assert_same(bed.start[name], snapshot(bed.tb, name), name)
        assert bed.tb.ssh(name, "cat /proc/sys/kernel/hostname").stdout.strip() == name
        assert link_mtu(bed.tb, name) == bed.link_mtu


# --- day 2: the node runs k3s (the stand-in) ------------------------------------------------------


def test_day_two_on_an_installed_server_passes_with_its_ports_held_by_k3s(bed: Bed) -> None:
    tb = bed.tb
    # The default secretsEncryption: the renderer writes it into the server's config.yaml, so a
    # server it installed passes that check too.
    config = stack_config(tb, mesh={"mtu": bed.mesh_mtu}, k3s={"airgap": True, "version": K3S_VERSION})
    model = load_config(config)
    node = model.nodes[0]
    install_env = {
        "HARBOR_K3S_ROLE": "server",
        "HARBOR_K3S_VERSION": K3S_VERSION,
        "HARBOR_K3S_CONFIG": render_config_yaml(
            model, node, server_token="testbed-preflight-token", agent_token="testbed-agent-token"
        ),
        "HARBOR_K3S_AIRGAP": "true",
        **stage_installer(tb, "n1"),
    }
    install = script_payload(node_script("k3s.sh"), install_env)
    tb.ssh("n1", "bash -s -- install", input=install, timeout=240)
    try:
        held = tb.ssh("n1", "ss -Hltnp 'sport = :6443'; ss -Hltnp 'sport = :10250'").stdout
        assert "6443" in held and "10250" in held, held
        result = bed.run("n1", config)
        result.passed()
        assert result.ok_line("role").endswith("role: ok (k3s runs here as server)")
        assert result.ok_line("bootstrap").endswith("bootstrap: ok (k3s is already installed here)")
        # The same listener outside k3s's unit is someone else's.
        tb.ssh("n1", "systemctl stop k3s")
        with listener(tb, "n1", "harbor-testbed-preflight-api", "tcp", 6443):
            assert bed.run("n1", config).returncode == 1
    finally:
        tb.ssh("n1", "bash -s -- uninstall", input=install, check=False, timeout=240)
        tb.ssh("n1", "rm -rf /etc/rancher /var/lib/rancher", check=False)
