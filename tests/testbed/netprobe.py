"""Packets for the firewall tests: listeners and probes in the testbed's namespaces, stand-ins for
what k3s would wire on a node (a pod behind `cni0`, kube-proxy's DNAT table), an operator laptop.

Listeners and probes are sockets of this test process, opened in a namespace by a thread that
joined it (`call_in_netns`): a socket stays in the namespace it was made in, so a listener "on
n2" is subject to n2's firewall exactly as a process on n2 would be, and nothing is left running
on a node. A node's namespace is the one its systemd-nspawn container uses.

Everything here lives in the testbed's own namespaces and is removed by the context managers
(and, for namespaces, by `Testbed.close`).
"""

from __future__ import annotations

import contextlib
import ctypes
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from tests.testbed.nodes import Node, Testbed, call_in_netns

PROBE_TIMEOUT_S = 2.0
CLUSTER_CIDR = "10.42.0.0/16"
SERVICE_CIDR = "10.43.0.0/16"
KUBE_PROXY_TABLE = "shtb_kube_proxy_standin"
# Every address of the namespace the socket is made in: only the testbed's own namespaces.
ANY_ADDRESS = "0.0.0.0"  # noqa: S104


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=30)


def _in_netns(netns: str, argv: list[str], *, input: str | None = None) -> str:
    result = subprocess.run(
        ["ip", "netns", "exec", netns, *argv], input=input, capture_output=True, text=True, timeout=30
    )
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} in {netns} failed: {result.stderr.strip()}")
    return result.stdout


# --- listeners ---------------------------------------------------------------------------------


@dataclass
class Listener:
    """A TCP listener that answers every connection with its banner, or a UDP socket that records."""

    sock: socket.socket
    banner: bytes
    seen: list[tuple[str, bytes]] = field(default_factory=list)  # (source address, UDP payload)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()


def _serve_tcp(listener: Listener) -> None:
    while True:
        try:
            conn, peer = listener.sock.accept()
        except OSError:
            return
        listener.seen.append((peer[0], b""))
        with conn, contextlib.suppress(OSError):
            conn.sendall(listener.banner)


def _serve_udp(listener: Listener) -> None:
    while True:
        try:
            payload, peer = listener.sock.recvfrom(2048)
        except OSError:
            return
        if peer is None:  # shut down by close()
            return
        listener.seen.append((peer[0], payload))


@contextlib.contextmanager
def listening(
    netns: str, tcp: tuple[int, ...] | list[int] = (), udp: tuple[int, ...] | list[int] = (), *, banner: str = ""
) -> Iterator[dict[str, Listener]]:
    """Listeners on every address of `netns`: `{"tcp/6443": Listener, "udp/8472": ...}`."""

    def open_all() -> dict[str, Listener]:
        made: dict[str, Listener] = {}
        try:
            for port in tcp:
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind((ANY_ADDRESS, port))
                sock.listen(64)
                made[f"tcp/{port}"] = Listener(sock, (banner or f"{netns}:{port}").encode())
            for port in udp:
                sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                sock.bind((ANY_ADDRESS, port))
                made[f"udp/{port}"] = Listener(sock, b"")
        except BaseException:
            for listener in made.values():
                listener.close()
            raise
        return made

    listeners = call_in_netns(netns, open_all)
    threads = [
        threading.Thread(target=_serve_tcp if key.startswith("tcp/") else _serve_udp, args=(lst,), daemon=True)
        for key, lst in listeners.items()
    ]
    for thread in threads:
        thread.start()
    try:
        yield listeners
    finally:
        for listener in listeners.values():
            listener.close()
        for thread in threads:
            thread.join(timeout=5)


# --- probes ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Probe:
    """A TCP connect from namespace `netns` (from `source` when given) to target:port."""

    netns: str
    target: str
    port: int
    source: str | None = None
    label: str = ""

    @property
    def key(self) -> str:
        return self.label or f"{self.netns.rsplit('-', 1)[-1]}({self.source or '-'})->{self.target}:{self.port}"


def _connect(probe: Probe) -> str:
    """The banner the far end sent, or "blocked" when the connection did not open in time."""

    def run() -> str:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.settimeout(PROBE_TIMEOUT_S)
            if probe.source:
                sock.bind((probe.source, 0))
            try:
                sock.connect((probe.target, probe.port))
            except OSError:
                return "blocked"
            try:
                return sock.recv(256).decode(errors="replace") or "open"
            except OSError:
                return "open"

    return call_in_netns(probe.netns, run)


def probe_all(probes: list[Probe]) -> dict[str, str]:
    """Every probe at once (a blocked one waits out its timeout): key -> banner, "open" or "blocked"."""
    with ThreadPoolExecutor(max_workers=max(1, len(probes))) as pool:
        return dict(zip((p.key for p in probes), pool.map(_connect, probes), strict=True))


def send_udp(netns: str, target: str, port: int, payload: bytes, *, source: str | None = None) -> None:
    def run() -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            if source:
                sock.bind((source, 0))
            sock.sendto(payload, (target, port))

    call_in_netns(netns, run)


def received(listener: Listener, payload: bytes, *, within: float = 1.5) -> bool:
    """Whether `payload` arrived at a UDP listener within `within` seconds."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if any(seen == payload for _, seen in listener.seen):
            return True
        time.sleep(0.05)
    return False


# --- what k3s would wire on a node: pods behind cni0, forwarding, kube-proxy's DNAT ------------


@dataclass
class Pod:
    node: Node
    netns: str
    address: str
    gateway: str
    subnet: str


@contextlib.contextmanager
def pod_on(tb: Testbed, node: Node, subnet_index: int) -> Iterator[Pod]:
    """A namespace behind the node's `cni0` bridge at 10.42.<i>.10, as flannel's CNI would wire a pod.

    The node forwards while the pod exists (k3s turns forwarding on); its setting is restored after.
    """
    subnet = f"10.42.{subnet_index}.0/24"
    gateway, address = f"10.42.{subnet_index}.1", f"10.42.{subnet_index}.10"
    netns = tb.add_netns(f"pod-{node.name}")
    veth = f"vpod{subnet_index}"
    forwarding = _in_netns(node.netns, ["sysctl", "-n", "net.ipv4.ip_forward"]).strip()
    try:
        _ip("-n", node.netns, "link", "add", "cni0", "type", "bridge")
        _ip("-n", node.netns, "addr", "add", f"{gateway}/24", "dev", "cni0")
        _ip("-n", node.netns, "link", "set", "cni0", "up")
        _ip("-n", netns, "link", "add", "eth0", "type", "veth", "peer", "name", veth, "netns", node.netns)
        _ip("-n", node.netns, "link", "set", veth, "master", "cni0", "up")
        _ip("-n", netns, "addr", "add", f"{address}/24", "dev", "eth0")
        _ip("-n", netns, "link", "set", "eth0", "up")
        _ip("-n", netns, "route", "add", "default", "via", gateway)
        _in_netns(node.netns, ["sysctl", "-qw", "net.ipv4.ip_forward=1"])
        yield Pod(node, netns, address, gateway, subnet)
    finally:
        _in_netns(node.netns, ["sysctl", "-qw", f"net.ipv4.ip_forward={forwarding}"])
        # The veth pair first, synchronously: a deleted namespace takes its links down only later
        # (in the kernel's cleanup work), and the next pod on this node reuses the name.
        for link in (veth, "cni0"):
            subprocess.run(["ip", "-n", node.netns, "link", "del", link], capture_output=True, timeout=30)
        tb.delete_netns(netns)


@contextlib.contextmanager
def kube_proxy_standin(node: Node, rules: list[str]) -> Iterator[None]:
    """A nat table of its own on the node, as kube-proxy owns one: `rules` in its dstnat chain.

    Pod traffic leaving the pod network is masqueraded, as flannel does (ipMasq), so a pod reaches
    other nodes with its node's address.
    """
    body = "\n".join(f"        {rule}" for rule in rules)
    ruleset = (
        f"table ip {KUBE_PROXY_TABLE} {{\n"
        "    chain prerouting {\n"
        "        type nat hook prerouting priority dstnat; policy accept;\n"
        f"{body}\n"
        "    }\n"
        "    chain postrouting {\n"
        "        type nat hook postrouting priority srcnat; policy accept;\n"
        f'        ip saddr {CLUSTER_CIDR} ip daddr != {CLUSTER_CIDR} oifname != "cni0" masquerade\n'
        "    }\n"
        "}\n"
    )
    _in_netns(node.netns, ["nft", "-f", "-"], input=ruleset)
    try:
        yield
    finally:
        subprocess.run(
            ["ip", "netns", "exec", node.netns, "nft", "delete", "table", "ip", KUBE_PROXY_TABLE],
            capture_output=True,
            timeout=30,
        )


@contextlib.contextmanager
def routes(netns: str, entries: list[tuple[str, str]]) -> Iterator[None]:
    """`ip route add <prefix> via <gateway>` in `netns` for each entry, removed afterwards."""
    added = []
    try:
        for prefix, gateway in entries:
            _ip("-n", netns, "route", "add", prefix, "via", gateway)
            added.append(prefix)
        yield
    finally:
        for prefix in added:
            subprocess.run(["ip", "-n", netns, "route", "del", prefix], capture_output=True, timeout=30)


@contextlib.contextmanager
def extra_address(netns: str, address: str, device: str = "eth0") -> Iterator[None]:
    """A /32 on `device` in `netns` (a spoofed source to send from), removed afterwards."""
    _ip("-n", netns, "addr", "add", f"{address}/32", "dev", device)
    try:
        yield
    finally:
        subprocess.run(["ip", "-n", netns, "addr", "del", f"{address}/32", "dev", device], capture_output=True)


def nft_counter(node: Node, chain: str, comment: str) -> int:
    """Packets counted by the rule of our table's `chain` whose comment is `comment`."""
    listing = _in_netns(node.netns, ["nft", "list", "chain", "inet", "space_harbor", chain])
    for line in listing.splitlines():
        if f'comment "{comment}"' in line and "counter packets" in line:
            return int(line.split("counter packets", 1)[1].split()[0])
    raise AssertionError(f"no counted rule {comment!r} in {chain}:\n{listing}")


# --- an operator's laptop ----------------------------------------------------------------------

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL when this test process dies, so no laptop outlives it."""
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


@dataclass
class Laptop:
    netns: str
    address: str
    interface: str


@contextlib.contextmanager
def operator_laptop(tb: Testbed, wg_quick_config: str, address: str) -> Iterator[Laptop]:
    """A namespace on the bridge that brings the operator's wg-quick file up, as `wg-quick up` does.

    wg-quick falls back to wireguard-go without the kernel module. Both run in a PID and mount
    namespace of their own (a private /run for wireguard-go's socket); killing that namespace's
    first process ends them all, and so does this test process dying.
    """
    interface = "harbor"  # wg-quick names the interface after the file
    netns = tb.add_netns("laptop", address=address)
    workdir = tb.workdir / "laptop"
    workdir.mkdir(mode=0o700, exist_ok=True)
    conf = workdir / f"{interface}.conf"
    conf.write_text(wg_quick_config)
    conf.chmod(0o600)
    log = workdir / "wg-quick.log"
    script = (
        "set -e; mount -t tmpfs tmpfs /run; "
        'WG_QUICK_USERSPACE_IMPLEMENTATION=wireguard-go wg-quick up "$1" >>"$2" 2>&1; '
        "echo up; exec sleep infinity"
    )
    # Started by this (main) thread: the death signal follows the thread that forked.
    process = subprocess.Popen(
        ["ip", "netns", "exec", netns, "unshare", "--mount", "--pid", "--fork", "--kill-child",
         "--propagation", "private", "bash", "-c", script, "laptop", str(conf), str(log)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, preexec_fn=_die_with_parent, text=True,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        line = _readline(process, timeout=30)
        if line.strip() != "up":
            raise RuntimeError(f"wg-quick up failed on the laptop: {Path(log).read_text(errors='replace')}")
        yield Laptop(netns, address, interface)
    finally:
        process.kill()  # unshare --kill-child takes the namespace's processes with it
        process.wait(timeout=30)
        tb.delete_netns(netns)
        with contextlib.suppress(OSError):
            conf.unlink()


def _readline(process: subprocess.Popen[str], timeout: float) -> str:
    box: list[str] = []
    reader = threading.Thread(target=lambda: box.append(process.stdout.readline() if process.stdout else ""))
    reader.daemon = True
    reader.start()
    reader.join(timeout)
    return box[0] if box else ""


def fetch_api(port: int) -> bytes:
    """GET / from the stand-in API through a tunnel listening on 127.0.0.1:`port` (controller side)."""
    with socket.create_connection(("127.0.0.1", port), timeout=20) as client:
        client.sendall(b"GET / HTTP/1.0\r\nHost: api\r\n\r\n")
        received = b""
        try:
            while chunk := client.recv(4096):
                received += chunk
        except ConnectionResetError:
            pass  # the tunnel closed on us: whatever arrived is the answer
        return received
