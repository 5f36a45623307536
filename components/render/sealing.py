"""Sealed Secrets, offline: what `kubeseal` does with the controller's public certificate, as pure functions.

The format, checked against bitnami-labs/sealed-secrets (`pkg/crypto/crypto.go` HybridEncrypt and
HybridDecrypt, `pkg/apis/sealedsecrets/v1alpha1` EncryptionLabel and NewSealedSecret):

    uint16 big-endian len(R) || R || AES-256-GCM(session key, nonce = 12 zero bytes, value) with its 16-byte tag
    R = RSA-OAEP(SHA-256, MGF1-SHA-256, label)(session key), session key = 32 fresh random bytes

and each value of `spec.encryptedData` is that, base64 (standard, padded). The OAEP label is the
scope: "<namespace>/<name>" for the strict scope (kubeseal's default, the only one used here),
"<namespace>" for namespace-wide, "" for cluster-wide. A value sealed for one Secret therefore
cannot be unsealed as another, even with the right key.

The zero nonce is safe only because every value gets its own session key; never reuse one.
"""

from __future__ import annotations

import base64
import os
import re
import struct
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

API_VERSION = "bitnami.com/v1alpha1"
KIND = "SealedSecret"
OPAQUE = "Opaque"
SESSION_KEY_BYTES = 32
GCM_NONCE = bytes(12)
GCM_TAG_BYTES = 16
LENGTH_PREFIX = struct.Struct(">H")

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_SECRET_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")


class SealingError(ValueError):
    """A value cannot be sealed or unsealed; the message never holds the value."""


def scope_problems(namespace: str, name: str) -> list[str]:
    """Why `namespace`/`name` cannot name a Secret (the strict scope needs both), or nothing."""
    problems = []
    if not isinstance(namespace, str) or not _DNS_LABEL.match(namespace):
        problems.append(f"namespace {namespace!r} is not a DNS-1123 label")
    if not isinstance(name, str) or len(name) > 253 or not _DNS_SUBDOMAIN.match(name):
        problems.append(f"name {name!r} is not a DNS-1123 subdomain")
    return problems


def key_problems(keys: object) -> list[str]:
    """Why these data keys cannot be keys of a Secret, or nothing."""
    return [
        f"data key {key!r} must consist of alphanumerics, '-', '_' or '.'"
        for key in keys  # type: ignore[attr-defined]
        if not isinstance(key, str) or len(key) > 253 or not _SECRET_KEY.match(key)
    ]


def strict_label(namespace: str, name: str) -> bytes:
    """The OAEP label of the strict scope: `EncryptionLabel(namespace, name, StrictScope)` upstream."""
    problems = scope_problems(namespace, name)
    if problems:
        raise SealingError("; ".join(problems))
    return f"{namespace}/{name}".encode()


def load_public_key(cert_pem: str) -> rsa.RSAPublicKey:
    """The RSA key of the first certificate in `cert_pem`, refused when expired (as kubeseal does)."""
    try:
        certs = x509.load_pem_x509_certificates(cert_pem.encode() if isinstance(cert_pem, str) else cert_pem)
    except ValueError as error:
        raise SealingError(f"not a PEM certificate: {error}") from None
    cert = certs[0]
    key = cert.public_key()
    if not isinstance(key, rsa.RSAPublicKey):
        raise SealingError(f"the sealing certificate holds a {type(key).__name__}, not an RSA key")
    if datetime.now(UTC) > cert.not_valid_after_utc:
        raise SealingError(f"the sealing certificate expired on {cert.not_valid_after_utc:%Y-%m-%d}")
    return key


def load_private_key(private_key_pem: str) -> rsa.RSAPrivateKey:
    """An RSA private key from PEM (PKCS#1 as pulumi-tls and the controller write it, or PKCS#8)."""
    try:
        key = serialization.load_pem_private_key(private_key_pem.encode(), password=None)
    except (ValueError, TypeError):
        raise SealingError("not an unencrypted PEM private key") from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise SealingError(f"the sealing key is a {type(key).__name__}, not an RSA key")
    return key


def _oaep(label: bytes) -> padding.OAEP:
    # Go's rsa.EncryptOAEP(sha256.New(), ...) uses the one hash for both OAEP and MGF1.
    return padding.OAEP(mgf=padding.MGF1(algorithm=hashes.SHA256()), algorithm=hashes.SHA256(), label=label or None)


def hybrid_encrypt(public_key: rsa.RSAPublicKey, plaintext: bytes, label: bytes) -> bytes:
    """Upstream's HybridEncrypt: length-prefixed RSA-OAEP session key, then AES-GCM ciphertext and tag."""
    session_key = os.urandom(SESSION_KEY_BYTES)
    wrapped = public_key.encrypt(session_key, _oaep(label))
    return LENGTH_PREFIX.pack(len(wrapped)) + wrapped + AESGCM(session_key).encrypt(GCM_NONCE, plaintext, None)


def hybrid_decrypt(private_key: rsa.RSAPrivateKey, ciphertext: bytes, label: bytes) -> bytes:
    """Upstream's HybridDecrypt for one key; SealingError for a wrong key, a wrong label or any tampering."""
    if len(ciphertext) < LENGTH_PREFIX.size:
        raise SealingError("sealed value is too short")
    (rsa_length,) = LENGTH_PREFIX.unpack_from(ciphertext)
    if len(ciphertext) < LENGTH_PREFIX.size + rsa_length:
        raise SealingError("sealed value is too short")
    wrapped = ciphertext[LENGTH_PREFIX.size : LENGTH_PREFIX.size + rsa_length]
    sealed = ciphertext[LENGTH_PREFIX.size + rsa_length :]
    try:
        session_key = private_key.decrypt(wrapped, _oaep(label))
        return AESGCM(session_key).decrypt(GCM_NONCE, sealed, None)
    except (ValueError, InvalidTag):
        raise SealingError("cannot unseal: wrong key, wrong namespace/name, or the value was altered") from None


def seal(cert_pem: str, namespace: str, name: str, value: bytes) -> str:
    """`value` sealed for the Secret `namespace`/`name` (strict scope), as in `spec.encryptedData`."""
    label = strict_label(namespace, name)
    return base64.b64encode(hybrid_encrypt(load_public_key(cert_pem), value, label)).decode("ascii")


def unseal(private_key_pem: str, namespace: str, name: str, sealed_b64: str) -> bytes:
    """The value that `seal` (or kubeseal, strict scope) sealed for `namespace`/`name`."""
    label = strict_label(namespace, name)
    try:
        ciphertext = base64.b64decode(sealed_b64, validate=True)
    except ValueError:
        raise SealingError("sealed value is not base64") from None
    return hybrid_decrypt(load_private_key(private_key_pem), ciphertext, label)


def sealed_secret_manifest(
    namespace: str,
    name: str,
    encrypted_data: Mapping[str, str],
    labels: Mapping[str, str] | None = None,
    secret_type: str = OPAQUE,
) -> dict[str, Any]:
    """The SealedSecret object around values already sealed for `namespace`/`name`.

    Shaped like kubeseal's output for the strict scope: no scope annotation, the Secret's metadata
    in `spec.template`. Labels go on both, so the SealedSecret can be selected by them too.
    """

    def metadata() -> dict[str, Any]:
        # A fresh object each time: a shared one would make yaml.safe_dump write an anchor and an alias.
        found: dict[str, Any] = {"name": name, "namespace": namespace}
        if labels:
            found["labels"] = dict(sorted(labels.items()))
        return found

    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": metadata(),
        "spec": {
            "encryptedData": dict(sorted(encrypted_data.items())),
            "template": {"metadata": metadata(), "type": secret_type},
        },
    }


def render_sealed_secret(
    cert_pem: str,
    namespace: str,
    name: str,
    data: Mapping[str, str | bytes],
    labels: Mapping[str, str] | None = None,
    secret_type: str = OPAQUE,
) -> dict[str, Any]:
    """A SealedSecret whose controller makes the Secret `namespace`/`name` holding `data` (text is UTF-8)."""
    problems = key_problems(data)
    if problems:
        raise SealingError("; ".join(problems))
    encrypted = {
        key: seal(cert_pem, namespace, name, value.encode() if isinstance(value, str) else value)
        for key, value in data.items()
    }
    return sealed_secret_manifest(namespace, name, encrypted, labels, secret_type)
