"""Issue 4 end to end: `pulumi up` under mocks, then the GitOps provider against a real repository.

The program seals the component secrets with the key pair it holds in state; the provider
commits what the program registered. The committed SealedSecrets open with kubesealpy (an
independent implementation) and the key from the cluster's key Secret, and no secret of the
stack config appears in the repository, its history, or any non-secret resource input.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from cryptography.hazmat.primitives import serialization
from kubesealpy import SealedSecret as KubesealpySealedSecret
from kubesealpy import Unsealer

from components.gitops import GitTreeProvider
from components.sealed_secrets import KEY_LABEL, KEY_NAMESPACE
from tests.conftest import GIT_KEY_MARKER, SSH_KEY_MARKER, TOKEN_MARKER
from tests.harness import ProgramRun, Registered, run_program
from tests.helpers import git
from tests.unit.test_platform_render import COMPONENT_MARKERS, NAMES, full_raw

MARKERS = [*COMPONENT_MARKERS.values(), GIT_KEY_MARKER, SSH_KEY_MARKER, TOKEN_MARKER]


def _git_tree(run: ProgramRun) -> Registered:
    trees = [r for r in run.of_type("pulumi-python:dynamic:Resource") if "files" in r.inputs]
    assert len(trees) == 1
    return trees[0]


def _provider_inputs(run: ProgramRun, remote: Path) -> dict[str, Any]:
    """The GitTree inputs the program registered, pointed at a local bare repo (the local transport)."""
    inputs = {k: v for k, v in _git_tree(run).inputs.items() if k not in {"commit", "owned", "created", "__provider"}}
    return inputs | {"repo_url": str(remote), "known_hosts": None, "credentials": {"username": "bot", "password": "x"}}


def _committed(run: ProgramRun, remote: Path) -> dict[str, Any]:
    """The provider's create, as the engine would call it on the first `pulumi up`."""
    return GitTreeProvider().create(_provider_inputs(run, remote)).outs


def test_up_commits_all_six_components_with_sealed_secrets_that_open_and_leak_nothing(tmp_path: Path) -> None:
    run = run_program(full_raw())
    remote = tmp_path / "remote.git"
    git("init", "--quiet", "--bare", "--initial-branch=main", str(remote), cwd=tmp_path)
    outs = _committed(run, remote)

    files = git("ls-tree", "-r", "--name-only", "main", cwd=remote).split()
    # the rendered tree, and the provider's own record of which tree owns the folder
    assert sorted(files) == sorted([*_git_tree(run).inputs["files"], "cluster/.space-harbor-tree"])
    # One Application per component, and the sealed files beside them
    for name in NAMES:
        app = yaml.safe_load(git("show", f"main:cluster/apps/platform/{name}.yaml", cwd=remote))
        assert app["kind"] == "Application" and app["spec"]["project"] == "infrastructure"
    sealed_paths = sorted(path for path in files if "/sealedsecret-" in path)
    assert len(sealed_paths) == len(COMPONENT_MARKERS)
    assert outs["commit"] == git("rev-parse", "main", cwd=remote).strip()

    # The controller's key, as the program puts it in kube-system, opens every committed value.
    key_secret = next(
        r for r in run.of_type("kubernetes:core/v1:Secret") if r.inputs["metadata"]["namespace"] == KEY_NAMESPACE
    )
    assert key_secret.inputs["metadata"]["labels"][KEY_LABEL] == "active"
    assert "stringData" in key_secret.secret_inputs
    private_key = serialization.load_pem_private_key(key_secret.inputs["stringData"]["tls.key"].encode(), None)
    unsealer = Unsealer.from_private_key(private_key)
    opened: dict[str, str] = {}
    for path in sealed_paths:
        sealed = KubesealpySealedSecret.from_yaml(git("show", f"main:{path}", cwd=remote))
        secret = unsealer.unseal(sealed)
        opened |= {f"{path}:{key}": value.decode() for key, value in secret.get_data_decoded().items()}
    for component, marker in COMPONENT_MARKERS.items():
        assert any(component in path and marker in value for path, value in opened.items()), component

    # No marker in the repository, its history, or any input a non-secret reader sees.
    history = git("log", "--all", "-p", "--format=%H%n%an <%ae>%n%B", cwd=remote)
    for marker in MARKERS:
        assert marker not in history, marker
        for resource in run.resources:
            assert marker not in resource.public_text(), f"{marker} in {resource.type} {resource.name}"

    # The user's copy of the cert: a stack output, and the one the files were sealed with.
    assert run.outputs["sealedSecretsCert"].startswith("-----BEGIN CERTIFICATE-----")


def test_a_second_up_with_the_same_config_commits_nothing(tmp_path: Path) -> None:
    raw = full_raw()
    first, second = run_program(raw), run_program(raw)
    remote = tmp_path / "remote.git"
    git("init", "--quiet", "--bare", "--initial-branch=main", str(remote), cwd=tmp_path)
    provider = GitTreeProvider()
    created = provider.create(_provider_inputs(first, remote))
    head = git("rev-parse", "main", cwd=remote)
    news = _provider_inputs(second, remote)
    # the sealed files are kept in state, so the same config renders the same tree
    assert not provider.diff(created.id, created.outs, news).changes
    provider.update(created.id, created.outs, news)
    assert git("rev-parse", "main", cwd=remote) == head


def test_preview_registers_the_sealing_without_knowing_the_ciphertext() -> None:
    run = run_program(full_raw(), preview=True)
    sealed = [r for r in run.of_type("pulumi-python:dynamic:Resource") if "cert_pem" in r.inputs]
    assert len(sealed) == len(COMPONENT_MARKERS)
    for resource in sealed:
        assert "data" in resource.secret_inputs
        assert "data" in resource.additional_secret_outputs
