"""The preflight's parameters, its config keys, and the script where this machine can run it.

The checks themselves are shown failing and passing on booted nodes in
tests/testbed/test_preflight.py; here are the pure renderer, the refusals of bad keys, the
script's lint and parameter handling, and the cgroup v2 branch, which the testbed's cgroup v1
containers cannot show (a private mount namespace can).
"""

from __future__ import annotations

import copy
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from components.config import (
    PREFLIGHT_CHECKS,
    PREFLIGHT_REQUIRED,
    SKIPPABLE_PREFLIGHT_CHECKS,
    ConfigError,
    HarborConfig,
    load_config,
    read_pulumi_config,
)
from components.render.preflight import preflight_env
from components.render.remote import node_script, script_payload
from tests.conftest import base_config, etcd_config, mesh_off_config, pinned
from tests.helpers import STANDALONE_LIBRARY, namespace_problem, shellcheck

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "components" / "scripts" / "preflight.sh"

# What k3s binds, by hand from its components: kubelet 10250 (+ health 10248), kube-proxy 10249 and
# 10256, containerd streaming 10010, the local load balancer or apiserver 6444; servers add the
# supervisor/API 6443, controller-manager 10257, cloud-controller-manager 10258, scheduler 10259;
# embedded etcd 2379-2381.
AGENT_TCP = "6444,10010,10248,10249,10250,10256"
SERVER_TCP = "6443,6444,10010,10248,10249,10250,10256,10257,10258,10259"
ETCD_SERVER_TCP = "2379,2380,2381,6443,6444,10010,10248,10249,10250,10256,10257,10258,10259"


def _config(raw: dict[str, Any]) -> HarborConfig:
    return load_config(raw)


def _env(raw: dict[str, Any], name: str) -> dict[str, str]:
    config = _config(raw)
    node = next(n for n in config.nodes if n.name == name)
    return preflight_env(config, node)


# --- preflight_env ------------------------------------------------------------------------------


def test_single_server_is_the_bootstrap_server_with_the_server_ports() -> None:
    env = _env(base_config(agents=1), "server-1")
    assert env == {
        "HARBOR_NODE_NAME": "server-1",
        "HARBOR_K3S_ROLE": "server",
        "HARBOR_K3S_BOOTSTRAP": "true",
        "HARBOR_K3S_VERSION": "v1.31.4+k3s1",
        "HARBOR_K3S_SECRETS_ENCRYPTION": "true",
        "HARBOR_K3S_TCP_PORTS": SERVER_TCP,
        "HARBOR_K3S_UDP_PORTS": "8472",
        "HARBOR_MESH_ENABLED": "true",
        "HARBOR_MESH_PORT": "51871",
        "HARBOR_MESH_INTERFACE": "wg-harbor",
        "HARBOR_MESH_MTU": "1420",
        "HARBOR_MESH_ENDPOINT": "192.0.2.10",
        "HARBOR_PEER_SERVERS": "",
        "HARBOR_PREFLIGHT_SKIP": "",
        "HARBOR_NFT_TABLE": "space_harbor",
    }


def test_agent_needs_no_server_ports_and_never_bootstraps() -> None:
    env = _env(base_config(agents=1), "agent-1")
    assert env["HARBOR_K3S_ROLE"] == "agent"
    assert env["HARBOR_K3S_BOOTSTRAP"] == "false"
    assert env["HARBOR_K3S_TCP_PORTS"] == AGENT_TCP
    assert env["HARBOR_K3S_UDP_PORTS"] == "8472"
    assert env["HARBOR_PEER_SERVERS"] == ""
    assert env["HARBOR_MESH_ENDPOINT"] == "192.0.2.21"


def test_etcd_servers_need_etcd_ports_and_only_the_bootstrap_server_knows_its_peers() -> None:
    raw = etcd_config()
    first = _env(raw, "server-1")
    assert first["HARBOR_K3S_BOOTSTRAP"] == "true"
    assert first["HARBOR_K3S_TCP_PORTS"] == ETCD_SERVER_TCP
    # the others' mesh addresses: the bootstrap check asks them over the mesh
    assert first["HARBOR_PEER_SERVERS"] == "10.160.0.2,10.160.0.3"
    for name in ("server-2", "server-3"):
        env = _env(raw, name)
        assert env["HARBOR_K3S_BOOTSTRAP"] == "false"
        assert env["HARBOR_K3S_TCP_PORTS"] == ETCD_SERVER_TCP
        assert env["HARBOR_PEER_SERVERS"] == ""
    assert _env(raw, "agent-1")["HARBOR_K3S_TCP_PORTS"] == AGENT_TCP


def test_mesh_off_uses_private_addresses_and_flannels_wireguard_port() -> None:
    raw = mesh_off_config()
    for i, (name, private) in enumerate((("server-2", "172.16.0.99"), ("server-3", "172.16.0.98")), start=1):
        raw["nodes"].insert(
            i, pinned({"name": name, "role": "server", "host": f"192.0.2.{10 + i}", "privateAddress": private})
        )
    raw["k3s"] |= {"datastore": "etcd", "firstServer": "server-1"}
    env = _env(raw, "server-1")
    assert env["HARBOR_MESH_ENABLED"] == "false"
    assert env["HARBOR_K3S_UDP_PORTS"] == "51820"
    assert env["HARBOR_PEER_SERVERS"] == "172.16.0.99,172.16.0.98"


def test_host_gw_needs_no_udp_port() -> None:
    raw = mesh_off_config()
    raw["k3s"] = {"flannelBackend": "host-gw"}
    assert _env(raw, "agent-1")["HARBOR_K3S_UDP_PORTS"] == ""


def test_skips_merge_the_global_and_the_node_list_once_each_in_check_order() -> None:
    raw = base_config(agents=2)
    raw["preflight"] = {"skip": ["swap", "timeSync"]}
    raw["nodes"][1]["preflightSkip"] = ["hostname", "swap", "os"]
    assert _env(raw, "agent-1")["HARBOR_PREFLIGHT_SKIP"] == "os,swap,timeSync,hostname"
    assert _env(raw, "agent-2")["HARBOR_PREFLIGHT_SKIP"] == "swap,timeSync"


def test_secrets_encryption_key_reaches_the_check_and_mesh_settings_too() -> None:
    raw = base_config(agents=0)
    raw["k3s"] = {"secretsEncryption": False}
    raw["mesh"] = {"mtu": 1380, "listenPort": 51900, "interface": "wg0"}
    raw["nodes"][0]["endpoint"] = "harbor-1.example.org"
    env = _env(raw, "server-1")
    assert env["HARBOR_K3S_SECRETS_ENCRYPTION"] == "false"
    assert (env["HARBOR_MESH_MTU"], env["HARBOR_MESH_PORT"], env["HARBOR_MESH_INTERFACE"]) == ("1380", "51900", "wg0")
    assert env["HARBOR_MESH_ENDPOINT"] == "harbor-1.example.org"


def test_the_same_config_in_another_order_gives_every_node_the_same_parameters() -> None:
    # A changed stdin re-runs the step: reordering `nodes` (here the agents and servers 2-3; who
    # bootstraps is the model's choice) must not touch any preflight.
    raw = etcd_config()
    raw["nodes"] += [
        pinned({"name": f"agent-{i}", "role": "agent", "host": f"192.0.2.{40 + i}", "meshAddress": f"10.160.2.{i}"})
        for i in range(2, 5)
    ]
    reordered = copy.deepcopy(raw)
    reordered["nodes"] = [raw["nodes"][0], raw["nodes"][2], raw["nodes"][1], *reversed(raw["nodes"][3:])]
    before, after = _config(raw), _config(reordered)
    for node in before.nodes:
        twin = next(n for n in after.nodes if n.name == node.name)
        assert preflight_env(before, node) == preflight_env(after, twin) == preflight_env(before, node)


def test_adding_a_node_changes_no_other_nodes_parameters_but_the_bootstrap_servers_peers() -> None:
    raw = etcd_config()
    grown = copy.deepcopy(raw)
    grown["nodes"].append(
        pinned({"name": "agent-9", "role": "agent", "host": "192.0.2.99", "meshAddress": "10.160.9.9"})
    )
    before, after = _config(raw), _config(grown)
    for node in before.nodes:
        assert preflight_env(before, node) == preflight_env(after, node), node.name

    # Two more servers (etcd needs 3 or 5): only the bootstrap server's peer list changes.
    five = copy.deepcopy(raw)
    five["nodes"] += [
        pinned({"name": f"server-{i}", "role": "server", "host": f"192.0.2.{10 + i}", "meshAddress": f"10.160.0.{i}"})
        for i in (4, 5)
    ]
    after = _config(five)
    changed = {n.name for n in before.nodes if preflight_env(before, n) != preflight_env(after, n)}
    assert changed == {"server-1"}
    assert preflight_env(after, after.nodes[0])["HARBOR_PEER_SERVERS"] == "10.160.0.2,10.160.0.3,10.160.0.4,10.160.0.5"


def test_parameters_hold_no_secret_and_make_a_payload() -> None:
    config = _config(etcd_config())
    secrets = config.secret_values()
    assert secrets
    for node in config.nodes:
        env = preflight_env(config, node)
        assert all(re.fullmatch(r"HARBOR_[A-Z0-9_]+", key) for key in env)
        for value in env.values():
            assert isinstance(value, str)
            assert not any(secret in value for secret in secrets)
        payload = script_payload(node_script("preflight.sh"), env)
        assert payload.endswith('__harbor_main "$@" </dev/null\n')


# --- config -----------------------------------------------------------------------------------


def _refusal(raw: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as refused:
        load_config(raw)
    return str(refused.value)


def test_defaults_skip_nothing_and_encrypt_secrets() -> None:
    config = _config(base_config(agents=1))
    assert config.preflight.skip == []
    assert all(node.preflight_skip == [] for node in config.nodes)
    assert config.k3s.secrets_encryption is True


def test_unknown_check_name_is_refused_naming_the_key_and_the_valid_names() -> None:
    raw = base_config(agents=1)
    raw["preflight"] = {"skip": ["swap", "swapp"]}
    message = _refusal(raw)
    assert message.count("\n  ") == 1
    assert "preflight.skip[1]: 'swapp' is not a preflight check; valid names: " in message
    for name in ("os", "arch", "cgroups", "swap", "ports", "timeSync", "hostname", "mtu", "bootstrap"):
        assert name in message.split("valid names: ")[1]


def test_checks_that_guard_a_running_server_cannot_be_skipped() -> None:
    for name in ("role", "secretsEncryption"):
        raw = base_config(agents=1)
        raw["nodes"][1]["preflightSkip"] = [name]
        message = _refusal(raw)
        assert f"nodes[1].preflightSkip[0]: '{name}' cannot be skipped" in message
        assert name not in message.split("valid names: ")[1].split(", ")


def test_preflight_is_a_top_level_key_the_program_reads() -> None:
    raw = {"preflight": '{"skip": ["mtu"]}', "sshPrivateKey": "k"}
    read = read_pulumi_config(lambda key: raw.get(key.split(":", 1)[1]))
    assert read["preflight"] == '{"skip": ["mtu"]}'


def test_check_names_agree_between_the_model_and_the_script() -> None:
    text = SCRIPT.read_text()
    listed = re.search(r"^pf_checks=\(([^)]*)\)$", text, re.MULTILINE)
    required = re.search(r"^pf_required_csv=(\S+)$", text, re.MULTILINE)
    assert listed and required
    assert tuple(listed.group(1).split()) == PREFLIGHT_CHECKS
    assert set(required.group(1).split(",")) == set(PREFLIGHT_REQUIRED)
    assert set(SKIPPABLE_PREFLIGHT_CHECKS) == set(PREFLIGHT_CHECKS) - PREFLIGHT_REQUIRED
    for check in PREFLIGHT_CHECKS:
        assert re.search(rf"^pf_check_{check}\(\) {{$", text, re.MULTILINE), check


# --- the script -------------------------------------------------------------------------------


def test_script_is_shellcheck_clean() -> None:
    result = shellcheck("-x", str(SCRIPT))
    assert result.returncode == 0, result.stdout + result.stderr


def test_delivered_payload_is_shellcheck_clean(tmp_path: Path) -> None:
    config = _config(etcd_config())
    payload = tmp_path / "payload.sh"
    payload.write_text(script_payload(node_script("preflight.sh"), preflight_env(config, config.nodes[0])))
    # SC1091: the standalone `. lib.sh` is not followed; in the payload it never runs, lib.sh is inside.
    result = shellcheck("-s", "bash", "-e", "SC1091", str(payload))
    assert result.returncode == 0, result.stdout + result.stderr


def test_script_header_and_final_status_line() -> None:
    text = SCRIPT.read_text()
    assert text.startswith("#!/usr/bin/env bash\n")
    assert "\nset -euo pipefail\n" in text
    assert text.rstrip().endswith('echo "space-harbor: preflight.sh $harbor_action: ok"')
    assert text.count(STANDALONE_LIBRARY) == 1
    for construct in ("BASH_SOURCE", '"$0"', "${0"):
        assert construct not in text.replace(STANDALONE_LIBRARY, ""), construct


def _run_payload(env: dict[str, str], action: str = "check") -> subprocess.CompletedProcess[str]:
    payload = script_payload(node_script("preflight.sh"), env)
    return subprocess.run(
        ["bash", "-s", "--", action],
        input=payload,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
    )


def test_unknown_action_and_bad_parameters_are_refused_before_any_check() -> None:
    config = _config(base_config(agents=1))
    env = preflight_env(config, config.nodes[1])
    result = _run_payload(env, "explode")
    assert result.returncode == 1
    assert "space-harbor: preflight.sh explode: error: unknown action 'explode'; use check" in result.stderr
    for key, value, expected in (
        ("HARBOR_PREFLIGHT_SKIP", "swap,bogus", "HARBOR_PREFLIGHT_SKIP names 'bogus', which is not a check"),
        ("HARBOR_PREFLIGHT_SKIP", "role", "HARBOR_PREFLIGHT_SKIP names 'role', which cannot be skipped"),
        ("HARBOR_K3S_ROLE", "master", "HARBOR_K3S_ROLE must be server or agent (got 'master')"),
        ("HARBOR_K3S_TCP_PORTS", "6443;reboot", "must be comma lists of ports"),
        ("HARBOR_NODE_NAME", "", "HARBOR_NODE_NAME must be the node's name"),
    ):
        result = _run_payload({**env, key: value})
        assert result.returncode == 1, key
        assert expected in result.stderr, result.stderr
        # refused before any check ran: no check printed anything
        assert "preflight agent-1:" not in result.stdout + result.stderr


@pytest.mark.skipif(Path("/etc/rancher").exists(), reason="k3s is installed on this machine; role would judge it")
def test_a_check_that_cannot_run_is_a_problem_line_not_a_pass(tmp_path: Path) -> None:
    # A broken tool (uname exits 1) ends the check under errexit; the run says so and goes on.
    shim = tmp_path / "bin"
    shim.mkdir()
    (shim / "uname").write_text("#!/bin/sh\necho 'uname: cannot read the machine' >&2\nexit 1\n")
    (shim / "uname").chmod(0o755)
    config = _config(base_config(agents=1))
    others = ",".join(check for check in SKIPPABLE_PREFLIGHT_CHECKS if check != "arch")
    env = {**preflight_env(config, config.nodes[1]), "HARBOR_PREFLIGHT_SKIP": others}
    payload = script_payload(node_script("preflight.sh"), env)
    result = subprocess.run(
        ["bash", "-s", "--", "check"],
        input=payload,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": f"{shim}:{os.environ.get('PATH', '/usr/bin:/bin')}"},
    )
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert "uname: cannot read the machine" in lines
    assert [line for line in lines if line.startswith("space-harbor: preflight agent-1:")] == [
        "space-harbor: preflight agent-1: arch: the check could not run (exit 1; the lines above say why); "
        "fix what they report, or add arch to preflight.skip to go on without it"
    ]
    assert lines[-1] == "space-harbor: preflight.sh check: 1 check failed on agent-1"
    # the checks after it still ran
    assert "space-harbor: preflight agent-1: secretsEncryption: ok (" in result.stdout


# --- cgroup v2, in a private mount namespace ------------------------------------------------------


CGROUP_V2_PROBLEM = namespace_problem(
    ["unshare", "--mount", "--propagation", "private", "sh", "-c", "mount -t cgroup2 none /mnt"],
    ("unshare",),
    "a private mount namespace with cgroup2 mounted",
)

# Everything but cgroups is skipped: the other checks would judge the machine running the tests.
_ONLY_CGROUPS = ",".join(check for check in SKIPPABLE_PREFLIGHT_CHECKS if check != "cgroups")

_MOUNT_V2 = """
set -e
mount -t cgroup2 none /sys/fs/cgroup
if [ -n "$CONTROLLERS" ]; then
    printf '%s\\n' "$CONTROLLERS" >"$FAKE"
    mount --bind "$FAKE" /sys/fs/cgroup/cgroup.controllers
fi
stat -fc %T /sys/fs/cgroup >&2
exec bash -s -- check <"$PAYLOAD"
"""


def _run_in_cgroup_v2(tmp_path: Path, controllers: str) -> subprocess.CompletedProcess[str]:
    # Only this mount namespace sees the cgroup2 mount over /sys/fs/cgroup; the host keeps its own.
    # With `controllers` the root's controller list is replaced (bind mount); without, it is the
    # real one, which lacks memory wherever the memory controller is bound to a v1 hierarchy.
    config = _config(base_config(agents=1))
    env = {**preflight_env(config, config.nodes[1]), "HARBOR_PREFLIGHT_SKIP": _ONLY_CGROUPS}
    payload = tmp_path / "payload.sh"
    payload.write_text(script_payload(node_script("preflight.sh"), env))
    return subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "bash", "-c", _MOUNT_V2],
        capture_output=True,
        text=True,
        timeout=60,
        env={
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "FAKE": str(tmp_path / "controllers"),
            "CONTROLLERS": controllers,
            "PAYLOAD": str(payload),
        },
    )


@pytest.mark.skipif(CGROUP_V2_PROBLEM is not None, reason=CGROUP_V2_PROBLEM or "")
@pytest.mark.skipif(Path("/etc/rancher").exists(), reason="k3s is installed on this machine; role would judge it")
def test_cgroup_v2_without_the_memory_controller_fails_with_the_kernel_command_line_fix(tmp_path: Path) -> None:
    controllers = "cpuset cpu io pids"
    result = _run_in_cgroup_v2(tmp_path, controllers)
    assert "cgroup2fs" in result.stderr
    assert result.returncode == 1, result.stdout + result.stderr
    problems = [line for line in result.stderr.splitlines() if line.startswith("space-harbor: preflight agent-1:")]
    assert problems == [
        "space-harbor: preflight agent-1: cgroups: cgroup v2 is mounted but its memory controller is missing "
        f"(/sys/fs/cgroup/cgroup.controllers: {controllers}), and k3s needs it; enable it on the kernel "
        "command line with cgroup_memory=1 cgroup_enable=memory (on a Raspberry Pi: at the end of the one line in "
        "/boot/firmware/cmdline.txt, or /boot/cmdline.txt on older images) and reboot"
    ]
    assert result.stderr.splitlines()[-1] == "space-harbor: preflight.sh check: 1 check failed on agent-1"


@pytest.mark.skipif(CGROUP_V2_PROBLEM is not None, reason=CGROUP_V2_PROBLEM or "")
@pytest.mark.skipif(Path("/etc/rancher").exists(), reason="k3s is installed on this machine; role would judge it")
def test_a_real_cgroup2_mount_without_memory_fails(tmp_path: Path) -> None:
    with open("/proc/cgroups") as table:
        memory = [line.split() for line in table if line.startswith("memory")]
    if not memory or memory[0][1] == "0":
        pytest.skip("the memory controller is not bound to a v1 hierarchy here, so cgroup2 would offer it")
    result = _run_in_cgroup_v2(tmp_path, "")
    assert result.returncode == 1, result.stdout + result.stderr
    match = re.search(r"cgroups: cgroup v2 is mounted but its memory controller is missing \(([^)]*)\)", result.stderr)
    assert match and "memory" not in match.group(1).split(": ", 1)[1].split()


@pytest.mark.skipif(CGROUP_V2_PROBLEM is not None, reason=CGROUP_V2_PROBLEM or "")
@pytest.mark.skipif(Path("/etc/rancher").exists(), reason="k3s is installed on this machine; role would judge it")
def test_cgroup_v2_with_the_memory_controller_passes(tmp_path: Path) -> None:
    result = _run_in_cgroup_v2(tmp_path, "cpuset cpu io memory pids")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "space-harbor: preflight agent-1: cgroups: ok (cgroup v2 with the memory controller)" in result.stdout
    assert result.stdout.splitlines()[-1] == "space-harbor: preflight.sh check: ok"


# --- the os check at every release boundary, against a fake os-release ---------------------------

# Everything but os is skipped: the other checks would judge the machine running the tests.
_ONLY_OS = ",".join(check for check in SKIPPABLE_PREFLIGHT_CHECKS if check != "os")

# One release on each side of every boundary the check draws, and the comparisons a string or a
# wrong regex would get wrong (9 > 11 as text, 9.10 > 20.04 as text).
OS_RELEASES = [
    ("debian", "10", False),
    ("debian", "11", True),
    ("debian", "12", True),
    ("debian", "9", False),
    ("debian", "", True),  # testing or unstable: no VERSION_ID
    ("raspbian", "10", False),
    ("raspbian", "11", True),
    ("ubuntu", "18.04", False),
    ("ubuntu", "19.10", False),
    ("ubuntu", "20.04", True),
    ("ubuntu", "20.10", True),
    ("ubuntu", "9.10", False),
    ("ubuntu", "24.04", True),
    ("fedora", "40", False),
    ("linuxmint", "21", False),
]

OS_RELEASE_PROBLEM = namespace_problem(
    ["unshare", "--mount", "--propagation", "private", "sh", "-c", "mount --bind /dev/null /etc/hostname"],
    ("unshare",),
    "a private mount namespace with a bind mount over /etc",
)

_FAKE_OS = """
set -e
# /run/systemd/system says systemd runs (or, absent, that it does not) in this namespace only.
mount -t tmpfs tmpfs /run
if [ "$SYSTEMD" = yes ]; then mkdir -p /run/systemd/system; fi
: >"$FAKE"
mount --bind "$FAKE" /etc/os-release
while IFS=' ' read -r id version; do
    {
        echo "ID=$id"
        if [ -n "$version" ]; then echo "VERSION_ID=\\"$version\\""; fi
        echo "PRETTY_NAME=\\"$id ${version:-(no version)}\\""
    } >"$FAKE"
    set +e
    bash -s -- check <"$PAYLOAD" >"$OUT/$id-$version.out" 2>"$OUT/$id-$version.err"
    echo $? >"$OUT/$id-$version.rc"
    set -e
done <"$CASES"
"""


def _os_check(tmp_path: Path, releases: list[tuple[str, str]], systemd: bool = True) -> dict[str, tuple[int, str]]:
    """(exit code, output) of the os check for each (ID, VERSION_ID), keyed "id-version"."""
    config = _config(base_config(agents=1))
    env = {**preflight_env(config, config.nodes[1]), "HARBOR_PREFLIGHT_SKIP": _ONLY_OS}
    payload = tmp_path / "payload.sh"
    payload.write_text(script_payload(node_script("preflight.sh"), env))
    cases = tmp_path / "cases"
    cases.write_text("".join(f"{id_} {version}\n" for id_, version in releases))
    out = tmp_path / "out"
    out.mkdir()
    result = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "bash", "-c", _FAKE_OS],
        capture_output=True,
        text=True,
        timeout=120,
        env={
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "FAKE": str(tmp_path / "os-release"),
            "PAYLOAD": str(payload),
            "CASES": str(cases),
            "OUT": str(out),
            "SYSTEMD": "yes" if systemd else "no",
        },
    )
    assert result.returncode == 0, result.stderr
    return {
        f"{id_}-{version}": (
            int((out / f"{id_}-{version}.rc").read_text()),
            (out / f"{id_}-{version}.out").read_text() + (out / f"{id_}-{version}.err").read_text(),
        )
        for id_, version in releases
    }


@pytest.mark.skipif(OS_RELEASE_PROBLEM is not None, reason=OS_RELEASE_PROBLEM or "")
@pytest.mark.skipif(Path("/etc/rancher").exists(), reason="k3s is installed on this machine; role would judge it")
def test_os_check_at_every_release_boundary(tmp_path: Path) -> None:
    results = _os_check(tmp_path, [(id_, version) for id_, version, _ in OS_RELEASES])
    for id_, version, supported in OS_RELEASES:
        rc, output = results[f"{id_}-{version}"]
        label = f"{id_} {version or '(no VERSION_ID)'}"
        if supported:
            assert rc == 0, f"{label} was refused:\n{output}"
            assert f"space-harbor: preflight agent-1: os: ok ({id_} " in output, label
        else:
            assert rc == 1, f"{label} was accepted:\n{output}"
            assert (
                f"os: this node runs {id_} {version or '(no version)'} (ID={id_}, VERSION_ID={version or 'none'}), "
                "which Space Harbor does not support" in output
            ), label
    # a Debian without a version is let through, with a warning
    assert "os: warning: debian (no version) has no VERSION_ID" in results["debian-"][1]


@pytest.mark.skipif(OS_RELEASE_PROBLEM is not None, reason=OS_RELEASE_PROBLEM or "")
@pytest.mark.skipif(Path("/etc/rancher").exists(), reason="k3s is installed on this machine; role would judge it")
def test_os_check_refuses_a_supported_release_without_systemd(tmp_path: Path) -> None:
    results = _os_check(tmp_path, [("debian", "11"), ("ubuntu", "20.04")], systemd=False)
    for key in ("debian-11", "ubuntu-20.04"):
        rc, output = results[key]
        assert rc == 1, output
        assert "runs without systemd as its init (no /run/systemd/system)" in output
