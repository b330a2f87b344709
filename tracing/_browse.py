"""Read-side queries for browsing: the event browser's page and histogram, and the replays of a
trace.

Kept apart from ``_queries`` (which replay also uses) because these serve the web admin only;
they follow its rules: module-constant statements with ``%(name)s`` parameters, a ``LIMIT`` on
every statement that returns rows, time ranges bounding the ``DateTime`` partition column too,
and statements that run unchanged on ClickHouse 18.16 and chDB.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Any, Final

from tracing._queries import (
    _EVENT_COLUMNS,
    _at,
    _checked_trace_id,
    _event,
    _resolve_topics,
    _window_params,
)
from tracing._read_models import EventRow, EventWindow, InvalidQuery, Page
from tracing.clickhouse import ClickHouse, Purpose

__all__ = [
    "MAX_HISTOGRAM_BUCKETS",
    "MAX_REPLAYS_OF",
    "EventHistogram",
    "event_histogram",
    "replays_of_trace",
    "search_events",
]

MAX_HISTOGRAM_BUCKETS: Final = 500
MAX_REPLAYS_OF: Final = 50
"""Replay traces :func:`replays_of_trace` lists (the earliest)."""
MAX_TEXT: Final = 200
REPLAY_SERVICE: Final = "meshtap-replay"
"""The service name replay's spans are recorded under (``meshadmin.replays``)."""

# events ORDER BY (topic, published_ns, ...): per topic the granules of the window; the text
# test (a substring of the data bytes) runs on those rows only. One row per interval.
EVENT_HISTOGRAM = """
SELECT intDiv(published_ns - %(since_ns)s, %(step_ns)s) AS bucket, count() AS events,
       countIf(replay_id != '') AS replayed
FROM meshtap.events
PREWHERE published_ns >= %(since_ns)s AND published_ns < %(until_ns)s
WHERE topic IN %(topics)s
  AND published_at >= %(since_at)s AND published_at <= %(until_at)s
  AND (%(any_text)s OR position(data, %(text)s) > 0)
GROUP BY bucket
ORDER BY bucket
LIMIT %(limit)s
"""

# As EVENT_HISTOGRAM, the newest rows of the window before the keyset (published_ns, event_id,
# topic) of the previous page's last row: keyset pagination, never OFFSET.
SEARCH_EVENTS = f"""
SELECT {_EVENT_COLUMNS}
FROM meshtap.events
PREWHERE published_ns >= %(since_ns)s AND published_ns < %(until_ns)s
WHERE topic IN %(topics)s
  AND published_at >= %(since_at)s AND published_at <= %(until_at)s
  AND (%(any_text)s OR position(data, %(text)s) > 0)
  AND (%(first_page)s OR (published_ns, event_id, topic) < (%(before_ns)s, %(before_id)s,
                                                            %(before_topic)s))
ORDER BY published_ns DESC, event_id DESC, topic DESC
LIMIT 1 BY published_ns, event_id, topic
LIMIT %(limit)s
"""

# spans ORDER BY (service_name, start_ns): only replay's own spans from the trace's start on
# (a replay always comes after what it replays); each links to the span it replayed.
REPLAYS_OF_TRACE = """
SELECT trace_id, min(start_ns) AS first_ns, count() AS spans
FROM meshtap.spans
WHERE service_name = %(service)s
  AND start_at >= %(since_at)s AND start_ns >= %(since_ns)s
  AND has(link_trace_ids, %(trace_id)s)
GROUP BY trace_id
ORDER BY first_ns, trace_id
LIMIT %(limit)s
"""


@dataclass(frozen=True, slots=True)
class EventHistogram:
    """Events per interval over ``[since_ns, until_ns)``: ``counts[i]`` is the interval
    starting at ``since_ns + i * step_ns`` (every interval present, empty ones as 0)."""

    since_ns: int
    until_ns: int
    step_ns: int
    counts: tuple[int, ...]
    replayed: tuple[int, ...]
    """Of ``counts``, the replayed events (recorded with a replay id)."""

    @property
    def total(self) -> int:
        return sum(self.counts)


def _text(text: str | None) -> str:
    if text is None:
        return ""
    if not isinstance(text, str) or len(text) > MAX_TEXT:
        raise InvalidQuery(
            f"payload search {text!r:.80} must be text of at most {MAX_TEXT} characters"
        )
    return text


def _browse_params(window: EventWindow, text: str | None) -> dict[str, Any]:
    if not isinstance(window, EventWindow):
        raise InvalidQuery(f"expected an EventWindow, got {type(window).__name__}")
    if window.attributes:
        raise InvalidQuery(
            "the event browser filters by topic, time and payload text; attribute filters "
            "belong to replay specs and events_in_window"
        )
    wanted = _text(text)
    return {
        **_window_params(window.since_ns, window.until_ns),
        "any_text": not wanted,
        "text": wanted,
    }


def event_histogram(
    client: ClickHouse, window: EventWindow, *, buckets: int = 60, text: str | None = None
) -> EventHistogram:
    """How many events of ``window`` (whose data contains ``text``, if given) were published
    in each of ``buckets`` equal intervals: one aggregate query, no rows moved."""
    if isinstance(buckets, bool) or not isinstance(buckets, int):
        raise InvalidQuery(f"buckets {buckets!r} is not an integer from 1 to 500")
    if not 1 <= buckets <= MAX_HISTOGRAM_BUCKETS:
        raise InvalidQuery(f"buckets {buckets!r} is not from 1 to {MAX_HISTOGRAM_BUCKETS}")
    params = _browse_params(window, text)
    since_ns, until_ns = window.since_ns, window.until_ns
    step = max(1, -(-(until_ns - since_ns) // buckets))
    counts = [0] * buckets
    replayed = [0] * buckets
    topics = _resolve_topics(client, window.topics, since_ns, until_ns)
    if topics:
        params.update(topics=topics, step_ns=step, limit=buckets)
        for bucket, events, again in client.execute(EVENT_HISTOGRAM, params, purpose=Purpose.QUERY):
            if 0 <= int(bucket) < buckets:
                counts[int(bucket)] = int(events)
                replayed[int(bucket)] = int(again)
    return EventHistogram(since_ns, until_ns, step, tuple(counts), tuple(replayed))


def search_events(
    client: ClickHouse,
    window: EventWindow,
    *,
    text: str | None = None,
    limit: int = 50,
    cursor: str | None = None,
) -> Page[EventRow]:
    """One page of the events of ``window`` (whose data contains ``text``, if given), newest
    first; pass ``next_cursor`` as ``cursor`` for the next page."""
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 1000:
        raise InvalidQuery(f"limit {limit!r} is not a page size from 1 to 1000")
    params = _browse_params(window, text)
    since_ns, until_ns = window.since_ns, window.until_ns
    empty: Page[EventRow] = Page((), None, since_ns, until_ns)
    before = _decode(cursor) if cursor else None
    topics = _resolve_topics(client, window.topics, since_ns, until_ns)
    if not topics:
        return empty
    params.update(
        topics=topics,
        first_page=before is None,
        before_ns=before[0] if before else 0,
        before_id=before[1] if before else "",
        before_topic=before[2] if before else "",
        limit=limit + 1,
    )
    rows = client.execute(SEARCH_EVENTS, params, purpose=Purpose.QUERY, bytes_columns={"data"})
    events = tuple(_event(row) for row in rows[:limit])
    next_cursor = None
    if len(rows) > limit and events:
        last = events[-1]
        next_cursor = _encode(last.published_ns, last.event_id, last.topic)
    return Page(events, next_cursor, since_ns, until_ns)


def replays_of_trace(client: ClickHouse, trace_id: str, since_ns: int) -> list[str]:
    """Trace ids of the replays whose spans link into trace ``trace_id`` (which started at
    ``since_ns``), earliest first, at most :data:`MAX_REPLAYS_OF`."""
    params = {
        "trace_id": _checked_trace_id(trace_id),
        "service": REPLAY_SERVICE,
        "since_ns": max(0, since_ns),
        "since_at": _at(since_ns),
        "limit": MAX_REPLAYS_OF,
    }
    return [str(row[0]) for row in client.execute(REPLAYS_OF_TRACE, params, purpose=Purpose.QUERY)]


_CURSOR_VERSION: Final = "e1"


def _encode(published_ns: int, event_id: str, topic: str) -> str:
    raw = "\0".join((_CURSOR_VERSION, str(published_ns), topic, event_id))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def _decode(cursor: str) -> tuple[int, str, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        version, published, topic, event_id = raw.split("\0", 3)
        if version != _CURSOR_VERSION:
            raise ValueError(raw)
        return int(published), event_id, topic
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise InvalidQuery(
            f"cursor {cursor!r:.60} is not one the event browser handed out; start from the "
            f"first page (no cursor)"
        ) from None
