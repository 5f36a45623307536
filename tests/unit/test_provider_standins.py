"""The stand-in provider plugins (build/provider-command, -random, -tls) pass their Go tests.

Those tests speak to the plugins the way the engine does (Check, Diff, Create, Update, Delete)
and run commands over SSH against an in-process server on 127.0.0.1: the diff rules, host-key
pins, stdin and environment delivery, bounded dials, the bastion hop, SFTP copies, and the
random and tls resources' secrets and ids. A cold module and build cache takes a few minutes;
a warm one, seconds.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

BUILD = Path(__file__).resolve().parents[2] / "build"
GO_TEST_TIMEOUT = 600


@pytest.mark.parametrize(
    ("family", "package"), [("provider-command", "remote"), ("provider-random", "random"), ("provider-tls", "tls")]
)
def test_standin_provider_go_tests_pass(family: str, package: str) -> None:
    module = BUILD / family
    go = shutil.which("go")
    if go is None:
        pytest.fail(f"go is not on PATH: the stand-in provider plugin in {module} cannot be tested")
    env = {
        **os.environ,
        "GOPROXY": os.environ.get("GOPROXY", "https://proxy.golang.org"),
        "GOFLAGS": "-mod=mod",
        "CGO_ENABLED": "0",
    }
    try:
        result = subprocess.run(
            [go, "test", "./..."],
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
    # The package with the tests reported ok: one that silently ran nothing would not say so.
    assert f"ok  \tspaceharbor.local/build/{family}/{package}" in result.stdout, result.stdout
