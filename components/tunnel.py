"""The SSH tunnel that lets the Kubernetes provider reach a private API server.

The API listens only on the server itself and the mesh. With `k3s.apiAccess: ssh-tunnel` the
program listens on 127.0.0.1:<k3s.tunnelPort> and forwards each connection through the first
server's SSH to its 127.0.0.1:6443. The port is fixed so the provider's kubeconfig never changes
between runs. Nothing dials out until the first client connects.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import io
import select
import socket
import threading
from dataclasses import dataclass

import paramiko
import pulumi

REMOTE_API = ("127.0.0.1", 6443)
_KEY_TYPES: tuple[type[paramiko.PKey], ...] = (paramiko.Ed25519Key, paramiko.ECDSAKey, paramiko.RSAKey)
_open: dict[int, ApiTunnel] = {}
_lock = threading.Lock()


@dataclass(frozen=True)
class SshTarget:
    host: str
    port: int
    user: str
    private_key: str
    host_key: str | None  # "ssh-ed25519 AAAA..." pins the server; None accepts any key (with a warning)


def load_private_key(text: str) -> paramiko.PKey:
    for key_type in _KEY_TYPES:
        try:
            return key_type.from_private_key(io.StringIO(text))
        except (paramiko.SSHException, ValueError):
            continue
    raise ValueError("sshPrivateKey: not an Ed25519, ECDSA or RSA private key that paramiko can read")


class ApiTunnel:
    def __init__(self, target: SshTarget, local_port: int) -> None:
        self.target = target
        self.local_port = local_port
        self._transport: paramiko.Transport | None = None
        self._connect_lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", local_port))
        threading.Thread(target=self._accept_loop, name="harbor-api-tunnel", daemon=True).start()

    def _ssh(self) -> paramiko.Transport:
        with self._connect_lock:
            if self._transport is None or not self._transport.is_active():
                target = self.target
                transport = paramiko.Transport((target.host, target.port))
                try:
                    transport.start_client(timeout=15)
                    self._check_host_key(transport.get_remote_server_key())
                    transport.auth_publickey(target.user, load_private_key(target.private_key))
                except BaseException:
                    transport.close()
                    raise
                transport.set_keepalive(30)
                self._transport = transport
            return self._transport

    def _check_host_key(self, key: paramiko.PKey) -> None:
        if self.target.host_key is None:
            pulumi.log.warn(f"ssh tunnel: {self.target.host}'s host key is not checked; pin it with sshHostKey")
            return
        kind, _, blob = self.target.host_key.strip().partition(" ")
        if key.get_name() != kind or key.asbytes() != base64.b64decode(blob.split()[0]):
            raise paramiko.SSHException(f"host key of {self.target.host} does not match its sshHostKey")

    def _accept_loop(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def close(self) -> None:
        """Stop listening and drop the SSH connection (the program itself just exits instead)."""
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        if self._transport is not None:
            self._transport.close()

    def _serve(self, client: socket.socket) -> None:
        try:
            channel = self._ssh().open_channel("direct-tcpip", REMOTE_API, client.getsockname())
        except (OSError, ValueError, paramiko.SSHException) as error:
            pulumi.log.error(f"ssh tunnel to {self.target.host}: {error}")
            client.close()
            return
        with contextlib.closing(client), contextlib.closing(channel):
            _pump(client, channel)


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


def ensure_tunnel(target: SshTarget, local_port: int) -> None:
    """Open the tunnel once per process. A port already taken is assumed to be the user's own tunnel."""
    with _lock:
        if local_port in _open:
            return
        try:
            _open[local_port] = ApiTunnel(target, local_port)
        except OSError as error:
            if error.errno != errno.EADDRINUSE:
                raise
            pulumi.log.warn(f"127.0.0.1:{local_port} is in use; assuming it is already a tunnel to {target.host}:6443")
