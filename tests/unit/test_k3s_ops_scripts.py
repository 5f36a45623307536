"""k3s.sh for issue 13: registries.yaml and its TLS files, a `server:`-only change, the reinstall verb.

Each test runs the payload pulumi-command would send, in the sandbox of tests/unit/test_scripts.py
(private mount, network and PID namespaces; fake systemctl, k3s binary and installer that log
every call), so restarts and installer runs are counted, not assumed.
"""

from __future__ import annotations

import base64
from pathlib import Path

from components.render.k3s import REGISTRIES_HEADER
from tests.unit.test_scripts import _k3s_env, _k3s_fakes, _payload_file, _sandbox, needs_sandbox

CONFIG = "token: MARKER-TOKEN\nnode-name: agent-1\nserver: https://10.160.0.1:6443\n"
PASSWORD = "MARKER-REGISTRY-PASSWORD-51c2"
KEY_TEXT = "-----BEGIN EC PRIVATE KEY-----\nMARKER-REGISTRY-KEY-7a0e\n-----END EC PRIVATE KEY-----\n"
CA_TEXT = "-----BEGIN CERTIFICATE-----\nREGISTRY-CA\n-----END CERTIFICATE-----\n"


def _registries(endpoint: str) -> str:
    return (
        f"{REGISTRIES_HEADER}\n"
        f"mirrors:\n  docker.io:\n    endpoint:\n    - {endpoint}\n"
        "configs:\n  mirror.example.org:\n    auth:\n"
        f"      username: puller\n      password: {PASSWORD}\n"
    )


def _files(**texts: str) -> str:
    return "\n".join(f"{name} {base64.b64encode(text.encode()).decode()}" for name, text in texts.items())


# How often the fake systemctl was asked to restart a unit.
RESTARTS = """
        restarts() { grep -c "^restart $1" "$OUT/systemctl.log" || true; }
"""


@needs_sandbox
def test_registries_yaml_is_written_0600_restarts_only_on_change_and_only_ours_is_removed(tmp_path: Path) -> None:
    (tmp_path / "fakebin").mkdir()
    with_files = _files(**{"mirror.example.org/ca.crt": CA_TEXT, "mirror.example.org/client.key": KEY_TEXT})
    p = {
        name: _payload_file(tmp_path, name, "k3s.sh", _k3s_env("agent", CONFIG, **extra))
        for name, extra in {
            "plain": {},
            "mirror": {"HARBOR_K3S_REGISTRIES": _registries("https://mirror.example.org")},
            "files": {
                "HARBOR_K3S_REGISTRIES": _registries("https://mirror.example.org"),
                "HARBOR_K3S_REGISTRY_FILES": with_files,
            },
            "ca-only": {
                "HARBOR_K3S_REGISTRIES": _registries("https://mirror.example.org"),
                "HARBOR_K3S_REGISTRY_FILES": _files(**{"mirror.example.org/ca.crt": CA_TEXT}),
            },
            "escape": {
                "HARBOR_K3S_REGISTRIES": _registries("https://mirror.example.org"),
                "HARBOR_K3S_REGISTRY_FILES": _files(**{"../ca.crt": CA_TEXT}),
            },
        }.items()
    }
    steps = _sandbox(
        tmp_path,
        _k3s_fakes(tmp_path)
        + RESTARTS
        + f"""
        payload install {p["plain"]} install
        step restarts-0 restarts k3s-agent
        payload add {p["mirror"]} reconfigure
        step mode bash -c 'stat -c "%a %U" /etc/rancher/k3s/registries.yaml'
        step restarts-1 restarts k3s-agent
        payload again {p["mirror"]} reconfigure
        payload files {p["files"]} reconfigure
        step file-modes bash -c 'cd /etc/rancher/k3s/space-harbor-registries && stat -c "%a %n" . */ */*'
        step key cat /etc/rancher/k3s/space-harbor-registries/mirror.example.org/client.key
        step restarts-2 restarts k3s-agent
        payload ca-only {p["ca-only"]} reconfigure
        step left bash -c 'cd /etc/rancher/k3s/space-harbor-registries && find . -type f | sort'
        payload escape {p["escape"]} reconfigure
        payload remove {p["plain"]} reconfigure
        step removed bash -c 'ls /etc/rancher/k3s/registries.yaml /etc/rancher/k3s/space-harbor-registries 2>&1 || true'
        step restarts-3 restarts k3s-agent
        # A registries.yaml written by hand before k3s.registries: the stack without it leaves it be.
        printf 'mirrors: {{}}\\n' >/etc/rancher/k3s/registries.yaml
        payload hand-made {p["plain"]} reconfigure
        step hand-made-kept cat /etc/rancher/k3s/registries.yaml
        payload take-over {p["mirror"]} reconfigure
        step taken cat /etc/rancher/k3s/registries.yaml
        payload uninstall {p["mirror"]} uninstall
        """,
    )
    assert steps.status("install") == "space-harbor: k3s.sh install: changed"
    assert steps.stdout("restarts-0").strip() == "1"
    assert steps.status("add") == "space-harbor: k3s.sh reconfigure: changed"
    assert "registries.yaml changed: restarting k3s-agent" in steps.stderr("add")
    assert steps.stdout("mode").strip() == "600 root"
    assert steps.stdout("restarts-1").strip() == "2"
    assert steps.status("again") == "space-harbor: k3s.sh reconfigure: unchanged"
    # A TLS file added: restarted again; the folder and the files are root's alone.
    assert steps.status("files") == "space-harbor: k3s.sh reconfigure: changed"
    assert steps.stdout("file-modes").split("\n")[:4] == [
        "700 .",
        "700 mirror.example.org/",
        "600 mirror.example.org/ca.crt",
        "600 mirror.example.org/client.key",
    ]
    assert steps.stdout("key") == KEY_TEXT
    assert steps.stdout("restarts-2").strip() == "3"
    # A file the stack no longer lists goes.
    assert steps.status("ca-only") == "space-harbor: k3s.sh reconfigure: changed"
    assert steps.stdout("left").split() == ["./mirror.example.org/ca.crt"]
    assert steps.rc("escape") != 0
    assert "'../ca.crt' is not <registry>/ca.crt" in steps.stderr("escape")
    # k3s.registries removed: our file and folder go, and k3s restarts without them.
    assert steps.status("remove") == "space-harbor: k3s.sh reconfigure: changed"
    assert steps.stdout("removed").count("No such file") == 2
    assert steps.stdout("restarts-3").strip() == "5"
    assert steps.status("hand-made") == "space-harbor: k3s.sh reconfigure: unchanged"
    assert "Space Harbor did not write it" in steps.stderr("hand-made")
    assert steps.stdout("hand-made-kept") == "mirrors: {}\n"
    assert steps.status("take-over") == "space-harbor: k3s.sh reconfigure: changed"
    assert "which Space Harbor did not write, with k3s.registries" in steps.stderr("take-over")
    assert steps.stdout("taken").startswith(REGISTRIES_HEADER)
    assert steps.status("uninstall") == "space-harbor: k3s.sh uninstall: changed"
    # No step printed a secret it carried.
    for name in ("install", "add", "again", "files", "ca-only", "remove", "take-over", "uninstall"):
        output = steps.stdout(name) + steps.stderr(name)
        for secret in (PASSWORD, "MARKER-REGISTRY-KEY", "MARKER-TOKEN"):
            assert secret not in output, (name, secret)


@needs_sandbox
def test_a_change_of_the_server_line_alone_restarts_nothing_on_a_running_node(tmp_path: Path) -> None:
    (tmp_path / "fakebin").mkdir()
    moved = CONFIG.replace("https://10.160.0.1:6443", "https://api.example.org:6443")
    labelled = moved + "node-label:\n- zone=a\n"
    p = {
        name: _payload_file(tmp_path, name, "k3s.sh", _k3s_env("agent", config))
        for name, config in {"first": CONFIG, "moved": moved, "labelled": labelled}.items()
    }
    steps = _sandbox(
        tmp_path,
        _k3s_fakes(tmp_path)
        + RESTARTS
        + f"""
        payload install {p["first"]} install
        payload moved {p["moved"]} reconfigure
        step config cat /etc/rancher/k3s/config.yaml
        step restarts-1 restarts k3s-agent
        # Another key with it: a restart, as for any change.
        payload labelled {p["labelled"]} reconfigure
        step restarts-2 restarts k3s-agent
        # A node that is not running (it never joined, say) is started with the new address.
        systemctl stop k3s-agent
        payload stopped {p["first"]} reconfigure
        step restarts-3 restarts k3s-agent
        """,
    )
    assert steps.status("moved") == "space-harbor: k3s.sh reconfigure: changed"
    assert steps.stdout("config") == moved
    assert "only the server: line of config.yaml changed" in steps.stderr("moved")
    assert steps.stdout("restarts-1").strip() == "1"
    assert steps.status("labelled") == "space-harbor: k3s.sh reconfigure: changed"
    assert steps.stdout("restarts-2").strip() == "2"
    assert steps.status("stopped") == "space-harbor: k3s.sh reconfigure: changed"
    assert steps.stdout("restarts-3").strip() == "3"


@needs_sandbox
def test_reinstall_reruns_the_installer_at_the_installed_version_without_uninstalling(tmp_path: Path) -> None:
    (tmp_path / "fakebin").mkdir()
    new = "v1.31.5+k3s1"
    p = {
        name: _payload_file(tmp_path, name, "k3s.sh", _k3s_env("server", CONFIG, **extra))
        for name, extra in {
            "gen0": {},
            "gen1": {"HARBOR_K3S_REINSTALL": "1"},
            "gen2-new": {"HARBOR_K3S_REINSTALL": "2", "HARBOR_K3S_VERSION": new},
            "bad": {"HARBOR_K3S_REINSTALL": "soon"},
        }.items()
    }
    steps = _sandbox(
        tmp_path,
        _k3s_fakes(tmp_path)
        + RESTARTS
        + f"""
        payload install {p["gen0"]} install
        # An install from before the counter: no record of it, which reads as 0.
        step no-record bash -c 'ls /etc/rancher/k3s/.space-harbor-reinstall 2>&1 || true'
        mkdir -p /var/lib/rancher/k3s/server && echo kept >/var/lib/rancher/k3s/server/data
        payload same {p["gen0"]} reconfigure
        payload reinstall {p["gen1"]} reconfigure
        step record bash -c 'cat /etc/rancher/k3s/.space-harbor-installed /etc/rancher/k3s/.space-harbor-reinstall'
        step data cat /var/lib/rancher/k3s/server/data
        step config cat /etc/rancher/k3s/config.yaml
        payload reinstall-again {p["gen1"]} reconfigure
        payload bad {p["bad"]} reconfigure
        # With a version change in the same run, the install step leaves it to the upgrade step.
        echo {new} >/usr/local/share/fake-k3s-version
        payload deferred {p["gen2-new"]} reconfigure
        step installs-before-upgrade bash -c 'wc -l <"$OUT/installer.log"'
        payload upgrade {p["gen2-new"]} upgrade
        step record-2 bash -c 'cat /etc/rancher/k3s/.space-harbor-installed /etc/rancher/k3s/.space-harbor-reinstall'
        payload after-upgrade {p["gen2-new"]} reconfigure
        """,
    )
    installs = (steps.out / "installer.log").read_text().splitlines()
    assert steps.status("install") == "space-harbor: k3s.sh install: changed"
    assert "No such file" not in steps.stdout("no-record")  # install records 0
    assert steps.status("same") == "space-harbor: k3s.sh reconfigure: unchanged"
    assert steps.status("reinstall") == "space-harbor: k3s.sh reconfigure: changed"
    assert "reinstall 1 (was 0): rerunning the k3s installer at v1.31.4+k3s1" in steps.stderr("reinstall")
    assert installs[1].startswith("exec=server version=v1.31.4+k3s1 ")
    assert steps.stdout("record").split("\n") == ["server v1.31.4+k3s1", "1", ""]
    assert steps.stdout("data") == "kept\n"
    assert steps.stdout("config") == CONFIG
    assert not (steps.out / "uninstall.log").exists()
    assert steps.status("reinstall-again") == "space-harbor: k3s.sh reconfigure: unchanged"
    assert steps.rc("bad") != 0
    assert "HARBOR_K3S_REINSTALL must be a number (got 'soon')" in steps.stderr("bad")
    assert steps.status("deferred") == "space-harbor: k3s.sh reconfigure: unchanged"
    assert "so the upgrade step reinstalls it" in steps.stderr("deferred")
    assert steps.stdout("installs-before-upgrade").strip() == "2"
    assert steps.status("upgrade") == "space-harbor: k3s.sh upgrade: changed"
    assert steps.stdout("record-2").split("\n") == [f"server {new}", "2", ""]
    assert steps.status("after-upgrade") == "space-harbor: k3s.sh reconfigure: unchanged"
    assert len(installs) == 3
