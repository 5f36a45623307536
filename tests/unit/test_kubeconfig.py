"""scripts/kubeconfig: the stack's context merged into a kubeconfig without clobbering others, and
its tunnel opened, with only the Pulumi CLI's outputs (a fake `pulumi` here) and no program run."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from components.kubeconfig import merge_kubeconfig
from components.tunnel import SshTarget, running_tunnel, stop_tunnel
from tests.harness import FAKE_API_CREDENTIAL
from tests.helpers import free_port

ROOT = Path(__file__).resolve().parents[2]
KEY_MARKER = "MARKER-KUBECONFIG-SSH-KEY-4e0b"


def stack_kubeconfig(name: str, server: str) -> dict:
    document = yaml.safe_load(FAKE_API_CREDENTIAL.format(ca="Q0E=", token=f"token-{name}"))
    document["clusters"][0] |= {"name": name}
    document["clusters"][0]["cluster"]["server"] = server
    document["users"][0]["name"] = name
    document["contexts"][0] = {"name": name, "context": {"cluster": name, "user": name}}
    document["current-context"] = name
    return document


def test_merge_replaces_only_the_stacks_own_entries() -> None:
    mine = stack_kubeconfig("work", "https://k8s.example.org")
    old = stack_kubeconfig("harbor-prod", "https://127.0.0.1:16443")
    existing = merge_kubeconfig(mine, old)
    assert existing["current-context"] == "work"  # the user's choice stays
    new = stack_kubeconfig("harbor-prod", "https://10.160.0.1:6443")
    merged = merge_kubeconfig(existing, new)
    assert [c["name"] for c in merged["clusters"]] == ["work", "harbor-prod"]
    assert merged["clusters"][1]["cluster"]["server"] == "https://10.160.0.1:6443"
    assert [u["user"]["token"] for u in merged["users"]] == ["token-work", "token-harbor-prod"]
    assert merged["current-context"] == "work"
    # an empty file gets the stack as its current context
    assert merge_kubeconfig(None, new)["current-context"] == "harbor-prod"


@pytest.fixture
def fake_pulumi(tmp_path: Path) -> tuple[Path, int]:
    """A `pulumi` that answers `stack output` and `config get` as the CLI would for a stack."""
    port = free_port()
    outputs = {
        "kubeconfig": yaml.safe_dump(stack_kubeconfig("harbor-prod", f"https://127.0.0.1:{port}")),
        "apiTunnel": {
            "host": "192.0.2.10",
            "port": 22,
            "user": "root",
            "hostKey": None,
            "localPort": port,
            "sshKeyConfig": "sshPrivateKey",
        },
    }
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (tmp_path / "outputs.json").write_text(json.dumps(outputs))
    script = bin_dir / "pulumi"
    script.write_text(
        "#!/bin/sh\n"
        f'echo "$*" >>"{tmp_path}/calls"\n'
        'case "$1 $2" in\n'
        f'  "stack output") cat "{tmp_path}/outputs.json" ;;\n'
        f'  "config get") echo "{KEY_MARKER}" ;;\n'
        '  *) echo "fake pulumi: $*" >&2; exit 1 ;;\n'
        "esac\n"
    )
    script.chmod(0o755)
    return tmp_path, port


def test_the_script_writes_a_private_context_and_opens_the_tunnel(
    fake_pulumi: tuple[Path, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    home, port = fake_pulumi
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(home))  # where the tunnel records itself, here and there
    kube = home / ".kube" / "config"
    kube.parent.mkdir()
    kube.write_text(yaml.safe_dump(stack_kubeconfig("work", "https://k8s.example.org")))
    env = {**os.environ, "PATH": f"{home / 'bin'}:{os.environ['PATH']}", "HOME": str(home)}
    env.pop("KUBECONFIG", None)
    try:
        result = subprocess.run(
            [str(ROOT / "scripts" / "kubeconfig"), "prod"], capture_output=True, text=True, env=env, timeout=60
        )
        assert result.returncode == 0, result.stderr
        assert f"tunnel 127.0.0.1:{port} -> 192.0.2.10: started" in result.stdout
        merged = yaml.safe_load(kube.read_text())
        assert [c["name"] for c in merged["contexts"]] == ["work", "harbor-prod"]
        assert merged["current-context"] == "work"
        assert kube.stat().st_mode & 0o077 == 0
        record = running_tunnel(port)
        assert record is not None and record["host"] == "192.0.2.10"
        # the key came from `pulumi config get` and went to the tunnel on its stdin, nowhere else
        assert "config get sshPrivateKey --path --stack prod" in (home / "calls").read_text()
        assert KEY_MARKER not in kube.read_text()
    finally:
        stop_tunnel(port)


def test_a_stack_without_outputs_is_refused_with_what_to_do(fake_pulumi: tuple[Path, int]) -> None:
    home, _ = fake_pulumi
    (home / "outputs.json").write_text("{}")
    env = {**os.environ, "PATH": f"{home / 'bin'}:{os.environ['PATH']}", "HOME": str(home)}
    result = subprocess.run([str(ROOT / "scripts" / "kubeconfig"), "prod"], capture_output=True, text=True, env=env)
    assert result.returncode == 1
    assert "stack prod has no kubeconfig output yet: run `pulumi up` first" in result.stderr


def test_behind_a_bastion_the_script_reads_both_keys_and_tunnels_through_it(
    fake_pulumi: tuple[Path, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    home, port = fake_pulumi
    outputs = json.loads((home / "outputs.json").read_text())
    outputs["apiTunnel"]["bastion"] = {
        "host": "198.51.100.5",
        "port": 2222,
        "user": "jump",
        "hostKey": None,
        "sshKeyConfig": "ssh.bastion.privateKey",
    }
    (home / "outputs.json").write_text(json.dumps(outputs))
    # Each config key answers with a key of its own, so a swapped key shows in the fingerprint.
    script = home / "bin" / "pulumi"
    script.write_text(
        script.read_text().replace(f'echo "{KEY_MARKER}"', f'echo "{KEY_MARKER}-$3"'),
    )
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(home))
    env = {**os.environ, "PATH": f"{home / 'bin'}:{os.environ['PATH']}", "HOME": str(home)}
    env.pop("KUBECONFIG", None)
    try:
        result = subprocess.run(
            [str(ROOT / "scripts" / "kubeconfig"), "prod"], capture_output=True, text=True, env=env, timeout=60
        )
        assert result.returncode == 0, result.stderr
        assert f"tunnel 127.0.0.1:{port} -> 192.0.2.10 via 198.51.100.5: started" in result.stdout
        calls = (home / "calls").read_text()
        assert "config get sshPrivateKey --path --stack prod" in calls
        assert "config get ssh.bastion.privateKey --path --stack prod" in calls
        expected = SshTarget(
            "192.0.2.10",
            22,
            "root",
            f"{KEY_MARKER}-sshPrivateKey\n",
            None,
            bastion=SshTarget("198.51.100.5", 2222, "jump", f"{KEY_MARKER}-ssh.bastion.privateKey\n", None),
        )
        record = running_tunnel(port)
        assert record is not None and record["target"] == expected.fingerprint()
    finally:
        stop_tunnel(port)
