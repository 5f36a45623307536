"""A loopback SSH server for the API tunnel's tests: one pinned host key, one client key, and an
"API" behind it that names itself, so a test sees which server a connection through a tunnel reached.

Nothing leaves 127.0.0.1. Each `direct-tcpip` channel the tunnel opens is answered with one line,
`api of <name>`, and then echoes what it receives.
"""

from __future__ import annotations

import contextlib
import io
import socket
import threading
from dataclasses import dataclass, field

import paramiko

from components.tunnel import SshTarget


class _Server(paramiko.ServerInterface):
    def __init__(self, client_key: paramiko.PKey) -> None:
        self.client_key = client_key

    def get_allowed_auths(self, username: str) -> str:
        return "publickey"

    def check_auth_publickey(self, username: str, key: paramiko.PKey) -> int:
        if key.asbytes() == self.client_key.asbytes():
            return paramiko.AUTH_SUCCESSFUL
        return paramiko.AUTH_FAILED

    def check_channel_direct_tcpip_request(
        self, chanid: int, origin: tuple[str, int], destination: tuple[str, int]
    ) -> int:
        return paramiko.OPEN_SUCCEEDED


def _answer(channel: paramiko.Channel, name: str) -> None:
    # The tunnel may close first: then the channel's own close fails too.
    with contextlib.suppress(OSError, EOFError, paramiko.SSHException), contextlib.closing(channel):
        channel.sendall(f"api of {name}\n".encode())
        while data := channel.recv(65536):
            channel.sendall(data)


@dataclass
class FakeSshd:
    """Listens on 127.0.0.1 at `port` until `close`; `target()` is the tunnel's route to it."""

    name: str
    host_key: paramiko.PKey = field(default_factory=paramiko.ECDSAKey.generate)
    client_key: paramiko.PKey = field(default_factory=paramiko.ECDSAKey.generate)

    def __post_init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._transports: list[paramiko.Transport] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._session, args=(conn,), daemon=True).start()

    def _session(self, conn: socket.socket) -> None:
        transport = paramiko.Transport(conn)
        self._transports.append(transport)
        transport.add_server_key(self.host_key)
        try:
            transport.start_server(server=_Server(self.client_key))
        except (paramiko.SSHException, EOFError, OSError):
            return
        while transport.is_active():
            channel = transport.accept(timeout=1)
            if channel is not None:
                threading.Thread(target=_answer, args=(channel, self.name), daemon=True).start()

    def target(self) -> SshTarget:
        key = io.StringIO()
        self.client_key.write_private_key(key)
        pin = f"{self.host_key.get_name()} {self.host_key.get_base64()}"
        return SshTarget(host="127.0.0.1", port=self.port, user="root", private_key=key.getvalue(), host_key=pin)

    def close(self) -> None:
        self._listener.close()
        for transport in self._transports:
            transport.close()


def ask(port: int, timeout: float = 15) -> bytes:
    """Connect to 127.0.0.1:`port` and read the first line: `api of <name>` through a working tunnel."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as client:
        answer = b""
        while not answer.endswith(b"\n"):
            chunk = client.recv(4096)
            if not chunk:
                break
            answer += chunk
        return answer
