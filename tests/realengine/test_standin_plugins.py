"""The stand-in provider plugins under the real engine, against a local sshd: what the engine sees.

A small program of its own (commands over SSH, a copy, random and tls resources) in a temporary
project, and an sshd of its own on 127.0.0.1 with a fresh host key; no testbed nodes. The tests run
in file order, as a user types the commands: preview, up, a no-op up, a changed `create` (an update:
same id), a changed trigger (a replacement: the new create before the old delete), a wrong pin
refused, refresh, and destroy without the program. Assertions read sshd's log, the files the
commands wrote and `pulumi stack export`.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.realengine.cli import ROOT, Pulumi

pytestmark = [pytest.mark.realengine, pytest.mark.testbed]

PROGRAM = """
import pulumi
import pulumi_random as random
import pulumi_tls as tls
from pulumi_command import remote

cfg = pulumi.Config()
log = cfg.require("log")
conn = remote.ConnectionArgs(
    host="127.0.0.1",
    port=cfg.require_int("port"),
    user="root",
    private_key=pulumi.Output.secret(open(cfg.require("keyFile")).read()),
    host_key=cfg.require("hostKey"),
    dial_error_limit=1,
    per_dial_timeout=5,
)
remote.Command(
    "step",
    connection=conn,
    create=f'echo "{cfg.require("create")} $GREETING $(cat)" >> {log}',
    delete=f'echo "delete $GREETING" >> {log}',
    stdin=pulumi.Output.secret("from-stdin"),
    environment={"GREETING": "hi"},
    triggers=[cfg.require("trigger")],
    add_previous_output_in_env=False,
)
remote.Command(
    "kubeconfig",
    connection=conn,
    create="echo pretend-kubeconfig",
    logging=remote.Logging.NONE,
    opts=pulumi.ResourceOptions(additional_secret_outputs=["stdout"]),
)
remote.CopyToRemote(
    "copy", connection=conn, source=pulumi.FileAsset(cfg.require("source")), remote_path=cfg.require("remotePath")
)
random.RandomUuid("cluster-id")
random.RandomPassword("password", length=48, special=False)
random.RandomBytes("wg-key", length=32)
key = tls.PrivateKey("sealed-key", algorithm="RSA", rsa_bits=2048)
tls.SelfSignedCert(
    "sealed-cert",
    private_key_pem=key.private_key_pem,
    subject=tls.SelfSignedCertSubjectArgs(common_name="sealed-secret", organization="sealed-secret"),
    validity_period_hours=87600,
    allowed_uses=["key_encipherment", "data_encipherment"],
)
"""

SECRET_SIG = "1b47061264138c4ac30d75fd1eb44270"


@dataclass
class Rig:
    pulumi: Pulumi
    root: Path
    host_key: str

    @property
    def log(self) -> list[str]:
        path = self.root / "remote" / "log"
        return path.read_text().splitlines() if path.exists() else []

    def logins(self) -> int:
        return (self.root / "sshd" / "sshd.log").read_text().count("Accepted publickey")

    def set(self, key: str, value: str) -> None:
        self.pulumi.run("config", "set", f"standin-plugins:{key}", value)

    def resources(self) -> dict[str, dict[str, Any]]:
        """The custom resources of the stack by name (secrets still encrypted, and marked)."""
        export = json.loads(self.pulumi.run("stack", "export").stdout)
        found = export["deployment"].get("resources") or []
        return {
            r["urn"].rsplit("::", 1)[1]: r for r in found if r.get("custom") and not r["type"].startswith("pulumi:")
        }


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def keygen(path: Path) -> str:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    return " ".join(path.with_suffix(".pub").read_text().split()[:2])


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    if os.geteuid() != 0:
        pytest.skip("needs root: the test's sshd logs in as root")
    root = tmp_path_factory.mktemp("standins")
    sshd_dir, remote_dir, project = root / "sshd", root / "remote", root / "project"
    for folder in (sshd_dir, remote_dir, project):
        folder.mkdir()
    host_key = keygen(sshd_dir / "host_key")
    keygen(sshd_dir / "client_key")
    shutil.copy(sshd_dir / "client_key.pub", sshd_dir / "authorized_keys")
    port = free_port()
    (sshd_dir / "sshd_config").write_text(
        f"ListenAddress 127.0.0.1\nPort {port}\nHostKey {sshd_dir / 'host_key'}\n"
        f"AuthorizedKeysFile {sshd_dir / 'authorized_keys'}\nPermitRootLogin prohibit-password\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n"
        f"PidFile {sshd_dir / 'sshd.pid'}\nAcceptEnv GREETING\nLogLevel VERBOSE\n"
        "Subsystem sftp /usr/lib/openssh/sftp-server\n"
    )
    Path("/run/sshd").mkdir(exist_ok=True)
    subprocess.run(
        ["/usr/sbin/sshd", "-f", str(sshd_dir / "sshd_config"), "-E", str(sshd_dir / "sshd.log")], check=True
    )
    try:
        (project / "Pulumi.yaml").write_text(
            "name: standin-plugins\nruntime:\n  name: python\n  options:\n    toolchain: pip\n    virtualenv: .venv\n"
        )
        (project / "__main__.py").write_text(PROGRAM)
        (project / ".venv").symlink_to(ROOT / ".venv")
        (root / "source.txt").write_text("the copied file\n")
        pulumi = Pulumi(project, root / "state", None)
        pulumi.run("stack", "init", "standins", "--secrets-provider", "passphrase")
        rig = Rig(pulumi, root, host_key)
        for key, value in {
            "port": str(port),
            "keyFile": str(sshd_dir / "client_key"),
            "hostKey": host_key,
            "log": str(remote_dir / "log"),
            "create": "create-v1",
            "trigger": "t1",
            "source": str(root / "source.txt"),
            "remotePath": str(remote_dir / "sub" / "copied.txt"),
        }.items():
            rig.set(key, value)
        yield rig
    finally:
        pid = (sshd_dir / "sshd.pid").read_text().strip() if (sshd_dir / "sshd.pid").exists() else ""
        if pid:
            os.kill(int(pid), signal.SIGTERM)
            time.sleep(0.2)


def secret(value: Any) -> bool:
    return isinstance(value, dict) and value.get("4dabf18193072939515e22adb298388d") == SECRET_SIG


def test_preview_dials_nothing(rig: Rig) -> None:
    before = rig.logins()
    result = rig.pulumi.run("preview")
    assert "9 to create" in result.output, result.output[-3000:]
    assert rig.logins() == before and rig.log == []


def test_up_runs_the_commands_and_keeps_secrets_secret(rig: Rig) -> None:
    rig.pulumi.run("up", "--yes", "--skip-preview")
    assert rig.log == ["create-v1 hi from-stdin"], "stdin and the environment reach the command"
    assert (rig.root / "remote" / "sub" / "copied.txt").read_text() == "the copied file\n"
    resources = rig.resources()
    outputs = {name: r["outputs"] for name, r in resources.items()}
    assert secret(outputs["step"]["connection"]) and secret(outputs["step"]["stdin"])
    assert secret(outputs["kubeconfig"]["stdout"]), "additionalSecretOutputs is honoured"
    assert secret(outputs["password"]["result"]) and secret(outputs["password"]["bcryptHash"])
    assert secret(outputs["wg-key"]["base64"]) and secret(outputs["sealed-key"]["privateKeyPem"])
    assert secret(outputs["sealed-cert"]["privateKeyPem"])
    # The ids the real plugins give.
    assert resources["cluster-id"]["id"] == outputs["cluster-id"]["result"]
    assert resources["password"]["id"] == "none" and resources["wg-key"]["id"] == "none"
    assert resources["step"]["id"].startswith("step")


def test_a_second_up_changes_nothing_and_dials_nothing(rig: Rig) -> None:
    before = rig.logins()
    rig.pulumi.run("preview", "--expect-no-changes")
    rig.pulumi.run("up", "--yes", "--expect-no-changes")
    assert rig.logins() == before


def test_a_changed_create_is_an_update(rig: Rig) -> None:
    before = rig.resources()["step"]["id"]
    rig.set("create", "create-v2")
    result = rig.pulumi.run("up", "--yes", "--skip-preview")
    assert "1 updated" in result.output, result.output[-3000:]
    assert rig.resources()["step"]["id"] == before, "an update keeps the id"
    assert rig.log[-1] == "create-v2 hi from-stdin" and not any(line.startswith("delete") for line in rig.log)


def test_a_changed_trigger_replaces_create_before_delete(rig: Rig) -> None:
    before = rig.resources()["step"]["id"]
    rig.set("trigger", "t2")
    result = rig.pulumi.run("up", "--yes", "--skip-preview")
    assert "1 replaced" in result.output, result.output[-3000:]
    assert rig.resources()["step"]["id"] != before
    assert rig.log[-2:] == ["create-v2 hi from-stdin", "delete hi"], rig.log


def test_a_wrong_host_key_is_refused_before_login(rig: Rig) -> None:
    wrong = keygen(rig.root / "wrong_key")
    before = rig.logins()
    rig.set("hostKey", wrong)
    rig.set("create", "create-v3")
    result = rig.pulumi.run("up", "--yes", "--skip-preview", check=False)
    assert result.returncode != 0 and "host key mismatch" in result.output, result.output[-3000:]
    assert rig.logins() == before and "create-v3" not in "\n".join(rig.log)
    rig.set("hostKey", rig.host_key)
    rig.set("create", "create-v2")


def test_refresh_dials_nothing_and_destroy_runs_the_stored_delete(rig: Rig) -> None:
    before = rig.logins()
    rig.pulumi.run("refresh", "--yes")
    assert rig.logins() == before
    # destroy runs no program: the delete and its connection come from the state.
    (rig.pulumi.project / "__main__.py").unlink()
    rig.pulumi.run("destroy", "--yes")
    assert rig.log[-1] == "delete hi"
    assert rig.resources() == {}
