"""The Pod Security fence against the real kube-apiserver: what Argo CD may and may not make a Namespace.

One server, applied with the real engine. Argo CD's controller is a stand-in that syncs nothing, so
the tests make its requests themselves: the admin kubeconfig on n1 impersonates the controller's
ServiceAccount, which is the username the API server's admission sees when Argo CD applies a
Namespace. Every refusal is checked to be the policy's (its name and message in the error), and the
one accepted label is shown to fence: PodSecurity then refuses a privileged hostPath pod.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Iterator

import pytest

from components.render.pod_security import ENFORCE_LABEL, POLICY_NAME, exempt_namespaces
from tests.realengine.conftest import RealStack, stack_on
from tests.testbed.nodes import SshResult

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


def test_the_policy_is_in_force_and_a_second_preview_changes_nothing(server: RealStack) -> None:
    # Server-side apply of the policy is stable: what the API server stored is what the program declares.
    server.pulumi.run("preview", "--expect-no-changes")
    out = kubectl(server, "get validatingadmissionpolicybindings -o json", as_controller=False)
    assert out.returncode == 0, out.stderr
    bindings = {item["metadata"]["name"]: item["spec"] for item in json.loads(out.stdout)["items"]}
    assert bindings[POLICY_NAME]["validationActions"] == ["Deny"], bindings
    # The controller-manager type-checks every expression against the Namespace schema.
    wait = (
        f"for _ in $(seq 60); do k3s kubectl get validatingadmissionpolicy {POLICY_NAME} -o json"
        " | grep -q typeChecking && exit 0; sleep 1; done; exit 1"
    )
    server.tb.ssh("n1", f"bash -c {shlex.quote(wait)}")
    policy = json.loads(
        kubectl(server, f"get validatingadmissionpolicy {POLICY_NAME} -o json", as_controller=False).stdout
    )
    assert policy["status"]["typeChecking"].get("expressionWarnings", []) == [], policy["status"]


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
