"""What the engine replaces after a config change, under mocks: the providers' own rules applied to two runs.

Mocks cannot run pulumi-kubernetes' DiffConfig or Diff, so the rules that decide a replacement
are restated here, as read in the provider's source (provider/pkg/provider/provider.go
`DiffConfig`, diff.go `forceNewProperties`; the same in the v4.25-era build we run and in
v4.32), and applied to the inputs the program registers in two runs:

- the provider is replaced when its `clusterIdentifier` changed from one value to another; when
  it is set and unchanged, never; when it is absent (or only just added), when the kubeconfig is
  unknown (a preview) or its active cluster entry changed;
- a replaced provider replaces every object it manages, and the engine never asks the provider
  whether it wants them deleted first: create-before-delete;
- a Secret's `type`/`stringData`/`data` and a ConfigMap's `data`/`binaryData` are replaced,
  unless the provider has `enableSecretMutable` / `enableConfigMapMutable` and the object is not
  `immutable`.
"""

from __future__ import annotations

import copy
from typing import Any

import yaml

from tests.conftest import base_config, etcd_config, fake_private_key
from tests.harness import SECRET_SIG, SIG_KEY, UNKNOWN, ProgramRun, Registered, run_program

PROVIDER_TYPE = "pulumi:providers:kubernetes"


def _plain(value: Any) -> Any:
    if isinstance(value, dict) and value.get(SIG_KEY) == SECRET_SIG:
        return _plain(value.get("value"))
    return value


def _active_cluster(kubeconfig: str) -> dict[str, Any]:
    config = yaml.safe_load(kubeconfig)
    context = next(c["context"] for c in config["contexts"] if c["name"] == config["current-context"])
    return next(c["cluster"] for c in config["clusters"] if c["name"] == context["cluster"])


def provider_replaces(olds: dict[str, Any], news: dict[str, Any]) -> list[str]:
    """pulumi-kubernetes' DiffConfig: the keys for which it asks to replace the provider."""
    olds = {key: _plain(value) for key, value in olds.items()}
    news = {key: _plain(value) for key, value in news.items()}
    if olds == news:
        return []
    identifier = "clusterIdentifier"
    if identifier in olds and identifier in news:
        # set before and now: a change replaces, and nothing else does
        return [identifier] if olds[identifier] != news[identifier] else []
    if news.get("kubeconfig") == UNKNOWN:
        return ["kubeconfig"]
    changed = olds.get("kubeconfig") != news.get("kubeconfig")
    if changed and _active_cluster(olds["kubeconfig"]) != _active_cluster(news["kubeconfig"]):
        return ["kubeconfig"]
    return []


def provider_of(run: ProgramRun) -> Registered:
    (provider,) = run.of_type(PROVIDER_TYPE)
    return provider


def objects_replaced_with_the_provider(before: ProgramRun, after: ProgramRun) -> list[str]:
    """The Kubernetes objects the engine would replace because their provider is replaced."""
    if not provider_replaces(provider_of(before).raw_inputs, provider_of(after).raw_inputs):
        return []
    return [r.name for r in after.resources if r.provider == provider_of(after).urn]


def _with_k3s(config: dict[str, Any], **k3s: Any) -> dict[str, Any]:
    changed = copy.deepcopy(config)
    changed["k3s"] = {**changed.get("k3s", {}), **k3s}
    return changed


def test_a_change_of_the_clusters_api_address_replaces_no_kubernetes_object() -> None:
    config = etcd_config()
    mesh = _with_k3s(config, apiAccess="mesh")
    moved = copy.deepcopy(mesh)
    moved["k3s"]["firstServer"] = "server-2"
    readdressed = copy.deepcopy(mesh)
    readdressed["nodes"][0]["meshAddress"] = "10.160.0.9"
    changes = {
        "ssh-tunnel -> mesh": (config, mesh),
        "mesh -> ssh-tunnel": (mesh, config),
        "tunnelPort": (config, _with_k3s(config, tunnelPort=17443)),
        "firstServer (mesh)": (mesh, moved),
        "the first server's meshAddress (mesh)": (mesh, readdressed),
    }
    for change, (old, new) in changes.items():
        before, after = run_program(old), run_program(new)
        # the change does reach the provider: its kubeconfig names another API server
        old_server = _active_cluster(_plain(provider_of(before).raw_inputs["kubeconfig"]))["server"]
        new_server = _active_cluster(_plain(provider_of(after).raw_inputs["kubeconfig"]))["server"]
        assert old_server != new_server, change
        assert objects_replaced_with_the_provider(before, after) == [], change


def test_a_new_cluster_ca_replaces_no_kubernetes_object() -> None:
    before = run_program(base_config())
    after = run_program(base_config())
    olds, news = provider_of(before).raw_inputs, provider_of(after).raw_inputs
    kubeconfig = yaml.safe_load(_plain(news["kubeconfig"]))
    kubeconfig["clusters"][0]["cluster"]["certificate-authority-data"] = "bmV3IENB"
    news = {**news, "kubeconfig": yaml.safe_dump(kubeconfig)}
    assert provider_replaces(olds, news) == []


def test_a_preview_after_an_api_credential_change_replaces_no_kubernetes_object() -> None:
    """In a preview a changed api-credential step's stdout, and so the kubeconfig, is unknown."""
    applied = run_program(base_config(agents=1))
    preview = run_program(base_config(agents=1), preview=True)
    assert _plain(provider_of(preview).raw_inputs["kubeconfig"]) == UNKNOWN
    assert objects_replaced_with_the_provider(applied, preview) == []


def test_the_identifier_is_the_same_for_every_stack_and_set_on_an_existing_one_replaces_nothing() -> None:
    one = provider_of(run_program(base_config(agents=1))).raw_inputs
    other = provider_of(run_program(_with_k3s(etcd_config(), apiAccess="mesh"))).raw_inputs
    assert one["clusterIdentifier"] == other["clusterIdentifier"]
    # a stack applied before the identifier existed: the provider's state has none of these keys
    older = {key: value for key, value in one.items() if key not in ("clusterIdentifier", "enableConfigMapMutable")}
    older = {key: value for key, value in older.items() if key != "enableSecretMutable"}
    assert provider_replaces(older, one) == []


# --- ConfigMaps and Secrets: update in place -----------------------------------------------------


def object_replaces(provider: Registered, obj: Registered, olds: dict[str, Any], news: dict[str, Any]) -> list[str]:
    """pulumi-kubernetes' Diff for a v1 ConfigMap or Secret: the changed fields it replaces the object for."""
    config = {key: _plain(value) for key, value in provider.raw_inputs.items()}

    def enabled(key: str) -> bool:
        return config.get(key) in (True, "true")

    immutable = news.get("immutable") is True
    force_new = ["metadata.name", "metadata.namespace"]
    if obj.type == "kubernetes:core/v1:Secret" and not (enabled("enableSecretMutable") and not immutable):
        force_new += ["type", "stringData", "data"]
    if obj.type == "kubernetes:core/v1:ConfigMap" and not (enabled("enableConfigMapMutable") and not immutable):
        force_new += ["binaryData", "data"]

    def field(props: dict[str, Any], path: str) -> Any:
        value: Any = props
        for part in path.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        return value

    return [path for path in force_new if field(olds, path) != field(news, path)]


def _changed_objects(old: dict[str, Any], new: dict[str, Any]) -> dict[str, list[str]]:
    """For each ConfigMap and Secret whose inputs differ between the runs: the fields it is replaced for."""
    before, after = run_program(old), run_program(new)
    provider = provider_of(after)
    found: dict[str, list[str]] = {}
    for obj in after.resources:
        if obj.type not in ("kubernetes:core/v1:Secret", "kubernetes:core/v1:ConfigMap"):
            continue
        previous = before.by_urn(obj.urn)
        if previous.inputs != obj.inputs:
            assert obj.provider == provider.urn, obj.name
            found[obj.name] = object_replaces(provider, obj, previous.inputs, obj.inputs)
    return found


def test_new_known_hosts_update_their_configmap_in_place() -> None:
    config = base_config()
    changed = copy.deepcopy(config)
    changed["gitops"]["knownHosts"] += "\ngit.example.org ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQCexample"
    assert _changed_objects(config, changed) == {"argocd-core:argocd/argocd-ssh-known-hosts-cm": []}


def test_a_rotated_repository_credential_updates_its_secret_in_place() -> None:
    config = base_config()
    changed = copy.deepcopy(config)
    changed["gitops"]["argocdSshPrivateKey"] = fake_private_key("MARKER-ROTATED-READ-KEY")
    assert _changed_objects(config, changed) == {"argocd-repository": []}


def test_the_sealing_key_secret_would_update_in_place() -> None:
    run = run_program(base_config())
    provider = provider_of(run)
    secret = run.named("sealed-secrets-secret")
    assert secret.provider == provider.urn
    olds = secret.inputs
    news = {**olds, "stringData": {"tls.crt": "another certificate", "tls.key": "another key"}}
    assert object_replaces(provider, secret, olds, news) == []


# --- Commands: replaced delete-first; the cluster's id not at all ----------------------------------

COMMAND_TYPES = ("command:remote:Command",)


def test_every_command_with_a_delete_is_replaced_delete_first() -> None:
    """Create-before-delete would run the old delete after the new create, on the same host, undoing it."""
    from tests.program.test_refactor_identities import REFERENCE_STACKS

    kinds: set[str] = set()
    for stack, config in REFERENCE_STACKS.items():
        run = run_program(config())
        with_delete = [r for r in run.resources if r.type in COMMAND_TYPES and r.inputs.get("delete")]
        kinds |= {r.name.split("-", 2)[-1] for r in with_delete}
        assert [r.name for r in with_delete if not r.delete_before_replace] == [], stack
    assert kinds >= {"mesh", "firewall", "shipped", "k3s", "node-object", "registered", "guard"}


def test_a_replaced_shipped_step_copies_the_files_again() -> None:
    """Its delete removes the staged files: the copies come after it and are replaced with it."""
    run = run_program(base_config(agents=1))
    for node in ("server-1", "agent-1"):
        staged = run.named(f"{node}-shipped")
        copies = [r for r in run.resources if r.name.startswith(f"{node}-ship-")]
        assert copies
        for copy_step in copies:
            assert copy_step.replace_with == [staged.urn]
            assert run.depends_on(copy_step, staged)
        assert run.depends_on(run.named(f"{node}-k3s"), staged)


def test_a_replacement_of_the_cluster_id_is_refused_before_any_node_step() -> None:
    run = run_program(base_config(agents=1))
    cluster_id = run.named("cluster-id")
    guard = run.named("cluster-id-guard")
    # replaced whenever the id is (the engine replaces what is deleted with a replaced resource),
    # delete-first: its delete runs during the up, before anything that waits for it
    assert guard.deleted_with == cluster_id.urn and guard.delete_before_replace
    assert guard.inputs.get("create") is None
    assert guard.inputs["delete"].endswith("bash -s -- refuse-cluster-id-replacement")
    # everything else that goes with the cluster waits for the guard, so none of it is replaced
    goes_with_cluster = [r for r in run.resources if r.deleted_with == cluster_id.urn and r is not guard]
    with_delete = [r for r in goes_with_cluster if r.inputs.get("delete")]
    assert with_delete
    for resource in goes_with_cluster:
        if resource.inputs.get("delete") or resource.type.startswith("kubernetes:") or resource.name == "argocd-sync":
            assert run.depends_on(resource, guard), resource.name
