"""scripts/kubeconfig: the stack's context merged into a kubeconfig without clobbering others, and
its tunnel opened, with only the Pulumi CLI's outputs (a fake `pulumi` here) and no program run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
import yaml

from components.kubeconfig import merge_into_file, merge_kubeconfig
from components.tunnel import SshTarget, ensure_tunnel, running_tunnel, stop_tunnel
from tests.fake_sshd import FakeSshd, ask
from tests.harness import FAKE_API_CREDENTIAL
from tests.helpers import free_tunnel_port

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
    port = free_tunnel_port()
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
    # A stack with files of its own (outputs-STACK.json, key-STACK) answers with those.
    script.write_text(
        "#!/bin/bash\n"
        f'echo "$*" >>"{tmp_path}/calls"\n'
        'stack=$(echo "$*" | sed -n "s/.*--stack \\([^ ]*\\).*/\\1/p")\n'
        'case "$1 $2" in\n'
        f'  "stack output") cat "{tmp_path}/outputs-$stack.json" 2>/dev/null || cat "{tmp_path}/outputs.json" ;;\n'
        f'  "config get") cat "{tmp_path}/key-$stack" 2>/dev/null || echo "{KEY_MARKER}" ;;\n'
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


# --- several stacks, side by side -------------------------------------------------------------------


def _script(home: Path, stack: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PATH": f"{home / 'bin'}:{os.environ['PATH']}", "HOME": str(home)}
    env.pop("KUBECONFIG", None)
    return subprocess.run(
        [str(ROOT / "scripts" / "kubeconfig"), stack], capture_output=True, text=True, env=env, timeout=60
    )


def _stack_outputs(home: Path, stack: str, server: FakeSshd, port: int) -> None:
    """What `pulumi up` of `stack` left: its context, and its tunnel to its own first server."""
    target = server.target()
    outputs = {
        "kubeconfig": yaml.safe_dump(stack_kubeconfig(f"harbor-{stack}", f"https://127.0.0.1:{port}")),
        "apiTunnel": {
            "host": target.host,
            "port": target.port,
            "user": target.user,
            "hostKey": target.host_key,
            "localPort": port,
            "stack": f"space-harbor/{stack}",
            "sshKeyConfig": "sshPrivateKey",
        },
    }
    (home / f"outputs-{stack}.json").write_text(json.dumps(outputs))
    (home / f"key-{stack}").write_text(target.private_key)


def test_the_script_opens_each_stacks_own_tunnel_side_by_side(
    fake_pulumi: tuple[Path, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    home, _ = fake_pulumi
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(home))
    servers = {stack: FakeSshd(stack) for stack in ("staging", "prod")}
    ports = {stack: free_tunnel_port() for stack in servers}
    try:
        for stack, server in servers.items():
            _stack_outputs(home, stack, server, ports[stack])
            result = _script(home, stack)
            assert result.returncode == 0, result.stderr
            assert f"tunnel 127.0.0.1:{ports[stack]} -> 127.0.0.1: started" in result.stdout
        merged = yaml.safe_load((home / ".kube" / "config").read_text())
        assert [c["name"] for c in merged["contexts"]] == ["harbor-staging", "harbor-prod"]
        for stack, port in ports.items():
            record = running_tunnel(port)
            assert record is not None and record["stack"] == f"space-harbor/{stack}"
            # Each context's server is its own stack's tunnel, and that reaches its own cluster.
            (cluster,) = [c for c in merged["clusters"] if c["name"] == f"harbor-{stack}"]
            assert cluster["cluster"]["server"] == f"https://127.0.0.1:{port}"
            assert ask(port) == f"api of {stack}\n".encode()
        # Again: both are reused, neither replaced.
        assert ": reused" in _script(home, "prod").stdout and ": reused" in _script(home, "staging").stdout
    finally:
        for port in ports.values():
            stop_tunnel(port)
        for server in servers.values():
            server.close()


def test_a_port_held_by_another_stack_leaves_the_kubeconfig_and_that_tunnel_alone(
    fake_pulumi: tuple[Path, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    home, port = fake_pulumi
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(home))
    staging = SshTarget("192.0.2.20", 22, "root", "MARKER-STAGING-KEY", None)
    try:
        assert ensure_tunnel(staging, port, stack="space-harbor/staging") == "started"
        before = running_tunnel(port)
        result = _script(home, "prod")  # its apiTunnel names the same port (k3s.tunnelPort set alike)
        assert result.returncode == 1
        assert f"k3s.tunnelPort: 127.0.0.1:{port} is held by the API tunnel of stack space-harbor/staging" in (
            result.stderr
        )
        assert running_tunnel(port) == before
        assert not (home / ".kube" / "config").exists()
    finally:
        stop_tunnel(port)


# --- the merge itself: kubectl's lock, symlinks ---------------------------------------------------


def test_the_merge_waits_for_kubectls_lock(tmp_path: Path) -> None:
    kube = tmp_path / "config"
    kube.write_text(yaml.safe_dump(stack_kubeconfig("work", "https://k8s.example.org")))
    lock = tmp_path / "config.lock"
    lock.touch()  # kubectl (client-go) is writing the file
    merging = threading.Thread(
        target=merge_into_file, args=(kube, stack_kubeconfig("harbor-prod", "https://127.0.0.1:16443"))
    )
    merging.start()
    time.sleep(1)
    assert "harbor-prod" not in kube.read_text(), "the merge wrote while kubectl held its lock"
    lock.unlink()
    merging.join(15)
    merged = yaml.safe_load(kube.read_text())
    assert [c["name"] for c in merged["contexts"]] == ["work", "harbor-prod"]
    assert not lock.exists()  # and it left no lock behind for kubectl to trip over


MERGER = textwrap.dedent(
    """
    import sys, time, yaml
    from pathlib import Path
    from components.kubeconfig import merge_into_file
    name, go = sys.argv[1], Path(sys.argv[2])
    while not go.exists():
        time.sleep(0.001)
    merge_into_file(Path(sys.argv[3]), yaml.safe_load(sys.stdin.read()))
    """
)


def test_merges_of_several_stacks_at_once_lose_none(tmp_path: Path) -> None:
    kube, go = tmp_path / "config", tmp_path / "go"
    names = [f"harbor-s{i}" for i in range(8)]
    mergers = [
        subprocess.Popen(
            [sys.executable, "-c", MERGER, name, str(go), str(kube)],
            stdin=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        for name in names
    ]
    for name, merger in zip(names, mergers, strict=True):
        assert merger.stdin is not None
        merger.stdin.write(yaml.safe_dump(stack_kubeconfig(name, "https://127.0.0.1:16443")))
        merger.stdin.close()
    time.sleep(1)
    go.touch()
    assert [merger.wait(60) for merger in mergers] == [0] * len(names)
    merged = yaml.safe_load(kube.read_text())
    assert sorted(c["name"] for c in merged["contexts"]) == names


def test_a_symlinked_kubeconfig_is_written_through_and_stays_a_link(tmp_path: Path) -> None:
    real = tmp_path / "dotfiles" / "kubeconfig"
    real.parent.mkdir()
    real.write_text(yaml.safe_dump(stack_kubeconfig("work", "https://k8s.example.org")))
    real.chmod(0o600)
    link = tmp_path / ".kube" / "config"
    link.parent.mkdir()
    link.symlink_to("../dotfiles/kubeconfig")
    merge_into_file(link, stack_kubeconfig("harbor-prod", "https://127.0.0.1:16443"))
    assert link.is_symlink() and os.readlink(link) == "../dotfiles/kubeconfig"
    assert [c["name"] for c in yaml.safe_load(real.read_text())["contexts"]] == ["work", "harbor-prod"]
    assert real.stat().st_mode & 0o077 == 0
    assert sorted(p.name for p in link.parent.iterdir()) == ["config"]  # no stray temporary or lock
