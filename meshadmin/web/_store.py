"""The capture store for a request: one ClickHouse client per thread and URL, reused.

Opening per request would redo the connection handshake (server) or the session (chDB) each
time; a per-thread client keeps that off the page's render time. ``close_all`` closes every
thread's client (tests switch stores between runs; a server shutting down).
"""

from __future__ import annotations

import threading

from django.conf import settings

from tracing.clickhouse import ClickHouse

_lock = threading.Lock()
_clients: dict[int, tuple[str, ClickHouse]] = {}


def client() -> ClickHouse:
    url = str(settings.MESHTAP_CLICKHOUSE_URL)
    me = threading.get_ident()
    with _lock:
        cached = _clients.get(me)
        if cached is not None and cached[0] == url:
            return cached[1]
        if cached is not None:
            cached[1].close()
        fresh = ClickHouse.open(url)
        _clients[me] = (url, fresh)
        return fresh


def close_all() -> None:
    with _lock:
        for _, cached in _clients.values():
            cached.close()
        _clients.clear()
