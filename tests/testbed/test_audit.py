"""Security audit on booted nodes (issue 6): where the stack's secrets end up after a real apply.

One testbed for the module: n1 (server), n2 (agent) and the git server. Every secret of the stack
is a value unique to this run: the k3s token, the etcd S3 keys and the component secrets are
markers; the SSH key and the GitOps deploy key are fresh keys (they must work, so their own text
is the marker); the WireGuard private keys and an operator's key come from the program run. After
the whole graph is applied and the GitOps commit pushed:

- no marker is in a non-secret resource input (under mocks, the same config);
- no marker is in any process command line or environment: /proc/*/cmdline and /proc/*/environ of
  every process on this machine, so of every node and of the controller, sampled all through the
  apply and the push (a sampler that provably sees each node's processes), with the API tunnel
  running and forwarding, started from a process whose environment holds the stack's config as
  the language host hands it to the program (PULUMI_CONFIG, every secret decrypted);
- every file on a node that holds a marker is root's and readable by nobody else (0600), and the
  expected ones do hold them; nothing in the journal holds one;
- the key files (/etc/wireguard/*, /etc/rancher/k3s/config.yaml, registries.yaml and a registry's
  client key, the server's token files and kubeconfig) are 0600 root:root;
- no marker is in any object of the GitOps repository.

Before that: a wrong host-key pin makes every dial fail and nothing runs on the node. (The API
tunnel's pin is checked in test_testbed.py::test_api_tunnel_reaches_the_private_api.)
"""

from __future__ import annotations

import copy
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

import pytest

from components.remote import DIAL_ERROR_LIMIT, PER_DIAL_TIMEOUT
from components.tunnel import stop_tunnel
from tests.conftest import fake_private_key
from tests.harness import ProgramRun
from tests.testbed.netprobe import fetch_api
from tests.testbed.nodes import GIT_ADDRESS, GIT_REPO, Testbed, _keypair, call_in_netns
from tests.testbed.runner import CommandFailed, DialPolicy, Runner
from tests.testbed.stack import K3S_VERSION, MESH_INTERFACE, program, stack_config

pytestmark = pytest.mark.testbed

NODES = ["n1", "n2"]
SERVER = "n1"
RUN = secrets.token_hex(4)
TUNNEL_PORT = 16443
SEARCHED = "/etc /var /usr/local /root /home /opt /srv /tmp /run"
# On the testbed the stand-in writes the token files and the kubeconfig (k3s.yaml) as real k3s
# does; config.yaml and the WireGuard file are the product's own.
# k3s.registries: registries.yaml holds the registry password, the client key its own file.
REGISTRY_KEY = "/etc/rancher/k3s/space-harbor-registries/registry.harbor.test/client.key"
KEY_FILES = {
    "n1": [
        f"/etc/wireguard/{MESH_INTERFACE}.conf",
        "/etc/rancher/k3s/config.yaml",
        "/etc/rancher/k3s/registries.yaml",
        REGISTRY_KEY,
        "/etc/rancher/k3s/k3s.yaml",
        "/var/lib/rancher/k3s/server/token",
        "/var/lib/rancher/k3s/server/node-token",
        "/var/lib/rancher/k3s/server/agent-token",
    ],
    "n2": [
        f"/etc/wireguard/{MESH_INTERFACE}.conf",
        "/etc/rancher/k3s/config.yaml",
        "/etc/rancher/k3s/registries.yaml",
        REGISTRY_KEY,
    ],
}
# Files that must hold a marker, or the search below proved nothing.
EXPECTED_HOLDERS = {
    node: {
        f"/etc/wireguard/{MESH_INTERFACE}.conf",
        "/etc/rancher/k3s/config.yaml",
        "/etc/rancher/k3s/registries.yaml",
        REGISTRY_KEY,
    }
    for node in ("n1", "n2")
}


def marker(name: str) -> str:
    return f"MARKER-{name}-{RUN}"


def key_markers(private_key: str) -> list[str]:
    """The lines of an OpenSSH private key that are this key's own (not the common header/padding)."""
    body = [line for line in private_key.splitlines() if line and not line.startswith("-----")]
    return [line for line in body[1:] if len(line) >= 60]


@dataclass
class Audit:
    tb: Testbed
    gitops_key: str
    config: dict[str, Any]
    run: ProgramRun
    runner: Runner
    markers: dict[str, str] = field(default_factory=dict)


def audit_config(tb: Testbed, gitops_key: str) -> dict[str, Any]:
    return stack_config(
        tb,
        mesh={"operators": [{"name": "laptop", "meshAddress": "10.160.200.1"}]},
        k3s={
            "airgap": True,
            "version": K3S_VERSION,
            # long and varied enough for k3s.token's strength check
            "token": marker("K3S-TOKEN") + "-0f9a6c31b8e45d72",
            "agentToken": marker("K3S-AGENT-TOKEN") + "-0f9a6c31b8e45d72",
            "datastore": "etcd",
            "etcdSnapshots": {
                "s3Endpoint": "s3.harbor.test",
                "s3Bucket": "snapshots",
                "s3AccessKey": marker("S3-ACCESS"),
                "s3SecretKey": marker("S3-SECRET"),
            },
            "registries": {
                "mirrors": {"docker.io": {"endpoint": ["https://registry.harbor.test"]}},
                "configs": {
                    "registry.harbor.test": {
                        "auth": {"username": "puller", "password": marker("REGISTRY-PASSWORD")},
                        "tls": {
                            "certFile": "/etc/ssl/certs/registry-client.pem",
                            "keyFile": (
                                "-----BEGIN EC PRIVATE KEY-----\n"
                                f"{marker('REGISTRY-CLIENT-KEY')}\n"
                                "-----END EC PRIVATE KEY-----\n"
                            ),
                        },
                    }
                },
            },
        },
        gitops={
            "repoUrl": f"root@{GIT_ADDRESS}:{GIT_REPO}",
            "sshPrivateKey": gitops_key,
            "knownHosts": tb.git_known_hosts(),
            # Argo CD's read-only key: it goes only to Argo CD's repository Secret, never to a node or git.
            "argocdSshPrivateKey": fake_private_key(marker("ARGOCD-READ-KEY")),
        },
        components={
            "traefik": {"acmeEmail": "ops@harbor.test"},
            "infracheck": {"host": "health.harbor.test"},
            "telegraf": {"tlsKey": marker("TELEGRAF-KEY")},
            "smtp": {"relayPassword": marker("SMTP-PASSWORD")},
            "backup": {"token": marker("BACKUP-TOKEN")},
        },
    )


@pytest.fixture(scope="module")
def audit(testbed2_git: Testbed) -> Iterator[Audit]:
    tb = testbed2_git
    gitops_key, gitops_public = _keypair()
    tb.ssh("git", "cat >>/root/.ssh/authorized_keys", input=f"{gitops_public} gitops-deploy-key\n")
    config = audit_config(tb, gitops_key)
    run, runner = program(tb, config)
    found = _config_markers(config)
    for i, line in enumerate(key_markers(tb.client_key)):
        found[f"sshPrivateKey line {i + 2}"] = line
    for i, line in enumerate(key_markers(gitops_key)):
        found[f"gitops.sshPrivateKey line {i + 2}"] = line
    for command in run.commands():
        if command.name.endswith("-mesh"):
            (key,) = re.findall(r"PrivateKey = (\S+)", command.inputs["stdin"])
            found[f"{command.name} WireGuard private key"] = key
    (operator_key,) = re.findall(r"PrivateKey = (\S+)", run.outputs["operatorConfigs"]["laptop"])
    found["operator laptop WireGuard private key"] = operator_key
    state = Audit(tb, gitops_key, config, run, runner, found)
    try:
        yield state
    finally:
        runner.close()


def _config_markers(config: dict[str, Any]) -> dict[str, str]:
    text = json.dumps(config)
    return {value: value for value in sorted(set(re.findall(rf"MARKER-[A-Z0-9-]+-{RUN}", text)))}


def find_markers(markers: dict[str, str], text: str) -> list[str]:
    return [name for name, value in markers.items() if value in text]


# --- host keys ---------------------------------------------------------------------------------


def test_a_wrong_host_key_pin_is_refused(audit: Audit) -> None:
    tb = audit.tb
    config = copy.deepcopy(audit.config)
    wrong = next(n for n in config["nodes"] if n["name"] == "n2")
    wrong["sshHostKey"] = tb.nodes["n1"].host_key  # another node's key: a machine in the middle
    _, runner = program(tb, config)
    with runner:
        assert runner.by_name["n2-mesh"].inputs["connection"]["hostKey"] == tb.nodes["n1"].host_key
        with pytest.raises(CommandFailed) as info:
            runner.run_one("n2-mesh")
    failure = info.value.result
    policy = DialPolicy(DIAL_ERROR_LIMIT, PER_DIAL_TIMEOUT)
    # pulumi-command treats a host-key mismatch as a failed dial: retried, then the step fails.
    assert failure.dial_failed and failure.dials == policy.max_dials, failure
    assert "Host key verification failed" in failure.stderr, failure.stderr
    assert tb.ssh("n2", f"test -e /etc/wireguard/{MESH_INTERFACE}.conf", check=False).returncode != 0, (
        "n2-mesh ran on a host whose key did not match its pin"
    )


# --- where the secrets are after an apply ---------------------------------------------------------

SAMPLER = textwrap.dedent(
    """
    import json, os, select, sys, time
    markers = json.load(open(sys.argv[1]))
    seen, leaks, environs, tunnels, sweeps, started = {}, set(), 0, set(), 0, time.monotonic()
    while not select.select([sys.stdin], [], [], 0)[0]:
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as handle:
                    raw = handle.read()
                ns = os.readlink(f"/proc/{pid}/ns/pid")
                with open(f"/proc/{pid}/environ", "rb") as handle:
                    environ = handle.read().decode(errors="replace")
            except OSError:
                continue
            command = raw.replace(b"\\0", b" ").decode(errors="replace").strip()
            if raw:
                seen.setdefault(ns, set()).add(command)
            environs += 1
            if "components.tunnel serve" in command:
                tunnels.add(pid)
            for name, value in markers.items():
                if value in environ:
                    leaks.add((ns, command[:80], name))
        sweeps += 1
        time.sleep(0.002)
    elapsed = time.monotonic() - started
    json.dump({"sweeps": sweeps, "seconds": elapsed, "seen": {k: sorted(v) for k, v in seen.items()},
               "environ_leaks": sorted(leaks), "environs": environs, "tunnels": sorted(tunnels)}, sys.stdout)
    """
)


class CmdlineSampler:
    """Every distinct /proc/*/cmdline on this machine, by PID namespace, and every /proc/*/environ
    that holds a marker, until `stop`."""

    def __init__(self, markers: dict[str, str], workdir: Path) -> None:
        # The markers reach the sampler in a root-only file, not on its command line.
        listing = workdir / "sampler-markers.json"
        listing.touch(mode=0o600)
        listing.write_text(json.dumps(markers))
        self.proc = subprocess.Popen(
            [sys.executable, "-c", SAMPLER, str(listing)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )

    def stop(self) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.close()
        out = self.proc.stdout.read()
        self.proc.wait(timeout=30)
        return json.loads(out)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


def open_api_tunnel_as_the_program_does(tb: Testbed, config: dict[str, Any], runtime: Path) -> bytes:
    """Start the API tunnel from an environment like the program's (PULUMI_CONFIG holds every secret
    of the stack, decrypted, and the state passphrase is exported), and fetch through it."""
    from components.tunnel import SshTarget, ensure_tunnel

    server = tb.nodes[SERVER]
    target = SshTarget(server.address, 22, "root", tb.client_key, server.host_key)
    program_environment = {
        "PULUMI_CONFIG": json.dumps({f"space-harbor:{key}": value for key, value in config.items()}),
        "PULUMI_CONFIG_PASSPHRASE": marker("STATE-PASSPHRASE"),
        "XDG_RUNTIME_DIR": str(runtime),
    }
    with mock.patch.dict(os.environ, program_environment):
        assert call_in_netns(tb.ctl, ensure_tunnel, target, TUNNEL_PORT, stack="space-harbor/audit") == "started"
    return call_in_netns(tb.ctl, fetch_api, TUNNEL_PORT)


def pid_namespace(tb: Testbed, node: str) -> str:
    return subprocess.run(
        ["readlink", f"/proc/{tb.container_pid(node)}/ns/pid"], capture_output=True, text=True, check=True
    ).stdout.strip()


HOLDERS = r"""
set -u
umask 077
pat=$(mktemp /var/tmp/shtb-markers.XXXXXX)
cat >"$pat"
find {searched} -xdev -type f ! -path "$pat" -print0 2>/dev/null | xargs -0 -r grep -l -F -f "$pat" 2>/dev/null |
    while read -r f; do stat -c '%a %U %G %n' "$f"; done
echo "##journal $(journalctl --no-pager -q -o cat 2>/dev/null | grep -c -F -f "$pat")"
rm -f "$pat"
"""


def test_secrets_stay_in_secret_inputs_root_only_files_and_nowhere_else(audit: Audit) -> None:
    from components.gitops import GitTreeProvider

    tb, run, runner, markers = audit.tb, audit.run, audit.runner, audit.markers
    assert len(markers) >= 12, sorted(markers)

    # Under mocks: no marker outside a secret input.
    for resource in run.resources:
        assert not find_markers(markers, resource.public_text()), f"{resource.type} {resource.name}"

    # The apply and the push, with every command line on the machine sampled throughout.
    namespaces = {pid_namespace(tb, node): node for node in NODES}
    canaries = {node: f"shtb-canary-{node}-{RUN}" for node in NODES}
    runtime = Path(tempfile.mkdtemp(prefix="shtb-audit-"))
    sought = {**markers, "STATE-PASSPHRASE": marker("STATE-PASSPHRASE")}
    sampler = CmdlineSampler(sought, runtime)
    try:
        for node, canary in canaries.items():
            # A process that lives 0.3 s: the sampler must catch processes this short on each node.
            tb.ssh(node, f"bash -c 'exec -a {canary} sleep 0.3'")
        started = time.monotonic()
        results = runner.apply()
        dynamic = [r for r in run.resources if r.type == "pulumi-python:dynamic:Resource" and "gitops" in r.name]
        assert len(dynamic) == 1, [r.name for r in dynamic]
        inputs = {k: v for k, v in dynamic[0].inputs.items() if k != "__provider"}
        call_in_netns(tb.ctl, GitTreeProvider().create, inputs)
        applied = time.monotonic() - started
        # Once the API is up, as `pulumi up` starts it; it runs until after the sampler stops.
        answer = open_api_tunnel_as_the_program_does(tb, audit.config, runtime)
        assert b"k3s stand-in API server" in answer, answer
        sampled = sampler.stop()
    finally:
        sampler.kill()
        with mock.patch.dict(os.environ, {"XDG_RUNTIME_DIR": str(runtime)}):
            stop_tunnel(TUNNEL_PORT)
        shutil.rmtree(runtime, ignore_errors=True)
    assert all(r.returncode == 0 for r in results)
    seen: dict[str, list[str]] = sampled["seen"]
    for ns, node in namespaces.items():
        lines = seen.get(ns, [])
        assert any(line.startswith(canaries[node]) for line in lines), f"the sampler missed {node}'s canary"
        assert any(line.startswith("bash -s -- ") for line in lines), f"the sampler saw no node script on {node}"
    leaks = [(ns, line, find_markers(markers, line)) for ns, lines in seen.items() for line in lines]
    leaks = [leak for leak in leaks if leak[2]]
    assert not leaks, f"secrets on a command line: {leaks}"
    # Environments: the tunnel's was read (it ran all along), and no process's held a secret.
    assert sampled["tunnels"], "the sampler never saw the API tunnel"
    assert not sampled["environ_leaks"], f"secrets in a process environment: {sampled['environ_leaks']}"
    print(
        f"\ncommand lines: {sum(len(v) for v in seen.values())} distinct, {sampled['environs']} environments read, "
        f"{sampled['sweeps']} sweeps of /proc in {sampled['seconds']:.1f}s (apply + push {applied:.1f}s)"
    )
    for ns, node in namespaces.items():
        programs = sorted({line.split()[0].rsplit("/", 1)[-1] for line in seen.get(ns, []) if line.split()})
        print(f"{node}: programs seen: {' '.join(programs)}")

    # On each node: which files hold a marker, their owner and mode; and the journal.
    patterns = "\n".join(markers.values()) + "\n"
    for node in NODES:
        out = tb.ssh(node, HOLDERS.format(searched=SEARCHED), input=patterns).stdout.splitlines()
        journal = int(out.pop().split()[-1])
        assert journal == 0, f"{node}: {journal} journal lines hold a secret"
        holders = {}
        for line in out:
            mode, user, group, path = line.split(" ", 3)
            holders[path] = (mode, user, group)
        assert EXPECTED_HOLDERS[node] <= set(holders), f"{node}: the search found {sorted(holders)}"
        for path, (mode, user, group) in holders.items():
            assert int(mode, 8) & 0o077 == 0 and user == "root", f"{node}: {path} holds a secret, {mode} {user}:{group}"
        print(f"{node}: secrets only in {', '.join(f'{p} ({m[0]})' for p, m in sorted(holders.items()))}")
    # An agent holds the agent token, and nothing of the server token (k3s: cluster admin).
    agent_files = tb.ssh("n2", f"grep -rlsF -e {marker('K3S-AGENT-TOKEN')} {SEARCHED} || true").stdout.split()
    # (and the stand-in's own record of its config, as k3s keeps its own files)
    assert "/etc/rancher/k3s/config.yaml" in agent_files, agent_files
    assert set(agent_files) <= {"/etc/rancher/k3s/config.yaml", "/var/lib/rancher/k3s/standin/agent.json"}
    server_token = tb.ssh("n2", f"grep -rlsF -e {marker('K3S-TOKEN')} {SEARCHED} || true").stdout.split()
    assert server_token == [], f"n2 holds the server token in {server_token}"

    # The key files: 0600 root:root, and /etc/wireguard holds nothing else.
    for node, paths in KEY_FILES.items():
        out = tb.ssh(node, "stat -c '%n %a %U %G' " + " ".join(paths)).stdout.splitlines()
        assert sorted(out) == sorted(f"{path} 600 root root" for path in paths), f"{node}: {out}"
        listing = tb.ssh(node, "ls -A /etc/wireguard").stdout.split()
        assert listing == [f"{MESH_INTERFACE}.conf"], f"{node}: /etc/wireguard holds {listing}"

    # The GitOps repository: the commit is there, and no object of the repo holds a marker.
    tree = tb.ssh("git", f"git -C {GIT_REPO} ls-tree -r --name-only main").stdout.split()
    assert "cluster/README.md" in tree, tree
    objects = tb.ssh(
        "git",
        f"pat=$(mktemp); cat >$pat; git -C {GIT_REPO} cat-file --batch-all-objects --batch | grep -c -a -F -f $pat; "
        "rm -f $pat",
        input=patterns,
        check=False,
    ).stdout.strip()
    assert objects == "0", f"{objects} lines of the GitOps repository hold a secret"
