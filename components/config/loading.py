"""Loading the stack config: raw values as Pulumi hands them over -> `HarborConfig`, or one refusal.

`load_config` turns raw config values into a `HarborConfig` or raises one `ConfigError` whose
every line names a key path (`nodes[2].meshAddress: ...`): pydantic's errors get their path from
where they arose, the cross-section checks carry theirs in the message.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from types import UnionType
from typing import Annotated, Any, Union, get_args, get_origin

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat
from pydantic import BaseModel, SecretStr, ValidationError

from components.config.model import HarborConfig
from components.schema import ConfigError, Problems, key_segment

PROJECT = "space-harbor"

# Every top-level key the program reads; anything else in the namespace is a typo.
TOP_LEVEL_KEYS = (
    "domain",
    "sshPrivateKey",
    "ssh",
    "nodes",
    "mesh",
    "k3s",
    "firewall",
    "argocd",
    "gitops",
    "components",
    "decommission",
    "preflight",
)


def _key_path(loc: tuple[int | str, ...]) -> str:
    path = ""
    parts = list(loc)
    if parts[-1:] == ["[key]"]:
        # A refused key of a keyed section (k3s.registries.mirrors): the section is the path.
        parts = parts[:-2]
    for part in parts:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            # pydantic appends the branch name of tagged/union types; it is not a key (our own
            # union tags start with "union-", components/config/cluster.py: Airgap).
            if part.startswith(("function-", "is-instance[", "lax-or-strict", "union-")):
                continue
            path += key_segment(part, first=not path)
    return path


def _field_annotation(loc: tuple[int | str, ...]) -> Any:
    """The annotation of the field an error's location points at, or None when it cannot be told."""
    annotation: Any = HarborConfig
    for part in loc:
        if isinstance(part, str) and part.startswith(("function-", "is-instance[", "lax-or-strict", "union-")):
            continue
        annotation = _step(annotation, part)
        if annotation is None:
            return None
    return annotation


def _unwrap(annotation: Any) -> list[Any]:
    """The types inside `X | None`, `Annotated[X, ...]` and the like."""
    origin = get_origin(annotation)
    if origin is Annotated:
        return _unwrap(get_args(annotation)[0])
    if origin in (Union, UnionType):
        return [inner for arg in get_args(annotation) for inner in _unwrap(arg)]
    return [annotation]


def _step(annotation: Any, part: int | str) -> Any:
    for candidate in _unwrap(annotation):
        origin = get_origin(candidate)
        if isinstance(part, int) and origin in (list, tuple):
            return get_args(candidate)[0]
        if isinstance(part, str) and origin is dict:
            return get_args(candidate)[1]
        if isinstance(part, str) and isinstance(candidate, type) and issubclass(candidate, BaseModel):
            for name, field in candidate.model_fields.items():
                if part in (name, field.alias):
                    return field.annotation
    return None


def _holds_secret(annotation: Any) -> bool:
    return any(
        candidate is SecretStr
        or (isinstance(candidate, type) and issubclass(candidate, SecretStr))
        or any(_holds_secret(arg) for arg in get_args(candidate))
        for candidate in _unwrap(annotation)
    )


def _is_secret(loc: tuple[int | str, ...]) -> bool:
    """Whether an error is about a secret field (or one that cannot be told): its value is never shown."""
    annotation = _field_annotation(loc)
    return annotation is None or _holds_secret(annotation)


def _describe(error: Mapping[str, Any]) -> list[str]:
    cause = (error.get("ctx") or {}).get("error")
    if isinstance(cause, Problems):
        return list(cause.lines)
    message = str(error["msg"])
    for prefix in ("Value error, ", "Assertion failed, "):
        if message.startswith(prefix):
            message = message[len(prefix) :]
    path = _key_path(tuple(error["loc"]))
    message = message.replace("--path KEY <", f"--path '{path}' <")
    if not path or message.startswith(f"{path}.") or message.startswith(f"{path}:"):
        # cross-field checks already start with their key path
        return [message]
    if error["type"] in {"missing", "extra_forbidden"}:
        return [f"{path}: {'is required' if error['type'] == 'missing' else 'is not a known key'}"]
    value = error.get("input")
    # A secret field's value is never echoed, whatever its type or the reason it was refused.
    if _is_secret(tuple(error["loc"])):
        return [f"{path}: {message}"]
    shown = "" if isinstance(value, dict | list) or str(value) in message else f" (got {value!r})"
    return [f"{path}: {message}{shown}"]


# scheme://user:password@ or scheme://token@: a credential inside a URL.
_URL_CREDENTIAL = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<login>[^/@\s'\"]+)@")


def _secret_inputs(value: Any, annotation: Any) -> list[str]:
    """Every value of the raw config that sits in a secret field, as text."""
    if _holds_secret(annotation) and isinstance(value, str | int | float):
        return [str(value)]
    found: list[str] = []
    for candidate in _unwrap(annotation):
        origin = get_origin(candidate)
        if origin in (list, tuple) and isinstance(value, list):
            found += [s for item in value for s in _secret_inputs(item, get_args(candidate)[0])]
        elif origin is dict and isinstance(value, dict):
            found += [s for item in value.values() for s in _secret_inputs(item, get_args(candidate)[1])]
        elif isinstance(candidate, type) and issubclass(candidate, BaseModel) and isinstance(value, dict):
            for key, item in value.items():
                found += _secret_inputs(item, _step(candidate, key))
    return found


def _redact(line: str, secrets: list[str]) -> str:
    """A refusal never carries a secret: not a secret field's value, not a credential in a URL."""
    for secret in sorted(secrets, key=len, reverse=True):
        if len(secret) >= 4:
            line = line.replace(secret, "***")
    return _URL_CREDENTIAL.sub(_without_credential, line)


def _without_credential(match: re.Match[str]) -> str:
    # ssh://git@host is a login name, not a credential; a password or any HTTP(S) login is one.
    if match["scheme"].lower() == "ssh://" and ":" not in match["login"]:
        return match[0]
    return f"{match['scheme']}***@"


def _stand_in_key() -> str:
    key = Ed25519PrivateKey.from_private_bytes(bytes(32))
    return key.private_bytes(Encoding.PEM, PrivateFormat.OpenSSH, NoEncryption()).decode()


def _beyond_the_broken_sections(parsed: Mapping[str, Any], broken: set[int | str]) -> list[str]:
    """The cross-section problems a refused section hid: required keys elsewhere, unpinned nodes.

    pydantic runs the checks that span sections only once every section is valid, so a missing
    secret would hide a missing `domain` until the next run. The config is checked once more with
    stand-ins for the broken sections (a valid key, an HTTPS repository, or the section's
    defaults), and only the problems that do not touch a stood-in section are kept. Nothing here
    stands in for `nodes`, which most of those checks are about.
    """
    if not broken or "nodes" in broken:
        return []
    stand_ins: dict[str, Any] = {
        "sshPrivateKey": _stand_in_key(),
        "gitops": {"repoUrl": "https://stand-in.invalid/r.git", "username": "u", "password": "p"},
    }
    patched = {key: value for key, value in parsed.items() if key not in broken}
    patched |= {key: stand_ins[key] for key in broken if isinstance(key, str) and key in stand_ins}
    try:
        HarborConfig.model_validate(patched)
    except ValidationError as error:
        lines = [line for item in error.errors(include_url=False) for line in _describe(item)]
        touches = re.compile(r"(?<![\w.\]\[])(" + "|".join(re.escape(str(key)) for key in broken) + r")\b")
        return [line for line in lines if not touches.search(line)]
    return []


def _parse(raw: str) -> Any:
    """Pulumi hands every config value over as a string; objects and lists are JSON."""
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw


def load_config(values: Mapping[str, Any]) -> HarborConfig:
    """Validate raw stack config (top-level key -> value or JSON text) into the model."""
    unknown = sorted(set(values) - set(TOP_LEVEL_KEYS))
    problems = [f"{key}: is not a known key of {PROJECT}" for key in unknown]
    parsed = {key: _parse(value) if isinstance(value, str) else value for key, value in values.items()}
    if not problems:
        try:
            return HarborConfig.model_validate(parsed)
        except ValidationError as error:
            items = error.errors(include_url=False)
            problems = [line for item in items for line in _describe(item)]
            problems += _beyond_the_broken_sections(parsed, {item["loc"][0] for item in items if item["loc"]})
    secrets = _secret_inputs(parsed, HarborConfig)
    unique: dict[str, str] = {}
    for line in (_redact(line, secrets) for line in problems):
        # A key two checks require (domain, for two components) is named once.
        path, _, reason = line.partition(": ")
        unique.setdefault(path if reason.startswith("is required") else line, line)
    raise ConfigError("invalid stack config:\n  " + "\n  ".join(unique.values()))


def read_pulumi_config(get: Callable[[str], str | None]) -> dict[str, str]:
    """Collect the raw values of the project namespace through `get(full_key)`."""
    raw = {key: get(f"{PROJECT}:{key}") for key in TOP_LEVEL_KEYS}
    return {key: value for key, value in raw.items() if value is not None}
