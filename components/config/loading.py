"""Loading the stack config: raw values as Pulumi hands them over -> `HarborConfig`, or one refusal.

`load_config` turns raw config values into a `HarborConfig` or raises one `ConfigError` whose
every line names a key path (`nodes[2].meshAddress: ...`): pydantic's errors get their path from
where they arose, the cross-section checks carry theirs in the message.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from pydantic import ValidationError

from components.config.model import HarborConfig
from components.schema import ConfigError, key_segment

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


def _describe(error: Mapping[str, Any]) -> str:
    message = str(error["msg"])
    for prefix in ("Value error, ", "Assertion failed, "):
        if message.startswith(prefix):
            message = message[len(prefix) :]
    path = _key_path(tuple(error["loc"]))
    if not path or message.startswith(f"{path}.") or message.startswith(f"{path}:"):
        # cross-field checks already start with their key path
        return message
    if error["type"] in {"missing", "extra_forbidden"}:
        return f"{path}: {'is required' if error['type'] == 'missing' else 'is not a known key'}"
    value = error.get("input")
    # Values of secret-looking keys are never echoed, whatever their type.
    secretish = "secret" in path.lower() or path.rsplit(".", 1)[-1] in {"password", "auth", "identityToken", "keyFile"}
    shown = "" if isinstance(value, dict | list) or secretish else f" (got {value!r})"
    if ("Key" in path and "public" not in path.lower()) or str(value) in message:
        shown = ""
    return f"{path}: {message}{shown}"


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
            problems = [_describe(item) for item in error.errors(include_url=False)]
    raise ConfigError("invalid stack config:\n  " + "\n  ".join(problems))


def read_pulumi_config(get: Callable[[str], str | None]) -> dict[str, str]:
    """Collect the raw values of the project namespace through `get(full_key)`."""
    raw = {key: get(f"{PROJECT}:{key}") for key in TOP_LEVEL_KEYS}
    return {key: value for key, value in raw.items() if value is not None}
