"""A replay of what the Pulumi engine does with the program's registrations, on the testbed. It proves
nothing about the engine: the real `pulumi` CLI does (tests/realengine, and the testbed modules
that take their stack from `engine_cluster`, which use tests/realengine/driver.py whenever
`./scripts/engine status` says the tools are built).

What it is still used for, and why the real engine cannot do that here:
- A machine where the real tools are not built (a fresh clone before `./scripts/engine build`,
  which takes 15 minutes to an hour): the modules on `engine_cluster` (`Replay` below) then run
  their same assertions through this replay, and the suite says so in its last lines. CI on such
  a machine also says that the real tier did not run.
- test_argocd_sync_on_node.py, the one testbed module not on `engine_cluster`: the Argo CD
  controller stand-in acts on the k3s stand-in's own object store and its patch log, which the
  real API server that the real engine's testbed runs has no counterpart of.
- bench/testbed_day1.py: per-step durations to the millisecond (the real engine's event log
  stamps whole seconds, too coarse for a critical path of 5-second steps) and its `--old-graph`,
  a graph the program no longer registers, applied by editing the mocked run. The real engine's
  day 1, no-op `up` and added node are measured by bench/real_engine.py.
- Its own tests, tests/testbed/test_engine.py, and `_command_changed` in
  tests/program/test_bastion_graph.py (pulumi-command's update-or-replace rule, on a mocked run).

The rules it replays: the Runner executes commands; this module decides which, when and with what
inputs.

- It keeps the state: every resource as last created or updated. A resource registered again is
  matched to the state by URN, then by its aliases (`tests.harness.resolve_identities`); matched
  and unchanged is a no-op, changed is an update (pulumi-command runs `update`, else `create`,
  with the NEW inputs; a step with neither dials nobody), `triggers` changed is a replacement.
- Creates and updates run in the new program's dependency order. Deletes come last, after the
  program has exited: in reverse dependency order of the STORED graph, each with the inputs stored
  at its last create or update, never today's config.
- A delete is skipped when the resource is `retainOnDelete`, or its `deletedWith` resource is being
  deleted in the same operation. Deleting a Kubernetes object needs the API; after the program
  has exited that is reachable only through a tunnel that outlives it (`api_after_exit`).
- `destroy` runs no program at all: it deletes the whole state by the same rules.

No engine code is reused; this follows the documented behaviour and pulumi's step generator.

What it does not model, so a test here proves nothing about it:
- Replacement is only a `triggers` change of a Command, which the program never sets; the real
  engine also replaces on `pulumi up --replace`, with a replaced `deletedWith` or `replaceWith`
  resource, a replaced provider, a provider's own replace rules (a Kubernetes object's immutable
  fields, the GitOps tree's move) and random keepers. Its order, create-before-delete (the old
  delete after the program, with the old stored outputs) unless `delete_before_replace`, is not
  replayed either: tests/realengine/test_real_replacements.py replaces every node step with the
  real engine, tests/program/test_replacements.py checks the options under mocks, and
  tests/gitops/test_moves.py and tests/testbed/test_gitops_moves.py drive the GitOps tree's
  provider in that order.
- Any other custom resource (Kubernetes, the dynamic providers, random, tls) is
  only reported: its changes are updates, and neither its create nor its delete acts.
- Preview: unknown outputs, and a provider's config diff, are not modelled.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any
from unittest import mock

from tests.harness import ProgramRun, Registered, resolve_identities, run_program
from tests.helpers import reachable
from tests.testbed.nodes import Testbed, call_in_netns
from tests.testbed.runner import COPY_TYPE, STEP_TYPES, RunFailed, Runner
from tests.testbed.stack_engine import EngineFailed, ProgramPatch, Report

__all__ = ["Engine", "EngineFailed", "Replay", "Report", "stored_inputs"]

# Inputs whose change is an update of a remote Command; `triggers` replaces.
COMMAND_REPLACE_KEYS = ("triggers",)


def _is_k8s(resource: Registered) -> bool:
    return resource.custom and resource.type.startswith("kubernetes:")


def _command_changed(old: Registered, new: Registered) -> str | None:
    """ "replace", "update" or None for a remote Command, by pulumi-command's diff."""
    if any(old.inputs.get(key) != new.inputs.get(key) for key in COMMAND_REPLACE_KEYS):
        return "replace"
    return "update" if old.inputs != new.inputs else None


def asset_sha256(resource: Registered) -> str:
    """The content hash of a CopyToRemote's source file (the engine keeps an asset's hash in state)."""
    return hashlib.sha256(Path(resource.inputs["source"]["path"]).read_bytes()).hexdigest()


class Engine:
    """One stack's state and the operations on it. Commands dial from `ssh_prefix` (the controller)."""

    def __init__(self, *, ssh_prefix: list[str], workdir: Path | None = None) -> None:
        self.ssh_prefix = ssh_prefix
        self.workdir = workdir
        self.state: dict[str, Registered] = {}
        self.order: list[str] = []  # state URNs in registration order
        self._not_deleted: set[str] = set()
        # CopyToRemote sources' content hashes as last copied, by URN
        self.copied: dict[str, str] = {}

    # ---- up ------------------------------------------------------------------------------
    @staticmethod
    def _inherit(run: ProgramRun) -> ProgramRun:
        """The goals the engine records: a child inherits deletedWith, retainOnDelete and protect from its parent."""
        by_urn: dict[str, Registered] = {}
        resources = []
        for resource in run.resources:
            parent = by_urn.get(resource.parent or "")
            if parent is not None:
                resource = replace(
                    resource,
                    deleted_with=resource.deleted_with or parent.deleted_with,
                    retain_on_delete=resource.retain_on_delete or parent.retain_on_delete,
                    protect=resource.protect or parent.protect,
                )
            by_urn[resource.urn] = resource
            resources.append(resource)
        return replace(run, resources=resources)

    def up(
        self,
        run: ProgramRun,
        *,
        api_after_exit: bool = True,
        continue_on_error: bool = False,
        on_delete: Callable[[Registered], None] | None = None,
    ) -> Report:
        """`pulumi up` of a program run: creates and updates in order, then the deletes."""
        report = Report()
        run = self._inherit(run)
        matched = resolve_identities(run.resources, set(self.state))
        taken = {old for old in matched.values() if old is not None}
        actions: dict[str, str] = {}
        replaced_before: list[Registered] = []
        replaced_after: list[Registered] = []
        for resource in run.resources:
            old_urn = matched[resource.urn]
            if old_urn is None:
                report.creates.append(resource.name)
                if resource.type in STEP_TYPES:
                    actions[resource.name] = "create"
                continue
            old = self.state[old_urn]
            if resource.type not in STEP_TYPES:
                if resource.custom and old.inputs != resource.inputs:
                    report.updates.append(resource.name)
                continue
            change = _command_changed(old, resource)
            if change == "update":
                report.updates.append(resource.name)
                # A CopyToRemote copies again only for a new file or path; a new connection alone is stored.
                copies_again = resource.type != COPY_TYPE or (
                    self.copied.get(old_urn) != asset_sha256(resource)
                    or old.inputs["remotePath"] != resource.inputs["remotePath"]
                )
                if copies_again:
                    actions[resource.name] = "update"
            elif change == "replace":
                report.replaces.append(resource.name)
                actions[resource.name] = "create"
                (replaced_before if resource.delete_before_replace else replaced_after).append(old)

        runner = Runner(run.resources, ssh_prefix=self.ssh_prefix, workdir=self.workdir)
        try:
            if replaced_before:
                self._delete(replaced_before, set(), report, api_after_exit=True, on_delete=on_delete)
            wanted = set(actions)
            try:
                report.results += runner.schedule(
                    wanted, lambda name: actions[name], lambda n: runner.deps[n] & wanted, continue_on_error
                )
            except RunFailed as error:
                report.results += error.results
                report.failures += [r.name for r in error.failures]
                self._keep(run, matched, failed=set(report.failures) | set(error.not_run))
                raise EngineFailed(str(error), report) from None
        finally:
            runner.close()

        deleted = [self.state[urn] for urn in self.order if urn in self.state and urn not in taken]
        report.deletes = [r.name for r in deleted]
        old_state = dict(self.state)
        self._keep(run, matched, failed=set())
        for resource in deleted:
            self.state.pop(resource.urn, None)
        self.order = [urn for urn in self.order if urn in self.state]
        try:
            self._delete(
                [*replaced_after, *deleted],
                {r.urn for r in deleted},
                report,
                api_after_exit=api_after_exit,
                on_delete=on_delete,
                graph=old_state,
            )
        except EngineFailed:
            # What failed to go stays in the state, as the engine leaves it.
            for resource in deleted:
                if resource.name in report.failures or resource.name in self._not_deleted:
                    self.state[resource.urn] = resource
                    self.order.append(resource.urn)
            raise
        self.verify_integrity()
        return report

    def verify_integrity(self) -> None:
        """The engine's snapshot check: a deletedWith target must be in the state, before the resource."""
        position = {urn: index for index, urn in enumerate(self.order)}
        for urn in self.order:
            target = self.state[urn].deleted_with
            if target and (target not in position or position[target] > position[urn]):
                where = "is missing" if target not in position else "comes after it"
                raise AssertionError(f"snapshot integrity: {urn} is deleted with {target}, which {where}")

    def destroy(self, *, api_after_exit: bool = False, on_delete: Callable[[Registered], None] | None = None) -> Report:
        """`pulumi destroy`: the program does not run; every resource in the state is deleted."""
        report = Report()
        everything = [self.state[urn] for urn in self.order]
        report.deletes = [r.name for r in everything]
        try:
            self._delete(everything, set(self.state), report, api_after_exit=api_after_exit, on_delete=on_delete)
        except EngineFailed:
            survivors = {r.urn for r in everything if r.name in report.failures or r.name in self._not_deleted}
            self.state = {urn: r for urn, r in self.state.items() if urn in survivors}
            self.order = [urn for urn in self.order if urn in survivors]
            raise
        self.state, self.order = {}, []
        return report

    # ---- internals -----------------------------------------------------------------------
    def _keep(self, run: ProgramRun, matched: dict[str, str | None], failed: set[str]) -> None:
        """The state after the create/update phase: registered resources replace what they matched."""
        for resource in run.resources:
            old = matched[resource.urn]
            if resource.name in failed and resource.type in STEP_TYPES:
                continue  # a failed create is not in the state; a failed update keeps the old inputs
            if resource.type == COPY_TYPE:
                self.copied.pop(old or "", None)
                self.copied[resource.urn] = asset_sha256(resource)
            if old is not None and old != resource.urn:
                self.state.pop(old, None)
                self.order = [resource.urn if urn == old else urn for urn in self.order]
            if resource.urn not in self.order:
                self.order.append(resource.urn)
            self.state[resource.urn] = resource

    def _delete(
        self,
        doomed: list[Registered],
        deleting: set[str],
        report: Report,
        *,
        api_after_exit: bool,
        on_delete: Callable[[Registered], None] | None,
        graph: dict[str, Registered] | None = None,
    ) -> None:
        """Delete `doomed` dependents first; `deleting` is every URN this operation deletes."""
        graph = graph or dict(self.state)
        doomed_urns = {r.urn for r in doomed}
        children: dict[str, set[str]] = {}
        for resource in graph.values():
            if resource.parent:
                children.setdefault(resource.parent, set()).add(resource.urn)

        def dependencies(resource: Registered) -> set[str]:
            found = set(resource.dependencies) | ({resource.deleted_with} if resource.deleted_with else set())
            if resource.parent:
                found.add(resource.parent)
            if resource.provider:
                found.add(resource.provider)
            return found

        # A resource goes only after every doomed resource that depends on it.
        dependents: dict[str, set[str]] = {urn: set() for urn in doomed_urns}
        for resource in doomed:
            for dependency in dependencies(resource) & doomed_urns:
                dependents[dependency].add(resource.urn)

        to_run: dict[str, Registered] = {}
        for resource in doomed:
            if resource.retain_on_delete:
                report.skipped.append((resource.name, "retainOnDelete"))
            elif resource.deleted_with and resource.deleted_with in deleting:
                report.skipped.append((resource.name, f"deletedWith {resource.deleted_with.rsplit('::', 1)[-1]}"))
            elif resource.type in STEP_TYPES:
                to_run[resource.urn] = resource
            elif _is_k8s(resource) and not api_after_exit:
                report.failures.append(resource.name)
            elif on_delete is not None:
                on_delete(resource)
        self._not_deleted = set()
        if report.failures:
            # The first failure stops the operation before anything else is deleted (no
            # --continue-on-error): everything doomed stays in the state.
            self._not_deleted = {r.name for r in doomed}
            names = ", ".join(sorted(report.failures))
            raise EngineFailed(f"the Kubernetes API is unreachable after the program exited: {names}", report)
        if not to_run:
            return
        runner = Runner(list(to_run.values()), ssh_prefix=self.ssh_prefix, workdir=self.workdir)
        names = {urn: r.name for urn, r in to_run.items()}
        urn_of = {r.name: urn for urn, r in to_run.items()}

        def waits(name: str) -> set[str]:
            # transitively through doomed non-command resources (components, keys), up to a command
            through = reachable(dependents[urn_of[name]], lambda urn: () if urn in names else dependents.get(urn, ()))
            return {names[urn] for urn in through if urn in names}

        try:
            report.results += runner.schedule(set(names.values()), "delete", waits)
        except RunFailed as error:
            report.results += error.results
            report.failures += [r.name for r in error.failures]
            self._not_deleted = set(error.not_run)
            raise EngineFailed(str(error), report) from None
        finally:
            runner.close()


def stored_inputs(engine: Engine, name: str) -> dict[str, Any]:
    """The inputs the state holds for the command `name` (what its delete will use)."""
    return next(r.inputs for r in engine.state.values() if r.name == name)


class Replay:
    """The replay behind the interface the real engine's driver has (tests/realengine/driver.py
    `RealEngine`): `up(config)`, `destroy()`, `stored_inputs`, `names`, `urns`, `outputs`. The
    program runs under mocks in the controller namespace; this module's `Engine` applies it."""

    engine_kind = "replay"

    def __init__(self, tb: Testbed) -> None:
        self.tb = tb
        self.engine = Engine(ssh_prefix=["ip", "netns", "exec", tb.ctl], workdir=tb.workdir)
        self.config: dict[str, Any] = {}
        self.run: ProgramRun | None = None

    def up(self, config: dict[str, Any], *, patch: ProgramPatch | None = None) -> Report:
        with mock.patch(patch.target, patch.replacement()) if patch else contextlib.nullcontext():
            run = call_in_netns(self.tb.ctl, run_program, config)
        report = self.engine.up(run)
        self.config, self.run = config, run
        return report

    def destroy(self, *, api_after_exit: bool = False) -> Report:
        return self.engine.destroy(api_after_exit=api_after_exit)

    def names(self) -> set[str]:
        return {r.name for r in self.engine.state.values() if r.custom}

    def urns(self) -> set[str]:
        return set(self.engine.state)

    def stored_inputs(self, name: str) -> dict[str, Any]:
        return stored_inputs(self.engine, name)

    def outputs(self) -> dict[str, Any]:
        assert self.run is not None, "no up yet"
        return self.run.outputs

    def stop_tunnels(self) -> None:
        """Nothing to stop: the program ran under mocks, which open no tunnel."""
