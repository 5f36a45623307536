"""Test modules have unique basenames: pytest imports them by basename (no packages under tests/),
so a second `test_x.py` in another folder stops the whole run at collection."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]


def test_no_two_test_modules_share_a_basename() -> None:
    names = Counter(path.name for path in TESTS.rglob("test_*.py") if "node_modules" not in path.parts)
    shared = sorted(name for name, count in names.items() if count > 1)
    assert not shared, f"test modules sharing a basename (rename one of each): {shared}"
