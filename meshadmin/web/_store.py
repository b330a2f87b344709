"""The capture store for a request: one ClickHouse client per thread and URL, reused.

Opening per request would redo the connection handshake (server) or the session (chDB) each
time; a thread-local client keeps that off the page's render time.
"""

from __future__ import annotations

import threading

from django.conf import settings

from tracing.clickhouse import ClickHouse

_local = threading.local()


def client() -> ClickHouse:
    url = str(settings.MESHTAP_CLICKHOUSE_URL)
    cached: ClickHouse | None = getattr(_local, "client", None)
    if cached is not None and getattr(_local, "url", None) == url:
        return cached
    if cached is not None:
        cached.close()
    _local.client = ClickHouse.open(url)
    _local.url = url
    return _local.client  # type: ignore[no-any-return]


def close() -> None:
    """Close this thread's client (tests switch stores between runs)."""
    cached: ClickHouse | None = getattr(_local, "client", None)
    if cached is not None:
        cached.close()
        _local.client = None
