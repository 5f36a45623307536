"""Run `__main__.py` under Pulumi mocks and record the resource graph it registers.

The recording monitor keeps what `MockResourceArgs` drops: parents, dependencies, resource
options and which inputs arrived secret. In preview mode the mocks return no outputs for
commands and keys, so they stay unknown, as they would before a real `pulumi up`.
"""

from __future__ import annotations

import asyncio
import atexit
import base64
import hashlib
import json
import os
import runpy
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

from google.protobuf import json_format
from pulumi.runtime import mocks, settings
from pulumi.runtime.config import set_all_config
from pulumi.runtime.stack import run_in_stack

from components.drift import drift_check, recorded
from components.upstream import PinnedFiles
from tests.helpers import reachable

ROOT = Path(__file__).resolve().parent.parent
PROGRAM = ROOT / "__main__.py"
# Our own small stand-ins for the pinned upstream files, and their pins (no network in tests).
UPSTREAM_FIXTURE_PINS = ROOT / "tests" / "fixtures" / "upstream" / "upstream.yaml"
PROJECT = "space-harbor"
STACK = "test"
# How the engine wire format marks a secret and an unknown value.
SECRET_SIG = "1b47061264138c4ac30d75fd1eb44270"
SIG_KEY = "4dabf18193072939515e22adb298388d"
UNKNOWN = "04da6b54-80e4-46f7-96ec-b56ff0331ba9"

# What the api-credential step prints: the cluster CA and a ServiceAccount token (no expiry).
FAKE_API_CREDENTIAL = """apiVersion: v1
kind: Config
clusters:
- cluster:
    certificate-authority-data: {ca}
    server: https://127.0.0.1:6443
  name: default
contexts:
- context:
    cluster: default
    user: space-harbor
  name: default
current-context: default
users:
- name: space-harbor
  user:
    token: {token}
"""


@dataclass(frozen=True)
class AliasSpec:
    """One alias as the SDK sends it (`aliasSpecs`): empty fields mean "the resource's own"."""

    name: str = ""
    type: str = ""
    parent_urn: str = ""
    no_parent: bool = False
    urn: str = ""  # an alias given as a whole URN (SDKs without alias specs)


@dataclass
class Registered:
    type: str
    name: str
    urn: str
    parent: str | None
    inputs: dict[str, Any]
    secret_inputs: set[str]
    dependencies: set[str]
    delete_before_replace: bool
    additional_secret_outputs: list[str]
    custom: bool
    provider: str | None = None  # urn of the explicit provider, if any
    raw_inputs: dict[str, Any] = field(repr=False, default_factory=dict)
    # Options the engine acts on after the program has exited (deletes, replaces, renames).
    deleted_with: str | None = None
    retain_on_delete: bool = False
    protect: bool = False
    ignore_changes: list[str] = field(default_factory=list)
    replace_on_changes: list[str] = field(default_factory=list)
    replace_with: list[str] = field(default_factory=list)
    alias_specs: list[AliasSpec] = field(default_factory=list)

    def public_text(self) -> str:
        """The inputs as JSON with every secret-wrapped value cut out: what a non-secret reader sees."""
        return json.dumps(_strip_secrets(self.raw_inputs), sort_keys=True)


@dataclass
class ProgramRun:
    resources: list[Registered]
    outputs: dict[str, Any]
    secret_outputs: set[str]
    # (target, local port) of every API tunnel the program asked for; none is really opened
    tunnels: list[tuple[Any, int]] = field(default_factory=list)

    def of_type(self, type_: str) -> list[Registered]:
        return [r for r in self.resources if r.type == type_]

    def named(self, name: str) -> Registered:
        """The custom resource (command, key, k8s object) called `name`; components share names."""
        found = [r for r in self.resources if r.name == name and r.custom]
        if len(found) != 1:
            raise KeyError(f"{len(found)} resources named {name!r}: {[r.name for r in self.resources]}")
        return found[0]

    def by_urn(self, urn: str) -> Registered:
        return next(r for r in self.resources if r.urn == urn)

    def commands(self) -> list[Registered]:
        return self.of_type("command:remote:Command")

    def drift_records(self) -> list[Registered]:
        """Each node's drift record (components/drift.py): dynamic resources that dial nobody on update."""
        return [r for r in self.of_type("pulumi-python:dynamic:Resource") if "expected" in r.inputs]

    def depends_on(self, dependent: Registered, dependency: Registered) -> bool:
        """Whether `dependent` waits for `dependency`, directly or through other resources."""
        by_urn = {r.urn: r for r in self.resources}
        children: dict[str, list[str]] = {}
        for r in self.resources:
            if r.parent:
                children.setdefault(r.parent, []).append(r.urn)

        def waits_for(urn: str) -> list[str]:
            known = by_urn.get(urn)
            if known is None:
                return []
            # A resource waits for its provider, and the provider for whatever its config came from;
            # a dependency on a component means a dependency on all of its children.
            return [*known.dependencies, *([known.provider] if known.provider else []), *children.get(urn, [])]

        start = [*dependent.dependencies, *([dependent.provider] if dependent.provider else [])]
        return dependency.urn in reachable(start, waits_for)


def _unwrap(value: Any) -> Any:
    if isinstance(value, dict):
        if value.get(SIG_KEY) == SECRET_SIG:
            return _unwrap(value.get("value"))
        return {k: _unwrap(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_unwrap(v) for v in value]
    return value


def _strip_secrets(value: Any) -> Any:
    if isinstance(value, dict):
        if value.get(SIG_KEY) == SECRET_SIG:
            return "[secret]"
        return {k: _strip_secrets(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_strip_secrets(v) for v in value]
    return value


def _is_secret(value: Any) -> bool:
    return isinstance(value, dict) and value.get(SIG_KEY) == SECRET_SIG


ROOT_STACK_TYPE = "pulumi:pulumi:Stack"


def _alias_spec(alias: Any) -> AliasSpec:
    """An `Alias` message: a spec, or (older SDKs) a whole URN."""
    if alias.WhichOneof("alias") == "urn":
        return AliasSpec(urn=alias.urn)
    spec = alias.spec
    return AliasSpec(name=spec.name, type=spec.type, parent_urn=spec.parentUrn, no_parent=spec.noParent)


def engine_urn(parent: str | None, type_: str, name: str, *, stack: str = STACK, project: str = PROJECT) -> str:
    """The URN the engine gives a resource: its parents' type chain (without the root stack), its type, its name.

    The SDK's MockMonitor keeps only the immediate parent's type; identity tests need the real rule.
    """
    qualified = type_
    if parent:
        parent_type = parent.split("::")[2]
        if parent_type != ROOT_STACK_TYPE:
            qualified = f"{parent_type}${type_}"
    return f"urn:pulumi:{stack}::{project}::{qualified}::{name}"


def _urn_parts(urn: str) -> tuple[str, str]:
    """(qualified type, name) of a URN."""
    _, _, qualified, name = urn.split("::", 3)
    return qualified, name


def resolve_identities(resources: list[Registered], old_urns: set[str]) -> dict[str, str | None]:
    """For each registered resource, the URN of `old_urns` it takes over, as the engine's step generator does.

    A resource is matched by its own URN first, then by its aliases in order; a child also inherits the
    alias its parent was matched by (with the parent's name prefix swapped in its own name). Resources
    must come in registration order (parents first), as the program registers them. None: a create.
    """
    matched: dict[str, str | None] = {}
    via_alias: dict[str, str] = {}  # new URN -> old URN it was found under, for its children

    def collapse(resource: Registered, spec: AliasSpec) -> str:
        if spec.urn:
            return spec.urn
        parent = spec.parent_urn or resource.parent or ""
        if spec.parent_urn and spec.parent_urn in via_alias:
            parent = via_alias[spec.parent_urn]
        if spec.no_parent:
            parent = ""
        return engine_urn(parent or None, spec.type or resource.type, spec.name or resource.name)

    def inherited(child_type: str, child_name: str, parent_name: str, parent_alias: str) -> str:
        alias_qualified, alias_name = _urn_parts(parent_alias)
        name = alias_name + child_name[len(parent_name) :] if child_name.startswith(parent_name) else child_name
        stack_project = parent_alias.split("::")[0:2]
        return "::".join([*stack_project, f"{alias_qualified}${child_type}", name])

    for resource in resources:
        candidates = [resource.urn] + [collapse(resource, spec) for spec in resource.alias_specs]
        if resource.parent and resource.parent in via_alias:
            parent_alias = via_alias[resource.parent]
            parent_name = _urn_parts(resource.parent)[1]
            candidates.append(inherited(resource.type, resource.name, parent_name, parent_alias))
            for spec in resource.alias_specs:
                qualified, name = _urn_parts(collapse(resource, spec))
                candidates.append(inherited(qualified.split("$")[-1], name, parent_name, parent_alias))
        found = next((urn for urn in candidates if urn in old_urns), None)
        matched[resource.urn] = found
        if found is not None and found != resource.urn:
            via_alias[resource.urn] = found
    return matched


class RecordingMonitor(mocks.MockMonitor):
    def __init__(self, mocks_: mocks.Mocks) -> None:
        super().__init__(mocks_)
        self.registered: list[Registered] = []
        self.stack_outputs: dict[str, Any] = {}
        self.stack_urn: str | None = None

    def make_urn(self, parent: str, type_: str, name: str) -> str:
        return engine_urn(parent or None, type_, name)

    def RegisterResource(self, request: Any) -> Any:
        raw = json_format.MessageToDict(request.object)
        deps = set(request.dependencies)
        for prop_deps in request.propertyDependencies.values():
            deps.update(prop_deps.urns)
        response = super().RegisterResource(request)
        if request.type == "pulumi:pulumi:Stack":
            self.stack_urn = response.urn
            return response
        self.registered.append(
            Registered(
                type=request.type,
                name=request.name,
                urn=response.urn,
                parent=request.parent or None,
                inputs=_unwrap(raw),
                secret_inputs={k for k, v in raw.items() if _is_secret(v)},
                dependencies=deps,
                delete_before_replace=request.deleteBeforeReplace,
                additional_secret_outputs=list(request.additionalSecretOutputs),
                custom=request.custom,
                # a provider reference is "<urn>::<id>"
                provider=request.provider.rsplit("::", 1)[0] if request.provider else None,
                raw_inputs=raw,
                deleted_with=request.deletedWith or None,
                retain_on_delete=bool(request.retainOnDelete),
                protect=bool(request.protect),
                ignore_changes=list(request.ignoreChanges),
                replace_on_changes=list(request.replaceOnChanges),
                replace_with=list(request.replace_with),
                alias_specs=[_alias_spec(alias) for alias in request.aliases],
            )
        )
        return response

    def RegisterResourceOutputs(self, request: Any) -> Any:
        if request.urn == self.stack_urn:
            self.stack_outputs = json_format.MessageToDict(request.outputs)
        return super().RegisterResourceOutputs(request)


def _fake_pem(label: str, seed: str) -> str:
    body = base64.b64encode(hashlib.sha256(seed.encode()).digest() * 4).decode()
    return f"-----BEGIN {label}-----\n{body}\n-----END {label}-----\n"


_MOCK_RSA_KEYS: dict[int, Any] = {}


def _mock_rsa_key(bits: int) -> Any:
    """One real RSA key per size and process: a 4096-bit key takes up to a second to make."""
    from cryptography.hazmat.primitives.asymmetric import rsa

    if bits not in _MOCK_RSA_KEYS:
        _MOCK_RSA_KEYS[bits] = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    return _MOCK_RSA_KEYS[bits]


def _mock_tls_private_key(inputs: dict[str, Any]) -> dict[str, Any]:
    """pulumi-tls PrivateKey outputs for a real RSA key: PKCS#1 `privateKeyPem`, as the provider writes it."""
    from cryptography.hazmat.primitives import serialization

    key = _mock_rsa_key(int(_unwrap(inputs.get("rsaBits")) or 2048))
    return {
        "privateKeyPem": key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
        ).decode(),
        "privateKeyPemPkcs8": key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ).decode(),
        "publicKeyPem": key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode(),
    }


# Pulumi keeps a resource's outputs in state, so two runs over the same inputs see the same
# certificate and ciphertext; these caches play that part for outputs that are random.
_MOCK_STATE: dict[str, dict[str, Any]] = {}


def _as_in_state(kind: str, inputs: dict[str, Any], make: Any) -> dict[str, Any]:
    key = kind + json.dumps(_unwrap(inputs), sort_keys=True, default=str)
    if key not in _MOCK_STATE:
        _MOCK_STATE[key] = make(inputs)
    return _MOCK_STATE[key]


def _mock_tls_self_signed_cert(inputs: dict[str, Any]) -> dict[str, Any]:
    """A real self-signed certificate for the key in `privateKeyPem`, with the subject and validity asked for."""
    from datetime import UTC, datetime, timedelta

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509.oid import NameOID

    key = serialization.load_pem_private_key(str(_unwrap(inputs["privateKeyPem"])).encode(), password=None)
    subject = _unwrap(inputs.get("subject")) or {}
    attributes = []
    if subject.get("commonName"):
        attributes.append(x509.NameAttribute(NameOID.COMMON_NAME, subject["commonName"]))
    if subject.get("organization"):
        attributes.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, subject["organization"]))
    name = x509.Name(attributes)
    start = datetime.now(UTC).replace(microsecond=0)
    end = start + timedelta(hours=int(_unwrap(inputs["validityPeriodHours"])))
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())  # type: ignore[arg-type]
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .sign(key, hashes.SHA256())  # type: ignore[arg-type]
    )
    return {
        "certPem": cert.public_bytes(serialization.Encoding.PEM).decode(),
        "validityStartTime": start.isoformat(),
        "validityEndTime": end.isoformat(),
        "readyForRenewal": False,
    }


def _mock_sealed_secret(inputs: dict[str, Any]) -> dict[str, Any]:
    """The SealedSecretManifest outputs its own provider computes: real ciphertext a test can unseal."""
    from components.sealed_secrets import SealedSecretProvider

    props = {key: value for key, value in inputs.items() if key != "__provider"}
    return SealedSecretProvider().create(props).outs or {}


def _mock_commit(inputs: dict[str, Any]) -> str:
    """The GitOps tree's commit, as a sha that changes exactly when the files do (as a real push's would)."""
    files = json.dumps(_unwrap(inputs.get("files")), sort_keys=True)
    return hashlib.sha1(files.encode(), usedforsecurity=False).hexdigest()


class HarborMocks(mocks.Mocks):
    """Plays the providers: keys get random-looking values, commands echo their inputs.

    In up mode pulumi-tls keys and certificates are real (RSA keys cached per process), and a
    SealedSecretManifest is sealed by its own provider, so tests can unseal what would be committed.
    """

    def __init__(
        self, preview: bool, existing: bool = False, drift_state: dict[str, dict[str, Any]] | None = None
    ) -> None:
        self.preview = preview
        # A preview of a stack that exists: unchanged resources have their outputs from state.
        self.existing = existing
        # The stored inputs of drift records by resource name (after a refresh: with `observed`).
        self.drift_state = drift_state or {}

    def new_resource(self, args: mocks.MockResourceArgs) -> tuple[str, dict[str, Any]]:
        outputs = dict(args.inputs)
        digest = hashlib.sha256(f"{args.typ}:{args.name}".encode()).digest()
        if args.typ == "pulumi-python:dynamic:Resource" and "expected" in args.inputs:
            # A drift record: the engine hands back its checked inputs in a preview (the provider
            # has no preview of its own) and the update's outputs in an up; `repair` is in both.
            checked = drift_check(self.drift_state.get(args.name, {}), args.inputs)
            return f"{args.name}-id", checked if self.preview else recorded(checked, None)
        if self.preview and not self.existing:
            # Before `pulumi up`, a provider's computed outputs are unknown: return only inputs.
            return ("", outputs) if args.custom else (f"{args.name}-id", outputs)
        if args.typ == "random:index/randomBytes:RandomBytes":
            outputs |= {"base64": base64.b64encode(digest).decode(), "hex": digest.hex()}
        elif args.typ == "random:index/randomPassword:RandomPassword":
            outputs |= {"result": base64.urlsafe_b64encode(digest).decode().rstrip("=")}
        elif args.typ == "command:remote:Command":
            create = str(args.inputs.get("create", ""))
            stdout = ""
            if create.endswith(" api-credential"):
                stdout = FAKE_API_CREDENTIAL.format(
                    ca=base64.b64encode(_fake_pem("CERTIFICATE", args.name).encode()).decode(),
                    token=hashlib.sha256(args.name.encode()).hexdigest(),
                )
            outputs |= {"stdout": stdout, "stderr": ""}
        elif args.typ == "tls:index/privateKey:PrivateKey" and _unwrap(args.inputs.get("algorithm")) == "RSA":
            outputs |= _mock_tls_private_key(args.inputs)
        elif args.typ == "tls:index/selfSignedCert:SelfSignedCert":
            outputs |= _as_in_state(args.typ, args.inputs, _mock_tls_self_signed_cert)
        elif args.typ == "pulumi-python:dynamic:Resource" and "cert_pem" in args.inputs:
            outputs |= _as_in_state(args.name, args.inputs, _mock_sealed_secret)
        elif args.typ == "pulumi-python:dynamic:Resource" and "repo_url" in args.inputs:
            outputs |= {"commit": _mock_commit(args.inputs)}
        return f"{args.name}-id", outputs

    def call(self, args: mocks.MockCallArgs) -> tuple[dict[str, Any], list[tuple[str, str]] | None]:
        return {}, None


def config_values(config: dict[str, Any]) -> dict[str, str]:
    """Stack config as Pulumi hands it to a program: namespaced keys, objects as JSON text."""
    return {f"{PROJECT}:{key}": value if isinstance(value, str) else json.dumps(value) for key, value in config.items()}


_FIXTURE_UPSTREAM: list[PinnedFiles] = []


def fixture_upstream() -> PinnedFiles:
    """The test pins, their files fetched once per process by components.upstream into a temporary cache."""
    if not _FIXTURE_UPSTREAM:
        cache = Path(tempfile.mkdtemp(prefix="harbor-upstream-"))
        atexit.register(shutil.rmtree, cache, True)
        store = PinnedFiles(UPSTREAM_FIXTURE_PINS, cache)
        problems = store.fetch(report=lambda _line: None)
        assert not problems, f"the upstream fixtures do not match their pins: {problems}"
        _FIXTURE_UPSTREAM.append(store)
    return _FIXTURE_UPSTREAM[0]


_IDLE_LOOP: list[asyncio.AbstractEventLoop] = []


def _idle_loop() -> asyncio.AbstractEventLoop:
    """One open loop kept for the whole session, rather than a new one per run left to the GC."""
    if not _IDLE_LOOP or _IDLE_LOOP[0].is_closed():
        _IDLE_LOOP[:] = [asyncio.new_event_loop()]
    return _IDLE_LOOP[0]


def run_program(
    config: dict[str, Any],
    *,
    preview: bool = False,
    existing: bool = False,
    upstream: PinnedFiles | None = None,
    drift_state: dict[str, dict[str, Any]] | None = None,
    tunnel_port_check: Callable[..., None] | None = None,
) -> ProgramRun:
    """Evaluate `__main__.py` once with `config` and return everything it registered.

    The program's check of its tunnel port is a no-op unless `tunnel_port_check` is given (the real
    `components.tunnel.check_tunnel_port`, to test the refusal).

    `existing` (with `preview`): a preview of a stack that was applied before, where the outputs
    of unchanged resources (the API credential, say) are known, as they are from the state.

    `drift_state`: the stored inputs of drift records by name (`<node>-drift`), as a refresh left them.

    The program reads its pinned upstream files from `upstream`, by default the test fixtures
    (`fixture_upstream()`), never from the operator's cache.

    An exception from the program propagates; the monitor's record is attached to it as
    `error.program_run`, so a test can check that nothing was registered before the refusal.
    """
    # Every task of this run must live on one fresh loop, created before the runtime is set up.
    try:
        previous_loop: asyncio.AbstractEventLoop | None = asyncio.get_event_loop_policy().get_event_loop()
    except RuntimeError:
        previous_loop = None
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    monitor = RecordingMonitor(HarborMocks(preview, existing, drift_state))
    settings.reset_options(project=PROJECT, stack=STACK, preview=preview)
    settings.SETTINGS.rpc_manager.clear()
    settings.SETTINGS.outputs.clear()
    set_all_config(config_values(config), [f"{PROJECT}:{key}" for key in SECRET_KEYS if key in config])
    settings.set_root_resource(None)  # type: ignore[arg-type]
    mocks.set_mocks(
        HarborMocks(preview, existing, drift_state), project=PROJECT, stack=STACK, preview=preview, monitor=monitor
    )
    settings.set_root_resource(None)  # type: ignore[arg-type]

    tunnels: list[tuple[Any, int]] = []

    def program() -> None:
        # Tests never open the SSH tunnel; they record that the program asked for it.
        with (
            mock.patch(
                "components.tunnel.ensure_tunnel", lambda target, port, stack, warn=None: tunnels.append((target, port))
            ),
            mock.patch("components.tunnel.check_tunnel_port", tunnel_port_check or (lambda target, port, stack: None)),
            mock.patch("components.upstream.STORE", upstream or fixture_upstream()),
        ):
            runpy.run_path(str(PROGRAM), run_name="__main__")

    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        loop.run_until_complete(run_in_stack(program))
    except BaseException as error:
        error.program_run = ProgramRun(monitor.registered, {}, set())  # type: ignore[attr-defined]
        raise
    finally:
        os.chdir(cwd)
        loop.close()
        # Leave the thread as we found it, for tests that use pulumi's own mocks afterwards.
        if previous_loop is None or previous_loop.is_closed():
            previous_loop = _idle_loop()
        asyncio.set_event_loop(previous_loop)
    raw_outputs = monitor.stack_outputs
    return ProgramRun(
        resources=monitor.registered,
        outputs={k: _unwrap(v) for k, v in raw_outputs.items()},
        secret_outputs={k for k, v in raw_outputs.items() if _is_secret(v)},
        tunnels=tunnels,
    )


# Top-level keys that users set with `pulumi config set --secret`.
SECRET_KEYS = ("sshPrivateKey", "gitops", "k3s", "components")
