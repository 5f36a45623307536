"""Dynamic providers as existing stacks hold them: pickled by reference, at commit 592c45b.

Pulumi stores each dynamic resource's provider in the state as `dill.dumps(provider)` (see
pulumi.dynamic.dynamic.serialize_provider). A provider class importable from a module is pickled
by reference (module and class name), so `pulumi destroy`, and every delete after the program has
exited, load the provider from whatever the module path holds then. Moving or renaming a class
breaks every stack that exists; these fixtures were serialized by the code before any move.
"""

from __future__ import annotations

import base64
from pathlib import Path

import dill
import pytest

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
