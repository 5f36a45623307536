"""A git command that fails at `up` says which stack config key to change, against a real sshd.

sshd runs on the loopback as the current user, so the messages are ssh's and git's own: a
known_hosts line for another key, a key the server does not accept, and a port nobody listens on.
"""

from __future__ import annotations

import getpass
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from components.gitops import Spec
from components.gitops.plan import GitOpsError
from components.gitops.workspace import sync_tree, what_to_change
from tests.helpers import free_port

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"


def keygen(path: Path) -> tuple[str, str]:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "", "-f", str(path)], check=True)
    return path.read_text(), path.with_suffix(".pub").read_text().strip()


class Sshd:
    def __init__(self, root: Path) -> None:
        self.port = free_port()
        self.host_key, self.host_pub = keygen(root / "host_key")
        self.client_key, client_pub = keygen(root / "client_key")
        (root / "authorized_keys").write_text(client_pub + "\n")
        os.chmod(root / "authorized_keys", 0o600)
        config = root / "sshd_config"
        config.write_text(
            f"Port {self.port}\nListenAddress 127.0.0.1\nHostKey {root / 'host_key'}\n"
            f"AuthorizedKeysFile {root / 'authorized_keys'}\nPasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\nPidFile none\n"
        )
        self.process = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)], stderr=subprocess.PIPE)
        deadline = time.monotonic() + 10
        while subprocess.run(["ssh-keyscan", "-p", str(self.port), "127.0.0.1"], capture_output=True).returncode:
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise RuntimeError(
                    f"sshd did not start: {self.process.stderr.read().decode() if self.process.stderr else ''}"
                )
            time.sleep(0.1)
        self.url = f"ssh://{getpass.getuser()}@127.0.0.1:{self.port}{root / 'repo.git'}"
        subprocess.run(["git", "init", "-q", "--bare", str(root / "repo.git")], check=True)

    def known_hosts(self, public: str) -> str:
        return f"[127.0.0.1]:{self.port} {public}"


@pytest.fixture
def sshd(tmp_path: Path) -> Iterator[Sshd]:
    if not Path(SSHD).exists():
        pytest.skip("needs sshd (apt package openssh-server)")
    server = Sshd(tmp_path)
    try:
        yield server
    finally:
        server.process.terminate()
        server.process.wait(timeout=10)


def push(url: str, key: str, known_hosts: str) -> str:
    props = {
        "repo_url": url,
        "branch": "main",
        "path": "cluster",
        "files": {"cluster/README.md": "# the cluster\n"},
        "create_only": [],
        "credentials": {"ssh_private_key": key},
        "known_hosts": known_hosts,
        "overwrite_manual_changes": False,
        "author_name": "Space Harbor",
        "author_email": "space-harbor@localhost",
        "message_prefix": "space-harbor(test):",
    }
    Spec.from_props(props)
    with pytest.raises(GitOpsError) as failed:
        sync_tree(props, None)
    return str(failed.value)


def test_a_wrong_known_hosts_line_names_gitops_known_hosts(sshd: Sshd, tmp_path: Path) -> None:
    _, other = keygen(tmp_path / "other_host_key")
    message = push(sshd.url, sshd.client_key, sshd.known_hosts(other))
    assert "Host key verification failed" in message
    assert "gitops.knownHosts does not hold the git server's host key" in message


def test_a_key_the_server_refuses_names_gitops_ssh_private_key(sshd: Sshd, tmp_path: Path) -> None:
    stranger, _ = keygen(tmp_path / "stranger")
    message = push(sshd.url, stranger, sshd.known_hosts(sshd.host_pub))
    assert "Permission denied (publickey" in message
    assert "gitops.sshPrivateKey" in message and "deploy key with write access" in message


def test_the_right_key_and_pin_push(sshd: Sshd) -> None:
    # The same server and transport work when the config is right: the failures above are the config's.
    props = {
        "repo_url": sshd.url,
        "branch": "main",
        "path": "cluster",
        "files": {"cluster/README.md": "# the cluster\n"},
        "create_only": [],
        "credentials": {"ssh_private_key": sshd.client_key},
        "known_hosts": sshd.known_hosts(sshd.host_pub),
        "overwrite_manual_changes": False,
        "author_name": "Space Harbor",
        "author_email": "space-harbor@localhost",
        "message_prefix": "space-harbor(test):",
    }
    assert sync_tree(props, None)["commit"]


def test_a_port_nobody_listens_on_says_the_server_is_unreachable(tmp_path: Path) -> None:
    key, public = keygen(tmp_path / "k")
    port = free_port()
    message = push(f"ssh://git@127.0.0.1:{port}/r.git", key, f"[127.0.0.1]:{port} {public}")
    assert "Connection refused" in message
    assert "cannot reach the git server of gitops.repoUrl" in message


@pytest.mark.parametrize(
    ("stderr", "transport", "names"),
    [
        (
            "ERROR: The key you are authenticating with has been marked as read only.",
            "ssh",
            "gitops.sshPrivateKey needs write access",
        ),
        ("ERROR: Permission to o/r.git denied to deploy key", "ssh", "needs write access"),
        (
            "fatal: Authentication failed for 'https://git.example.org/o/r.git/'",
            "https",
            "gitops.username and gitops.password",
        ),
        ("remote: Repository not found.", "https", "gitops.username/gitops.password has access"),
        ("ssh: Could not resolve hostname git.example.org: Name or service not known", "ssh", "cannot reach"),
    ],
)
def test_the_messages_of_git_hosts_name_the_key(stderr: str, transport: str, names: str) -> None:
    hint = what_to_change(stderr, transport)
    assert hint is not None and names in hint


def test_an_unknown_failure_adds_no_guess() -> None:
    assert what_to_change("fatal: something nobody has seen", "ssh") is None
