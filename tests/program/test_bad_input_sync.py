# ruff: noqa: E501 (one case per line reads best)
"""Malformed keys of "sync now" (gitops.syncOnApply) and of the backup component, refused by the
program itself: one error naming the key path, and not a single resource registered before it.
(The cases of the other keys are in test_bad_input.py.)"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest

from tests.conftest import GIT_KEY_MARKER, SSH_KEY_MARKER, base_config
from tests.harness import run_program
from tests.helpers import assert_refused_before_any_resource

Mutation = Callable[[dict[str, Any]], None]


def _set(path: str, value: Any) -> Mutation:
    """Set a dotted path like `gitops.syncOnApply`."""

    def mutate(config: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        target: Any = config
        for part in parents:
            target = target.setdefault(part, {})
        target[last] = value

    return mutate


CASES: list[tuple[str, Mutation, str]] = [
    ("sync on apply not a bool", _set("gitops.syncOnApply", "sometimes"), "gitops.syncOnApply: Input should be a valid boolean"),
    ("sync on apply misspelt", _set("gitops.syncOnAply", True), "gitops.syncOnAply: is not a known key"),
    ("sync timeout too short", _set("gitops.syncTimeoutSeconds", 5), "gitops.syncTimeoutSeconds: Input should be greater than or equal to 30"),
    ("sync timeout too long", _set("gitops.syncTimeoutSeconds", 7200), "gitops.syncTimeoutSeconds: Input should be less than or equal to 3600"),
    ("sync timeout not a number", _set("gitops.syncTimeoutSeconds", "soon"), "gitops.syncTimeoutSeconds: Input should be a valid integer"),
]  # fmt: skip


@pytest.mark.parametrize(("mutate", "expected"), [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_refused_with_key_path_before_any_resource(mutate: Mutation, expected: str) -> None:
    config = copy.deepcopy(base_config(agents=1))
    mutate(config)
    assert_refused_before_any_resource(config, expected, secrets=(SSH_KEY_MARKER, GIT_KEY_MARKER))


@pytest.mark.parametrize("gitops", [{"syncOnApply": True}, {"syncOnApply": True, "syncTimeoutSeconds": 30}])
def test_the_good_values_are_accepted(gitops: dict[str, Any]) -> None:
    # The control for the cases above.
    config = base_config(agents=1)
    config["gitops"] |= gitops
    assert run_program(config, preview=True).resources
