"""How a testbed test drives its stack, whichever engine applies it: `StackEngine` (`up(config)`,
`destroy()`, the state), the `Report` of one operation and `EngineFailed`.

The real `pulumi` CLI implements it in tests/realengine/driver.py (the report read from the
engine's own event log), the replay in tests/testbed/engine.py; tests/testbed/conftest.py
`engine_cluster` picks the real one whenever its tools are built.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from tests.testbed.nodes import Testbed
from tests.testbed.runner import CommandResult


class EngineFailed(RuntimeError):
    """A step of the operation failed; `report` holds what ran, what failed and what did not run."""

    def __init__(self, message: str, report: Report) -> None:
        super().__init__(message)
        self.report = report


@dataclass
class Report:
    creates: list[str] = field(default_factory=list)
    updates: list[str] = field(default_factory=list)
    replaces: list[str] = field(default_factory=list)
    deletes: list[str] = field(default_factory=list)
    # deletes the replay skips: (name, why); the real engine's event log does not say, so its
    # driver leaves this empty
    skipped: list[tuple[str, str]] = field(default_factory=list)
    results: list[CommandResult] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def result(self, name: str) -> CommandResult:
        return next(r for r in self.results if r.name == name)

    def ran(self) -> set[str]:
        """Commands that really dialled their node (an action existed and ran)."""
        return {r.name for r in self.results if r.command}


@dataclass(frozen=True)
class ProgramPatch:
    """The program as an earlier release had it: `target` (`module.attribute`) replaced by the
    function `replacement` that `source` (a module's text) defines. The replay swaps it in under
    mocks; the real engine's driver ships `source` with the project copy and swaps it in there."""

    target: str
    source: str

    def replacement(self) -> Callable[..., Any]:
        namespace: dict[str, Any] = {}
        exec(compile(self.source, f"<patch of {self.target}>", "exec"), namespace)  # noqa: S102 (a test's own text)
        return namespace["replacement"]


class StackEngine(Protocol):
    """What a testbed test may ask of its stack's engine, the replay's or the real one's."""

    engine_kind: str  # "real" or "replay": tests/conftest.py counts the tests under each
    tb: Testbed
    config: dict[str, Any]  # the config of the last `up` that succeeded

    def up(self, config: dict[str, Any], *, patch: ProgramPatch | None = None) -> Report: ...
    def destroy(self, *, api_after_exit: bool = False) -> Report: ...
    def names(self) -> set[str]: ...
    def urns(self) -> set[str]: ...
    def stored_inputs(self, name: str) -> dict[str, Any]: ...
    def outputs(self) -> dict[str, Any]: ...
    def stop_tunnels(self) -> None: ...
