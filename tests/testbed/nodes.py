"""Real Debian nodes on this machine: systemd-nspawn containers on a bridge in namespaces of our own.

Layout of one run (every name carries the run id, so parallel runs never meet and cleanup is exact):

    netns  shtb-<id>-hub    holds bridge `br0` and one veth end per member
    netns  shtb-<id>-ctl    the controller / "outside" host, 192.168.77.2, no WireGuard. The
                            runner's ssh, the GitOps push and the firewall probes run from here.
    netns  shtb-<id>-<k>    one per node, `eth0` = the other veth end, 192.168.77.<10+k>
    netns  shtb-<id>-git    the git server node, 192.168.77.5

Each veth pair is created inside the hub namespace with its peer moved straight into the member's
namespace, so nothing is ever created in the root namespace: deleting our namespaces removes every
link we made. Every address lives only inside these namespaces.

Each node is `systemd-nspawn --boot --register=no --keep-unit` on an overlayfs of the cached
rootfs (per-node upper dir; `cp -a` when overlayfs cannot mount), with real systemd and sshd.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import json
import os
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

from tests.testbed.rootfs import ensure_rootfs

HERE = Path(__file__).resolve().parent
STANDIN_K3S = HERE / "standin" / "k3s-standin"
STANDIN_INSTALLER = HERE / "standin" / "k3s-install-standin.sh"
# The k3s stand-in's real control plane (kube-apiserver, controllers, a fake kubelet), used when
# the Testbed is given Kubernetes' binaries; they are bound read-only at CONTROL_PLANE_BIN.
STANDIN_CONTROL_PLANE = HERE / "standin" / "control-plane-standin"
CONTROL_PLANE_SCRIPT = "/usr/local/lib/space-harbor-standin/control-plane-standin"
CONTROL_PLANE_BIN = "/opt/space-harbor-standin/bin"
CONTROL_PLANE_BINARIES = ("kine", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl")
# Where the product's air-gap feature expects the pre-placed files (docs/INTERFACES.md).
AIRGAP_BINARY = "/usr/local/bin/k3s"
# Where k3s.sh keeps the shipped installer once it checked its sha256.
KEPT_INSTALLER = "/usr/local/share/space-harbor/k3s-install.sh"
RUN_ROOT = Path(os.environ.get("TESTBED_RUN_ROOT", "/var/tmp/space-harbor-testbed"))
SUBNET = "192.168.77"
PREFIX = 24
CTL_ADDRESS = f"{SUBNET}.2"
GIT_ADDRESS = f"{SUBNET}.5"
GIT_REPO = "/srv/git/cluster.git"
REQUIRED_TOOLS = ("systemd-nspawn", "debootstrap", "ip", "ssh", "mount")
LOSS_TABLE = "shtb_loss"  # nftables table (bridge family, hub namespace) of the netem fallback
# nftables table (in a node's own namespace) that keeps its sshd from everyone but one bastion.
FENCE_TABLE = "shtb_ssh_fence"
# How long the k3s stand-in's installer runs and how long its server/agent take before READY.
# The tests keep them short (the suite's waits still meet a slow k3s); benchmarks of the install
# order pass the BENCH_ values, several seconds each as a real install and first start take.
K3S_INSTALL_SECONDS = 1.0
K3S_START_SECONDS = 1.0
BENCH_K3S_INSTALL_SECONDS = 5.0
BENCH_K3S_START_SECONDS = 5.0
# Where the stand-ins read them: the units' EnvironmentFile (/etc/default/%N) and the installer's own.
STANDIN_TIMING_FILES = {
    "/etc/default/k3s": "K3S_STANDIN_START_SECONDS",
    "/etc/default/k3s-agent": "K3S_STANDIN_START_SECONDS",
    "/etc/default/k3s-install-standin": "K3S_STANDIN_INSTALL_SECONDS",
}

T = TypeVar("T")


def missing_requirements() -> str | None:
    """Why the testbed cannot run here, or None."""
    if os.geteuid() != 0:
        return "the testbed needs root (namespaces, mounts, systemd-nspawn)"
    missing = [tool for tool in REQUIRED_TOOLS if shutil.which(tool) is None]
    if missing:
        return (
            f"missing tools: {', '.join(missing)} "
            "(apt-get install systemd-container debootstrap iproute2 openssh-client)"
        )
    if not Path("/dev/net/tun").exists():
        return "/dev/net/tun is missing (wireguard-go needs it)"
    return None


def _run(argv: list[str], *, check: bool = True, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(argv, text=True, capture_output=True, **kwargs)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({result.returncode}): {result.stderr.strip()}")
    return result


def _cgroup_v1_hierarchies() -> list[tuple[Path, list[str]]]:
    """(directory of this process's cgroup, controllers) for every mounted cgroup v1 hierarchy."""
    mounts: dict[frozenset[str], Path] = {}
    for line in Path("/proc/self/mounts").read_text().splitlines():
        _dev, target, fstype, options, *_ = line.split()
        if fstype == "cgroup":
            mounts[
                frozenset(
                    o for o in options.split(",") if o not in ("rw", "ro", "relatime", "nosuid", "nodev", "noexec")
                )
            ] = Path(target)
    found = []
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        hierarchy, controllers, path = line.split(":", 2)
        if hierarchy == "0" or not controllers:
            continue
        names = controllers.split(",")
        for options, target in mounts.items():
            if set(names) <= options:
                found.append((target / path.lstrip("/"), names))
                break
    return found


def _cgroup_hybrid_unified() -> Path | None:
    """This process's cgroup in the cgroup2 hierarchy of a hybrid host (v1 controllers + a v2 mount).

    None on a pure v1 or a pure v2 host. On a hybrid host nspawn puts each container's systemd
    beneath `<this cgroup>/payload` in the v2 hierarchy too, so it must be per node as well.
    """
    if not _cgroup_v1_hierarchies():
        return None
    mounts = [line.split() for line in Path("/proc/self/mounts").read_text().splitlines()]
    target = next((Path(fields[1]) for fields in mounts if fields[2] == "cgroup2"), None)
    cgroups = Path("/proc/self/cgroup").read_text().splitlines()
    own = next((line[3:] for line in cgroups if line.startswith("0::")), None)
    if target is None or own is None:
        return None
    return target / own.lstrip("/")


def _keypair() -> tuple[str, str]:
    """An ed25519 key: (OpenSSH private key text, `ssh-ed25519 AAAA...` public key)."""
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(Encoding.PEM, PrivateFormat.OpenSSH, NoEncryption()).decode()
    public = key.public_key().public_bytes(Encoding.OpenSSH, PublicFormat.OpenSSH).decode()
    return private, public


_CLONE_NEWNET = 0x40000000


def call_in_netns(netns: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run `fn` on a fresh thread that has joined network namespace `netns`.

    setns(2) with CLONE_NEWNET moves only the calling thread, so the rest of the test process
    stays where it was. Sockets opened and processes spawned by `fn` live in `netns` (a forked
    child inherits the forking thread's namespaces), e.g. GitPython's `git push` over ssh.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            with open(f"/run/netns/{netns}") as handle:
                if libc.setns(handle.fileno(), _CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), f"setns({netns}) failed")
            box["value"] = fn(*args, **kwargs)
        except BaseException as error:
            box["error"] = error

    thread = threading.Thread(target=target, name=f"netns-{netns}")
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


@dataclass
class Node:
    name: str
    index: int
    address: str
    netns: str
    rootdir: Path
    host_key: str  # `ssh-ed25519 AAAA...`: what pulumi-command's `hostKey` pins
    machine_id: str
    mode: str = "overlay"  # or "copy"
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    boot_seconds: float = 0.0
    cgroups: list[Path] = field(default_factory=list)

    @property
    def known_hosts_line(self) -> str:
        return f"{self.address} {self.host_key}"


@dataclass
class PacketLoss:
    """Loss that `Testbed.packet_loss` put on the bridge, and how."""

    percent: int
    mechanism: str  # "netem" (tc qdisc on every hub port) or "nftables" (numgen random drop)
    netem_error: str  # why netem was not used; "" when it was
    dropped: Callable[[], int] = field(repr=False, default=lambda: 0)  # frames dropped so far


@dataclass
class SshResult:
    returncode: int
    stdout: str
    stderr: str
    seconds: float


class Testbed:
    """N booted nodes (plus optionally a git server) on one private bridge. Use as a context manager."""

    __test__ = False  # not a pytest test class, whatever module imports it

    def __init__(
        self,
        *,
        k3s_version: str = "v1.31.4+k3s1",
        run_id: str | None = None,
        k3s_install_seconds: float = K3S_INSTALL_SECONDS,
        k3s_start_seconds: float = K3S_START_SECONDS,
        control_plane: Mapping[str, Path] | None = None,
    ) -> None:
        """`k3s_install_seconds` / `k3s_start_seconds`: how slow the k3s stand-in is on every node.

        `control_plane`: the paths of kine, kube-apiserver, kube-controller-manager, kube-scheduler
        and kubectl by name (./scripts/engine build); with them the k3s stand-in runs a real API
        server on the first server and a fake kubelet on every node.
        """
        if k3s_install_seconds < 0 or k3s_start_seconds < 0:
            raise ValueError("the k3s stand-in's install and start times are seconds >= 0")
        self.run_id = run_id or secrets.token_hex(3)
        self.workdir = RUN_ROOT / self.run_id
        self.k3s_version = k3s_version
        self.control_plane = control_plane
        if control_plane is not None:
            missing = [b for b in CONTROL_PLANE_BINARIES if b not in control_plane or not control_plane[b].is_file()]
            if missing:
                raise ValueError(f"the control plane lacks {', '.join(missing)}")
        self.k3s_seconds = {
            "K3S_STANDIN_INSTALL_SECONDS": k3s_install_seconds,
            "K3S_STANDIN_START_SECONDS": k3s_start_seconds,
        }
        self.hub = f"shtb-{self.run_id}-hub"
        self.ctl = f"shtb-{self.run_id}-ctl"
        self.nodes: dict[str, Node] = {}
        self.git: Node | None = None
        self.client_key, self.client_public_key = _keypair()
        self._netns: list[str] = []
        self._hub_ports: list[str] = []
        self._mounts: list[Path] = []
        self._lock = threading.Lock()
        self._closed = False
        self.rootfs: Path | None = None
        # node name -> the bastion node its SSH is reached through (`fence_ssh`), and each
        # bastion's own login key file (`make_bastion`)
        self.jump_hosts: dict[str, Node] = {}
        self.bastion_keys: dict[str, tuple[Path, str]] = {}

    # ---- lifecycle ------------------------------------------------------------------------
    def __enter__(self) -> Testbed:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        reason = missing_requirements()
        if reason:
            raise RuntimeError(reason)
        self.rootfs = ensure_rootfs()
        reap_stale_runs()
        self.workdir.mkdir(parents=True)
        atexit.register(self.close)
        self.key_file = self.workdir / "client_ed25519"
        self.key_file.write_text(self.client_key)
        self.key_file.chmod(0o600)
        self.known_hosts = self.workdir / "known_hosts"
        self.known_hosts.write_text("")
        self._add_netns(self.hub)
        _run(["ip", "-n", self.hub, "link", "add", "br0", "type", "bridge"])
        _run(["ip", "-n", self.hub, "link", "set", "br0", "up"])
        self._add_netns(self.ctl)
        self._attach(self.ctl, "ctl", CTL_ADDRESS)
        self._save_state()

    def close(self) -> None:
        """Stop every container, unmount, delete every namespace we made. Never raises."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        members = [*self.nodes.values(), *([self.git] if self.git else [])]
        with ThreadPoolExecutor(max_workers=max(1, len(members))) as pool:
            list(pool.map(self._stop_node, members))
        for mount in reversed(self._mounts):
            if _run(["umount", str(mount)], check=False).returncode != 0:
                _run(["umount", "-l", str(mount)], check=False)
        for netns in reversed(self._netns):
            _run(["ip", "netns", "delete", netns], check=False)
        if os.environ.get("TESTBED_KEEP_WORKDIR") != "1":
            shutil.rmtree(self.workdir, ignore_errors=True)
        with contextlib.suppress(Exception):
            atexit.unregister(self.close)

    def _stop_node(self, node: Node) -> None:
        proc = node.process
        if proc is not None and proc.poll() is None:
            # SIGTERM makes nspawn ask the container's systemd to power off; SIGKILL if it hangs.
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        self._remove_cgroups(node.cgroups)

    def _add_netns(self, name: str) -> None:
        _run(["ip", "netns", "add", name])
        self._netns.append(name)
        _run(["ip", "-n", name, "link", "set", "lo", "up"])

    def _attach(self, netns: str, port_name: str, address: str) -> None:
        """A veth from the hub's bridge into `netns` (as eth0) with `address`: made inside the hub."""
        hub_end = f"v-{port_name}"[:15]
        _run(["ip", "-n", self.hub, "link", "add", hub_end, "type", "veth", "peer", "name", "eth0", "netns", netns])
        _run(["ip", "-n", self.hub, "link", "set", hub_end, "master", "br0", "up"])
        self._hub_ports.append(hub_end)
        _run(["ip", "-n", netns, "addr", "add", f"{address}/{PREFIX}", "dev", "eth0"])
        _run(["ip", "-n", netns, "link", "set", "eth0", "up"])

    # ---- extra namespaces (a pod behind a node, a laptop on the bridge) ----------------------
    def add_netns(self, suffix: str, *, address: str | None = None) -> str:
        """Namespace `shtb-<id>-<suffix>`, on the bridge at `address` when given; close() deletes it."""
        name = f"shtb-{self.run_id}-{suffix}"
        self._add_netns(name)
        if address is not None:
            self._attach(name, suffix, address)
        self._save_state()
        return name

    def delete_netns(self, name: str) -> None:
        """Delete a namespace of `add_netns` (its veth pairs go with it)."""
        _run(["ip", "netns", "delete", name], check=False)
        self._netns.remove(name)
        suffix = name.removeprefix(f"shtb-{self.run_id}-")
        self._hub_ports = [p for p in self._hub_ports if p != f"v-{suffix}"[:15]]
        self._save_state()

    def _save_state(self) -> None:
        """What this run made, for `python -m tests.testbed.nodes --cleanup <dir>` after a crash."""
        members = [*self.nodes.values(), *([self.git] if self.git else [])]
        state = {
            "run_id": self.run_id,
            "owner_pid": os.getpid(),
            "netns": self._netns,
            "mounts": [str(m) for m in self._mounts],
            "pids": [m.process.pid for m in members if m.process],
            "cgroups": [str(c) for m in members for c in m.cgroups],
        }
        (self.workdir / "state.json").write_text(json.dumps(state, indent=1))

    # ---- nodes ----------------------------------------------------------------------------
    def add_nodes(self, names: Iterable[str], *, stage_k3s: bool = True) -> list[Node]:
        """Boot nodes in parallel and wait until each one's sshd answers."""
        created = [self._prepare_node(name, stage_k3s=stage_k3s) for name in names]
        for node in created:
            self._boot(node)
        self._save_state()
        with ThreadPoolExecutor(max_workers=max(1, len(created))) as pool:
            list(pool.map(self._wait_ssh, created))
        return created

    def add_git_server(self) -> Node:
        """A node serving a bare repository at /srv/git/cluster.git over SSH (user root)."""
        node = self._prepare_node("git", stage_k3s=False, address=GIT_ADDRESS, register=False)
        self.git = node
        self._boot(node)
        self._save_state()
        self._wait_ssh(node)
        self.ssh(
            node,
            f"set -e; git init -q --bare --initial-branch=main {GIT_REPO}; "
            "tmp=$(mktemp -d); cd $tmp; git init -q --initial-branch=main; "
            "git -c user.name=testbed -c user.email=testbed@example.invalid commit -q --allow-empty "
            f"-m 'initial commit'; git push -q {GIT_REPO} main; rm -rf $tmp",
        )
        return node

    def _prepare_node(self, name: str, *, stage_k3s: bool, address: str | None = None, register: bool = True) -> Node:
        assert self.rootfs is not None
        index = len(self.nodes) + 1
        if address is None:
            index = max((n.index for n in self.nodes.values()), default=0) + 1
            address = f"{SUBNET}.{10 + index}"
        netns = f"shtb-{self.run_id}-{name}"
        self._add_netns(netns)
        self._attach(netns, name, address)
        base = self.workdir / name
        merged = base / "root"
        merged.mkdir(parents=True)
        (base / "upper").mkdir()
        (base / "work").mkdir()
        mode = "overlay"
        mounted = _run(
            [
                "mount",
                "-t",
                "overlay",
                f"shtb-{self.run_id}-{name}",
                "-o",
                f"lowerdir={self.rootfs},upperdir={base / 'upper'},workdir={base / 'work'}",
                str(merged),
            ],
            check=False,
        )
        if mounted.returncode == 0:
            self._mounts.append(merged)
        else:
            mode = "copy"
            _run(["cp", "-a", "--reflink=auto", f"{self.rootfs}/.", str(merged)])
        host_private, host_public = _keypair()
        self._write(merged / "etc/hostname", f"{name}\n")
        self._write(merged / "etc/hosts", f"127.0.0.1 localhost\n127.0.1.1 {name}\n")
        self._write(merged / "etc/ssh/ssh_host_ed25519_key", host_private, 0o600)
        self._write(merged / "etc/ssh/ssh_host_ed25519_key.pub", host_public + f" root@{name}\n", 0o644)
        self._write(merged / "etc/ssh/sshd_config.d/testbed-hostkey.conf", "HostKey /etc/ssh/ssh_host_ed25519_key\n")
        (merged / "root/.ssh").mkdir(mode=0o700, exist_ok=True)
        self._write(merged / "root/.ssh/authorized_keys", self.client_public_key + " space-harbor-testbed\n", 0o600)
        if stage_k3s:
            # The air-gap path of the product (`k3s.airgap: true`): the binary, pre-placed. The
            # installer is the program's to ship (its test pin is the stand-in installer).
            standin = STANDIN_K3S.read_text().replace(
                'STANDIN_VERSION="${K3S_STANDIN_VERSION:-v1.31.4+k3s1}"',
                f'STANDIN_VERSION="${{K3S_STANDIN_VERSION:-{self.k3s_version}}}"',
            )
            self._write(merged / AIRGAP_BINARY.lstrip("/"), standin, 0o755)
        if stage_k3s or self.control_plane is not None:
            # Where the stand-in looks for the real control plane, also when the stack ships the
            # k3s binary itself (an air-gapped install under the real engine).
            self._write(merged / CONTROL_PLANE_SCRIPT.lstrip("/"), STANDIN_CONTROL_PLANE.read_text(), 0o755)
        if stage_k3s:
            for path, variable in STANDIN_TIMING_FILES.items():
                timing = f"{variable}={round(self.k3s_seconds[variable], 3):g}"
                self._write(merged / path.lstrip("/"), f"# testbed: timing of the k3s STAND-IN\n{timing}\n")
        node = Node(
            name=name,
            index=index,
            address=address,
            netns=netns,
            rootdir=merged,
            host_key=host_public,
            machine_id=uuid.uuid4().hex,
            mode=mode,
        )
        with self.known_hosts.open("a") as handle:
            handle.write(node.known_hosts_line + "\n")
        if register:
            self.nodes[name] = node
        return node

    @staticmethod
    def _write(path: Path, text: str, mode: int = 0o644) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.is_symlink():
            path.unlink()
        path.write_text(text)
        path.chmod(mode)

    def _node_cgroups(self, node: Node) -> list[Path]:
        """A cgroup of the node's own in every v1 hierarchy, beneath this process's.

        With --keep-unit and no systemd on the host, nspawn roots the container's cgroup tree at
        its own cgroup. Containers sharing one would share `/system.slice/<unit>` directories:
        the same unit starting on two nodes at once then fails with 219/CGROUP when the other
        node's systemd removes the directory. On a hybrid host the cgroup2 hierarchy gets a
        per-node cgroup too, for the same reason (seen as `Job for space-harbor-firewall.service
        failed` on one of several nodes starting it at once). On a pure cgroup v2 (or systemd)
        host nothing is done.
        """
        made = []
        unified = _cgroup_hybrid_unified()
        if unified is not None:
            path = unified / f"shtb-{self.run_id}-{node.name}"
            try:
                path.mkdir(exist_ok=True)
                made.append(path)
            except OSError:
                pass
        for parent, controllers in _cgroup_v1_hierarchies():
            path = parent / f"shtb-{self.run_id}-{node.name}"
            try:
                path.mkdir(exist_ok=True)
                if "cpuset" in controllers:
                    for knob in ("cpuset.cpus", "cpuset.mems"):
                        (path / knob).write_text((parent / knob).read_text())
            except OSError:
                continue
            made.append(path)
        return made

    @staticmethod
    def _remove_cgroups(paths: list[Path], within: float = 5.0) -> None:
        """Remove the node's cgroups, deepest first. A cgroup whose last process has just exited can
        refuse (EBUSY) for a moment, so try again for up to `within` seconds before leaving it."""
        deadline = time.monotonic() + within
        while True:
            for path in paths:
                if not path.is_dir():
                    continue
                for sub, _dirs, _files in sorted(os.walk(path, topdown=False), key=lambda w: -len(w[0])):
                    with contextlib.suppress(OSError):
                        os.rmdir(sub)
            if not any(path.is_dir() for path in paths) or time.monotonic() > deadline:
                return
            time.sleep(0.2)

    def _boot(self, node: Node) -> None:
        node.cgroups = self._node_cgroups(node)
        log = (self.workdir / f"{node.name}.console.log").open("wb")
        node.boot_seconds = time.monotonic()
        # A shell joins the node's cgroups, then becomes systemd-nspawn (same pid).
        join = 'IFS=:; for d in $SHTB_CGROUPS; do echo $$ > "$d/cgroup.procs" || exit 1; done; exec "$@"'
        node.process = subprocess.Popen(
            [
                "sh",
                "-c",
                join,
                "sh",
                "systemd-nspawn",
                "--boot",
                "--register=no",
                "--keep-unit",
                "--quiet",
                f"--directory={node.rootdir}",
                f"--machine=shtb-{self.run_id}-{node.name}",
                f"--hostname={node.name}",
                f"--uuid={node.machine_id}",
                f"--network-namespace-path=/run/netns/{node.netns}",
                "--bind=/dev/net/tun",
                *(f"--bind-ro={path}:{CONTROL_PLANE_BIN}/{name}" for name, path in (self.control_plane or {}).items()),
                "--capability=CAP_NET_ADMIN",
                "--resolv-conf=off",
                "--timezone=off",
                "--link-journal=no",
                "--console=read-only",
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, "SHTB_CGROUPS": ":".join(str(p) for p in node.cgroups)},
        )
        log.close()

    def _wait_ssh(self, node: Node, timeout: float = 90) -> None:
        started = node.boot_seconds
        deadline = time.monotonic() + timeout
        while True:
            if node.process is not None and node.process.poll() is not None:
                console = (self.workdir / f"{node.name}.console.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"node {node.name}: systemd-nspawn exited ({node.process.returncode}):\n{console}")
            result = self.ssh(node, "true", check=False, timeout=10, connect_timeout=2)
            if result.returncode == 0:
                # sshd answers before boot finishes; let systemd settle so units behave as on a real host.
                state = self.ssh(node, "systemctl is-system-running --wait", check=False, timeout=timeout).stdout
                if state.strip() not in ("running", "degraded"):
                    raise RuntimeError(f"node {node.name}: systemd is {state.strip()!r} after boot")
                node.boot_seconds = time.monotonic() - started
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"node {node.name}: sshd did not answer within {timeout}s: {result.stderr}")
            time.sleep(0.3)

    def remove_node(self, name: str) -> None:
        """Stop one node and delete its namespace (and so its veth)."""
        node = self.nodes.pop(name)
        self._stop_node(node)
        if node.rootdir in self._mounts:
            _run(["umount", str(node.rootdir)], check=False)
            self._mounts.remove(node.rootdir)
        _run(["ip", "netns", "delete", node.netns], check=False)
        self._netns.remove(node.netns)
        self._hub_ports = [p for p in self._hub_ports if p != f"v-{name}"[:15]]
        self._save_state()

    # ---- faults ---------------------------------------------------------------------------
    def container_pid(self, node: Node | str) -> int:
        """PID (in this namespace) of the node's init: the one child of its systemd-nspawn."""
        node = self._node(node)
        assert node.process is not None and node.process.poll() is None, f"{node.name} is not running"
        pid = node.process.pid
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        if len(children) != 1:
            raise RuntimeError(f"{node.name}: systemd-nspawn {pid} has children {children}, expected one")
        return int(children[0])

    def node_exec(
        self, node: Node | str, argv: list[str], *, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """Run `argv` inside the node's namespaces with nsenter: no SSH, so it works without sshd."""
        pid = self.container_pid(node)
        return _run(["nsenter", "-t", str(pid), "-m", "-u", "-i", "-n", "-p", *argv], check=check, timeout=timeout)

    def stop_sshd(self, node: Node | str) -> None:
        """Stop the node's sshd: a dial then gets `Connection refused`, as from a rebooting server."""
        node = self._node(node)
        self.node_exec(node, ["systemctl", "stop", "ssh.socket", "ssh.service"])
        if self.tcp_open_from_ctl(node.address, 22):
            raise RuntimeError(f"{node.name}: port 22 still answers after stopping sshd")

    def start_sshd(self, node: Node | str, timeout: float = 30) -> None:
        node = self._node(node)
        self.node_exec(node, ["systemctl", "start", "ssh.service"])
        deadline = time.monotonic() + timeout
        while self.ssh(node, "true", check=False, timeout=10, connect_timeout=2).returncode != 0:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{node.name}: sshd did not answer within {timeout}s of its start")
            time.sleep(0.2)

    @contextlib.contextmanager
    def packet_loss(self, percent: int, *, require_netem: bool = False) -> Iterator[PacketLoss]:
        """Drop `percent`% of the frames the bridge delivers to each member (controller, nodes, git).

        Every frame between two members leaves the bridge through exactly one hub port, so each
        one-way packet is lost with that probability. The preferred tool is `tc qdisc ... netem
        loss` on every hub port. A kernel without sch_netem gets the same random drop from an
        nftables `bridge` table in the hub namespace (`numgen random mod 100 < percent`), unless
        `require_netem`: then it raises with the reason. Everything is removed on exit; deleting
        the hub namespace (close) removes it too.
        """
        if not 0 < percent < 100:
            raise ValueError(f"loss must be 1-99%, not {percent}")
        added: list[str] = []
        netem_error = ""
        for port in self._hub_ports:
            result = _run(
                ["tc", "-n", self.hub, "qdisc", "add", "dev", port, "root", "netem", "loss", f"{percent}%"], check=False
            )
            if result.returncode != 0:
                netem_error = result.stderr.strip() or f"tc exited {result.returncode}"
                break
            added.append(port)
        if netem_error:
            for port in added:
                _run(["tc", "-n", self.hub, "qdisc", "del", "dev", port, "root"], check=False)
            added = []
            if require_netem:
                raise RuntimeError(f"tc netem is not usable on this kernel ({os.uname().release}): {netem_error}")
            ruleset = (
                f"table bridge {LOSS_TABLE} {{\n"
                "  chain forward {\n"
                "    type filter hook forward priority 0; policy accept;\n"
                f"    numgen random mod 100 < {percent} counter drop\n"
                "  }\n"
                "}\n"
            )
            _run(["ip", "netns", "exec", self.hub, "nft", "-f", "-"], input=ruleset)

            def dropped() -> int:
                out = _run(["ip", "netns", "exec", self.hub, "nft", "list", "table", "bridge", LOSS_TABLE]).stdout
                return sum(int(n) for n in re.findall(r"counter packets (\d+)", out))

            loss = PacketLoss(percent, "nftables", netem_error, dropped)
        else:

            def dropped() -> int:
                out = _run(["tc", "-s", "-n", self.hub, "qdisc", "show"]).stdout
                return sum(int(n) for n in re.findall(r"dropped (\d+)", out))

            loss = PacketLoss(percent, "netem", "", dropped)
        try:
            yield loss
        finally:
            for port in added:
                _run(["tc", "-n", self.hub, "qdisc", "del", "dev", port, "root"], check=False)
            if loss.mechanism == "nftables":
                _run(["ip", "netns", "exec", self.hub, "nft", "delete", "table", "bridge", LOSS_TABLE], check=False)

    def _node(self, node: Node | str) -> Node:
        if isinstance(node, Node):
            return node
        return self.git if (node == "git" and self.git) else self.nodes[node]

    # ---- bastions -------------------------------------------------------------------------
    def make_bastion(self, node: Node | str) -> str:
        """Turn a booted node into a bastion (jump host) with a login key of its own; that key's text.

        The bastion then accepts only its own key, not the testbed's client key, and the nodes
        do not accept its key: a test that mixes the two up cannot pass.
        """
        node = self._node(node)
        private, public = _keypair()
        key_file = self.workdir / f"bastion_{node.name}_ed25519"
        key_file.write_text(private)
        key_file.chmod(0o600)
        self.ssh(node, "cat > /root/.ssh/authorized_keys", input=public + " space-harbor-testbed-bastion\n")
        self.bastion_keys[node.name] = (key_file, private)
        return private

    def fence_ssh(self, node: Node | str, bastion: Node | str) -> None:
        """Let `node`'s sshd answer only `bastion`: an nftables table in the node's own namespace drops
        every other source (the controller included) on port 22. `tb.ssh` then goes through the bastion.
        """
        node, bastion = self._node(node), self._node(bastion)
        ruleset = (
            f"table inet {FENCE_TABLE} {{\n"
            "  chain input {\n"
            "    type filter hook input priority filter - 50; policy accept;\n"
            f"    tcp dport 22 ip saddr != {bastion.address} drop\n"
            "  }\n"
            "}\n"
        )
        self.unfence_ssh(node)
        _run(["ip", "netns", "exec", node.netns, "nft", "-f", "-"], input=ruleset)
        self.jump_hosts[node.name] = bastion

    def unfence_ssh(self, node: Node | str) -> None:
        """Remove what `fence_ssh` added (nothing else of the node's ruleset)."""
        node = self._node(node)
        tables = _run(["ip", "netns", "exec", node.netns, "nft", "list", "tables"]).stdout.split("\n")
        if f"table inet {FENCE_TABLE}" in tables:
            _run(["ip", "netns", "exec", node.netns, "nft", "delete", "table", "inet", FENCE_TABLE])
        self.jump_hosts.pop(node.name, None)

    # ---- talking to nodes -------------------------------------------------------------------
    def ssh_argv(
        self,
        address: str,
        *,
        user: str = "root",
        port: int = 22,
        connect_timeout: int = 10,
        via: Node | None = None,
        key_file: Path | None = None,
    ) -> list[str]:
        """ssh from the controller to `address`; `via` a bastion node (its own key), `key_file` instead
        of the client key (a bastion's)."""
        options = [
            "-o", f"UserKnownHostsFile={self.known_hosts}", "-o", "StrictHostKeyChecking=yes",
            "-o", "BatchMode=yes", "-o", f"ConnectTimeout={connect_timeout}", "-o", "LogLevel=ERROR",
        ]  # fmt: skip
        jump: list[str] = []
        if via is not None:
            bastion_key, _ = self.bastion_keys.get(via.name, (self.key_file, ""))
            proxy = ["ssh", "-i", str(bastion_key), *options, "-W", "%h:%p", f"root@{via.address}"]
            jump = ["-o", f"ProxyCommand={shlex.join(proxy)}"]
        return [
            "ip", "netns", "exec", self.ctl,
            "ssh", "-i", str(key_file or self.key_file), "-p", str(port), *options, *jump,
            f"{user}@{address}",
        ]  # fmt: skip

    def ssh(
        self,
        node: Node | str,
        command: str,
        *,
        input: str | None = None,
        check: bool = True,
        timeout: float = 300,
        connect_timeout: int = 10,
    ) -> SshResult:
        """Run `command` on a node as root over SSH from the controller namespace."""
        if isinstance(node, str):
            node = self.git if (node == "git" and self.git) else self.nodes[node]
        started = time.monotonic()
        own_key = self.bastion_keys.get(node.name, (None, ""))[0]
        argv = self.ssh_argv(
            node.address, connect_timeout=connect_timeout, via=self.jump_hosts.get(node.name), key_file=own_key
        )
        result = subprocess.run(
            [*argv, command],
            input=input,
            text=True,
            capture_output=True,
            timeout=timeout,
            stdin=None if input is not None else subprocess.DEVNULL,
        )
        out = SshResult(result.returncode, result.stdout, result.stderr, time.monotonic() - started)
        if check and result.returncode != 0:
            raise RuntimeError(f"{node.name}: `{command}` failed ({result.returncode}): {result.stderr.strip()}")
        return out

    def ctl_exec(
        self, argv: list[str], *, check: bool = False, timeout: float = 30
    ) -> subprocess.CompletedProcess[str]:
        """Run a command on the controller host (outside the mesh, on the bridge)."""
        return _run(["ip", "netns", "exec", self.ctl, *argv], check=check, timeout=timeout)

    def tcp_open_from_ctl(self, address: str, port: int, timeout: float = 2.0) -> bool:
        """Whether a TCP connect from the controller (outside the mesh) to address:port succeeds."""
        import socket

        def probe() -> bool:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                sock.settimeout(timeout)
                try:
                    sock.connect((address, port))
                except OSError:
                    return False
                return True

        return call_in_netns(self.ctl, probe)

    def file_hashes(self, node: Node | str, paths: Iterable[str]) -> dict[str, str]:
        """sha256 of files on a node, read through SSH; missing files map to ''."""
        listing = " ".join(f"'{p}'" for p in paths)
        out = self.ssh(
            node, f'for f in {listing}; do if [ -f "$f" ]; then sha256sum "$f"; else echo "- $f"; fi; done'
        ).stdout
        hashes = {}
        for line in out.splitlines():
            digest, path = line.split(None, 1)
            hashes[path] = "" if digest == "-" else digest
        return hashes

    # ---- stack config ---------------------------------------------------------------------
    def stack_nodes(self, roles: dict[str, str] | None = None, *, mesh_base: str = "10.160.0.") -> list[dict]:
        """`nodes` entries of the stack config for the booted nodes, host keys pinned."""
        roles = roles or {}
        entries = []
        for i, node in enumerate(sorted(self.nodes.values(), key=lambda n: n.index)):
            role = roles.get(node.name, "server" if i == 0 else "agent")
            entries.append(
                {
                    "name": node.name,
                    "role": role,
                    "host": node.address,
                    "meshAddress": f"{mesh_base}{node.index}",
                    "sshHostKey": node.host_key,
                }
            )
        return entries

    def git_known_hosts(self) -> str:
        assert self.git is not None
        return self.git.known_hosts_line

    def git_url(self) -> str:
        assert self.git is not None
        return f"root@{self.git.address}:{GIT_REPO}"


def cleanup_state_dir(workdir: Path) -> None:
    """Undo a crashed run from its state.json: only the pids, mounts and namespaces it recorded."""
    state = json.loads((workdir / "state.json").read_text())
    for pid in state["pids"]:
        with contextlib.suppress(ProcessLookupError):
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            if b"systemd-nspawn" in cmdline and f"shtb-{state['run_id']}-".encode() in cmdline:
                os.kill(pid, signal.SIGKILL)
    time.sleep(1)
    for mount in reversed(state["mounts"]):
        _run(["umount", "-l", mount], check=False)
    Testbed._remove_cgroups([Path(c) for c in state.get("cgroups", [])])
    for netns in reversed(state["netns"]):
        _run(["ip", "netns", "delete", netns], check=False)
    shutil.rmtree(workdir, ignore_errors=True)


def reap_stale_runs() -> None:
    """Clean up runs whose test process died without teardown (killed by a CI timeout, say).

    Only runs under RUN_ROOT with a state.json whose recording process is gone are touched, and
    only what that state.json recorded.
    """
    if not RUN_ROOT.is_dir():
        return
    for state_file in RUN_ROOT.glob("*/state.json"):
        try:
            owner = int(json.loads(state_file.read_text()).get("owner_pid", 0))
        except (OSError, ValueError):
            continue
        if owner and not Path(f"/proc/{owner}").exists():
            with contextlib.suppress(Exception):
                cleanup_state_dir(state_file.parent)


if __name__ == "__main__":
    import sys

    if len(sys.argv) == 3 and sys.argv[1] == "--cleanup":
        cleanup_state_dir(Path(sys.argv[2]))
    else:
        print("usage: python -m tests.testbed.nodes --cleanup /var/tmp/space-harbor-testbed/<run-id>")
