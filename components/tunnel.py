"""The SSH tunnel that lets the Kubernetes provider (and kubectl) reach the private API server.

The API listens only on the servers themselves and the mesh. With `k3s.apiAccess: ssh-tunnel` a
tunnel listens on 127.0.0.1:<k3s.tunnelPort> (never any other address) and forwards each
connection through the first server's SSH to its 127.0.0.1:6443. The port is fixed so the
provider's kubeconfig never changes between runs. Nothing dials out until a client connects.
When the first server is behind a bastion, the tunnel dials the bastion, opens a channel from
there to the server's sshd and speaks SSH to the server through it, as pulumi-command's `proxy`
does: each hop's host key is checked against its own pin, each hop gets its own key.

The tunnel is a process of its own, not a thread of the program: the engine runs deletes after
the program's process has exited, and `pulumi refresh` and `pulumi destroy` do not run the
program at all, so a tunnel inside it would be gone exactly when a delete needs the API. `pulumi
up` starts it (preview does not: preview reaches nothing it does not need); `scripts/kubeconfig`
starts the same process for kubectl, refresh and destroy. It exits on its own after
`IDLE_SECONDS` without a connection. Its parameters, the SSH key included, arrive on its stdin,
never on a command line; it keeps the key in memory only.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import hashlib
import io
import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import paramiko

REMOTE_API = ("127.0.0.1", 6443)
LISTEN_ADDRESS = "127.0.0.1"
# Long enough for the deletes and the refresh that follow a program, short enough that a
# forgotten tunnel does not hold an SSH session open for the rest of the day.
IDLE_SECONDS = 900
READY_WITHIN_SECONDS = 15
_KEY_TYPES: tuple[type[paramiko.PKey], ...] = (paramiko.Ed25519Key, paramiko.ECDSAKey, paramiko.RSAKey)
_PROJECT_ROOT = Path(__file__).resolve().parent.parent


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
        key_id = hashlib.sha256(self.private_key.encode()).hexdigest()[:16]
        route = f"{self.user}@{self.host}:{self.port} {self.host_key} {key_id}"
        if self.bastion is not None:
            # Only then: a tunnel to a server without a bastion keeps the fingerprint it always had.
            route += f" via {self.bastion.fingerprint()}"
        return hashlib.sha256(route.encode()).hexdigest()

    def describe(self) -> str:
        """`user@host:port`, with the bastion it goes through: for log lines (no key)."""
        hop = f"{self.user}@{self.host}:{self.port}"
        return hop if self.bastion is None else f"{hop} via {self.bastion.describe()}"


def load_private_key(text: str) -> paramiko.PKey:
    for key_type in _KEY_TYPES:
        try:
            return key_type.from_private_key(io.StringIO(text))
        except (paramiko.SSHException, ValueError):
            continue
    raise ValueError("sshPrivateKey: not an Ed25519, ECDSA or RSA private key that paramiko can read")


def _log(message: str) -> None:
    print(f"space-harbor tunnel: {message}", file=sys.stderr, flush=True)


class ApiTunnel:
    """The forwarder: a loopback listener whose connections go through one SSH transport."""

    def __init__(self, target: SshTarget, local_port: int) -> None:
        self.target = target
        self.local_port = local_port
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
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def close(self) -> None:
        """Stop listening and drop the SSH connection."""
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        self.close_transports()

    def _track(self, delta: int) -> None:
        with self._activity_lock:
            self.active += delta
            self.last_activity = time.monotonic()

    def idle_for(self) -> float:
        """Seconds since the last connection ended; 0 while one is open."""
        with self._activity_lock:
            return 0.0 if self.active else time.monotonic() - self.last_activity

    def _serve(self, client: socket.socket) -> None:
        self._track(+1)
        try:
            try:
                channel = self._ssh().open_channel("direct-tcpip", REMOTE_API, client.getsockname())
            except (OSError, ValueError, paramiko.SSHException) as error:
                _log(f"to {self.target.host}: {error}")
                client.close()
                return
            with contextlib.closing(client), contextlib.closing(channel):
                _pump(client, channel)
        finally:
            self._track(-1)


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


def _pump(client: socket.socket, channel: paramiko.Channel) -> None:
    """Copy bytes both ways until either side closes."""
    while True:
        readable, _, _ = select.select([client, channel], [], [], 60)
        for source, sink in ((client, channel), (channel, client)):
            if source in readable:
                data = source.recv(65536)
                if not data:
                    return
                sink.sendall(data)


# --- the tunnel process ----------------------------------------------------------------------


def state_dir() -> Path:
    """Where running tunnels say who they are (never the key): private to the user."""
    base = os.environ.get("XDG_RUNTIME_DIR") or str(Path.home() / ".cache")
    path = Path(base) / "space-harbor"
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path


def _state_file(local_port: int) -> Path:
    return state_dir() / f"tunnel-{local_port}.json"


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


def serve(target: SshTarget, local_port: int, idle_seconds: float) -> int:
    """Run the tunnel until it has been idle `idle_seconds`; report readiness on stdout first."""
    try:
        tunnel = ApiTunnel(target, local_port)
    except OSError as error:
        print(f"error {error}", flush=True)
        return 1
    state = _state_file(local_port)
    record = {"pid": os.getpid(), "host": target.host, "port": target.port, "target": target.fingerprint()}
    state.write_text(json.dumps(record) + "\n")
    state.chmod(0o600)
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    print(f"ready {local_port}", flush=True)
    # Nothing reads our stdout from here on; a write must not kill us with SIGPIPE.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    _log(f"127.0.0.1:{local_port} -> {target.describe()} -> 127.0.0.1:6443")
    try:
        while not stopping.wait(1):
            if tunnel.idle_for() >= idle_seconds:
                _log(f"idle for {idle_seconds:.0f}s: closing")
                break
    finally:
        tunnel.close()
        with contextlib.suppress(OSError):
            if json.loads(state.read_text()).get("pid") == os.getpid():
                state.unlink()
    return 0


def start_tunnel(target: SshTarget, local_port: int, *, idle_seconds: float = IDLE_SECONDS) -> int:
    """Start the tunnel process, detached from the caller, and wait until it listens; its pid."""
    log = (state_dir() / f"tunnel-{local_port}.log").open("ab")
    os.chmod(log.name, 0o600)
    process = subprocess.Popen(
        [sys.executable, "-m", "components.tunnel", "serve"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=log,
        cwd=_PROJECT_ROOT,
        env={**os.environ, "PYTHONPATH": str(_PROJECT_ROOT)},
        # Its own session: it outlives the program and is not in the program's process group.
        start_new_session=True,
    )
    log.close()
    assert process.stdin is not None and process.stdout is not None
    process.stdin.write(json.dumps({"target": asdict(target), "port": local_port, "idle": idle_seconds}).encode())
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
        raise RuntimeError(
            f"the SSH tunnel on 127.0.0.1:{local_port} did not start ({answer or 'no answer'}); "
            f"see {state_dir() / f'tunnel-{local_port}.log'}"
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
        try:
            probe.bind((LISTEN_ADDRESS, local_port))
        except OSError as error:
            return error.errno == errno.EADDRINUSE
    return False


def ensure_tunnel(target: SshTarget, local_port: int, warn: Any = None) -> str:
    """Make sure a tunnel to `target` listens on 127.0.0.1:`local_port`: "started", "reused" or "foreign".

    A tunnel of ours to the same target is reused (its idle timer restarts with the next
    connection); one to another target (the first server changed) is replaced. A port held by
    something else is assumed to be the user's own tunnel, with a warning.
    """
    record = running_tunnel(local_port)
    if record is not None:
        if record.get("target") == target.fingerprint():
            return "reused"
        stop_tunnel(local_port)
    if _port_in_use(local_port):
        if warn is not None:
            warn(f"127.0.0.1:{local_port} is in use; assuming it is already a tunnel to {target.host}:6443")
        return "foreign"
    start_tunnel(target, local_port)
    return "started"


def _main(argv: list[str]) -> int:
    if argv[:1] == ["serve"]:
        params = json.loads(sys.stdin.read())
        return serve(SshTarget.from_dict(params["target"]), int(params["port"]), float(params["idle"]))
    if argv[:1] == ["open"]:
        # `scripts/kubeconfig`: the same parameters as `serve`, on stdin.
        params = json.loads(sys.stdin.read())
        outcome = ensure_tunnel(SshTarget.from_dict(params["target"]), int(params["port"]), warn=_log)
        print(f"tunnel on 127.0.0.1:{params['port']}: {outcome}")
        return 0
    if argv[:1] == ["stop"] and len(argv) == 2:
        print("stopped" if stop_tunnel(int(argv[1])) else "no tunnel of ours on that port")
        return 0
    print("usage: python -m components.tunnel serve|open (JSON on stdin) | stop PORT", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
