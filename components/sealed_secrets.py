"""Sealed Secrets: the controller's key pair held in Pulumi state, and SealedSecrets sealed offline with it.

`SealedSecretsKey` makes an RSA key and a self-signed certificate with pulumi-tls, and (given a
Kubernetes provider) puts them in `kube-system` as a `kubernetes.io/tls` Secret labelled
`sealedsecrets.bitnami.com/sealed-secrets-key: active`. The controller, deployed later by Argo CD
into the same namespace, lists Secrets by that label at start and adopts the key instead of making
one (`initKeyRegistry` upstream). The state is therefore the key's backup, and everything can be
sealed without reaching the cluster. The chart should turn the controller's own key renewal off
(`keyrenewperiod: "0"`): a key it generated would be in the cluster only, not in the state.

`SealedSecretManifest` is a dynamic resource whose `manifest` output is the SealedSecret YAML for a
secret `data` input. Sealing is randomized, so the output is kept in state and redone only when
the data, the certificate or the Secret's namespace/name change; a value whose plaintext did not
change keeps its ciphertext, so the committed file changes only where a secret did.

The module creates nothing at import: Pulumi pickles the provider by reference.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pulumi
import pulumi.dynamic
import pulumi_kubernetes as k8s
import pulumi_tls as tls
import yaml
from pulumi.output import Unknown
from pulumi.runtime.rpc import is_rpc_secret, unwrap_rpc_secret

from components.render.sealing import (
    OPAQUE,
    SealingError,
    key_problems,
    scope_problems,
    seal,
    sealed_secret_manifest,
)

KEY_NAMESPACE = "kube-system"
KEY_SECRET_NAME = "sealed-secrets-key-space-harbor"  # noqa: S105 (a name, not a password)
KEY_LABEL = "sealedsecrets.bitnami.com/sealed-secrets-key"
CERT_SUBJECT = "sealed-secret"
# The controller's own defaults: --key-size 4096, --key-ttl 10 years.
RSA_BITS = 4096
VALIDITY_HOURS = 10 * 365 * 24

INPUT_KEYS = ("cert_pem", "namespace", "name", "data", "labels", "secret_type")
# A change of one of these re-seals every value: the key or the OAEP label (scope) changed.
RESEAL_KEYS = ("cert_pem", "namespace", "name")


class SealedSecretsKey(pulumi.ComponentResource):
    """The sealing key pair, and the Secret through which the controller adopts it."""

    cert_pem: pulumi.Output[str]
    private_key_pem: pulumi.Output[str]
    key_secret: k8s.core.v1.Secret | None

    def __init__(
        self,
        name: str,
        provider: k8s.Provider | None = None,
        *,
        cluster_lifetime: pulumi.Resource | None = None,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__("space-harbor:index:SealedSecretsKey", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        key = tls.PrivateKey(f"{name}-key", algorithm="RSA", rsa_bits=RSA_BITS, opts=child)
        cert = tls.SelfSignedCert(
            f"{name}-cert",
            private_key_pem=key.private_key_pem,
            subject=tls.SelfSignedCertSubjectArgs(common_name=CERT_SUBJECT, organization=CERT_SUBJECT),
            validity_period_hours=VALIDITY_HOURS,
            allowed_uses=["key_encipherment", "data_encipherment"],
            opts=child,
        )
        self.cert_pem = cert.cert_pem
        self.private_key_pem = pulumi.Output.secret(key.private_key_pem)
        self.key_secret = None
        if provider is not None:
            self.key_secret = k8s.core.v1.Secret(
                f"{name}-secret",
                metadata={"name": KEY_SECRET_NAME, "namespace": KEY_NAMESPACE, "labels": {KEY_LABEL: "active"}},
                type="kubernetes.io/tls",
                string_data=pulumi.Output.secret(
                    pulumi.Output.all(cert.cert_pem, key.private_key_pem).apply(
                        lambda pems: {"tls.crt": pems[0], "tls.key": pems[1]}
                    )
                ),
                # Gone with the cluster: its delete then needs no API (components/argocd.py says why).
                opts=pulumi.ResourceOptions(parent=self, provider=provider, deleted_with=cluster_lifetime),
            )
        self.register_outputs({"cert_pem": self.cert_pem, "private_key_pem": self.private_key_pem})


# --- the dynamic provider ------------------------------------------------------------------


def _plain(value: Any) -> Any:
    """Drop Pulumi's secret wrappers, at any depth."""
    if is_rpc_secret(value):
        return _plain(unwrap_rpc_secret(value))
    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    return value


def _has_unknown(value: Any) -> bool:
    if isinstance(value, Unknown):
        return True
    if isinstance(value, Mapping):
        return any(_has_unknown(item) for item in value.values())
    if isinstance(value, list | tuple):
        return any(_has_unknown(item) for item in value)
    return False


def input_problems(props: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(input, problem) for every known input that cannot make a SealedSecret."""
    props = _plain(dict(props))
    problems: list[tuple[str, str]] = []
    namespace, name, data = props.get("namespace"), props.get("name"), props.get("data")
    if not _has_unknown(namespace) and not _has_unknown(name):
        for problem in scope_problems(namespace, name):
            problems.append(("namespace" if problem.startswith("namespace") else "name", problem))
    if not _has_unknown(props.get("cert_pem")) and not isinstance(props.get("cert_pem"), str):
        problems.append(("cert_pem", "is required"))
    if not _has_unknown(data):
        if not isinstance(data, Mapping):
            problems.append(("data", "must map keys to text values"))
        else:
            problems += [("data", problem) for problem in key_problems(data)]
            problems += [("data", f"{key!r}: value must be text") for key, v in data.items() if not isinstance(v, str)]
    return problems


def build(props: Mapping[str, Any], previous: Mapping[str, Any] | None) -> dict[str, Any]:
    """The outputs for `props`: every input as given (the data still secret-wrapped), the sealed values, the YAML.

    With `previous` (an update), a value whose plaintext, certificate and scope did not change keeps
    its ciphertext.
    """
    problems = input_problems(props)
    if problems:
        raise SealingError("invalid SealedSecret inputs: " + "; ".join(f"{key}: {why}" for key, why in problems))
    plain = _plain(dict(props))
    old = _plain(dict(previous or {}))
    reuse = bool(previous) and all(old.get(key) == plain[key] for key in RESEAL_KEYS)
    old_data: Mapping[str, str] = old.get("data") or {}
    old_sealed: Mapping[str, str] = old.get("encrypted_data") or {}
    encrypted: dict[str, str] = {}
    for key, value in plain["data"].items():
        if reuse and key in old_sealed and old_data.get(key) == value:
            encrypted[key] = old_sealed[key]
        else:
            encrypted[key] = seal(plain["cert_pem"], plain["namespace"], plain["name"], value.encode("utf-8"))
    manifest = sealed_secret_manifest(
        plain["namespace"], plain["name"], encrypted, plain.get("labels"), plain.get("secret_type") or OPAQUE
    )
    return {
        **{key: props.get(key) for key in INPUT_KEYS},
        "encrypted_data": encrypted,
        "manifest": yaml.safe_dump(manifest, sort_keys=False, default_flow_style=False),
    }


class SealedSecretProvider(pulumi.dynamic.ResourceProvider):
    """Dynamic provider: one SealedSecret manifest. Stateless; all state is in props. Delete has nothing to do."""

    def check(self, _olds: dict[str, Any], news: dict[str, Any]) -> pulumi.dynamic.CheckResult:
        failures = [pulumi.dynamic.CheckFailure(key, why) for key, why in input_problems(news)]
        return pulumi.dynamic.CheckResult(news, failures)

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> pulumi.dynamic.DiffResult:
        old, new = _plain(olds), _plain(news)
        changed = [key for key in INPUT_KEYS if _has_unknown(new.get(key)) or old.get(key) != new.get(key)]
        # The manifest is only text in state: an update can redo it in place.
        return pulumi.dynamic.DiffResult(changes=bool(changed), replaces=[], delete_before_replace=False)

    def create(self, props: dict[str, Any]) -> pulumi.dynamic.CreateResult:
        plain = _plain(props)
        return pulumi.dynamic.CreateResult(f"{plain.get('namespace')}/{plain.get('name')}", build(props, None))

    def update(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> pulumi.dynamic.UpdateResult:
        return pulumi.dynamic.UpdateResult(build(news, olds))


class SealedSecretManifest(pulumi.dynamic.Resource):
    """The dynamic resource (`pulumi-python:dynamic:Resource`): `manifest` is the SealedSecret YAML."""

    manifest: pulumi.Output[str]
    encrypted_data: pulumi.Output[dict[str, str]]

    def __init__(
        self,
        resource_name: str,
        *,
        cert_pem: pulumi.Input[str],
        namespace: pulumi.Input[str],
        name: pulumi.Input[str],
        data: pulumi.Input[Mapping[str, pulumi.Input[str]]],
        labels: pulumi.Input[Mapping[str, str]] | None = None,
        secret_type: pulumi.Input[str] = OPAQUE,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        props = {
            "cert_pem": cert_pem,
            "namespace": namespace,
            "name": name,
            # Secret whatever the caller passed: the plaintext is in state, for the next diff.
            "data": pulumi.Output.secret(data),
            "labels": labels,
            "secret_type": secret_type,
            "encrypted_data": None,
            "manifest": None,
        }
        opts = pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(additional_secret_outputs=["data"]))
        super().__init__(SealedSecretProvider(), resource_name, props, opts)
