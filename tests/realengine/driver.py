"""The real `pulumi` CLI behind the testbed's engine interface: `up(config)`, `destroy()` and a
`Report` read from the engine's own event log, the state from `pulumi stack export`.

A testbed test written against this interface (tests/testbed/engine.py's `Replay` is its other
side) runs under the real engine whenever the tools are built. Nothing here decides what the engine
does: `up` makes `config` the stack config as a user does (`RealStack.apply_config`) and types
`pulumi up --yes --skip-preview`; the report lists the steps the engine logged, in its order.

The event log (`--event-log`, a flag the CLI shows only with PULUMI_DEBUG_COMMANDS set) is one
JSON object per line with a `sequence` number. A step is a `resourcePreEvent` whose
`metadata.op` is create, update, replace (with its create-replacement and delete-replaced
halves), delete or same; it ends in a `resOutputsEvent` or a `resOpFailedEvent`. A remote
Command's `stdout` and `stderr` are in the outputs of its create or update; a delete stores no
outputs, so its result carries the lines the provider logged for it (both streams, interleaved).
Connections are secret, so a step's host is read from the state (`stack export --show-secrets`):
after the run for what it created or updated, before it for what it deleted.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.realengine.cli import ENGINE
from tests.realengine.conftest import RealStack, stop_tunnels
from tests.testbed.runner import COMMAND_TYPE, COPY_TYPE, STEP_TYPES, CommandResult
from tests.testbed.stack_engine import EngineFailed, ProgramPatch, Report

STEP_OPS = {
    "create": "creates",
    "update": "updates",
    "replace": "replaces",
    "delete": "deletes",
}
# The op of each half of a replacement, and the action its Command runs.
ACTION_OF_OP = {
    "create": "create",
    "update": "update",
    "create-replacement": "create",
    "delete": "delete",
    "delete-replaced": "delete",
}
# pulumi-command's dial error after its retries (connection.go): no session was ever established.
DIAL_FAILED = "failed attempts: "


def name_of(urn: str) -> str:
    return urn.rsplit("::", 1)[-1]


def is_default_provider(resource_type: str, name: str) -> bool:
    """A provider the engine made itself (`default`, `default_1_2_1`): the program declared none of these."""
    return resource_type.startswith("pulumi:providers:") and (name == "default" or name.startswith("default_"))


def read_events(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    events = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return sorted(events, key=lambda event: event["sequence"])


def asset_hash(inputs: dict[str, Any]) -> str | None:
    source = inputs.get("source")
    return source.get("hash") if isinstance(source, dict) else None


def action_text(resource_type: str, action: str, inputs: dict[str, Any], old: dict[str, Any]) -> str:
    """What the step ran: the command string, or `copy` for a CopyToRemote; "" when it dials nobody.

    A CopyToRemote has no delete, and its update copies again only for a new file content or
    remote path (pulumi-command's copy.go), not for a new connection."""
    if resource_type == COPY_TYPE:
        if action == "delete":
            return ""
        same = asset_hash(inputs) == asset_hash(old) and inputs.get("remotePath") == old.get("remotePath")
        return "" if action == "update" and same else "copy"
    if action == "update":
        return inputs.get("update") or inputs.get("create") or ""
    return inputs.get(action) or ""


# How `stack export --show-secrets` writes a secret: this signature key, the value as JSON in `plaintext`.
SECRET_SIG = "4dabf18193072939515e22adb298388d"


def plain(value: Any) -> Any:
    """An exported value with its secret wrapper taken off."""
    if isinstance(value, dict) and SECRET_SIG in value and "plaintext" in value:
        return json.loads(value["plaintext"])
    return value


def hosts(resources: list[dict[str, Any]]) -> dict[str, tuple[str, str | None]]:
    """Each step's host and the bastion it is dialled through (None: directly), by name, from
    exported state (secrets shown)."""
    found = {}
    for resource in resources:
        if resource.get("type") in STEP_TYPES:
            connection = plain((resource.get("inputs") or {}).get("connection")) or {}
            proxy = connection.get("proxy") or {}
            found[name_of(resource["urn"])] = (connection.get("host", ""), proxy.get("host"))
    return found


def report_from_events(
    events: list[dict[str, Any]],
    hosts_before: dict[str, tuple[str, str | None]],
    hosts_after: dict[str, tuple[str, str | None]],
) -> tuple[Report, list[str]]:
    """The engine's report of one operation, and its error messages, from its event log."""
    report = Report()
    errors: list[str] = []
    errors_of: dict[str, list[str]] = {}
    started: dict[tuple[str, str], dict[str, Any]] = {}
    logged: dict[str, list[str]] = {}
    for event in events:
        sequence = float(event["sequence"])
        if "diagnosticEvent" in event:
            diagnostic = event["diagnosticEvent"]
            urn = diagnostic.get("urn")
            if diagnostic.get("severity") == "error":
                errors.append(diagnostic["message"].strip())
                errors_of.setdefault(urn or "", []).append(diagnostic["message"])
            elif urn and diagnostic.get("severity") == "info":
                logged.setdefault(urn, []).append(diagnostic["message"])
            continue
        kind = next((k for k in ("resourcePreEvent", "resOutputsEvent", "resOpFailedEvent") if k in event), None)
        if kind is None:
            continue
        metadata = event[kind]["metadata"]
        op, urn, resource_type = metadata["op"], metadata["urn"], metadata["type"]
        name = name_of(urn)
        if resource_type == "pulumi:pulumi:Stack" or is_default_provider(resource_type, name):
            continue
        if kind == "resourcePreEvent":
            if op in STEP_OPS:
                getattr(report, STEP_OPS[op]).append(name)
            if resource_type in STEP_TYPES and op in ACTION_OF_OP:
                logged.pop(urn, None)
                started[(urn, op)] = {"metadata": metadata, "started": sequence}
            continue
        step = started.pop((urn, op), None)
        if step is None:
            continue
        action = ACTION_OF_OP[op]
        side = metadata.get("old") if action == "delete" else metadata.get("new")
        side = side or step["metadata"].get("old" if action == "delete" else "new") or {}
        before = metadata.get("old") or step["metadata"].get("old") or {}
        command = action_text(resource_type, action, side.get("inputs") or {}, before.get("inputs") or {})
        if not command:
            continue
        outputs = (metadata.get("new") or {}).get("outputs") or {}
        lines = "".join(logged.pop(urn, []))
        failed = kind == "resOpFailedEvent"
        stored = action != "delete" and not failed
        # A delete dials the stored connection; a create or update the one it stores.
        host, bastion = (
            (hosts_before if action == "delete" else hosts_after).get(name)
            or hosts_before.get(name)
            or hosts_after.get(name)
            or ("", None)
        )
        step_errors = errors_of.get(urn, [])
        report.results.append(
            CommandResult(
                name=name,
                action=action,
                host=host,
                command=command,
                returncode=1 if failed else 0,
                stdout=outputs.get("stdout", "") if stored else "",
                stderr=outputs.get("stderr", "") if stored else lines,
                seconds=0.0,
                started=step["started"],
                finished=sequence,
                dial_failed=failed and any(DIAL_FAILED in e for e in step_errors),
                bastion=bastion,
                # pulumi-command's `proxy: ...` error names the address it could not dial: the
                # bastion's when the dial to the bastion itself failed
                bastion_failed=bool(failed and bastion and any(f"dial tcp {bastion}:" in e for e in step_errors)),
            )
        )
        if failed:
            report.failures.append(name)
    return report, errors


class RealEngine:
    """One stack under the real CLI, with the replay's interface (tests/testbed/engine.py `Replay`)."""

    engine_kind = "real"

    def __init__(self, stack: RealStack) -> None:
        self.stack = stack
        self.tb = stack.tb
        self.config: dict[str, Any] = {}
        self.operations = 0
        # `--event-log` exists only with the CLI's debug commands on; it changes nothing else.
        stack.pulumi.env["PULUMI_DEBUG_COMMANDS"] = "true"

    # ---- operations ----------------------------------------------------------------------
    def up(self, config: dict[str, Any], *, patch: ProgramPatch | None = None) -> Report:
        """`pulumi up` of `config`; `self.config` becomes `config` only when the engine succeeded."""
        self.stack.apply_config(config)
        with self._patched(patch) if patch else contextlib.nullcontext():
            report = self._operation("up")
        self.config = config
        return report

    @contextlib.contextmanager
    def _patched(self, patch: ProgramPatch) -> Iterator[None]:
        """The project copy's program with `patch` swapped in (a module of its own, imported first)."""
        project = self.stack.pulumi.project
        module, attribute = patch.target.rsplit(".", 1)
        (project / "earlier_release_patch.py").write_text(
            f"{patch.source}\n\nimport {module}\n\n{module}.{attribute} = replacement\n"
        )
        main = project / "__main__.py"
        original = main.read_text()
        future = "from __future__ import annotations\n"
        assert future in original
        main.write_text(original.replace(future, future + "\nimport earlier_release_patch  # noqa: F401\n", 1))
        try:
            yield
        finally:
            main.write_text(original)
            (project / "earlier_release_patch.py").unlink()

    def destroy(self, *, api_after_exit: bool = False) -> Report:
        """`pulumi destroy`, which runs no program. Without `api_after_exit` the API tunnels the
        program left are stopped first, as after a reboot of the operator's machine."""
        if not api_after_exit:
            stop_tunnels(self.stack)
        return self._operation("destroy")

    def _operation(self, verb: str) -> Report:
        self.operations += 1
        log = Path(self.stack.pulumi.env["HOME"]) / f"events-{id(self):x}-{self.operations}-{verb}.json"
        log.unlink(missing_ok=True)  # one operation's events only
        before = hosts(self.resources())
        result = self.stack.pulumi.run(verb, "--yes", "--skip-preview", "--event-log", str(log), check=False)
        report, errors = report_from_events(read_events(log), before, hosts(self.resources()))
        if result.returncode != 0:
            message = "\n".join(errors) or result.output[-8000:]
            raise EngineFailed(f"pulumi {verb} exited {result.returncode}:\n{message}", report)
        return report

    # ---- the state -----------------------------------------------------------------------
    def resources(self) -> list[dict[str, Any]]:
        return self.stack.pulumi.resources()

    def names(self) -> set[str]:
        """Names of the custom resources in the state."""
        return {name_of(r["urn"]) for r in self.resources() if r.get("custom") and not r["type"].startswith("pulumi:")}

    def urns(self) -> set[str]:
        return {r["urn"] for r in self.resources()}

    def stored_inputs(self, name: str) -> dict[str, Any]:
        """The inputs the state holds for the Command `name` (what its delete will use)."""
        found = [r for r in self.resources() if r["type"] == COMMAND_TYPE and name_of(r["urn"]) == name]
        assert len(found) == 1, (name, [r["urn"] for r in found])
        return {key: plain(value) for key, value in (found[0].get("inputs") or {}).items()}

    def stop_tunnels(self) -> None:
        """Stop the API tunnels the program left running (they outlive it, by design)."""
        stop_tunnels(self.stack)

    def outputs(self) -> dict[str, Any]:
        """The stack's outputs, secrets shown."""
        shown = self.stack.pulumi.run("stack", "output", "--json", "--show-secrets")
        return json.loads(shown.stdout)


def real_engine_built() -> bool:
    """Whether `./scripts/engine status` finds the real tools built (then the real tier runs)."""
    status = subprocess.run([str(ENGINE), "status"], capture_output=True, text=True, check=False)
    return status.returncode == 0
