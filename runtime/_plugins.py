"""Plugins (stores, capture sinks) are found through Python entry points, named by URL scheme."""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import Any


def plugin_names(group: str) -> list[str]:
    return sorted(ep.name for ep in entry_points(group=group))


def load_plugin(group: str, name: str) -> Any | None:
    """The object the entry point `name` of `group` points at, or None if none is installed."""
    for ep in entry_points(group=group):
        if ep.name == name:
            return ep.load()
    return None
