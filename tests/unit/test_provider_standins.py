"""The stand-in provider plugins (build/provider-command, -random, -tls) pass their Go tests.

Those tests speak to the plugins the way the engine does (Check, Diff, Create, Update, Delete)
and run commands over SSH against an in-process server on 127.0.0.1: the diff rules, host-key
pins, stdin and environment delivery, bounded dials, the bastion hop, SFTP copies, and the
random and tls resources' secrets and ids. A cold module and build cache takes a few minutes;
a warm one, seconds.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import go_test

BUILD = Path(__file__).resolve().parents[2] / "build"


@pytest.mark.parametrize(
    ("family", "package"), [("provider-command", "remote"), ("provider-random", "random"), ("provider-tls", "tls")]
)
def test_standin_provider_go_tests_pass(family: str, package: str) -> None:
    result = go_test(BUILD / family, "./...")
    # The package with the tests reported ok: one that silently ran nothing would not say so.
    assert f"ok  \tspaceharbor.local/build/{family}/{package}" in result.stdout, result.stdout
