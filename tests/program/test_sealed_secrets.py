"""SealedSecretsKey and SealedSecretManifest under mocks, in a small program of their own.

The harness runs a small program written to tmp_path, which reaches what `__main__.py` does not:
a key without a cluster, and data handed over unwrapped (the resource must make it secret). In up
mode the mocks make a real RSA key and certificate and seal with the real provider, so what
the program would commit can be unsealed here.
"""

from __future__ import annotations

from pathlib import Path
from unittest import mock

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from components.render.sealing import unseal
from tests import harness
from tests.harness import ProgramRun, run_program

MARKER = "MARKER-SEALED-PROGRAM-4e0b"
PROGRAM = f"""
import pulumi
import pulumi_kubernetes as k8s

from components.sealed_secrets import SealedSecretManifest, SealedSecretsKey

provider = k8s.Provider("k8s", kubeconfig="apiVersion: v1")
key = SealedSecretsKey("sealed-secrets", provider=provider)
bare = SealedSecretsKey("no-cluster")
sealed = SealedSecretManifest(
    "demo-sealed",
    cert_pem=key.cert_pem,
    namespace="apps",
    name="demo",
    data={{"password": "{MARKER}"}},  # plain on purpose: the resource must make it secret
    labels={{"app": "demo"}},
)
pulumi.export("cert", key.cert_pem)
pulumi.export("key", key.private_key_pem)
pulumi.export("manifest", sealed.manifest)
pulumi.export("bareSecret", bare.key_secret is None)
"""
COMPONENT = "space-harbor:index:SealedSecretsKey"


def run(tmp_path: Path, *, preview: bool) -> ProgramRun:
    program = tmp_path / "program.py"
    program.write_text(PROGRAM)
    with mock.patch.object(harness, "PROGRAM", program):
        return run_program({}, preview=preview)


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> ProgramRun:
    return run(tmp_path_factory.mktemp("sealed"), preview=False)


def test_key_pair_children(up: ProgramRun) -> None:
    component = next(r for r in up.of_type(COMPONENT) if r.name == "sealed-secrets")
    children = {r.type: r for r in up.resources if r.parent == component.urn}
    assert set(children) == {
        "tls:index/privateKey:PrivateKey",
        "tls:index/selfSignedCert:SelfSignedCert",
        "kubernetes:core/v1:Secret",
    }
    key = children["tls:index/privateKey:PrivateKey"]
    assert key.inputs["algorithm"] == "RSA" and key.inputs["rsaBits"] == 4096
    cert = children["tls:index/selfSignedCert:SelfSignedCert"]
    assert cert.inputs["subject"] == {"commonName": "sealed-secret", "organization": "sealed-secret"}
    assert cert.inputs["validityPeriodHours"] == 87600
    assert {"key_encipherment", "data_encipherment"} <= set(cert.inputs["allowedUses"])
    assert "privateKeyPem" in cert.secret_inputs
    assert up.depends_on(cert, key)


def test_key_secret_is_what_the_controller_adopts(up: ProgramRun) -> None:
    component = next(r for r in up.of_type(COMPONENT) if r.name == "sealed-secrets")
    secret = next(r for r in up.of_type("kubernetes:core/v1:Secret") if r.parent == component.urn)
    metadata = secret.inputs["metadata"]
    assert metadata["namespace"] == "kube-system"
    assert metadata["labels"] == {"sealedsecrets.bitnami.com/sealed-secrets-key": "active"}
    assert secret.inputs["type"] == "kubernetes.io/tls"
    assert "stringData" in secret.secret_inputs
    assert "BEGIN" not in secret.public_text()
    assert secret.provider == up.named("k8s").urn
    # The pair in the Secret is the pair of the outputs, and the key matches the certificate.
    data = secret.inputs["stringData"]
    assert data["tls.crt"] == up.outputs["cert"] and data["tls.key"] == up.outputs["key"]
    private = serialization.load_pem_private_key(data["tls.key"].encode(), password=None)
    cert = x509.load_pem_x509_certificate(data["tls.crt"].encode())
    assert cert.public_key().public_numbers() == private.public_key().public_numbers()  # type: ignore[union-attr]
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "sealed-secret"
    assert data["tls.key"].startswith("-----BEGIN RSA PRIVATE KEY-----")  # PKCS#1, as the controller writes it


def test_without_a_provider_no_secret_is_made(up: ProgramRun) -> None:
    bare = next(r for r in up.of_type(COMPONENT) if r.name == "no-cluster")
    assert sorted(r.type for r in up.resources if r.parent == bare.urn) == [
        "tls:index/privateKey:PrivateKey",
        "tls:index/selfSignedCert:SelfSignedCert",
    ]
    assert up.outputs["bareSecret"] is True


def test_private_key_is_secret_and_certificate_is_not(up: ProgramRun) -> None:
    assert "key" in up.secret_outputs
    assert "cert" not in up.secret_outputs
    assert up.outputs["cert"].startswith("-----BEGIN CERTIFICATE-----")


def test_manifest_unseals_with_the_key_and_holds_no_plaintext(up: ProgramRun) -> None:
    resource = up.named("demo-sealed")
    assert resource.type == "pulumi-python:dynamic:Resource"
    assert "data" in resource.secret_inputs
    assert "data" in resource.additional_secret_outputs
    assert MARKER not in resource.public_text()
    assert up.depends_on(resource, up.named("sealed-secrets-cert"))
    manifest_text = up.outputs["manifest"]
    assert "manifest" not in up.secret_outputs  # it is meant to be committed
    assert MARKER not in manifest_text
    assert "&id" not in manifest_text and "*id" not in manifest_text  # plain YAML, no anchors
    manifest = yaml.safe_load(manifest_text)
    assert manifest["kind"] == "SealedSecret"
    assert manifest["spec"]["template"]["metadata"]["labels"] == {"app": "demo"}
    sealed = manifest["spec"]["encryptedData"]["password"]
    assert unseal(up.outputs["key"], "apps", "demo", sealed).decode() == MARKER


def test_preview_registers_the_same_graph(tmp_path: Path, up: ProgramRun) -> None:
    preview = run(tmp_path, preview=True)
    assert sorted((r.type, r.name) for r in preview.resources) == sorted((r.type, r.name) for r in up.resources)
    assert "data" in preview.named("demo-sealed").secret_inputs
