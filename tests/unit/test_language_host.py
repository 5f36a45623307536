"""Our stand-in Python language host (build/pulumi/language-python) passes its Go tests.

They cover what the engine relies on: the executor's command line and the config environment the
Python SDK reads, how the program's exit becomes the engine's answer (exit 32 bails quietly),
the runtime options of Pulumi.yaml, and which resource plugins the installed packages name
(pulumi-plugin.json, and the PEP 440 to semver mapping for older packages). The end-to-end check
is the real CLI running a project with it (CONTRIBUTING, "The real engine"). A cold module and
build cache takes a few minutes; a warm one, seconds.
"""

from __future__ import annotations

from pathlib import Path

from tests.helpers import go_test

MODULE = Path(__file__).resolve().parents[2] / "build" / "pulumi" / "language-python"


def test_language_host_go_tests_pass() -> None:
    result = go_test(MODULE, "-v", "./...")
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
