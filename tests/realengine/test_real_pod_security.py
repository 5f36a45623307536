"""The Pod Security fence against the real kube-apiserver: what Argo CD may and may not make a Namespace.

One server, applied with the real engine. Argo CD's controller is a stand-in that syncs nothing, so
the tests make its requests themselves: the admin kubeconfig on n1 impersonates the controller's
ServiceAccount, which is the username the API server's admission sees when Argo CD applies a
Namespace. Every refusal is checked to be the policy's (its name and message in the error), and the
one accepted label is shown to fence: PodSecurity then refuses a privileged hostPath pod.

The project fence on the same cluster: which Applications and AppProjects Argo CD may write. The
platform's own come from the tree the program pushed to the git server, read back from there.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from components.config import DEFAULT_ARGOCD_VERSION
from components.render.gitops import ROOT_APPLICATION
from components.render.pod_security import ENFORCE_LABEL, POLICY_NAME, exempt_namespaces
from components.render.project_fence import APPLICATIONS_POLICY, PROJECTS_POLICY
from components.upstream import PinnedFiles
from tests.realengine.conftest import RealStack, stack_on
from tests.testbed.nodes import GIT_REPO, SshResult

pytestmark = [pytest.mark.realengine, pytest.mark.testbed]

CONTROLLER = "system:serviceaccount:argocd:argocd-application-controller"
FENCED = "user-fenced"  # labelled restricted by the tests, as a user's Namespace should be
BARE = "user-bare"  # never labelled
BY_ADMIN = "user-by-admin"  # made by the admin, never labelled


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealStack]:
    yield from stack_on(["n1"], tmp_path_factory.mktemp("podsec"), up=True)


def kubectl(stack: RealStack, args: str, *, as_controller: bool, manifest: dict | None = None) -> SshResult:
    """`k3s kubectl` on the server as the admin, or impersonating Argo CD's application controller."""
    impersonate = f" --as={CONTROLLER}" if as_controller else ""
    return stack.tb.ssh(
        "n1",
        f"k3s kubectl {args}{impersonate}",
        input=json.dumps(manifest) if manifest is not None else None,
        check=False,
    )


def namespace(name: str, level: str | None) -> dict:
    labels = {ENFORCE_LABEL: level} if level is not None else {}
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}}


def exists(stack: RealStack, name: str) -> bool:
    return kubectl(stack, f"get namespace {shlex.quote(name)}", as_controller=False).returncode == 0


def enforce_level(stack: RealStack, name: str) -> str | None:
    out = kubectl(stack, f"get namespace {name} -o json", as_controller=False).stdout
    return json.loads(out)["metadata"].get("labels", {}).get(ENFORCE_LABEL)


def wait_for_default_service_account(stack: RealStack, name: str) -> None:
    """A pod is admitted only once the controller-manager has made its namespace's `default` account."""
    wait = f"for _ in $(seq 60); do k3s kubectl -n {name} get serviceaccount default && exit 0; sleep 1; done; exit 1"
    stack.tb.ssh("n1", f"bash -c {shlex.quote(wait)}")


def refused_by_the_fence(result: SshResult) -> bool:
    """The policy's own denial: its name, and the message that tells the label and both levels."""
    error = result.stderr
    return (
        result.returncode != 0
        and f"ValidatingAdmissionPolicy '{POLICY_NAME}'" in error
        and ENFORCE_LABEL in error
        and "restricted or baseline" in error
    )


PRIVILEGED_HOSTPATH_POD = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {"name": "escape"},
    "spec": {
        "containers": [
            {
                "name": "shell",
                "image": "busybox",
                "securityContext": {"privileged": True},
                "volumeMounts": [{"name": "host", "mountPath": "/host"}],
            }
        ],
        "volumes": [{"name": "host", "hostPath": {"path": "/"}}],
    },
}


def type_checked_status(server: RealStack, policy: str) -> dict[str, Any]:
    """`policy`'s status once the controller-manager has type-checked its expressions (within a minute)."""
    wait = (
        f"for _ in $(seq 60); do k3s kubectl get validatingadmissionpolicy {policy} -o json"
        " | grep -q typeChecking && exit 0; sleep 1; done; exit 1"
    )
    server.tb.ssh("n1", f"bash -c {shlex.quote(wait)}")
    out = kubectl(server, f"get validatingadmissionpolicy {policy} -o json", as_controller=False)
    return json.loads(out.stdout)["status"]


def test_the_policy_is_in_force_and_a_second_preview_changes_nothing(server: RealStack) -> None:
    # Server-side apply of the policy is stable: what the API server stored is what the program declares.
    server.pulumi.run("preview", "--expect-no-changes")
    out = kubectl(server, "get validatingadmissionpolicybindings -o json", as_controller=False)
    assert out.returncode == 0, out.stderr
    bindings = {item["metadata"]["name"]: item["spec"] for item in json.loads(out.stdout)["items"]}
    assert bindings[POLICY_NAME]["validationActions"] == ["Deny"], bindings
    # The controller-manager type-checks every expression against the Namespace schema.
    status = type_checked_status(server, POLICY_NAME)
    assert status["typeChecking"].get("expressionWarnings", []) == [], status


def test_the_api_server_holds_the_argo_cd_crds_the_copy_vendored(server: RealStack) -> None:
    """The fence's tests meet the CRDs of the manifest the project copy vendored: upstream's, with
    their full schemas, wherever ./scripts/vendor could fetch it (see copy_project)."""
    project = server.pulumi.project
    version = server.config.get("argocd", {}).get("version", DEFAULT_ARGOCD_VERSION)
    store = PinnedFiles(project / "manifests" / "upstream.yaml", project / ".cache" / "upstream")
    vendored = {
        document["metadata"]["name"]: [v["schema"] for v in document["spec"]["versions"]]
        for document in yaml.safe_load_all(store.read("argocd-core", version))
        if isinstance(document, dict) and document.get("kind") == "CustomResourceDefinition"
    }
    out = kubectl(server, f"get crd {' '.join(sorted(vendored))} -o json", as_controller=False)
    assert out.returncode == 0, out.stderr
    stored = {
        item["metadata"]["name"]: [v["schema"] for v in item["spec"]["versions"]]
        for item in json.loads(out.stdout)["items"]
    }
    assert stored == vendored, store.pin("argocd-core", version).url


def test_a_namespace_without_the_label_is_refused_to_argo_cd(server: RealStack) -> None:
    result = kubectl(server, "create -f -", as_controller=True, manifest=namespace(BARE, None))
    assert refused_by_the_fence(result), (result.returncode, result.stderr)
    assert "it has none" in result.stderr, result.stderr
    assert not exists(server, BARE)
    privileged = kubectl(server, "create -f -", as_controller=True, manifest=namespace(BARE, "privileged"))
    assert refused_by_the_fence(privileged), (privileged.returncode, privileged.stderr)
    assert not exists(server, BARE)


def test_a_restricted_namespace_is_accepted_and_its_label_fences_pods(server: RealStack) -> None:
    result = kubectl(server, "create -f -", as_controller=True, manifest=namespace(FENCED, "restricted"))
    assert result.returncode == 0, result.stderr
    assert enforce_level(server, FENCED) == "restricted"
    wait_for_default_service_account(server, FENCED)
    # As the admin: the built-in PodSecurity admission refuses it because of the label alone.
    pod = kubectl(
        server, f"-n {FENCED} create --dry-run=server -f -", as_controller=False, manifest=PRIVILEGED_HOSTPATH_POD
    )
    assert pod.returncode != 0 and 'violates PodSecurity "restricted' in pod.stderr, (pod.returncode, pod.stderr)
    assert "privileged" in pod.stderr and "hostPath" in pod.stderr, pod.stderr


def test_a_platform_namespace_is_exempt(server: RealStack) -> None:
    absent = [name for name in exempt_namespaces() if name != "argocd" and not exists(server, name)]
    assert absent, "every platform namespace exists already: none to create"
    name = absent[0]
    try:
        result = kubectl(server, "create -f -", as_controller=True, manifest=namespace(name, None))
        assert result.returncode == 0, result.stderr
    finally:
        kubectl(server, f"delete namespace {name} --wait=false", as_controller=False)


def test_a_namespace_the_admin_creates_is_not_the_policy_s_business(server: RealStack) -> None:
    result = kubectl(server, "create -f -", as_controller=False, manifest=namespace(BY_ADMIN, None))
    assert result.returncode == 0, result.stderr
    wait_for_default_service_account(server, BY_ADMIN)
    # Without the label nothing fences it: the same pod passes admission there.
    pod = kubectl(
        server, f"-n {BY_ADMIN} create --dry-run=server -f -", as_controller=False, manifest=PRIVILEGED_HOSTPATH_POD
    )
    assert pod.returncode == 0, pod.stderr


def test_argo_cd_may_not_drop_or_lower_the_label(server: RealStack) -> None:
    assert enforce_level(server, FENCED) == "restricted"
    dropped = kubectl(server, f"label namespace {FENCED} {ENFORCE_LABEL}-", as_controller=True)
    assert refused_by_the_fence(dropped), (dropped.returncode, dropped.stderr)
    lowered = kubectl(server, f"label --overwrite namespace {FENCED} {ENFORCE_LABEL}=privileged", as_controller=True)
    assert refused_by_the_fence(lowered), (lowered.returncode, lowered.stderr)
    assert enforce_level(server, FENCED) == "restricted"
    # The whole object written back without the label (a PUT): refused as well.
    replaced = kubectl(server, "replace -f -", as_controller=True, manifest=namespace(FENCED, None))
    assert refused_by_the_fence(replaced), (replaced.returncode, replaced.stderr)
    assert enforce_level(server, FENCED) == "restricted"
    # Relaxing to baseline is allowed: it still refuses privileged and hostPath.
    relaxed = kubectl(server, f"label --overwrite namespace {FENCED} {ENFORCE_LABEL}=baseline", as_controller=True)
    assert relaxed.returncode == 0, relaxed.stderr
    assert enforce_level(server, FENCED) == "baseline"


# --- the project fence -------------------------------------------------------------------------


def argocd_objects(stack: RealStack, args: str, *, as_controller: bool, text: str | None = None) -> SshResult:
    """`k3s kubectl -n argocd ARGS`, as the admin or as Argo CD's application controller."""
    impersonate = f" --as={CONTROLLER}" if as_controller else ""
    return stack.tb.ssh("n1", f"k3s kubectl -n argocd {args}{impersonate}", input=text, check=False)


def apply_as_argocd(stack: RealStack, document: dict | str) -> SshResult:
    """What Argo CD's sync does with one manifest: a server-side apply under its own field manager."""
    text = document if isinstance(document, str) else json.dumps(document)
    apply = "apply --server-side --field-manager=argocd-controller -f -"
    return argocd_objects(stack, apply, as_controller=True, text=text)


def pushed(stack: RealStack, relative: str) -> str:
    """A file of the tree the program pushed, from the git server's main."""
    return stack.tb.ssh("git", f"git -C {GIT_REPO} show main:cluster/{relative}").stdout


def pushed_folder(stack: RealStack, relative: str) -> dict[str, str]:
    listing = stack.tb.ssh("git", f"git -C {GIT_REPO} ls-tree --name-only main cluster/{relative}/").stdout.split()
    return {path.removeprefix("cluster/"): pushed(stack, path.removeprefix("cluster/")) for path in listing}


def merge_patch(stack: RealStack, name: str, patch: dict) -> SshResult:
    """A merge patch of Application `name`, as Argo CD's application controller."""
    return argocd_objects(
        stack, f"patch application {name} --type merge -p {shlex.quote(json.dumps(patch))}", as_controller=True
    )


def user_application(name: str, project: str) -> dict:
    return {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "Application",
        "metadata": {"name": name, "namespace": "argocd"},
        "spec": {
            "project": project,
            "source": {"repoURL": "https://charts.example.org", "chart": "hello", "targetRevision": "1.2.3"},
            "destination": {"server": "https://kubernetes.default.svc", "namespace": name},
        },
    }


def application_exists(stack: RealStack, name: str) -> bool:
    return argocd_objects(stack, f"get application {name}", as_controller=False).returncode == 0


def refused_by_the_project_fence(result: SshResult, policy: str) -> bool:
    return (
        result.returncode != 0
        and f"ValidatingAdmissionPolicy '{policy}'" in result.stderr
        and "project fence" in result.stderr
    )


def test_the_project_fence_is_in_force_and_its_cel_checks_against_argo_cd_s_crds(server: RealStack) -> None:
    out = kubectl(server, "get validatingadmissionpolicybindings -o json", as_controller=False)
    bindings = {item["metadata"]["name"]: item["spec"] for item in json.loads(out.stdout)["items"]}
    for policy in (APPLICATIONS_POLICY, PROJECTS_POLICY):
        assert bindings[policy] == {"policyName": policy, "validationActions": ["Deny"]}, bindings
        # The type check resolves `object` through the real Application and AppProject CRDs.
        status = type_checked_status(server, policy)
        assert status["typeChecking"].get("expressionWarnings", []) == [], status


@pytest.mark.parametrize("name", ["hello", "longhorn"])  # longhorn: a component this stack leaves disabled
def test_an_application_in_project_infrastructure_is_refused_to_argo_cd(server: RealStack, name: str) -> None:
    result = apply_as_argocd(server, user_application(name, "infrastructure"))
    assert refused_by_the_project_fence(result, APPLICATIONS_POLICY), (result.returncode, result.stderr)
    assert f"Application {name} names project infrastructure" in result.stderr, result.stderr
    assert "must name project applications" in result.stderr, result.stderr
    assert not application_exists(server, name)


def test_an_application_in_project_applications_is_accepted_and_so_are_the_controller_s_writes(
    server: RealStack,
) -> None:
    result = apply_as_argocd(server, user_application("hello", "applications"))
    assert result.returncode == 0, result.stderr
    recorded = merge_patch(server, "hello", {"status": {"sync": {"status": "Synced"}, "health": {"status": "Healthy"}}})
    assert recorded.returncode == 0, recorded.stderr
    started = merge_patch(
        server, "hello", {"operation": {"sync": {"revision": "1.2.3"}, "initiatedBy": {"automated": True}}}
    )
    assert started.returncode == 0, started.stderr
    # ...but not a move to the platform's project, whoever's write it is in Argo CD.
    moved = merge_patch(server, "hello", {"spec": {"project": "infrastructure"}})
    assert refused_by_the_project_fence(moved, APPLICATIONS_POLICY), (moved.returncode, moved.stderr)
    stored = json.loads(argocd_objects(server, "get application hello -o json", as_controller=False).stdout)
    assert stored["spec"]["project"] == "applications"
    assert stored["status"]["sync"]["status"] == "Synced"


def test_an_app_project_of_a_user_s_own_is_refused(server: RealStack) -> None:
    mine = {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "AppProject",
        "metadata": {"name": "mine", "namespace": "argocd"},
        "spec": {
            "sourceRepos": ["*"],
            "destinations": [{"server": "https://kubernetes.default.svc", "namespace": "*"}],
            "clusterResourceWhitelist": [{"group": "*", "kind": "*"}],
        },
    }
    result = apply_as_argocd(server, mine)
    assert refused_by_the_project_fence(result, PROJECTS_POLICY), (result.returncode, result.stderr)
    assert "AppProject mine: Argo CD may apply only the platform's own AppProjects" in result.stderr
    # A project with the platform's name but wider than rendered (a copy under apps/user) is refused too.
    applications = yaml.safe_load(pushed(server, "apps/projects/applications.yaml"))
    applications["spec"]["clusterResourceWhitelist"] = [{"group": "*", "kind": "*"}]
    widened = apply_as_argocd(server, applications)
    assert refused_by_the_project_fence(widened, PROJECTS_POLICY), (widened.returncode, widened.stderr)


def test_the_platform_s_own_objects_of_the_pushed_tree_are_accepted_and_a_changed_copy_is_not(
    server: RealStack,
) -> None:
    projects = pushed_folder(server, "apps/projects")
    platform = pushed_folder(server, "apps/platform")
    assert set(projects) >= {"apps/projects/infrastructure.yaml", "apps/projects/applications.yaml"}
    assert "apps/platform/traefik.yaml" in platform, platform
    # Projects first, as the root's sync would (an Application's project must exist for Argo CD, not for the API).
    for path, text in [*sorted(projects.items()), *sorted(platform.items())]:
        result = apply_as_argocd(server, text)
        assert result.returncode == 0, (path, result.stderr)
    # A copy of traefik's Application with other chart values: what a same-named file under apps/user would be.
    traefik = yaml.safe_load(platform["apps/platform/traefik.yaml"])
    traefik["spec"]["sources"][0]["helm"]["valuesObject"]["extraObjects"] = [{"kind": "ClusterRoleBinding"}]
    copied = apply_as_argocd(server, traefik)
    assert refused_by_the_project_fence(copied, APPLICATIONS_POLICY), (copied.returncode, copied.stderr)
    assert "Application traefik is the name of one of the platform's own Applications" in copied.stderr
    # The same spec, with an operation that syncs other sources: the spec is not all that deploys.
    operated = yaml.safe_load(platform["apps/platform/traefik.yaml"])
    operated["operation"] = {"sync": {"sources": [{"repoURL": "https://charts.example.org", "chart": "evil"}]}}
    started = apply_as_argocd(server, operated)
    assert refused_by_the_project_fence(started, APPLICATIONS_POLICY), (started.returncode, started.stderr)
    assert "Argo CD may start a sync only of the Application's own spec" in started.stderr


def test_the_root_application_s_status_passes_and_a_change_of_it_does_not(server: RealStack) -> None:
    recorded = merge_patch(server, ROOT_APPLICATION, {"status": {"sync": {"status": "Synced"}}})
    assert recorded.returncode == 0, recorded.stderr
    moved = merge_patch(server, ROOT_APPLICATION, {"spec": {"source": {"path": "elsewhere"}}})
    assert refused_by_the_project_fence(moved, APPLICATIONS_POLICY), (moved.returncode, moved.stderr)


def test_an_application_outside_the_fence_runs_as_stored_and_is_finalized(server: RealStack) -> None:
    """One the fence does not name: a disabled component's, on its way out, or one an admin made with
    kubectl. Argo CD records its status, syncs its spec, and removes its finalizer once it has deleted
    what the Application deployed; it may not change what the Application deploys."""
    kept = user_application("kept", "infrastructure")
    kept["metadata"]["finalizers"] = ["resources-finalizer.argocd.argoproj.io"]
    made = argocd_objects(server, "create -f -", as_controller=False, text=json.dumps(kept))
    assert made.returncode == 0, made.stderr
    recorded = merge_patch(server, "kept", {"status": {"health": {"status": "Healthy"}}})
    assert recorded.returncode == 0, recorded.stderr
    synced = merge_patch(
        server, "kept", {"operation": {"sync": {"revision": "1.2.3", "source": kept["spec"]["source"]}}}
    )
    assert synced.returncode == 0, synced.stderr
    for patch in (
        {"spec": {"source": {"chart": "other"}}},
        {"operation": {"sync": {"source": {"repoURL": "https://charts.example.org", "chart": "other"}}}},
        {"operation": {"sync": {"manifests": ["kind: ClusterRoleBinding"]}}},
    ):
        refused = merge_patch(server, "kept", patch)
        assert refused_by_the_project_fence(refused, APPLICATIONS_POLICY), (patch, refused.returncode, refused.stderr)
    deleted = argocd_objects(server, "delete application kept --wait=false", as_controller=False)
    assert deleted.returncode == 0, deleted.stderr
    finalized = argocd_objects(
        server,
        'patch application kept --type json -p \'[{"op":"remove","path":"/metadata/finalizers"}]\'',
        as_controller=True,
    )
    assert finalized.returncode == 0, finalized.stderr
    assert not application_exists(server, "kept")


def test_the_admin_is_not_fenced(server: RealStack) -> None:
    own = user_application("by-admin", "infrastructure")
    project = {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "AppProject",
        "metadata": {"name": "by-admin", "namespace": "argocd"},
        "spec": {"sourceRepos": ["*"]},
    }
    for document in (own, project):
        result = argocd_objects(server, "create -f -", as_controller=False, text=json.dumps(document))
        assert result.returncode == 0, result.stderr
