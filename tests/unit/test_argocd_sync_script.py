"""argocd-sync.sh ("sync now", gitops.syncOnApply) against the k3s stand-in's API and the Argo CD
controller stand-in (tests/testbed/standin/), both run on this machine in a folder of the test's.

The Applications are the ones the program renders; the stand-in controller refreshes, auto-syncs
and runs operations the way Argo CD's does (see its docstring), so a test sees which patches the
script sent, in which order, and what the Applications look like afterwards.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from components.config import load_config
from components.render.gitops import (
    ROOT_APPLICATION,
    platform_application_names,
    platform_applications_selector,
    render_tree,
)
from components.render.remote import script_payload
from tests.conftest import base_config
from tests.helpers import ARGOCD_CONTROLLER_STANDIN, K3S_STANDIN, SCRIPTS, argocd_objects, status_line

HEAD = "5f0c1e0d8f4a1b2c3d4e5f60718293a4b5c6d7e8"
APPLICATIONS = "applications.argoproj.io"
CHILDREN = ["infracheck", "sealed-secrets", "traefik"]


class Cluster:
    """The stand-in API in `root`, and the controller stand-in (started on demand)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.data = root / "data"
        self.api = self.data / "standin" / "api"
        self.bin = root / "bin"
        self.bin.mkdir()
        shutil.copy(K3S_STANDIN, self.bin / "k3s")
        self.git = root / "git.json"
        self.log = root / "controller.log"
        self.controller: subprocess.Popen[str] | None = None
        self.config = base_config(agents=0)
        self.env = {"PATH": f"{self.bin}:/usr/bin:/bin", "K3S_STANDIN_DATA": str(self.data)}

    def kubectl(self, *args: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [str(self.bin / "k3s"), "kubectl", "-n", "argocd", *args],
            input=input,
            capture_output=True,
            text=True,
            env=self.env,
            timeout=30,
        )
        assert not check or result.returncode == 0, result.stderr
        return result

    def install(self, *, ready_replicas: int = 1, without: tuple[str, ...] = ()) -> None:
        """Argo CD's CRD, the root and the platform's Applications, the controller's StatefulSet."""
        (self.api / APPLICATIONS).mkdir(parents=True)
        objects = argocd_objects(self.config, ready_replicas=ready_replicas)
        objects["items"] = [o for o in objects["items"] if o["metadata"]["name"] not in without]
        self.kubectl("create", "-f", "-", input=json.dumps(objects))

    def set_git(self, *, drifted: list[str], failing: list[str] = ()) -> None:  # type: ignore[assignment]
        self.git.write_text(json.dumps({"head": HEAD, "drifted": drifted, "failing": list(failing)}))

    def start_controller(self, *, sync_seconds: float = 0.6) -> None:
        self.controller = subprocess.Popen(
            [
                sys.executable,
                str(ARGOCD_CONTROLLER_STANDIN),
                "--k3s",
                str(self.bin / "k3s"),
                "--repo",
                self.config["gitops"]["repoUrl"],
                "--git",
                str(self.git),
                "--log",
                str(self.log),
                "--sync-seconds",
                str(sync_seconds),
                "--interval",
                "0.2",
            ],
            env={**os.environ, **self.env},
            stderr=subprocess.DEVNULL,
            text=True,
        )

    def stop(self) -> None:
        if self.controller is not None:
            self.controller.terminate()
            self.controller.wait(timeout=10)

    def sync(self, revision: str = HEAD, **env: str) -> subprocess.CompletedProcess[str]:
        params = {
            "HARBOR_GITOPS_REVISION": revision,
            "HARBOR_ARGOCD_NAMESPACE": "argocd",
            "HARBOR_ROOT_APPLICATION": ROOT_APPLICATION,
            "HARBOR_CHILD_SELECTOR": platform_applications_selector(),
            "HARBOR_CHILD_APPLICATIONS": "\n".join(platform_application_names(load_config(self.config))),
            "HARBOR_SYNC_TIMEOUT": "30",
            "HARBOR_SYNC_POLL": "0.2",
            **env,
        }
        payload = script_payload((SCRIPTS / "argocd-sync.sh").read_text(), params)
        return subprocess.run(
            ["bash", "-s", "--", "sync"], input=payload, capture_output=True, text=True, env=self.env, timeout=120
        )

    def app(self, name: str) -> dict[str, Any]:
        return json.loads(self.kubectl("get", APPLICATIONS, name, "-o", "json").stdout)

    def patches(self) -> list[dict[str, Any]]:
        log = self.api / "patches.log"
        return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []

    def script_patches(self) -> list[dict[str, Any]]:
        """The patches argocd-sync.sh sent: a refresh request, or an operation of its own."""
        return [p for p in self.patches() if is_refresh(p) or started_by_us(p)]


def is_refresh(patch: dict[str, Any]) -> bool:
    return (patch["patch"].get("metadata", {}).get("annotations") or {}).get("argocd.argoproj.io/refresh") == "normal"


def started_by_us(patch: dict[str, Any]) -> bool:
    operation = patch["patch"].get("operation") or {}
    return (operation.get("initiatedBy") or {}).get("username") == "space-harbor"


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    made = Cluster(tmp_path)
    try:
        yield made
    finally:
        made.stop()


def test_refreshes_the_root_then_syncs_only_the_children_out_of_sync(cluster: Cluster) -> None:
    cluster.install()
    cluster.set_git(drifted=[ROOT_APPLICATION, "traefik"])
    cluster.start_controller()

    result = cluster.sync()

    assert status_line(result) == "space-harbor: argocd-sync.sh sync: changed", result.stderr
    ours = cluster.script_patches()
    # The root first, then every child, each asked to refresh before anything is synced.
    assert [p["name"] for p in ours if is_refresh(p)] == [ROOT_APPLICATION, *CHILDREN]
    assert ours[0]["name"] == ROOT_APPLICATION and is_refresh(ours[0])
    # The root syncs by itself (automated); only the child found OutOfSync gets our operation.
    operations = [p for p in ours if started_by_us(p)]
    assert [p["name"] for p in operations] == ["traefik"]
    events = [json.loads(line) for line in cluster.log.read_text().splitlines()]
    assert ("auto-sync", ROOT_APPLICATION) in [(e["event"], e["app"]) for e in events]
    # Refreshed children come after the root's sync has finished: it may create or change them.
    root_done = next(e["time"] for e in events if e["event"] == "operation-finished" and e["app"] == ROOT_APPLICATION)
    assert all(p["time"] > root_done for p in ours if p["name"] in CHILDREN)

    sync = operations[0]["patch"]["operation"]["sync"]
    traefik = cluster.app("traefik")
    # A multi-source child: the chart's pinned version and the commit the refresh resolved.
    chart = traefik["spec"]["sources"][0]["targetRevision"]
    assert sync["revisions"] == [chart, HEAD]
    assert sync["syncOptions"] == traefik["spec"]["syncPolicy"]["syncOptions"]
    assert sync["prune"] is True and sync["syncStrategy"] == {"hook": {}}
    assert operations[0]["patch"]["metadata"]["resourceVersion"], "an operation is written with a precondition"
    assert HEAD in operations[0]["patch"]["operation"]["info"][0]["value"]
    for name in [ROOT_APPLICATION, *CHILDREN]:
        app = cluster.app(name)
        assert app["status"]["sync"]["status"] == "Synced", name
        assert "operation" not in app, name
        assert "argocd.argoproj.io/refresh" not in app["metadata"].get("annotations", {}), name
    assert cluster.app("traefik")["status"]["operationState"]["phase"] == "Succeeded"


def test_a_users_application_with_the_platforms_labels_is_never_synced_or_pruned(cluster: Cluster) -> None:
    cluster.install()
    # A user's copy of a platform Application under apps/user/, labels and all, out of sync.
    copy = cluster.app("traefik")
    copy["metadata"] = {"name": "my-traefik", "namespace": "argocd", "labels": copy["metadata"]["labels"]}
    copy.pop("status", None)
    cluster.kubectl("create", "-f", "-", input=json.dumps({"kind": "List", "items": [copy]}))
    cluster.set_git(drifted=["my-traefik", "traefik"])
    cluster.start_controller()

    result = cluster.sync()

    assert status_line(result).endswith("changed"), result.stderr
    touched = {p["name"] for p in cluster.script_patches()}
    assert "my-traefik" not in touched
    assert [p["name"] for p in cluster.script_patches() if started_by_us(p)] == ["traefik"]
    assert "Application my-traefik carries the platform's labels but is not one of this stack's" in result.stderr


def test_a_root_that_does_not_sync_by_itself_gets_our_sync_at_the_new_commit(cluster: Cluster) -> None:
    cluster.install()
    cluster.kubectl(
        "patch", APPLICATIONS, ROOT_APPLICATION, "--type", "merge", "-p", '{"spec":{"syncPolicy":{"automated":null}}}'
    )
    cluster.set_git(drifted=[ROOT_APPLICATION])
    cluster.start_controller()

    result = cluster.sync()

    assert status_line(result).endswith("changed"), result.stderr
    operations = [p for p in cluster.script_patches() if started_by_us(p)]
    assert [p["name"] for p in operations] == [ROOT_APPLICATION]
    sync = operations[0]["patch"]["operation"]["sync"]
    assert sync["revision"] == HEAD and "revisions" not in sync
    assert sync["syncOptions"] == ["PruneLast=true"]
    assert cluster.app(ROOT_APPLICATION)["status"]["operationState"]["syncResult"] == {"revision": HEAD}


def test_everything_in_sync_changes_nothing_but_the_refreshes(cluster: Cluster) -> None:
    cluster.install()
    cluster.set_git(drifted=[])
    cluster.start_controller()

    result = cluster.sync()

    assert status_line(result) == "space-harbor: argocd-sync.sh sync: unchanged", result.stderr
    assert not [p for p in cluster.patches() if p["patch"].get("operation")]
    assert len(cluster.script_patches()) == 1 + len(CHILDREN)


def test_a_branch_that_moved_on_is_synced_at_what_argo_cd_sees(cluster: Cluster) -> None:
    cluster.install()
    cluster.set_git(drifted=["traefik"])
    cluster.start_controller()

    result = cluster.sync(revision="0" * 40)

    assert result.returncode == 0, result.stderr
    assert f"Argo CD sees {HEAD} on the branch, not {'0' * 40}" in result.stderr
    operation = next(p for p in cluster.script_patches() if started_by_us(p))
    assert operation["patch"]["operation"]["sync"]["revisions"][-1] == HEAD


def test_a_failed_child_sync_fails_the_step_naming_it_and_argo_cds_message(cluster: Cluster) -> None:
    cluster.install()
    cluster.set_git(drifted=["traefik", "infracheck"], failing=["traefik"])
    cluster.start_controller()

    result = cluster.sync()

    assert result.returncode == 1
    assert "Argo CD could not sync every Application" in result.stderr
    assert "traefik: Failed: stand-in: one or more objects failed to apply" in result.stderr
    assert "infracheck: " not in result.stderr.split("could not sync every Application", 1)[1]
    assert cluster.app("infracheck")["status"]["operationState"]["phase"] == "Succeeded"


def test_an_operation_written_meanwhile_is_not_overwritten(cluster: Cluster) -> None:
    """Between the script's read and its patch someone clicks Sync (a wrapper around kubectl plays
    that writer): the precondition refuses the stale patch, the script reads again, finds the
    other operation and waits for it instead of replacing it."""
    cluster.install()
    cluster.set_git(drifted=["sealed-secrets"])
    cluster.start_controller()
    real = cluster.bin / "k3s-real"
    (cluster.bin / "k3s").rename(real)
    marker = cluster.root / "clicked"
    click = json.dumps({"operation": {"initiatedBy": {"username": "alice"}, "sync": {"prune": False}}})
    wrapper = cluster.bin / "k3s"
    wrapper.write_text(
        "#!/bin/bash\n"
        f'if [[ "$*" == *\'"operation"\'* ]] && [ ! -e {marker} ]; then\n'
        f"  touch {marker}\n"
        f"  {real} kubectl -n argocd patch {APPLICATIONS} sealed-secrets --type merge -p '{click}' >/dev/null\n"
        "fi\n"
        f'exec {real} "$@"\n'
    )
    wrapper.chmod(0o755)

    result = cluster.sync()

    assert result.returncode == 0, result.stderr
    assert marker.exists(), "the wrapper never saw an operation patch"
    assert [p for p in cluster.script_patches() if started_by_us(p)] == [], "our stale operation got through"
    state = cluster.app("sealed-secrets")["status"]["operationState"]
    assert state["operation"]["initiatedBy"] == {"username": "alice"}
    assert state["phase"] == "Succeeded"
    assert "Application sealed-secrets is syncing already: waiting for it" in result.stderr


def test_a_missing_root_application_is_a_clear_error_at_once(cluster: Cluster) -> None:
    cluster.install(without=(ROOT_APPLICATION,))
    started = time.monotonic()
    result = cluster.sync()
    assert result.returncode == 1
    assert f"the root Application argocd/{ROOT_APPLICATION} does not exist" in result.stderr
    assert time.monotonic() - started < 15
    assert cluster.patches() == []


def test_argo_cd_not_installed_is_a_clear_error(cluster: Cluster) -> None:
    result = cluster.sync()
    assert result.returncode == 1
    assert "Argo CD's Application CRD is not installed" in result.stderr


def test_a_controller_without_a_ready_replica_fails_within_the_timeout(cluster: Cluster) -> None:
    cluster.install(ready_replicas=0)
    started = time.monotonic()
    result = cluster.sync(HARBOR_SYNC_TIMEOUT="3")
    assert result.returncode == 1
    assert "StatefulSet argocd/argocd-application-controller) has no ready replica after 3s" in result.stderr
    assert time.monotonic() - started < 20
    assert cluster.patches() == []


def test_a_controller_that_does_not_answer_fails_within_the_timeout(cluster: Cluster) -> None:
    # The StatefulSet says ready, but nothing removes the refresh annotation.
    cluster.install()
    started = time.monotonic()
    result = cluster.sync(HARBOR_SYNC_TIMEOUT="3")
    assert result.returncode == 1
    assert f"did not refresh {ROOT_APPLICATION} within 3s" in result.stderr
    assert time.monotonic() - started < 20


def test_a_sync_that_does_not_finish_fails_within_the_timeout(cluster: Cluster) -> None:
    cluster.install()
    cluster.set_git(drifted=["traefik"])
    cluster.start_controller(sync_seconds=3600)
    started = time.monotonic()

    result = cluster.sync(HARBOR_SYNC_TIMEOUT="6")

    assert result.returncode == 1
    assert "the sync of traefik did not finish within 6s" in result.stderr
    assert time.monotonic() - started < 30


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"HARBOR_GITOPS_REVISION": "main"}, "HARBOR_GITOPS_REVISION must be a commit sha"),
        ({"HARBOR_GITOPS_REVISION": ""}, "HARBOR_GITOPS_REVISION must be a commit sha"),
        ({"HARBOR_SYNC_TIMEOUT": "soon"}, "HARBOR_SYNC_TIMEOUT must be a number of seconds"),
        ({"HARBOR_CHILD_SELECTOR": ""}, "HARBOR_CHILD_SELECTOR must be a label selector"),
        ({"HARBOR_ROOT_APPLICATION": "Root App"}, "HARBOR_ROOT_APPLICATION must be an object name"),
    ],
)
def test_bad_parameters_are_refused_before_the_api_is_asked(
    cluster: Cluster, env: dict[str, str], message: str
) -> None:
    cluster.install()
    params = {"HARBOR_GITOPS_REVISION": HEAD, **env}
    result = cluster.sync(**params)
    assert result.returncode == 1
    assert message in result.stderr
    assert cluster.patches() == []


def test_the_generated_readme_says_when_the_platform_syncs() -> None:
    def note(**gitops: Any) -> str:
        config = base_config(agents=0)
        config["gitops"] |= gitops
        return render_tree(load_config(config))["cluster/README.md"]

    assert "`gitops.syncOnApply`" in note(syncOnApply=True)
    assert "syncOnApply" not in note()
    # autoSync makes the children sync by themselves; syncOnApply adds nothing to say then.
    assert "sync automatically too" in note(syncOnApply=True, autoSync=True)


def test_a_commit_synced_before_is_not_synced_again(cluster: Cluster) -> None:
    """pulumi-command reruns the step on any change of its stdin or connection; only a new commit syncs."""
    cluster.install()
    cluster.set_git(drifted=[ROOT_APPLICATION, "traefik"])
    cluster.start_controller()
    assert status_line(cluster.sync()).endswith("changed")
    assert cluster.app(ROOT_APPLICATION)["metadata"]["annotations"]["space-harbor/synced-revision"] == HEAD
    before = len(cluster.patches())

    # the same commit, with another script or connection (here: another timeout)
    again = cluster.sync(HARBOR_SYNC_TIMEOUT="45")

    assert status_line(again) == "space-harbor: argocd-sync.sh sync: unchanged", again.stderr
    assert f"commit {HEAD} was synced by an earlier run: nothing to do" in again.stderr
    assert len(cluster.patches()) == before, "nothing written: no refresh, no operation"

    # a new commit is synced again (everything is in sync now, so only refreshes) and recorded
    newer = "0" * 39 + "1"
    assert status_line(cluster.sync(newer)).startswith("space-harbor: argocd-sync.sh sync: ")
    assert [p["name"] for p in cluster.script_patches()[-4:] if is_refresh(p)] != []
    assert cluster.app(ROOT_APPLICATION)["metadata"]["annotations"]["space-harbor/synced-revision"] == newer


def test_a_failed_sync_records_nothing_so_the_next_run_syncs_again(cluster: Cluster) -> None:
    cluster.install()
    cluster.set_git(drifted=[ROOT_APPLICATION, "traefik"], failing=["traefik"])
    cluster.start_controller()
    assert cluster.sync().returncode != 0
    assert "space-harbor/synced-revision" not in cluster.app(ROOT_APPLICATION)["metadata"].get("annotations", {})
