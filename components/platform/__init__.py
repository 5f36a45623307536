"""The platform components, one module each, and the registry that lists them.

The `components` section of the stack config (components/config/model.py) and the GitOps tree
(components/render/platform.py) are built from `REGISTRY`; a component's module holds
everything else about it. docs/ADDING-A-COMPONENT.md says how to add one.
"""

from __future__ import annotations

from components.platform import backup, infracheck, longhorn, sealed_secrets, smtp, telegraf, traefik
from components.platform.base import Component

# The order of the generated README's table and of `components` in error messages.
REGISTRY: tuple[Component, ...] = (
    traefik.COMPONENT,
    sealed_secrets.COMPONENT,
    infracheck.COMPONENT,
    telegraf.COMPONENT,
    smtp.COMPONENT,
    backup.COMPONENT,
    longhorn.COMPONENT,
)
