"""The engine replay's own rules, without nodes: what runs, with which inputs, in which order.

A fake SSH client (through `ssh_prefix`) logs each command it is asked to run and the step's name,
so the tests see exactly what would have dialled a node. No root needed.
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import pytest

from tests.harness import AliasSpec, ProgramRun, Registered, engine_urn
from tests.testbed.engine import Engine, EngineFailed
from tests.testbed.runner import COMMAND_TYPE

FAKE_SSH = r"""
import pathlib, sys
log = pathlib.Path(sys.argv[1])
argv = sys.argv[2:]
key = argv[argv.index("-i") + 1]
name = pathlib.Path(key).name.removesuffix(".key")
host = argv[-2].split("@", 1)[1]
stdin = sys.stdin.read()
with log.open("a") as out:
    out.write(f"{name} {argv[-1]} {host} {stdin.strip()}\n")
print('Authenticated to x ([x]:22) using "publickey".', file=sys.stderr)
sys.exit(1 if host == "192.0.2.66" else 0)
"""


def command(name: str, *, deps: tuple[str, ...] = (), host: str = "192.0.2.1", **options: object) -> Registered:
    inputs: dict[str, object] = {
        "connection": {"host": host, "privateKey": "not a key"},
        "stdin": options.pop("stdin", "v1"),
    }
    for action in ("create", "update", "delete"):
        if action in options:
            inputs[action] = options.pop(action)
    return Registered(
        type=COMMAND_TYPE,
        name=name,
        urn=engine_urn(None, COMMAND_TYPE, name),
        parent=None,
        inputs=inputs,
        secret_inputs=set(),
        dependencies={engine_urn(None, COMMAND_TYPE, d) for d in deps},
        delete_before_replace=False,
        additional_secret_outputs=[],
        custom=True,
        **options,  # type: ignore[arg-type]
    )


def k8s(name: str, deleted_with: str | None = None) -> Registered:
    return Registered(
        type="kubernetes:core/v1:ConfigMap",
        name=name,
        urn=engine_urn(None, "kubernetes:core/v1:ConfigMap", name),
        parent=None,
        inputs={"metadata": {"name": name}},
        secret_inputs=set(),
        dependencies=set(),
        delete_before_replace=False,
        additional_secret_outputs=[],
        custom=True,
        deleted_with=deleted_with,
    )


def component(type_: str, name: str, *aliases: AliasSpec) -> Registered:
    urn = engine_urn(None, type_, name)
    return Registered(type_, name, urn, None, {}, set(), set(), False, [], False, alias_specs=list(aliases))


@pytest.fixture
def engine(tmp_path: Path) -> tuple[Engine, Path]:
    script = tmp_path / "fake_ssh.py"
    script.write_text(FAKE_SSH)
    log = tmp_path / "ssh.log"
    return Engine(ssh_prefix=[sys.executable, str(script), str(log)], workdir=tmp_path), log


def ran(log: Path) -> list[str]:
    lines = log.read_text().splitlines() if log.exists() else []
    log.write_text("")
    return lines


def run_of(*resources: Registered) -> ProgramRun:
    return ProgramRun(list(resources), {}, set())


def test_creates_then_noop_then_update_with_new_inputs(engine) -> None:
    eng, log = engine
    a = command("a", create="bash -s -- apply", delete="bash -s -- remove")
    b = command("b", deps=("a",), create="bash -s -- apply", update="bash -s -- reconfigure")
    eng.up(run_of(a, b))
    assert [line.split()[0] for line in ran(log)] == ["a", "b"]
    eng.up(run_of(a, b))
    assert ran(log) == []
    report = eng.up(run_of(a, replace(b, inputs={**b.inputs, "stdin": "v2"})))
    assert report.updates == ["b"]
    assert ran(log) == ["b bash -s -- reconfigure 192.0.2.1 v2"]


def test_a_step_without_create_or_update_dials_nobody(engine) -> None:
    eng, log = engine
    chained = command("upgrade", update="bash -s -- upgrade")
    eng.up(run_of(chained))
    assert ran(log) == []
    eng.up(run_of(replace(chained, inputs={**chained.inputs, "stdin": "v2"})))
    assert ran(log) == ["upgrade bash -s -- upgrade 192.0.2.1 v2"]


def test_deletes_use_the_stored_inputs_dependents_first_after_the_updates(engine) -> None:
    eng, log = engine
    base = command("base", create="bash -s -- apply", delete="bash -s -- remove")
    top = command("top", deps=("base",), create="bash -s -- apply", delete="bash -s -- remove", stdin="old")
    other = command("other", create="bash -s -- apply")
    eng.up(run_of(base, top, other))
    ran(log)
    # `top` and `base` leave the program; `other` changes. Today's config would say stdin "new":
    # the delete still sends what was stored.
    eng.up(run_of(replace(other, inputs={**other.inputs, "stdin": "v2"})))
    assert ran(log) == [
        "other bash -s -- apply 192.0.2.1 v2",
        "top bash -s -- remove 192.0.2.1 old",
        "base bash -s -- remove 192.0.2.1 v1",
    ]


def test_deleted_with_skips_and_k8s_needs_the_api_after_the_program(engine) -> None:
    eng, log = engine
    cluster = command("cluster-id")
    drain = command("drain", create="bash -s -- reconcile", delete="bash -s -- drain", deleted_with=cluster.urn)
    uninstall = command("k3s", create="bash -s -- install", delete="bash -s -- uninstall")
    skipped_object = k8s("known-hosts", deleted_with=cluster.urn)
    eng.up(run_of(cluster, uninstall, drain, skipped_object))
    ran(log)
    report = eng.destroy()
    assert {name for name, _ in report.skipped} == {"drain", "known-hosts"}
    assert ran(log) == ["k3s bash -s -- uninstall 192.0.2.1 v1"]
    assert eng.state == {}
    # An object without deletedWith needs the API, which a destroy without the program lacks.
    eng.up(run_of(cluster, k8s("orphan")))
    with pytest.raises(EngineFailed, match="unreachable after the program exited: orphan"):
        eng.destroy()
    assert [r.name for r in eng.state.values()] == ["cluster-id", "orphan"]


def test_the_snapshot_refuses_a_deleted_with_target_that_comes_later(engine) -> None:
    eng, _ = engine
    later = command("later")
    early = command("early", create="bash -s -- apply", deleted_with=later.urn)
    with pytest.raises(AssertionError, match=r"is deleted with .*later, which comes after it"):
        eng.up(run_of(early, later))


def test_aliases_carry_the_identity_across_a_new_parent(engine) -> None:
    eng, log = engine
    old_parent = component("space-harbor:index:K3sAgent", "n2-agent")
    child = command("n2-k3s", create="bash -s -- install", delete="bash -s -- uninstall")
    child = replace(child, parent=old_parent.urn, urn=engine_urn(old_parent.urn, COMMAND_TYPE, "n2-k3s"))
    eng.up(run_of(old_parent, child))
    ran(log)
    new_parent = component(
        "space-harbor:index:K3sNode", "n2-k3s-node", AliasSpec(name="n2-agent", type="space-harbor:index:K3sAgent")
    )
    moved = replace(child, parent=new_parent.urn, urn=engine_urn(new_parent.urn, COMMAND_TYPE, "n2-k3s"))
    report = eng.up(run_of(new_parent, moved))
    # Same step: no uninstall, no install.
    assert ran(log) == []
    assert report.deletes == [] and report.creates == []
    assert moved.urn in eng.state and child.urn not in eng.state


def test_a_failed_update_stops_the_deletes(engine) -> None:
    eng, log = engine
    gone = command("gone", create="bash -s -- apply", delete="bash -s -- remove")
    broken = command("broken", create="bash -s -- apply", host="192.0.2.66")
    reachable = {**broken.inputs["connection"], "host": "192.0.2.1"}
    eng.up(run_of(gone, replace(broken, inputs={**broken.inputs, "connection": reachable})))
    ran(log)
    with pytest.raises(EngineFailed):
        eng.up(run_of(broken))
    assert [line.split()[0] for line in ran(log)] == ["broken"]
    assert "gone" in {r.name for r in eng.state.values()}
