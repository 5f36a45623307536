"""Our stand-in Python language host (build/pulumi/language-python) passes its Go tests.

They cover what the engine relies on: the executor's command line and the config environment the
Python SDK reads, how the program's exit becomes the engine's answer (exit 32 bails quietly),
the runtime options of Pulumi.yaml, and which resource plugins the installed packages name
(pulumi-plugin.json, and the PEP 440 to semver mapping for older packages). The end-to-end check
is the real CLI running a project with it (CONTRIBUTING, "The real engine"). A cold module and
build cache takes a few minutes; a warm one, seconds.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

MODULE = Path(__file__).resolve().parents[2] / "build" / "pulumi" / "language-python"
GO_TEST_TIMEOUT = 600


def test_language_host_go_tests_pass() -> None:
    go = shutil.which("go")
    if go is None:
        pytest.fail(f"go is not on PATH: the language host in {MODULE} cannot be tested")
    env = {**os.environ, "GOPROXY": "https://proxy.golang.org", "GOFLAGS": "-mod=mod", "CGO_ENABLED": "0"}
    try:
        result = subprocess.run(
            [go, "test", "-v", "./..."],
            cwd=MODULE,
            env=env,
            capture_output=True,
            text=True,
            timeout=GO_TEST_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"go test in {MODULE} took over {GO_TEST_TIMEOUT} s: {exc.stdout!r} {exc.stderr!r}")
    assert result.returncode == 0, f"go test failed in {MODULE}:\n{result.stdout}\n{result.stderr}"
    # Each test ran and passed: a package that silently ran nothing would not list them.
    for name in (
        "TestExecArgs",
        "TestProgramEnv",
        "TestRunResponse",
        "TestPythonOptions",
        "TestPluginVersion",
        "TestParseInstalledPackages",
    ):
        assert f"--- PASS: {name} " in result.stdout, result.stdout
