"""Store backends, found by URL scheme through the `meshtap.stores` entry points.

A third-party package adds a store by declaring an entry point in that group whose name is the
URL scheme and whose object is a class taking the URL (see `Store` for the contract).
"""

from __future__ import annotations

from urllib.parse import urlsplit

from runtime._plugins import load_plugin, plugin_names
from runtime.stores._base import EventRef, GroupBacklog, Store, StoredEvent

__all__ = ["EventRef", "GroupBacklog", "Store", "StoredEvent", "available_schemes", "open_store"]

_SCHEME_ALIASES = {"rediss": "redis"}


def available_schemes() -> list[str]:
    return plugin_names("meshtap.stores")


def open_store(url: str) -> Store:
    """The store for `url` (not yet connected). Unknown schemes name the ones installed."""
    scheme = urlsplit(url).scheme
    factory = load_plugin("meshtap.stores", _SCHEME_ALIASES.get(scheme, scheme))
    if factory is None:
        raise ValueError(
            f"unknown store URL {url!r}: the scheme must be one of "
            f"{', '.join(s + '://' for s in available_schemes())} (e.g. memory:// or "
            "redis://127.0.0.1:6379/0)"
        )
    store: Store = factory(url)
    return store
