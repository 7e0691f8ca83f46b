"""Finds plugins by interface and name in the C{robustmq.plugins} package."""

from __future__ import annotations

from typing import Any

from twisted.plugin import getPlugins

import robustmq.plugins
from robustmq.config import ConfigError


def findPlugins(interface: Any) -> dict[str, Any]:
    """Every plugin providing C{interface}, by its C{name}."""
    return {p.name: p for p in getPlugins(interface, robustmq.plugins)}


def findPlugin(interface: Any, name: str, key: str) -> Any:
    """The plugin C{name} for C{interface}, or a L{ConfigError} naming C{key}."""
    plugins = findPlugins(interface)
    try:
        return plugins[name]
    except KeyError:
        raise ConfigError(
            f"{key}: no plugin named {name!r}; installed: {sorted(plugins)}"
        ) from None
