"""Execute the program's `command:remote:Command` resources over real SSH, in dependency order.

A test tool, not a second engine. It does what pulumi-command does for one Command: dial the
`connection` (host, port, user, privateKey; hostKey pinned when set, any host key accepted when
not), open one exec channel without a pty, send `environment` as env requests, write `stdin` and
run `create` (or `delete`). Commands whose dependencies are done run in parallel, as the Pulumi
engine runs independent resources. The system `ssh` client does the SSH; `ssh_prefix` (e.g.
`ip netns exec <ns>`) puts it in the testbed's controller namespace.
"""

from __future__ import annotations

import re
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

COMMAND_TYPE = "command:remote:Command"
# ssh exits 255 on its own errors; retry only those that mean "could not dial", like the provider.
_DIAL_ERROR = re.compile(
    r"ssh: connect to host|Connection refused|Connection timed out|No route to host|"
    r"kex_exchange_identification|Connection closed by|Connection reset"
)


class CommandFailed(RuntimeError):
    def __init__(self, result: CommandResult) -> None:
        self.result = result
        super().__init__(
            f"{result.action} of {result.name} on {result.host} exited {result.returncode} "
            f"after {result.seconds:.1f}s\n--- stdout ---\n{result.stdout[-4000:]}"
            f"\n--- stderr ---\n{result.stderr[-4000:]}"
        )


@dataclass
class CommandResult:
    name: str
    action: str  # "create" or "delete"
    host: str
    command: str
    returncode: int
    stdout: str
    stderr: str
    seconds: float
    started: float
    finished: float


class Runner:
    """Runs the creates (and deletes) of a program run's remote Commands against real hosts.

    `resources` is every Registered resource of the run (commands and the rest): a command's
    dependencies may point at keys or components, and ordering follows the transitive closure of
    those dependencies over commands only (a dependency on a component covers its descendants).
    """

    def __init__(
        self,
        resources: Sequence[Any],
        *,
        ssh_prefix: Sequence[str] = (),
        max_workers: int = 16,
        workdir: Path | None = None,
    ) -> None:
        self.resources = list(resources)
        self.commands = [r for r in self.resources if r.type == COMMAND_TYPE]
        self.by_name = {c.name: c for c in self.commands}
        if len(self.by_name) != len(self.commands):
            raise ValueError("command names are not unique")
        self.ssh_prefix = list(ssh_prefix)
        self.max_workers = max_workers
        self._tmp = tempfile.TemporaryDirectory(prefix="harbor-runner-", dir=workdir)
        self.results: list[CommandResult] = []
        self._lock = threading.Lock()
        self.deps = self._command_dependencies()

    def close(self) -> None:
        self._tmp.cleanup()

    def __enter__(self) -> Runner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- graph --------------------------------------------------------------------------
    def _command_dependencies(self) -> dict[str, set[str]]:
        by_urn = {r.urn: r for r in self.resources}
        children: dict[str, list[str]] = {}
        for r in self.resources:
            if r.parent:
                children.setdefault(r.parent, []).append(r.urn)
        command_urns = {c.urn: c.name for c in self.commands}
        deps: dict[str, set[str]] = {}
        for command in self.commands:
            found: set[str] = set()
            seen: set[str] = set()
            stack = list(command.dependencies)
            while stack:
                urn = stack.pop()
                if urn in seen:
                    continue
                seen.add(urn)
                if urn in command_urns:
                    found.add(command_urns[urn])
                resource = by_urn.get(urn)
                if resource is not None:
                    stack.extend(resource.dependencies)
                # Waiting on a component means waiting on everything beneath it.
                stack.extend(children.get(urn, []))
            found.discard(command.name)
            deps[command.name] = found
        return deps

    def order(self, names: Iterable[str] | None = None) -> list[str]:
        """A dependency order of the named commands (all by default)."""
        wanted = set(names) if names is not None else set(self.by_name)
        done: list[str] = []
        placed: set[str] = set()
        while len(done) < len(wanted):
            ready = sorted(n for n in wanted - placed if not (self.deps[n] & wanted) - placed)
            if not ready:
                raise ValueError(f"dependency cycle among {sorted(wanted - placed)}")
            done.extend(ready)
            placed.update(ready)
        return done

    # ---- execution --------------------------------------------------------------------------
    def closure(self, names: Iterable[str]) -> set[str]:
        """The named commands and every command they depend on."""
        found: set[str] = set()
        stack = list(names)
        while stack:
            name = stack.pop()
            if name not in found:
                found.add(name)
                stack.extend(self.deps[name])
        return found

    def apply(self, names: Iterable[str] | None = None, *, with_dependencies: bool = True) -> list[CommandResult]:
        """Run `create` of the named commands (all by default), dependencies first, in parallel.

        With `with_dependencies`, the commands they depend on run (first) too, as `pulumi up --target`
        with dependencies would.
        """
        wanted = set(names) if names is not None else set(self.by_name)
        unknown = wanted - set(self.by_name)
        if unknown:
            raise KeyError(f"no such commands: {sorted(unknown)}")
        if with_dependencies:
            wanted = self.closure(wanted)
        return self._schedule(wanted, "create", lambda n: self.deps[n] & wanted)

    def destroy(self) -> list[CommandResult]:
        """Run every `delete` in reverse dependency order: dependents first."""
        return self.delete_only(self.by_name)

    def delete_only(self, names: Iterable[str]) -> list[CommandResult]:
        """Run `delete` of just these commands (e.g. one node's), dependents first among them."""
        wanted = set(names)
        unknown = wanted - set(self.by_name)
        if unknown:
            raise KeyError(f"no such commands: {sorted(unknown)}")
        dependents = {n: {m for m in wanted if n in self.deps[m]} for n in wanted}
        return self._schedule(wanted, "delete", lambda n: dependents[n])

    def _schedule(self, wanted: set[str], action: str, waits_for: Any) -> list[CommandResult]:
        pending = set(wanted)
        finished: set[str] = set()
        results: list[CommandResult] = []
        failure: CommandFailed | None = None
        running: dict[Future[CommandResult], str] = {}
        with ThreadPoolExecutor(max_workers=self.max_workers) as pool:
            while pending or running:
                if failure is None:
                    for name in sorted(pending):
                        if waits_for(name) <= finished:
                            pending.discard(name)
                            running[pool.submit(self.run_one, name, action)] = name
                if not running:
                    if failure is None and pending:
                        raise ValueError(f"cannot order {sorted(pending)}")
                    break
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    name = running.pop(future)
                    try:
                        results.append(future.result())
                        finished.add(name)
                    except CommandFailed as error:
                        results.append(error.result)
                        failure = failure or error
        if failure is not None:
            raise failure
        return results

    def run_one(self, name: str, action: str = "create") -> CommandResult:
        """One Command's `create` or `delete`, as pulumi-command runs it. Raises CommandFailed."""
        resource = self.by_name[name]
        inputs = resource.inputs
        command = inputs.get(action)
        conn = inputs["connection"]
        host = conn["host"]
        if not command:
            now = time.time()
            result = CommandResult(name, action, host, "", 0, "", "", 0.0, now, now)
            with self._lock:
                self.results.append(result)
            return result
        argv = self._ssh_argv(name, conn, inputs.get("environment") or {})
        attempts = int(conn.get("dialErrorLimit") or 10)
        stdin = inputs.get("stdin")
        started = time.time()
        t0 = time.monotonic()
        for attempt in range(1, max(attempts, 1) + 1):
            proc = subprocess.run(
                [*argv, command],
                input=stdin if stdin is not None else "",
                text=True,
                capture_output=True,
                check=False,
            )
            if proc.returncode == 255 and _DIAL_ERROR.search(proc.stderr) and attempt < attempts:
                time.sleep(1)
                continue
            break
        result = CommandResult(
            name=name,
            action=action,
            host=host,
            command=command,
            returncode=proc.returncode,
            stdout=proc.stdout,
            stderr=proc.stderr,
            seconds=time.monotonic() - t0,
            started=started,
            finished=time.time(),
        )
        with self._lock:
            self.results.append(result)
        if proc.returncode != 0:
            raise CommandFailed(result)
        return result

    def _ssh_argv(self, name: str, conn: dict[str, Any], environment: dict[str, str]) -> list[str]:
        tmp = Path(self._tmp.name)
        key = tmp / f"{name}.key"
        if not key.exists():
            key.touch(mode=0o600)
            text = conn["privateKey"]
            key.write_text(text if text.endswith("\n") else text + "\n")
        host = conn["host"]
        port = int(conn.get("port") or 22)
        argv = [
            *self.ssh_prefix, "ssh", "-T", "-i", str(key), "-p", str(port),
            "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes", "-o", "LogLevel=ERROR",
            "-o", f"ConnectTimeout={int(conn.get('perDialTimeout') or 15)}",
        ]  # fmt: skip
        if conn.get("hostKey"):
            known = tmp / f"{name}.known_hosts"
            target = host if port == 22 else f"[{host}]:{port}"
            known.write_text(f"{target} {conn['hostKey'].strip()}\n")
            argv += ["-o", "StrictHostKeyChecking=yes", "-o", f"UserKnownHostsFile={known}"]
        else:
            # pulumi-command accepts any host key when none is pinned.
            argv += ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null"]
        for variable, value in sorted(environment.items()):
            argv += ["-o", f"SetEnv={variable}={value}"]
        argv.append(f"{conn.get('user') or 'root'}@{host}")
        return argv

    # ---- reporting --------------------------------------------------------------------------
    def of_node(self, host: str) -> list[str]:
        """Names of the commands that run on `host`."""
        return [c.name for c in self.commands if c.inputs["connection"]["host"] == host]
