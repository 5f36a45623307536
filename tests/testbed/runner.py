"""Execute the program's `command:remote:Command` resources over real SSH, in dependency order.

A test tool, not a second engine. It does what pulumi-command does for one Command: dial the
`connection` (host, port, user, privateKey; hostKey pinned when set, any host key accepted when
not), open one exec channel without a pty, send `environment` as env requests, write `stdin` and
run `create` (or `delete`). A `CopyToRemote` writes its source file to `remotePath` as the
connection's user (the provider does it over SFTP; here `cat` on the same connection), and its
delete does nothing, as the provider has none. Commands whose dependencies are done run in parallel, as the Pulumi
engine runs independent resources. The system `ssh` client does the SSH; `ssh_prefix` (e.g.
`ip netns exec <ns>`) puts it in the testbed's controller namespace.

Dialing follows pulumi-command (provider/pkg/provider/remote/connection.go): every failed dial
(TCP connect, key exchange, host key, authentication) is retried with pulumi's `retry.Until`
backoff until `dialErrorLimit` dials have failed; the next failure ends the command, so at most
`dialErrorLimit + 1` dials. `perDialTimeout` bounds each dial's TCP connect. A session that was
established and then broke is never retried: the provider reports it as the command's failure.
ssh's `Authenticated to ...` line (LogLevel VERBOSE) tells the two apart; that line and ssh's
transfer summary are removed from the stderr a result reports.

A connection with a `proxy` (a bastion) is dialled as pulumi-command dials it: first the bastion
with the proxy's own user, key, pinned host key and dial policy, then from the bastion a channel
to the node's `host:port`, inside which SSH to the node runs with the node's key and pin. Here
the system ssh does that with a `ProxyCommand` of a second ssh (`-W host:port`) that holds the
bastion's key and known_hosts. A failed dial counts against the proxy's `dialErrorLimit` when the
bastion never authenticated us, else against the node's. Two differences stay: pulumi-command
keeps the bastion's session between retries of the onward dial, where this redials it; and it
bounds only the dial to the bastion with a timeout (`perDialTimeout` of the proxy), so the outer
ssh gets no `ConnectTimeout` through a bastion either.

When a command fails, in-flight commands finish and no new one starts, as `pulumi up` does by
default; with `continue_on_error` (`pulumi up --continue-on-error`) every command that does not
depend on a failed one still runs. Either way the run raises `RunFailed`, naming every failed
command, its host and why, and listing the commands that did not run.
"""

from __future__ import annotations

import itertools
import re
import shlex
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.helpers import reachable

COMMAND_TYPE = "command:remote:Command"
COPY_TYPE = "command:remote:CopyToRemote"
# The resources the runner executes: both dial the node over SSH.
STEP_TYPES = (COMMAND_TYPE, COPY_TYPE)

# pulumi-command's defaults for a connection that sets neither (connection.go: dialErrorDefault,
# the perDialTimeout default). The program sets both (components/remote.py); a test compares them.
PROVIDER_DIAL_ERROR_LIMIT = 10
PROVIDER_PER_DIAL_TIMEOUT = 15
# pulumi's retry.Until (sdk/go/common/util/retry/until.go): wait 100 ms after the first failure,
# 1.5 times longer after each next one, never more than 5 s.
RETRY_DELAY_S = 0.1
RETRY_BACKOFF = 1.5
RETRY_MAX_DELAY_S = 5.0

# With LogLevel=VERBOSE ssh says this once the server accepted the key: the dial is over. Through
# a ProxyCommand the node's line says `(via proxy)`; the bastion's own ssh says its address.
_AUTHENTICATED = re.compile(r"^Authenticated to \S+ \((?P<via>.*)\) using \"[^\"]+\"\.$")
_SSH_CHATTER = re.compile(
    r"^(Authenticated to \S+ \(.*\) using \"[^\"]+\"\.|Transferred: sent \d+, received \d+ bytes, in [\d.]+ seconds"
    r"|Bytes per second: sent [\d.]+, received [\d.]+|Warning: Permanently added .* to the list of known hosts\.)$"
)


@dataclass(frozen=True)
class DialPolicy:
    """How pulumi-command dials one connection: `error_limit` failed dials are retried (-1: no limit)."""

    error_limit: int
    per_dial_timeout: int  # seconds for each dial's TCP connect; 0: no limit

    @classmethod
    def from_connection(cls, connection: dict[str, Any]) -> DialPolicy:
        limit = connection.get("dialErrorLimit")
        timeout = connection.get("perDialTimeout")
        return cls(
            error_limit=PROVIDER_DIAL_ERROR_LIMIT if limit is None else int(limit),
            per_dial_timeout=PROVIDER_PER_DIAL_TIMEOUT if timeout is None else int(timeout),
        )

    @property
    def max_dials(self) -> int | None:
        """Dials before the command fails: the provider gives up once `dials > dialErrorLimit`."""
        return None if self.error_limit < 0 else self.error_limit + 1

    def delays(self) -> Iterator[float]:
        """The waits between one failed dial and the next, as retry.Until spaces them."""
        delay = RETRY_DELAY_S
        while True:
            yield min(delay, RETRY_MAX_DELAY_S)
            delay *= RETRY_BACKOFF

    def give_up_within(self, handshake_s: float) -> float:
        """Upper bound on the seconds until an unreachable host fails a command.

        Every dial may spend `per_dial_timeout` on the TCP connect plus `handshake_s` on the key
        exchange and authentication (which pulumi-command does not bound), then the backoff.
        """
        if self.max_dials is None:
            raise ValueError("no bound: dialErrorLimit is -1")
        waits = sum(itertools.islice(self.delays(), self.max_dials - 1))
        return self.max_dials * (self.per_dial_timeout + handshake_s) + waits


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
    dials: int = 1  # SSH dials made; more than 1 means retries
    dial_failed: bool = False  # no session was ever established: every dial failed
    bastion: str | None = None  # the proxy's host the node was dialled through, if any
    bastion_failed: bool = False  # the last failed dial never got past the bastion


class CommandFailed(RuntimeError):
    def __init__(self, result: CommandResult) -> None:
        self.result = result
        super().__init__(describe_failure(result))


def describe_failure(result: CommandResult) -> str:
    """`create of n3-mesh on 192.168.77.13 ...`: which step, which host, why, with its output."""
    if result.dial_failed:
        why = f"could not dial: {result.dials} dials failed"
        if result.bastion is not None:
            why += f" ({'at' if result.bastion_failed else 'through'} bastion {result.bastion})"
    else:
        why = f"exited {result.returncode}"
        if result.dials > 1:
            why += f" (after {result.dials - 1} failed dials)"
    return (
        f"{result.action} of {result.name} on {result.host} {why} after {result.seconds:.1f}s"
        f"\n--- stdout ---\n{result.stdout[-4000:]}\n--- stderr ---\n{result.stderr[-4000:]}"
    )


class RunFailed(CommandFailed):
    """One or more commands of a run failed. `result` is the first failure, as CommandFailed's."""

    def __init__(self, failures: list[CommandResult], not_run: list[str], results: list[CommandResult]) -> None:
        self.failures = failures
        self.not_run = not_run
        self.results = results
        super().__init__(failures[0])
        names = ", ".join(f"{r.name} on {r.host}" for r in failures)
        summary = f"{len(failures)} command(s) failed: {names}"
        if not_run:
            summary += f"\nnot run (they depend on a failed command, or the run stopped): {', '.join(not_run)}"
        self.args = (summary + "\n\n" + "\n\n".join(describe_failure(r) for r in failures),)


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
        self.commands = [r for r in self.resources if r.type in STEP_TYPES]
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

        def waits_for(urn: str) -> list[str]:
            resource = by_urn.get(urn)
            # Waiting on a component means waiting on everything beneath it.
            return [*(resource.dependencies if resource is not None else ()), *children.get(urn, [])]

        for command in self.commands:
            through = reachable(command.dependencies, waits_for)
            deps[command.name] = {command_urns[urn] for urn in through if urn in command_urns} - {command.name}
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
        return reachable(names, lambda name: self.deps[name])

    def apply(
        self,
        names: Iterable[str] | None = None,
        *,
        with_dependencies: bool = True,
        continue_on_error: bool = False,
    ) -> list[CommandResult]:
        """Run `create` of the named commands (all by default), dependencies first, in parallel.

        With `with_dependencies`, the commands they depend on run (first) too, as `pulumi up --target`
        with dependencies would. Raises `RunFailed` when a command fails (see the module doc).
        """
        wanted = set(names) if names is not None else set(self.by_name)
        unknown = wanted - set(self.by_name)
        if unknown:
            raise KeyError(f"no such commands: {sorted(unknown)}")
        if with_dependencies:
            wanted = self.closure(wanted)
        return self.schedule(wanted, "create", lambda n: self.deps[n] & wanted, continue_on_error)

    def update(self, names: Iterable[str], *, continue_on_error: bool = False) -> list[CommandResult]:
        """Run the update of each named (changed) command, in dependency order among them.

        This is the update phase of `pulumi up` after a config change: unchanged commands are not
        run, and a changed one waits only for the changed commands it depends on.
        """
        wanted = set(names)
        unknown = wanted - set(self.by_name)
        if unknown:
            raise KeyError(f"no such commands: {sorted(unknown)}")
        return self.schedule(wanted, "update", lambda n: self.deps[n] & wanted, continue_on_error)

    def destroy(self, *, continue_on_error: bool = False) -> list[CommandResult]:
        """Run every `delete` in reverse dependency order: dependents first."""
        return self.delete_only(self.by_name, continue_on_error=continue_on_error)

    def delete_only(self, names: Iterable[str], *, continue_on_error: bool = False) -> list[CommandResult]:
        """Run `delete` of just these commands (e.g. one node's), dependents first among them."""
        wanted = set(names)
        unknown = wanted - set(self.by_name)
        if unknown:
            raise KeyError(f"no such commands: {sorted(unknown)}")
        dependents = {n: {m for m in wanted if n in self.deps[m]} for n in wanted}
        return self.schedule(wanted, "delete", lambda n: dependents[n], continue_on_error)

    def schedule(
        self,
        wanted: set[str],
        action: str | Callable[[str], str],
        waits_for: Callable[[str], set[str]],
        continue_on_error: bool = False,
    ) -> list[CommandResult]:
        """Run `action` (one for all, or one per command) of the wanted commands once `waits_for` are done."""
        action_of = action if callable(action) else (lambda _name: action)
        pending = set(wanted)
        finished: set[str] = set()
        results: list[CommandResult] = []
        failures: list[CommandResult] = []
        running: dict[Future[CommandResult], str] = {}
        with ThreadPoolExecutor(max_workers=self.max_workers) as pool:
            while pending or running:
                if not failures or continue_on_error:
                    for name in sorted(pending):
                        if waits_for(name) <= finished:
                            pending.discard(name)
                            running[pool.submit(self.run_one, name, action_of(name))] = name
                if not running:
                    if not failures and pending:
                        raise ValueError(f"cannot order {sorted(pending)}")
                    break  # what is left waits for a failed command (or the run stopped)
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in sorted(done, key=lambda f: running[f]):
                    name = running.pop(future)
                    try:
                        results.append(future.result())
                        finished.add(name)
                    except CommandFailed as error:
                        results.append(error.result)
                        failures.append(error.result)
        if failures:
            raise RunFailed(failures, sorted(pending), results)
        return results

    def run_one(self, name: str, action: str = "create") -> CommandResult:
        """One Command's `create`, `update` or `delete`, as pulumi-command runs it. Raises CommandFailed.

        A Command without an `update` runs its `create` again on an update, as the provider does.
        """
        resource = self.by_name[name]
        inputs = resource.inputs
        payload: str | bytes | None
        if resource.type == COPY_TYPE:
            # create and update copy (the engine asks for an update only when the file or path
            # changed); there is no delete.
            command = None if action == "delete" else f"cat >{shlex.quote(inputs['remotePath'])}"
            payload = Path(inputs["source"]["path"]).read_bytes() if command else None
        else:
            command = inputs.get(action) or (inputs.get("create") if action == "update" else None)
            payload = inputs.get("stdin")
        conn = inputs["connection"]
        host = conn["host"]
        if not command:
            now = time.time()
            result = CommandResult(name, action, host, "", 0, "", "", 0.0, now, now)
            with self._lock:
                self.results.append(result)
            return result
        policy = DialPolicy.from_connection(conn)
        proxy = conn.get("proxy")
        proxy_policy = DialPolicy.from_connection(proxy) if proxy else None
        argv = self._ssh_argv(name, conn, inputs.get("environment") or {}, policy)
        stdin = payload.encode() if isinstance(payload, str) else (payload or b"")
        started = time.time()
        t0 = time.monotonic()
        # Each hop's failed dials, with their own limit and backoff (pulumi-command's dialWithRetry per hop).
        failed = {"bastion": 0, "node": 0}
        delays = {"bastion": (proxy_policy or policy).delays(), "node": policy.delays()}
        dials = 0
        while True:
            dials += 1
            proc = subprocess.run([*argv, command], input=stdin, capture_output=True, check=False)
            lines = proc.stderr.decode(errors="replace").splitlines()
            hops = [m["via"] for m in map(_AUTHENTICATED.match, lines) if m]
            reached_node = any(via == "via proxy" for via in hops) if proxy else bool(hops)
            dial_failed = proc.returncode == 255 and not reached_node
            # Through a bastion: did the bastion itself take us (its ssh logs its own address)?
            hop = "bastion" if proxy and not any(via != "via proxy" for via in hops) else "node"
            if dial_failed:
                failed[hop] += 1
                limit = (proxy_policy if hop == "bastion" and proxy_policy else policy).max_dials
                if limit is None or failed[hop] < limit:
                    time.sleep(next(delays[hop]))
                    continue
            break
        stderr = "".join(line + "\n" for line in lines if not _SSH_CHATTER.match(line))
        result = CommandResult(
            name=name,
            action=action,
            host=host,
            command=command,
            returncode=proc.returncode,
            stdout=proc.stdout.decode(errors="replace"),
            stderr=stderr,
            seconds=time.monotonic() - t0,
            started=started,
            finished=time.time(),
            dials=dials,
            dial_failed=dial_failed,
            bastion=proxy["host"] if proxy else None,
            bastion_failed=dial_failed and hop == "bastion",
        )
        with self._lock:
            self.results.append(result)
        if proc.returncode != 0:
            raise CommandFailed(result)
        return result

    def _ssh_argv(self, name: str, conn: dict[str, Any], environment: dict[str, str], policy: DialPolicy) -> list[str]:
        proxy = conn.get("proxy")
        argv = [*self.ssh_prefix, "ssh", "-T", *self._hop_options(name, conn)]
        if proxy:
            bastion = self._hop_options(f"{name}.proxy", proxy)
            timeout = DialPolicy.from_connection(proxy).per_dial_timeout
            if timeout > 0:
                bastion += ["-o", f"ConnectTimeout={timeout}"]
            # The bastion's own ssh: its key, its pin; `-W` is the channel pulumi-command opens from it.
            jump = ["ssh", *bastion, "-W", "%h:%p", f"{proxy.get('user') or 'root'}@{proxy['host']}"]
            argv += ["-o", f"ProxyCommand={shlex.join(jump)}"]
        elif policy.per_dial_timeout > 0:
            argv += ["-o", f"ConnectTimeout={policy.per_dial_timeout}"]
        for variable, value in sorted(environment.items()):
            argv += ["-o", f"SetEnv={variable}={value}"]
        argv.append(f"{conn.get('user') or 'root'}@{conn['host']}")
        return argv

    def _hop_options(self, name: str, hop: dict[str, Any]) -> list[str]:
        """ssh options for one hop of a connection (the node, or its proxy): key, port, host-key pin."""
        tmp = Path(self._tmp.name)
        key = tmp / f"{name}.key"
        if not key.exists():
            key.touch(mode=0o600)
            text = hop["privateKey"]
            key.write_text(text if text.endswith("\n") else text + "\n")
        host = hop["host"]
        port = int(hop.get("port") or 22)
        options = [
            "-i", str(key), "-p", str(port),
            "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes", "-o", "LogLevel=VERBOSE",
        ]  # fmt: skip
        if hop.get("hostKey"):
            known = tmp / f"{name}.known_hosts"
            target = host if port == 22 else f"[{host}]:{port}"
            known.write_text(f"{target} {hop['hostKey'].strip()}\n")
            options += ["-o", "StrictHostKeyChecking=yes", "-o", f"UserKnownHostsFile={known}"]
        else:
            # pulumi-command accepts any host key when none is pinned.
            options += ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null"]
        return options

    # ---- reporting --------------------------------------------------------------------------
    def of_node(self, host: str) -> list[str]:
        """Names of the commands that run on `host`."""
        return [c.name for c in self.commands if c.inputs["connection"]["host"] == host]
