"""components/scripts/lib.sh, the helpers every node script shares, run for real in temporary folders.

apt-get and dpkg-query are fakes on PATH that log their calls; everything else is the real tool.
"""

from __future__ import annotations

import os
import subprocess
import textwrap
from pathlib import Path

import pytest

from components.render.remote import script_payload

LIB = Path(__file__).resolve().parents[2] / "components" / "scripts" / "lib.sh"


def run_with_lib(tmp_path: Path, body: str) -> subprocess.CompletedProcess[str]:
    """`body` after lib.sh, in a payload as script_payload builds it for the nodes."""
    script = f"harbor_script=test.sh\nharbor_action=apply\n{textwrap.dedent(body)}"
    payload = tmp_path / "payload.sh"
    payload.write_text(script_payload(script, {}))
    env = {"PATH": f"{tmp_path / 'bin'}:/usr/bin:/bin", "T": str(tmp_path), "LOG": str(tmp_path / "calls.log")}
    return subprocess.run(["bash", str(payload)], capture_output=True, text=True, env=env, timeout=30)


def fake(tmp_path: Path, name: str, text: str) -> None:
    path = tmp_path / "bin" / name
    path.parent.mkdir(exist_ok=True)
    path.write_text("#!/bin/bash\n" + textwrap.dedent(text))
    path.chmod(0o755)


def test_write_if_changed_writes_once_with_its_mode_and_leaves_no_temp_file(tmp_path: Path) -> None:
    target = tmp_path / "etc" / "thing.conf"
    body = """
        harbor_write_if_changed "$T/etc/thing.conf" 600 "secret=1"
        echo "first $harbor_wrote"
        harbor_write_if_changed "$T/etc/thing.conf" 600 $'secret=1\\n'
        echo "same $harbor_wrote"
        harbor_write_if_changed "$T/etc/thing.conf" 640 "secret=2"
        echo "other $harbor_wrote"
    """
    result = run_with_lib(tmp_path, body)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:3] == ["first true", "same false", "other true"]
    assert target.read_text() == "secret=2\n"
    assert oct(target.stat().st_mode & 0o777) == "0o640"
    # created under umask 077: the folder a secret lands in is root's alone
    assert oct(target.parent.stat().st_mode & 0o777) == "0o700"
    assert sorted(p.name for p in target.parent.iterdir()) == ["thing.conf"]


def test_write_if_changed_keeps_an_unchanged_file_untouched_and_fixes_its_mode(tmp_path: Path) -> None:
    target = tmp_path / "thing.conf"
    target.write_text("a\n")
    target.chmod(0o644)
    os.utime(target, (1_000_000, 1_000_000))
    result = run_with_lib(tmp_path, 'harbor_write_if_changed "$T/thing.conf" 600 "a"; echo "$harbor_wrote"')
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "false"
    assert target.stat().st_mtime == 1_000_000
    assert oct(target.stat().st_mode & 0o777) == "0o600"


def test_write_if_changed_copies_stdin_byte_for_byte(tmp_path: Path) -> None:
    # Two final newlines stay two: the firewall compares its stored file with the candidate by bytes.
    result = run_with_lib(tmp_path, 'harbor_write_if_changed "$T/copy" 600 <"$T/source"; echo "$harbor_wrote"')
    assert result.returncode != 0  # no source yet: the redirection fails the run
    (tmp_path / "source").write_bytes(b"table inet x {}\n\n")
    result = run_with_lib(tmp_path, 'harbor_write_if_changed "$T/copy" 600 <"$T/source"; echo "$harbor_wrote"')
    assert result.stdout.strip() == "true"
    assert (tmp_path / "copy").read_bytes() == b"table inet x {}\n\n"


def test_a_temp_file_left_by_a_killed_run_is_removed_by_the_next(tmp_path: Path) -> None:
    """A run killed before its EXIT trap leaves `.name.XXXXXX` (with a secret in it) beside the file."""
    (tmp_path / "etc").mkdir()
    stale = tmp_path / "etc" / ".config.yaml.Ab3dE9"
    stale.write_text("token: old\n")
    unrelated = tmp_path / "etc" / ".config.yaml.bak"
    unrelated.write_text("kept\n")
    result = run_with_lib(tmp_path, 'harbor_write_if_changed "$T/etc/config.yaml" 600 "token: new"')
    assert result.returncode == 0, result.stderr
    assert not stale.exists()
    assert unrelated.exists()


def test_temp_files_go_on_exit_even_when_the_run_fails(tmp_path: Path) -> None:
    body = """
        harbor_mktemp scratch "$T/work.XXXXXX"
        echo "$scratch" >"$T/name"
        harbor_fail "something broke"
    """
    result = run_with_lib(tmp_path, body)
    assert result.returncode == 1
    assert result.stderr == "space-harbor: test.sh apply: error: something broke\n"
    assert not Path((tmp_path / "name").read_text().strip()).exists()


@pytest.mark.parametrize(("installed", "expected"), [("", "open-iscsi nfs-common"), ("open-iscsi", "nfs-common")])
def test_apt_ensure_installs_only_what_dpkg_does_not_list(tmp_path: Path, installed: str, expected: str) -> None:
    fake(
        tmp_path,
        "dpkg-query",
        f"""
        case " {installed} " in *" ${{@: -1}} "*) printf 'install ok installed' ;; *) exit 1 ;; esac
        """,
    )
    fake(tmp_path, "apt-get", 'echo "apt-get $*" >>"$LOG"\n')
    result = run_with_lib(tmp_path, "harbor_apt_ensure open-iscsi nfs-common\nharbor_finish")
    assert result.returncode == 0, result.stderr
    calls = (tmp_path / "calls.log").read_text().splitlines()
    assert calls == [f"apt-get install -y --no-install-recommends {expected}"]
    assert f"space-harbor: test.sh apply: installing {expected}" in result.stderr
    assert result.stdout.strip().endswith("test.sh apply: changed")


def test_apt_ensure_with_everything_installed_calls_no_apt_and_changes_nothing(tmp_path: Path) -> None:
    fake(tmp_path, "dpkg-query", "printf 'install ok installed'\n")
    fake(tmp_path, "apt-get", 'echo "apt-get $*" >>"$LOG"\n')
    result = run_with_lib(tmp_path, "harbor_apt_ensure open-iscsi nfs-common\nharbor_finish")
    assert result.returncode == 0, result.stderr
    assert not (tmp_path / "calls.log").exists()
    assert result.stdout.strip() == "space-harbor: test.sh apply: unchanged"


def test_apt_install_refreshes_the_package_lists_once_when_the_first_try_fails(tmp_path: Path) -> None:
    # A fresh image has no package lists: the first install fails until `apt-get update` ran.
    fake(
        tmp_path,
        "apt-get",
        """
        echo "apt-get $*" >>"$LOG"
        if [ "$1" = update ]; then touch "$T/lists"; exit 0; fi
        [ -e "$T/lists" ]
        """,
    )
    result = run_with_lib(tmp_path, "harbor_apt_install nftables")
    assert result.returncode == 0, result.stderr
    assert [line.split()[1] for line in (tmp_path / "calls.log").read_text().splitlines()] == [
        "install",
        "update",
        "install",
    ]
