"""Resource identities as the engine sees them: existing stacks keep theirs, and no config order,
role or first-server choice can turn an update into a delete plus a create (an uninstall).

The fixtures in tests/program/fixtures/ are the URNs the program registered before the graph was
restructured; `resolve_identities` applies the engine's alias rules to today's registrations.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import STACKS, base_config, etcd_config, pinned
from tests.harness import ProgramRun, Registered, resolve_identities, run_program
from tests.unit.test_platform_render import full_raw

FIXTURES = Path(__file__).parent / "fixtures"
REFERENCE_STACKS = {**STACKS, "all-components": full_raw}

# URNs of the reference fixtures that may disappear, and why that costs nothing on a live stack.
DROPPED = {
    # The old admin-kubeconfig read had no delete command: its removal dials nobody.
    # `api-credential` replaces it.
    "space-harbor:index:K3sServer$command:remote:Command::server-1-kubeconfig",
    # Argo CD's known hosts were a Patch that could never apply (another field manager owned the
    # field), so no stack holds it; the ConfigMap is now a resource of its own.
    "space-harbor:index:ArgoCD$kubernetes:core/v1:ConfigMapPatch::argocd-ssh-known-hosts",
    # A component has no delete of its own; its children (Argo CD's objects) keep their
    # identities through aliases, which tests/program/test_argocd.py checks.
    "space-harbor:index:ArgoCD$kubernetes:yaml/v2:ConfigFile::argocd-core",
}


def _fixture(name: str) -> set[str]:
    lines = (FIXTURES / f"urns-{name}.txt").read_text().splitlines()
    return {line for line in lines if line and not line.startswith("#")}


def _suffix(urn: str) -> str:
    return urn.split("::", 2)[2]


@pytest.mark.parametrize("stack", sorted(REFERENCE_STACKS))
def test_every_resource_of_an_existing_stack_keeps_its_identity(stack: str) -> None:
    old = _fixture(stack)
    run = run_program(REFERENCE_STACKS[stack]())
    matched = resolve_identities(run.resources, old)
    taken = {urn for urn in matched.values() if urn is not None}
    lost = {_suffix(urn) for urn in old - taken}
    assert lost <= DROPPED, sorted(lost - DROPPED)


def _urns(run: ProgramRun) -> set[str]:
    return {r.urn for r in run.resources}


def _inputs(run: ProgramRun) -> dict[str, Any]:
    return {r.urn: r.inputs for r in run.resources if r.custom}


def test_reordering_nodes_changes_no_resource_at_all() -> None:
    config = etcd_config()
    config["nodes"].append(
        pinned({"name": "agent-2", "role": "agent", "host": "192.0.2.22", "meshAddress": "10.160.1.2"})
    )
    reordered = copy.deepcopy(config)
    reordered["nodes"] = list(reversed(reordered["nodes"]))
    before, after = run_program(config), run_program(reordered)
    assert _urns(before) == _urns(after)
    old, new = _inputs(before), _inputs(after)
    assert [urn for urn in old if old[urn] != new[urn]] == []


def test_a_role_change_keeps_every_identity_and_reaches_the_node_as_an_update() -> None:
    """k3s.sh and the preflight refuse it on the node (tests/unit); nothing is ever deleted for it."""
    config = base_config(agents=2)
    promoted = copy.deepcopy(config)
    promoted["nodes"][2]["role"] = "server"
    promoted["k3s"] = {"datastore": "etcd", "firstServer": "server-1"}
    promoted["nodes"].append(
        pinned({"name": "server-3", "role": "server", "host": "192.0.2.13", "meshAddress": "10.160.0.3"})
    )
    before, after = run_program(config), run_program(promoted)
    assert _urns(before) <= _urns(after)
    old, new = _inputs(before), _inputs(after)
    changed = {after.by_urn(urn).name for urn in old if urn in new and old[urn] != new[urn]}
    assert {"agent-2-preflight", "agent-2-k3s"} <= changed


def test_changing_the_first_server_keeps_every_identity() -> None:
    config = etcd_config()
    moved = copy.deepcopy(config)
    moved["k3s"]["firstServer"] = "server-2"
    before, after = run_program(config), run_program(moved)
    assert _urns(before) == _urns(after)
    # the steps that run on the first server now dial server-2: updates, not replacements
    for name in ("agent-1-registered", "agent-1-drain", "cluster-departures", "api-credential"):
        assert after.named(name).inputs["connection"]["host"] == "192.0.2.12", name


def test_lifecycle_steps_and_in_cluster_objects_go_with_the_cluster() -> None:
    run = run_program(full_raw())
    cluster_id = run.named("cluster-id")
    for name in ("registered", "node-object", "drain", "uncordon"):
        for node in ("server-1", "agent-1"):
            assert run.named(f"{node}-{name}").deleted_with == cluster_id.urn, f"{node}-{name}"
    # what touches a node itself is never skipped: a destroy uninstalls every node
    for command in run.commands():
        if command.name.endswith(("-k3s", "-upgrade", "-mesh", "-firewall", "-preflight")):
            assert command.deleted_with is None, command.name
    # every Kubernetes object goes with the cluster, by its own option or its component's
    for resource in run.resources:
        if resource.custom and resource.type.startswith("kubernetes:"):
            assert _effective_deleted_with(run, resource) == cluster_id.urn, resource.name


def _effective_deleted_with(run: ProgramRun, resource: Registered) -> str | None:
    """deletedWith as the engine records it: the resource's own, else its nearest parent's."""
    while resource is not None:
        if resource.deleted_with:
            return resource.deleted_with
        resource = next((r for r in run.resources if r.urn == resource.parent), None)  # type: ignore[assignment]
    return None


@pytest.mark.parametrize("stack", sorted(REFERENCE_STACKS))
def test_every_deleted_with_target_exists_before_what_is_deleted_with_it(stack: str) -> None:
    """The engine's snapshot check refuses a deletedWith target that is missing or comes later;
    a resource registers only after its dependencies' steps are done, so each must depend on it."""
    run = run_program(REFERENCE_STACKS[stack]())
    urns = {r.urn for r in run.resources}
    checked = 0
    for resource in run.resources:
        target = _effective_deleted_with(run, resource)
        if target is None:
            continue
        checked += 1
        assert target in urns, resource.name
        owner = resource
        while not owner.deleted_with:  # an inherited option: the component that set it must wait
            owner = run.by_urn(owner.parent)  # type: ignore[arg-type]
        assert run.depends_on(owner, run.by_urn(target)), f"{owner.name} does not wait for {target}"
    assert checked > 10


@pytest.mark.parametrize("preview", [True, False], ids=["preview", "up"])
def test_forgotten_nodes_keep_their_identities_with_nothing_to_run(preview: bool) -> None:
    config = base_config(agents=2)
    live = run_program(config)
    gone = copy.deepcopy(config)
    del gone["nodes"][2]
    gone["decommission"] = {"forget": ["agent-2"]}
    run = run_program(gone, preview=preview)
    names = ("preflight", "mesh", "firewall", "node-object", "k3s", "drain", "upgrade", "uncordon", "registered")
    for step in names:
        old = live.named(f"agent-2-{step}")
        new = run.named(f"agent-2-{step}")
        assert new.urn == old.urn, step
        for action in ("create", "update", "delete", "stdin"):
            assert action not in new.inputs, (step, action)
        assert new.inputs["connection"]["host"] == "agent-2.forgotten.invalid"
    departures = run.named("cluster-departures")
    assert "HARBOR_FORGET_NODES=agent-2" in departures.inputs["stdin"]
    # the others' meshes no longer list it
    assert "agent-2" not in run.named("agent-1-mesh").inputs.get("stdin", "")


def test_preview_of_an_existing_stack_opens_no_tunnel_and_up_does() -> None:
    config = base_config(agents=1)
    preview = run_program(config, preview=True, existing=True)
    # The credential is known from the state, so the kubeconfig is built: without a tunnel.
    assert f"127.0.0.1:{int(preview.outputs['apiTunnel']['localPort'])}" in preview.outputs["kubeconfig"]
    assert preview.tunnels == []
    assert len(run_program(config).tunnels) == 1
