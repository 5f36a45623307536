"""The SSH tunnel that lets the Kubernetes provider (and kubectl) reach the private API server.

The API listens only on the servers themselves and the mesh. With `k3s.apiAccess: ssh-tunnel` a
tunnel listens on 127.0.0.1:<port> (never any other address) and forwards each connection through
the first server's SSH to its 127.0.0.1:6443. Each stack has a port of its own, the same on every
run (components/access.py), so the provider's kubeconfig never changes between runs and several
stacks' tunnels run side by side. Nothing dials out until a client connects.
When the first server is behind a bastion, the tunnel dials the bastion, opens a channel from
there to the server's sshd and speaks SSH to the server through it, as pulumi-command's `proxy`
does: each hop's host key is checked against its own pin, each hop gets its own key.

The tunnel is a process of its own, not a thread of the program: the engine runs deletes after
the program's process has exited, and `pulumi refresh` and `pulumi destroy` do not run the
program at all, so a tunnel inside it would be gone exactly when a delete needs the API. `pulumi
up` starts it (preview does not: preview reaches nothing it does not need); `scripts/kubeconfig`
starts the same process for kubectl, refresh and destroy.

It holds the stack's SSH key, so it is fenced in: its parameters, the key included, arrive on its
stdin, never on a command line; its environment is an allow-list (the program's own holds every
decrypted stack secret in PULUMI_CONFIG); it is not dumpable, so no other process of the user
reads its memory or environment through /proc; it serves only connections of its own user; it
exits after `IDLE_SECONDS` without a connection and after `LIFETIME_SECONDS` in any case.
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import errno
import fcntl
import hashlib
import io
import json
import os
import select
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import paramiko

REMOTE_API = ("127.0.0.1", 6443)
LISTEN_ADDRESS = "127.0.0.1"
# Long enough for the deletes and the refresh that follow a program, short enough that a
# forgotten tunnel does not hold an SSH session open for the rest of the day.
IDLE_SECONDS = 900
# However busy: an open connection must not keep the key alive for good. A working day.
LIFETIME_SECONDS = 8 * 3600
# A run that finds less than this left of a tunnel's lifetime starts a fresh one rather than
# losing the API half way through.
REUSE_MARGIN_SECONDS = 3600
# A connection that carries no byte either way for this long is closed. Kubernetes clients ping
# an idle HTTP/2 connection every 30 s, so only a connection that nobody uses reaches it.
CONNECTION_IDLE_SECONDS = 300
# The provider and kubectl multiplex over a few connections; more than this is not a client of ours.
MAX_CONNECTIONS = 32
READY_WITHIN_SECONDS = 15
# Another run of the same stack may be starting the tunnel: it holds the lock that long at most.
LOCK_WITHIN_SECONDS = READY_WITHIN_SECONDS + 15
# What the tunnel process may inherit of its starter's environment: enough to run Python and find
# its state. Everything else stays out, PULUMI_CONFIG (the stack's decrypted secrets) and
# PULUMI_CONFIG_PASSPHRASE first.
INHERITED_ENVIRONMENT = ("PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR", "XDG_RUNTIME_DIR")
_PR_SET_DUMPABLE = 4
_KEY_TYPES: tuple[type[paramiko.PKey], ...] = (paramiko.Ed25519Key, paramiko.ECDSAKey, paramiko.RSAKey)
_PROJECT_ROOT = Path(__file__).resolve().parent.parent


class TunnelError(RuntimeError):
    """The tunnel cannot be started or trusted; the message says why and what to do."""


@dataclass(frozen=True)
class SshTarget:
    host: str
    port: int
    user: str
    private_key: str
    host_key: str | None  # "ssh-ed25519 AAAA..." pins the server; None accepts any key (with a warning)
    bastion: SshTarget | None = None  # the jump host the server is dialled through, if any

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SshTarget:
        """The inverse of `dataclasses.asdict`, the form a target travels in on the tunnel's stdin."""
        bastion = data.get("bastion")
        return cls(**{**data, "bastion": cls.from_dict(bastion) if bastion else None})

    def fingerprint(self) -> str:
        """Identifies the target without the key itself: who a running tunnel forwards to."""
        # Stripped: `pulumi config get` (scripts/kubeconfig) ends the key with a newline that the
        # program's copy may lack, and the same key must name the same tunnel.
        key_id = hashlib.sha256(self.private_key.strip().encode()).hexdigest()[:16]
        route = f"{self.user}@{self.host}:{self.port} {self.host_key} {key_id}"
        if self.bastion is not None:
            # Only then: a tunnel to a server without a bastion keeps the fingerprint it always had.
            route += f" via {self.bastion.fingerprint()}"
        return hashlib.sha256(route.encode()).hexdigest()

    def describe(self) -> str:
        """`user@host:port`, with the bastion it goes through: for log lines (no key)."""
        hop = f"{self.user}@{self.host}:{self.port}"
        return hop if self.bastion is None else f"{hop} via {self.bastion.describe()}"


@dataclass(frozen=True)
class Limits:
    """How long the tunnel lives and how much it serves."""

    idle_seconds: float = IDLE_SECONDS
    lifetime_seconds: float = LIFETIME_SECONDS
    connection_idle_seconds: float = CONNECTION_IDLE_SECONDS
    max_connections: int = MAX_CONNECTIONS


def load_private_key(text: str) -> paramiko.PKey:
    for key_type in _KEY_TYPES:
        try:
            return key_type.from_private_key(io.StringIO(text))
        except (paramiko.SSHException, ValueError):
            continue
    raise ValueError("sshPrivateKey: not an Ed25519, ECDSA or RSA private key that paramiko can read")


def _log(message: str) -> None:
    print(f"space-harbor tunnel: {message}", file=sys.stderr, flush=True)


def _proc_net_address(host: str, port: int) -> str:
    """An IPv4 endpoint as /proc/net/tcp prints it: the address as a host-order word, then the port."""
    word = int.from_bytes(socket.inet_aton(host), sys.byteorder)
    return f"{word:08X}:{port:04X}"


def peer_uid(client: socket.socket) -> int | None:
    """The UID that owns the other end of an accepted loopback connection; None if it cannot be told.

    SO_PEERCRED exists for Unix sockets only, and the kubeconfig can only name a TCP address. The
    client's socket is in this machine's TCP table too: its local end is our peer's address and its
    remote end is ours, and the kernel records the UID that created it. A socket already closed
    (a time-wait entry, or one whose process is gone: inode 0) tells nothing and is refused.
    """
    ours = _proc_net_address(*client.getsockname()[:2])
    theirs = _proc_net_address(*client.getpeername()[:2])
    with open("/proc/net/tcp") as table:
        next(table)
        for line in table:
            fields = line.split()
            if fields[1] == theirs and fields[2] == ours:
                return int(fields[7]) if fields[9] != "0" else None
    return None


class ApiTunnel:
    """The forwarder: a loopback listener whose connections go through one SSH transport."""

    def __init__(self, target: SshTarget, local_port: int, limits: Limits = Limits()) -> None:
        self.target = target
        self.local_port = local_port
        self.limits = limits
        self.owner_uid = os.getuid()
        self._transport: paramiko.Transport | None = None
        self._bastion: paramiko.Transport | None = None  # the jump host's, when the server is behind one
        self._connect_lock = threading.Lock()
        self._listener = socket.create_server((LISTEN_ADDRESS, local_port))
        self.active = 0
        self.last_activity = time.monotonic()
        self._activity_lock = threading.Lock()
        threading.Thread(target=self._accept_loop, name="harbor-api-tunnel", daemon=True).start()

    def _ssh(self) -> paramiko.Transport:
        with self._connect_lock:
            if self._transport is None or not self._transport.is_active():
                self.close_transports()
                target = self.target
                if target.bastion is None:
                    self._transport = _open_transport(target, (target.host, target.port), "sshHostKey")
                else:
                    bastion = target.bastion
                    self._bastion = _open_transport(bastion, (bastion.host, bastion.port), "bastion.hostKey")
                    try:
                        # The bastion connects to the server's sshd; SSH to the server runs inside that channel.
                        hop = self._bastion.open_channel("direct-tcpip", (target.host, target.port), ("127.0.0.1", 0))
                        self._transport = _open_transport(target, hop, "sshHostKey")
                    except BaseException:
                        self.close_transports()
                        raise
            return self._transport

    def close_transports(self) -> None:
        for transport in (self._transport, self._bastion):
            if transport is not None:
                transport.close()
        self._transport = self._bastion = None

    def _accept_loop(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            if self._admit(client):
                threading.Thread(target=self._serve, args=(client,), daemon=True).start()
            else:
                client.close()

    def _admit(self, client: socket.socket) -> bool:
        """Only the operator's own processes, and no more of them at once than `max_connections`."""
        try:
            uid = peer_uid(client)
        except OSError:
            uid = None
        if uid != self.owner_uid:
            who = "an unknown uid" if uid is None else f"uid {uid}"
            _log(f"refused a connection of {who}: this tunnel serves uid {self.owner_uid} only")
            return False
        with self._activity_lock:
            if self.active >= self.limits.max_connections:
                _log(f"refused a connection: {self.active} are open already")
                return False
            self.active += 1
            self.last_activity = time.monotonic()
        return True

    def close(self) -> None:
        """Stop listening and drop the SSH connection."""
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        self.close_transports()

    def _release(self) -> None:
        with self._activity_lock:
            self.active -= 1
            self.last_activity = time.monotonic()

    def idle_for(self) -> float:
        """Seconds since the last connection ended; 0 while one is open."""
        with self._activity_lock:
            return 0.0 if self.active else time.monotonic() - self.last_activity

    def _serve(self, client: socket.socket) -> None:
        try:
            try:
                channel = self._ssh().open_channel("direct-tcpip", REMOTE_API, client.getsockname())
            except (OSError, ValueError, paramiko.SSHException) as error:
                _log(f"to {self.target.host}: {error}")
                client.close()
                return
            with contextlib.closing(client), contextlib.closing(channel):
                if not _pump(client, channel, self.limits.connection_idle_seconds):
                    _log(f"closed a connection idle for {self.limits.connection_idle_seconds:.0f}s")
        finally:
            self._release()


def _open_transport(target: SshTarget, sock: tuple[str, int] | paramiko.Channel, pin_key: str) -> paramiko.Transport:
    """An authenticated SSH transport to `target` over `sock`, after its host key matched its pin.

    The host key is checked before the key is offered: a host that is not the pinned one never
    sees the client's public key, let alone a channel.
    """
    transport = paramiko.Transport(sock)
    try:
        transport.start_client(timeout=15)
        _check_host_key(target, transport.get_remote_server_key(), pin_key)
        transport.auth_publickey(target.user, load_private_key(target.private_key))
    except BaseException:
        transport.close()
        raise
    transport.set_keepalive(30)
    return transport


def _check_host_key(target: SshTarget, key: paramiko.PKey, pin_key: str) -> None:
    if target.host_key is None:
        _log(f"{target.host}'s host key is not checked; pin it with {pin_key}")
        return
    kind, _, blob = target.host_key.strip().partition(" ")
    if key.get_name() != kind or key.asbytes() != base64.b64decode(blob.split()[0]):
        raise paramiko.SSHException(f"host key of {target.host} does not match its {pin_key}")


def _pump(client: socket.socket, channel: paramiko.Channel, idle_seconds: float) -> bool:
    """Copy bytes both ways until either side closes (True) or neither sends for `idle_seconds` (False)."""
    while True:
        readable, _, _ = select.select([client, channel], [], [], idle_seconds)
        if not readable:
            return False
        for source, sink in ((client, channel), (channel, client)):
            if source in readable:
                data = source.recv(65536)
                if not data:
                    return True
                sink.sendall(data)


# --- the tunnel process ----------------------------------------------------------------------


def _untrusted_because(path: Path, info: os.stat_result, *, owner_only: bool) -> str | None:
    """Why a directory the tunnel keeps its records in could be changed by someone else, if it could."""
    uid = os.getuid()
    if not stat.S_ISDIR(info.st_mode):
        return "is not a directory (a symlink?)"
    if info.st_uid != uid and (owner_only or info.st_uid != 0):
        return f"belongs to uid {info.st_uid}, not to you (uid {uid})"
    writable_by_others = info.st_mode & 0o022
    if writable_by_others and (owner_only or not info.st_mode & stat.S_ISVTX):
        return f"is writable by others (mode {stat.S_IMODE(info.st_mode):o})"
    return None


def state_dir() -> Path:
    """Where running tunnels say who they are (never the key): private to the user, or refused.

    A directory someone else can write would let them plant a pid record (and have `stop` signal
    a process of their choice) or a symlink where the log goes.
    """
    base = Path(os.environ.get("XDG_RUNTIME_DIR") or str(Path.home() / ".cache"))
    path = base / "space-harbor"
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    for directory, owner_only in ((base, False), (path, True)):
        reason = _untrusted_because(directory, os.lstat(directory), owner_only=owner_only)
        if reason is not None:
            raise TunnelError(
                f"the API tunnel's state directory {directory} {reason}; the tunnel will not keep its "
                f"records there: fix its owner and mode (chmod 700), or set XDG_RUNTIME_DIR to a directory of your own"
            )
    return path


def _state_file(local_port: int) -> Path:
    return state_dir() / f"tunnel-{local_port}.json"


def _log_file(local_port: int) -> Path:
    return state_dir() / f"tunnel-{local_port}.log"


def _write_record(path: Path, record: dict[str, Any]) -> None:
    """Whole or not at all, 0600, never through a symlink: a reader sees the old record or the new one."""
    partial = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(json.dumps(record) + "\n")
    os.replace(partial, path)


def running_tunnel(local_port: int) -> dict[str, Any] | None:
    """What the tunnel process on `local_port` recorded, if it is alive and ours."""
    try:
        record = json.loads(_state_file(local_port).read_text())
        pid = int(record["pid"])
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError, KeyError):
        return None
    if b"components.tunnel" not in cmdline:
        return None  # a pid reused by another process
    return record


def refuse_dumps() -> None:
    """Make this process non-dumpable: /proc/<pid>/environ and mem become root's, and no core is written.

    Yama's ptrace scope does not guard environ (a read needs no attach), so without this any
    process of the same user could read what the tunnel holds.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_DUMPABLE, 0) failed")


def serve(target: SshTarget, local_port: int, stack: str, limits: Limits = Limits()) -> int:
    """Run the tunnel until it is idle or its lifetime ends; say `ready` on stdout once all is in place."""
    try:
        tunnel = ApiTunnel(target, local_port, limits)
    except OSError as error:
        print(f"error {error}", flush=True)
        return 1
    started = time.monotonic()
    state = _state_file(local_port)
    record = {
        "pid": os.getpid(),
        "stack": stack,
        "host": target.host,
        "port": target.port,
        "target": target.fingerprint(),
        "expires": time.time() + limits.lifetime_seconds,
    }
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    # Everything a starter may look at (the record, the log line) is written before `ready`: the
    # starter returns on that word, and its caller may read both at once.
    _write_record(state, record)
    _log(f"127.0.0.1:{local_port} -> {target.describe()} -> 127.0.0.1:6443 (stack {stack})")
    print(f"ready {local_port}", flush=True)
    # Nothing reads our stdout from here on; a write must not kill us with SIGPIPE.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    try:
        while not stopping.wait(1):
            if tunnel.idle_for() >= limits.idle_seconds:
                _log(f"idle for {limits.idle_seconds:.0f}s: closing")
                break
            if time.monotonic() - started >= limits.lifetime_seconds:
                _log(f"open for {limits.lifetime_seconds:.0f}s, its lifetime: closing")
                break
    finally:
        tunnel.close()
        with contextlib.suppress(OSError, ValueError):
            if json.loads(state.read_text()).get("pid") == os.getpid():
                state.unlink()
    return 0


def tunnel_environment() -> dict[str, str]:
    """The tunnel process's whole environment: the allow-list, and where to import from."""
    kept = {name: os.environ[name] for name in INHERITED_ENVIRONMENT if name in os.environ}
    # The starter's own import path too: where its packages come from when not from a virtualenv.
    path = [str(_PROJECT_ROOT), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    return kept | {"PYTHONPATH": os.pathsep.join(path)}


def start_tunnel(target: SshTarget, local_port: int, stack: str, limits: Limits = Limits()) -> int:
    """Start the tunnel process, detached from the caller, and wait until it listens; its pid."""
    log_path = _log_file(local_port)
    log = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        os.fchmod(log, 0o600)
        process = subprocess.Popen(
            [sys.executable, "-m", "components.tunnel", "serve"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
            cwd=_PROJECT_ROOT,
            env=tunnel_environment(),
            # Its own session: it outlives the program and is not in the program's process group.
            start_new_session=True,
        )
    finally:
        os.close(log)
    assert process.stdin is not None and process.stdout is not None
    params = {"target": asdict(target), "port": local_port, "stack": stack, "limits": asdict(limits)}
    process.stdin.write(json.dumps(params).encode())
    process.stdin.close()
    ready: list[bytes] = []
    reader = threading.Thread(target=lambda: ready.append(process.stdout.readline()), daemon=True)  # type: ignore[union-attr]
    reader.start()
    reader.join(READY_WITHIN_SECONDS)
    process.stdout.close()
    answer = ready[0].decode().strip() if ready else ""
    if not answer.startswith("ready"):
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        raise TunnelError(
            f"the SSH tunnel on 127.0.0.1:{local_port} did not start ({answer or 'no answer'}); see {log_path}"
        )
    return process.pid


def stop_tunnel(local_port: int) -> bool:
    """Ask the tunnel process on `local_port`, if it is ours, to exit; whether there was one."""
    record = running_tunnel(local_port)
    if record is None:
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(int(record["pid"]), signal.SIGTERM)
    deadline = time.monotonic() + 10
    while running_tunnel(local_port) is not None and time.monotonic() < deadline:
        time.sleep(0.1)
    return True


def _port_in_use(local_port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # As the tunnel's own listener binds (create_server): a connection it or `ssh -L` closed
        # a moment ago lingers in TIME_WAIT and does not hold the port; only a listener does.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((LISTEN_ADDRESS, local_port))
        except OSError as error:
            return error.errno == errno.EADDRINUSE
    return False


def port_holder(local_port: int) -> str:
    """Who listens on `local_port`, for an error message: a pid and its program name, or its UID.

    Only the program's name (`comm`), never its command line: that may hold someone's secret.
    """
    listeners: dict[str, int] = {}  # socket inode -> owner uid
    others: dict[str, int] = {}  # the same, for sockets on the port that do not listen
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as rows:
            next(rows)
            for line in rows:
                fields = line.split()
                if int(fields[1].rsplit(":", 1)[1], 16) == local_port:
                    (listeners if fields[3] == "0A" else others)[fields[9]] = int(fields[7])  # 0A: LISTEN
    if not listeners:
        # An outgoing connection's own end can hold a port too, when the port is in the ephemeral range.
        listeners = {inode: uid for inode, uid in others.items() if inode != "0"}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
                if link.startswith("socket:[") and link[8:-1] in listeners:
                    name = Path(f"/proc/{pid}/comm").read_text().strip()
                    return f"process {pid} ({name})"
    owners = sorted(set(listeners.values()))
    if owners:
        return f"a process of uid {', '.join(map(str, owners))}"
    return "an unknown process"


@contextlib.contextmanager
def _port_lock(local_port: int) -> Iterator[None]:
    """One run at a time decides about the tunnel on `local_port`; the others wait, then reuse it."""
    path = state_dir() / f"tunnel-{local_port}.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        deadline = time.monotonic() + LOCK_WITHIN_SECONDS
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TunnelError(
                        f"another run has been starting the API tunnel on 127.0.0.1:{local_port} "
                        f"for {LOCK_WITHIN_SECONDS}s; see {_log_file(local_port)}"
                    ) from None
                time.sleep(0.05)
        yield
    finally:
        os.close(fd)  # releases the lock


def _taken(local_port: int, holder: str) -> TunnelError:
    return TunnelError(
        f"k3s.tunnelPort: 127.0.0.1:{local_port} is held by {holder}, not by this stack's API tunnel; "
        f"stop it, or give this stack another port with k3s.tunnelPort"
    )


def _other_holder(record: dict[str, Any], stack: str, target: SshTarget) -> str | None:
    """Who holds the port if the tunnel recorded there is not this stack's to reuse or replace."""
    recorded = record.get("stack")
    if recorded == stack:
        return None
    if recorded is None and record.get("target") == target.fingerprint():
        return None  # this stack's tunnel, started by an earlier release that recorded no stack
    who = f"stack {recorded}" if recorded else "an earlier release for another stack"
    return f"the API tunnel of {who} (pid {record['pid']}, to {record.get('host')})"


def check_tunnel_port(target: SshTarget, local_port: int, stack: str) -> None:
    """Refuse, before anything is touched, a port that another stack's tunnel or another program holds."""
    record = running_tunnel(local_port)
    if record is not None:
        holder = _other_holder(record, stack, target)
        if holder is not None:
            raise _taken(local_port, holder)
    elif _port_in_use(local_port):
        raise _taken(local_port, port_holder(local_port))


def ensure_tunnel(
    target: SshTarget, local_port: int, *, stack: str, warn: Any = None, limits: Limits = Limits()
) -> str:
    """Make sure this stack's tunnel to `target` listens on 127.0.0.1:`local_port`: "started" or "reused".

    Its own tunnel to the same target is reused (its idle timer restarts with the next
    connection), unless its lifetime is nearly over; one to another target (the first server
    changed) is replaced. Another stack's tunnel, or anything else on the port, is never touched:
    that is a TunnelError naming the holder. Runs of one stack at once take turns, and the later
    ones reuse what the first started.
    """
    with _port_lock(local_port):
        check_tunnel_port(target, local_port, stack)
        record = running_tunnel(local_port)
        if record is not None:
            # An earlier release's tunnel (no expiry recorded) is replaced by one under today's limits.
            same_target = record.get("target") == target.fingerprint() and "expires" in record
            if same_target and float(record["expires"]) - time.time() >= REUSE_MARGIN_SECONDS:
                return "reused"
            if same_target and warn is not None:
                warn(f"the API tunnel on 127.0.0.1:{local_port} ends within {REUSE_MARGIN_SECONDS}s: starting it anew")
            stop_tunnel(local_port)
            if _port_in_use(local_port):
                raise _taken(local_port, port_holder(local_port))
        start_tunnel(target, local_port, stack, limits)
        return "started"


def _main(argv: list[str]) -> int:
    if argv[:1] == ["serve"]:
        # First, before the key is read: from here on no other process of the user can read us.
        refuse_dumps()
        params = json.loads(sys.stdin.read())
        target = SshTarget.from_dict(params["target"])
        return serve(target, int(params["port"]), str(params["stack"]), Limits(**params.get("limits", {})))
    if argv[:1] == ["open"]:
        # The same parameters as `serve`, on stdin.
        params = json.loads(sys.stdin.read())
        try:
            outcome = ensure_tunnel(
                SshTarget.from_dict(params["target"]), int(params["port"]), stack=str(params["stack"]), warn=_log
            )
        except TunnelError as error:
            _log(str(error))
            return 1
        print(f"tunnel on 127.0.0.1:{params['port']}: {outcome}")
        return 0
    if argv[:1] == ["stop"] and len(argv) == 2:
        try:
            print("stopped" if stop_tunnel(int(argv[1])) else "no tunnel of ours on that port")
        except TunnelError as error:
            _log(str(error))
            return 1
        return 0
    print("usage: python -m components.tunnel serve|open (JSON on stdin) | stop PORT", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
