"""The GitOps transport against a hostile environment, with real ssh and git processes.

- ssh must not read the operator's ~/.ssh/config: a ProxyCommand, KnownHostsCommand or
  IdentityFile there would run commands, trust host keys or offer keys beyond the deploy key.
- The HTTPS password goes only to the repository's own host, even when the first request is
  redirected elsewhere (git follows a redirect of its first request by default).
"""

from __future__ import annotations

import base64
import os
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from components.gitops.workspace import ASKPASS_SCRIPT, credential_origin, ssh_command, transport_env
from tests.helpers import free_port, namespace_problem

PASSWORD = "askpass-marker-6f1d"

# ssh reads ~/.ssh/config from the passwd entry's home, not $HOME: a private mount namespace
# puts a hostile one over root's home without touching the machine's.
HOME_PROBLEM = namespace_problem(
    ["unshare", "--mount", "--propagation", "private", "sh", "-c", "mount -t tmpfs tmpfs /root"],
    ("unshare", "ssh"),
    "a private mount namespace over /root",
)

_WITH_HOSTILE_CONFIG = """
set -e
mount -t tmpfs tmpfs /root
mkdir -m 700 /root/.ssh
cat >/root/.ssh/config <<EOF
Host *
    ProxyCommand sh -c 'echo proxy >>$MARKS; exec nc 127.0.0.1 $PORT'
    KnownHostsCommand /bin/sh -c 'echo known-hosts >>$MARKS'
    IdentityFile /root/.ssh/other_key
EOF
set +e
sh -c "$SSH -p $PORT git@127.0.0.1 true" 2>"$ERR"
echo $? >"$RC"
"""


@pytest.mark.skipif(HOME_PROBLEM is not None, reason=HOME_PROBLEM or "")
def test_ssh_ignores_the_operators_ssh_config(tmp_path: Path) -> None:
    marks = tmp_path / "marks"
    marks.write_text("")
    key = tmp_path / "id_key"
    key.write_text("not a key\n")
    key.chmod(0o600)
    (tmp_path / "known_hosts").write_text("")
    port = free_port()  # nothing listens there: the dial is refused on loopback
    result = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "bash", "-c", _WITH_HOSTILE_CONFIG],
        capture_output=True,
        text=True,
        timeout=60,
        env={
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "SSH": ssh_command(str(key), str(tmp_path / "known_hosts")),
            "MARKS": str(marks),
            "PORT": str(port),
            "ERR": str(tmp_path / "err"),
            "RC": str(tmp_path / "rc"),
        },
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "rc").read_text().strip() != "0"
    assert "Connection refused" in (tmp_path / "err").read_text()
    assert marks.read_text() == "", "ssh ran a command from ~/.ssh/config"


class _Servers:
    """A repository host that redirects every request to another host, which asks for a password."""

    def __init__(self) -> None:
        self.received: list[str] = []
        received = self.received
        other_port = free_port()

        class Redirect(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(301)
                self.send_header("Location", f"http://127.0.0.1:{other_port}{self.path}")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        class AsksForPassword(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                authorization = self.headers.get("Authorization")
                if authorization:
                    received.append(base64.b64decode(authorization.split()[1]).decode())
                self.send_response(401)
                self.send_header("WWW-Authenticate", 'Basic realm="other"')
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.repo_host = ThreadingHTTPServer(("127.0.0.1", 0), Redirect)
        self.other_host = ThreadingHTTPServer(("127.0.0.1", other_port), AsksForPassword)
        for server in (self.repo_host, self.other_host):
            threading.Thread(target=server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://localhost:{self.repo_host.server_address[1]}/ops/cluster.git"

    def close(self) -> None:
        for server in (self.repo_host, self.other_host):
            server.shutdown()
            server.server_close()


@pytest.fixture
def servers() -> Iterator[_Servers]:
    running = _Servers()
    yield running
    running.close()


def test_the_password_goes_to_no_host_a_redirect_leads_to(tmp_path: Path, servers: _Servers) -> None:
    askpass = tmp_path / "askpass.sh"
    askpass.write_text(ASKPASS_SCRIPT)
    askpass.chmod(0o700)
    env = transport_env(
        "https", askpass=str(askpass), username="bot", password=PASSWORD, origin=credential_origin(servers.url)
    )
    result = subprocess.run(
        ["git", "ls-remote", servers.url],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path), **env},
    )
    assert result.returncode != 0
    assert servers.received == [], "the other host got the credentials"
    assert f"the credentials of http://127.0.0.1:{servers.other_host.server_address[1]}, not of" in result.stderr


@pytest.mark.parametrize(
    ("prompt", "answer"),
    [
        ("Username for 'https://git.example.org': ", "bot"),
        ("Password for 'https://bot@git.example.org': ", PASSWORD),
        ("Password for 'https://b%40t@git.example.org': ", PASSWORD),
        ("Username for 'https://git.example.org.evil.test': ", None),
        ("Password for 'https://bot@evil.test': ", None),
        ("Password for 'http://bot@git.example.org': ", None),
        ("Password for 'https://bot@git.example.org:8443': ", None),
    ],
)
def test_askpass_answers_only_the_repositorys_own_origin(tmp_path: Path, prompt: str, answer: str | None) -> None:
    askpass = tmp_path / "askpass.sh"
    askpass.write_text(ASKPASS_SCRIPT)
    askpass.chmod(0o700)
    origin = credential_origin("https://bot@git.example.org/ops/cluster.git")
    env = transport_env("https", askpass=str(askpass), username="bot", password=PASSWORD, origin=origin)
    result = subprocess.run([str(askpass), prompt], capture_output=True, text=True, env=env, timeout=10)
    if answer is None:
        assert result.returncode != 0
        assert result.stdout == ""
    else:
        assert result.returncode == 0, result.stderr
        assert result.stdout == answer + "\n"
