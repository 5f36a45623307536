"""What every file of the GitOps tree shares: the templates folder, the header, the owned path.

Both the app-of-apps (gitops.py) and the platform components (platform.py) build on this module.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from components.config import HarborConfig

TEMPLATES = Path(__file__).resolve().parent.parent.parent / "manifests" / "gitops"

HEADER = (
    "# Managed by Space Harbor (Pulumi) from stack config. Do not edit: a hand edit stops the next\n"
    "# `pulumi up` unless gitops.overwriteManualChanges is true. See ../../README.md.\n"
)


@cache
def template_text(name: str) -> str:
    return (TEMPLATES / name).read_text(encoding="utf-8")


def load_template(name: str) -> dict[str, Any]:
    """A fresh copy of one YAML template of manifests/gitops/."""
    document = yaml.safe_load(template_text(name))
    assert isinstance(document, dict), f"{name} is not one YAML mapping"
    return copy.deepcopy(document)


def dump(document: Mapping[str, Any]) -> str:
    """One manifest as committed: the header, then the YAML in the order it was built."""
    return HEADER + yaml.safe_dump(dict(document), sort_keys=False, default_flow_style=False)


def repo_path(config: HarborConfig, relative: str) -> str:
    """`relative` inside the owned folder, as a repo-relative POSIX path."""
    return f"{config.gitops.path}/{relative}"


def child_sync_policy(config: HarborConfig) -> dict[str, Any]:
    """syncPolicy of the Applications Space Harbor commits: on click, or automated with gitops.autoSync."""
    if config.gitops.auto_sync:
        return {"automated": {"prune": True, "selfHeal": True}}
    return {}
