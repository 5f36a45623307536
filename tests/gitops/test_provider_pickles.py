"""Dynamic providers as existing stacks hold them: pickled by reference, at commit 592c45b.

Pulumi stores each dynamic resource's provider in the state as `dill.dumps(provider)` (see
pulumi.dynamic.dynamic.serialize_provider). A provider class importable from a module is pickled
by reference (module and class name), so `pulumi destroy`, and every delete after the program has
exited, load the provider from whatever the module path holds then. Moving or renaming a class
breaks every stack that exists; these fixtures were serialized by the code before any move.
"""

from __future__ import annotations

import base64
import importlib
import pickletools
from pathlib import Path

import dill
import pytest
from pulumi.dynamic.dynamic import serialize_provider

FIXTURES = Path(__file__).resolve().parents[1] / "program" / "fixtures"


@pytest.mark.parametrize(
    ("fixture", "module", "name"),
    [
        ("git-tree-provider", "components.gitops", "GitTreeProvider"),
        ("sealed-secret-provider", "components.sealed_secrets", "SealedSecretProvider"),
    ],
)
def test_a_provider_pickled_by_existing_stacks_still_loads(fixture: str, module: str, name: str) -> None:
    pickled = base64.b64decode((FIXTURES / f"{fixture}.pickle.b64").read_text())
    assert module.encode() in pickled and name.encode() in pickled  # by reference: only the path
    provider = dill.loads(pickled)  # noqa: S301 (our own fixture, as the engine loads state)
    assert type(provider).__module__ == module
    assert type(provider).__name__ == name
    # and it is the provider the engine calls: its diff says whether anything changed
    same = provider.diff("id", {"a": 1}, {"a": 1})
    assert same.changes is False


@pytest.mark.parametrize(
    ("fixture", "module", "name"),
    [
        ("git-tree-provider", "components.gitops", "GitTreeProvider"),
        ("sealed-secret-provider", "components.sealed_secrets", "SealedSecretProvider"),
    ],
)
def test_a_provider_pickled_now_is_what_existing_stacks_hold(fixture: str, module: str, name: str) -> None:
    """New stacks store the same reference, and existing ones see no change of their provider."""
    provider_class = getattr(importlib.import_module(module), name)
    assert (provider_class.__module__, provider_class.__qualname__) == (module, name)
    pickled = base64.b64decode(serialize_provider(provider_class()))
    # The class is named by exactly this module and name, the two strings ahead of STACK_GLOBAL.
    ops = list(pickletools.genops(pickled))
    strings = [arg for opcode, arg, _ in ops if opcode.name == "SHORT_BINUNICODE"]
    assert strings == [module, name]
    assert [opcode.name for opcode, _, _ in ops].count("STACK_GLOBAL") == 1
    assert pickled == base64.b64decode((FIXTURES / f"{fixture}.pickle.b64").read_text())
