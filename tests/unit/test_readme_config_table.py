"""The Stack config section of docs/configuration.md is the user interface (DESIGN §2): every key the
model accepts is documented there, and every key documented there is one the model accepts.

A key added to the model without a row, or a row left behind by a renamed key, fails here. Nested
objects are documented by their parent row (`k3s.registries`, `k3s.etcdSnapshots`), except the
bastion, whose keys have rows of their own.
"""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import BaseModel

from components.config import Bastion, HarborConfig, Node
from components.platform import REGISTRY

CONFIGURATION = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"
# The sections whose keys the table lists as `section.key`.
SECTIONS = ("ssh", "mesh", "k3s", "firewall", "argocd", "gitops", "decommission", "preflight")


def _key(name: str, model: type[BaseModel]) -> str:
    """A field's key as stack config spells it (`k3s` stays `k3s`; snake_case becomes camelCase)."""
    return name if "_" not in name else (model.model_fields[name].alias or name)


def _section_text() -> str:
    text = CONFIGURATION.read_text(encoding="utf-8")
    start = text.index("\n## Stack config\n")
    return text[start : text.index("\n## ", start + 1)]


def _documented_keys() -> set[str]:
    """Every key named in the first column of the section's tables; `.port` after `ssh.bastion.host`
    means `ssh.bastion.port`, and `a`+`b` names both."""
    keys: set[str] = set()
    for line in _section_text().splitlines():
        if not line.startswith("| `"):
            continue
        cell = line.split("|")[1]
        previous = ""
        for token in re.findall(r"`([^`]+)`", cell):
            if token.startswith(".") and previous:
                token = previous.rsplit(".", 1)[0] + token
            keys.add(token)
            previous = token
    return keys


def _model_keys() -> tuple[set[str], set[str]]:
    """(stack-level keys as `section.key` or top-level names, the keys of one `nodes[i]` entry)."""
    stack: set[str] = set()
    for name, field in HarborConfig.model_fields.items():
        key = _key(name, HarborConfig)
        if key in SECTIONS:
            section = field.annotation
            assert isinstance(section, type) and issubclass(section, BaseModel), key
            stack |= {f"{key}.{_key(sub, section)}" for sub in section.model_fields}
        elif key not in ("nodes", "components"):
            stack.add(key)
    stack |= {f"ssh.bastion.{_key(sub, Bastion)}" for sub in Bastion.model_fields}
    nodes = {_key(name, Node) for name in Node.model_fields}
    return stack, nodes


def test_every_key_the_model_accepts_has_a_row() -> None:
    documented = _documented_keys()
    stack, nodes = _model_keys()
    assert sorted(stack - documented) == []
    assert sorted(nodes - documented) == []


def test_every_row_names_a_key_the_model_accepts() -> None:
    stack, nodes = _model_keys()
    components = {
        f"components.{component.key}.{_key(name, component.settings)}"
        for component in REGISTRY
        for name in component.settings.model_fields
    }
    # The generic row for every component's switch.
    components.add("components.<name>.enabled")
    known = stack | nodes | components | {"nodes"}
    assert sorted(_documented_keys() - known) == []


def test_every_components_setting_is_named_beside_its_component() -> None:
    paragraph = _section_text().split("\nComponents: ", 1)[1]
    for component in REGISTRY:
        assert f"`{component.key}`" in paragraph, component.key
        for name in component.settings.model_fields:
            key = _key(name, component.settings)
            if key != "enabled":
                assert f"`{key}`" in paragraph, f"components.{component.key}.{key}"
