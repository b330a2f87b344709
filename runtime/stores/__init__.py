"""Store backends, found by URL scheme through the `meshtap.stores` entry points.

A third-party package adds a store by declaring an entry point in that group whose name is the
URL scheme and whose object is a class taking the URL (see `Store` for the contract).
"""

from __future__ import annotations

from importlib.metadata import entry_points
from urllib.parse import urlsplit

from runtime.stores._base import EventRef, GroupBacklog, Store, StoredEvent

__all__ = ["EventRef", "GroupBacklog", "Store", "StoredEvent", "available_schemes", "open_store"]

_SCHEME_ALIASES = {"rediss": "redis"}


def available_schemes() -> list[str]:
    return sorted(ep.name for ep in entry_points(group="meshtap.stores"))


def open_store(url: str) -> Store:
    """The store for `url` (not yet connected). Unknown schemes name the ones installed."""
    scheme = urlsplit(url).scheme
    name = _SCHEME_ALIASES.get(scheme, scheme)
    for ep in entry_points(group="meshtap.stores"):
        if ep.name == name:
            store: Store = ep.load()(url)
            return store
    raise ValueError(
        f"unknown store URL {url!r}: the scheme must be one of "
        f"{', '.join(s + '://' for s in available_schemes())} (e.g. memory:// or "
        "redis://127.0.0.1:6379/0)"
    )
