"""The read side of the capture store: open a trace, search traces, stream events, map topics.

The web admin and replay call these functions; each takes a :class:`ClickHouse` client and
returns the frozen dataclasses of ``_read_models``:

* :func:`trace_by_id` -- the waterfall: spans, the events the trace carried, their deliveries;
* :func:`search_traces` -- one page of trace summaries, newest first, keyset-paginated;
* :func:`events_in_window` -- recorded events of a window, streamed in publish order;
* :func:`delivery_history` -- every delivery attempt of one event;
* :func:`topic_map` -- producers -> topics -> consumer groups over a time range.

How the statements are written, and why:

* Every statement is a module constant with ``%(name)s`` parameters, naming tables in full
  from the schema's allow-list (CONVENTIONS 4); the comment above each says which table's
  ``ORDER BY`` (migration m0001) it relies on, so nothing scans by accident.
* All run unchanged on ClickHouse 18.16 and on chDB. Hence: ordering by column names (18.16
  reads ``ORDER BY 1`` as a constant); no window functions or ``arrayZip``; an optional filter
  is switched off by a literal ``0``/``1`` parameter, ``(%(any_service)s OR service_name =
  %(service)s)`` -- 18.16's primary-key analysis folds a literal ``1 OR ...`` but not
  ``'' = ''``, so with the switch off the key still serves ``service_name = ?``.
* 18.16 evaluates both sides of ``OR``, so an *expensive* optional filter (attribute matching
  over arrays) is not hidden behind such a switch: the search exists once per combination of
  those filters (``SEARCH_TRACES``, ``SEARCH_TRACES_BY_ATTRIBUTES`` ...), all built here at
  import from one template, so each is still one constant.
* Bounded: every query that returns rows has a ``LIMIT``; time-ranged ones also bound the
  ``DateTime`` partition column, so only the days of the range are opened. Rows recorded twice
  (a spooled batch replayed after a timeout that had in fact committed) are returned once
  (``LIMIT 1 BY`` the row's key).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import Any, Final

from runtime import compile_pattern
from tracing._read_models import (
    DeliveryAttempt,
    EventRow,
    EventWindow,
    InvalidQuery,
    Page,
    ProducerTopic,
    SpanEvent,
    SpanLink,
    TopicGroup,
    TopicMap,
    TopicStats,
    TraceEvent,
    TraceSearch,
    TraceSpan,
    TraceSummary,
    TraceView,
    time_range_ns,
    to_ns,
)
from tracing.clickhouse import ClickHouse, Purpose

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "MAX_BATCH_SIZE",
    "MAX_DELIVERY_ATTEMPTS",
    "MAX_MAP_EDGES",
    "MAX_TOPICS",
    "MAX_TRACE_DELIVERIES",
    "MAX_TRACE_EVENTS",
    "MAX_TRACE_SPANS",
    "count_events_in_window",
    "delivery_history",
    "events_by_id",
    "events_in_window",
    "events_of_replay",
    "events_of_traces",
    "replayed_event_ids",
    "search_traces",
    "topic_map",
    "trace_by_id",
]

# --- bounds -------------------------------------------------------------------------------------

MAX_TRACE_SPANS: Final = 10_000
"""Spans one trace view loads (the earliest); more marks the view ``truncated``."""
MAX_TRACE_EVENTS: Final = 1_000
"""Events one trace view loads, data included (a batch publish puts a whole batch in a trace)."""
MAX_TRACE_DELIVERIES: Final = 20_000
MAX_DELIVERY_ATTEMPTS: Final = 10_000
"""Attempts :func:`delivery_history` returns (the oldest)."""
DEFAULT_BATCH_SIZE: Final = 1_000
MAX_BATCH_SIZE: Final = 100_000
MAX_TOPICS: Final = 10_000
"""Topics a window's patterns may resolve to; more is an error asking for narrower patterns."""
MAX_MAP_EDGES: Final = 10_000
"""Producer->topic and topic->group pairs one topic map holds (the busiest)."""

_NS: Final = 1_000_000_000
_INITIAL_SLICE_NS: Final = _NS
_MIN_SLICE_NS: Final = 1_000
_MAX_SLICE_GROWTH: Final = 8.0
# Deliveries are looked up from this long before their event's publish time, for clock skew
# between runtime instances (it only decides which daily partitions are opened).
_DELIVERY_SKEW_NS: Final = 3600 * _NS
# Sorts after every valid topic name ([A-Za-z0-9_.-]): the open end of a topic-prefix range.
_AFTER_ALL_TOPICS: Final = "~"
_TRACE_ID: Final = re.compile(r"[0-9a-f]{32}")

# --- columns read back ---------------------------------------------------------------------------

_SPAN_COLUMNS = """
    trace_id, span_id, parent_span_id, name, kind, service_name, scope_name,
    start_ns, end_ns, duration_ns, status_code, status_message,
    attr_keys, attr_values, resource_keys, resource_values,
    event_names, event_times_ns, event_attrs, link_trace_ids, link_span_ids, link_attrs"""

_EVENT_COLUMNS = """
    event_id, topic, source, type, subject, spec_version, data_content_type, data_schema,
    event_time_ns, published_ns, partition_key, ext_keys, ext_values, data,
    producer, protocol, instance, store_offset, trace_id, span_id, replay_id"""

_DELIVERY_COLUMNS = """
    event_id, topic, group_name, subscription_id, subscriber, attempt, outcome, status_code,
    error, duration_ns, latency_ns, attempted_ns, instance, trace_id, span_id"""

# --- open one trace --------------------------------------------------------------------------

# spans_by_trace ORDER BY (trace_id, start_ns), index_granularity 1024: `trace_id = ?` reads a
# granule or two per part, never the table.
TRACE_SPANS = f"""
SELECT {_SPAN_COLUMNS}
FROM meshtap.spans_by_trace
WHERE trace_id = %(trace_id)s
ORDER BY start_ns, span_id
LIMIT 1 BY span_id
LIMIT %(limit)s
"""

# The trace's events in one round trip: events_by_trace ORDER BY (trace_id, published_ns)
# yields their keys (a granule or two per part, in an IN-subquery that runs first), then events
# ORDER BY (topic, published_ns, event_id) is read by those whole keys -- a granule per key, as
# within one topic the granules are in publish order.
TRACE_EVENTS = f"""
SELECT {_EVENT_COLUMNS}
FROM meshtap.events
WHERE (topic, published_ns, event_id) IN (
        SELECT topic, published_ns, event_id
        FROM meshtap.events_by_trace
        WHERE trace_id = %(trace_id)s
        ORDER BY published_ns, event_id, topic
        LIMIT 1 BY published_ns, event_id, topic
        LIMIT %(limit)s)
ORDER BY published_ns, event_id, topic
LIMIT 1 BY published_ns, event_id, topic
"""

# deliveries ORDER BY (event_id, attempted_ns, attempt): `event_id IN (...)` reads a granule or
# so per part; attempts cannot precede their event, which bounds the partitions opened.
DELIVERIES_OF_EVENTS = f"""
SELECT {_DELIVERY_COLUMNS}
FROM meshtap.deliveries
WHERE event_id IN %(event_ids)s
  AND (event_id, topic) IN %(event_topics)s
  AND attempted_at >= %(since_at)s
ORDER BY event_id, topic, attempted_ns, attempt, group_name
LIMIT 1 BY event_id, topic, group_name, attempt, attempted_ns
LIMIT %(limit)s
"""

# deliveries ORDER BY (event_id, attempted_ns, attempt): one event's attempts, in time order.
DELIVERY_HISTORY = f"""
SELECT {_DELIVERY_COLUMNS}
FROM meshtap.deliveries
WHERE event_id = %(event_id)s
  AND (%(any_topic)s OR topic = %(topic)s)
ORDER BY attempted_ns, attempt, group_name, topic
LIMIT 1 BY event_id, topic, group_name, attempt, attempted_ns
LIMIT %(limit)s
"""

# --- search traces ----------------------------------------------------------------------------

# spans ORDER BY (service_name, start_ns), daily partitions on start_at: the time range opens
# only its days and, per service, only the granules of the range; `service_name = ?` narrows to
# that service's run. The event filter's subquery reads events ORDER BY (topic, published_ns)
# by topic and time the same way. One row per trace, keyed by its first matching span's start.
_SEARCH_TRACES_TEMPLATE = """
SELECT trace_id, min(start_ns) AS first_ns
FROM meshtap.spans
PREWHERE start_ns >= %(since_ns)s AND start_ns < %(until_ns)s{prewhere}
WHERE start_at >= %(since_at)s AND start_at <= %(until_at)s
  AND trace_id != ''
  AND (%(any_service)s OR service_name = %(service)s)
  AND duration_ns >= %(min_duration_ns)s AND duration_ns <= %(max_duration_ns)s{where}
  AND (%(any_event)s OR trace_id IN (
        SELECT trace_id
        FROM meshtap.events
        WHERE %(event_filter)s
          AND (%(any_topic)s OR topic IN %(topics)s)
          AND published_at >= %(since_at)s AND published_at <= %(until_at)s
          AND published_ns >= %(since_ns)s AND published_ns < %(until_ns)s
          AND (%(any_type)s OR type = %(event_type)s)
          AND trace_id != ''))
GROUP BY trace_id
HAVING (%(any_status)s OR (countIf(status_code = 'error') > 0) = %(want_error)s)
   AND (%(first_page)s OR (first_ns, trace_id) < (%(after_ns)s, %(after_trace_id)s))
ORDER BY first_ns DESC, trace_id DESC
LIMIT %(limit)s
"""

# Attribute filters, span and resource: every wanted 'key\0value' among the span's pairs. The
# PREWHERE part only looks for the wanted values -- one array column, no string building -- so
# the exact pair test runs on the few rows that have them (on 18.16 this halves the search).
_SPAN_ATTRIBUTES_PREWHERE = """
  AND hasAll(attr_values, %(attribute_values)s)"""
_SPAN_ATTRIBUTES_WHERE = """
  AND hasAll(arrayMap((k, v) -> concat(k, '\\0', v), attr_keys, attr_values), %(attributes)s)"""
_RESOURCE_ATTRIBUTES_PREWHERE = """
  AND hasAll(resource_values, %(resource_values)s)"""
_RESOURCE_ATTRIBUTES_WHERE = """
  AND hasAll(arrayMap((k, v) -> concat(k, '\\0', v), resource_keys, resource_values),
             %(resource_attributes)s)"""

SEARCH_TRACES = _SEARCH_TRACES_TEMPLATE.format(prewhere="", where="")
SEARCH_TRACES_BY_ATTRIBUTES = _SEARCH_TRACES_TEMPLATE.format(
    prewhere=_SPAN_ATTRIBUTES_PREWHERE, where=_SPAN_ATTRIBUTES_WHERE
)
SEARCH_TRACES_BY_RESOURCE = _SEARCH_TRACES_TEMPLATE.format(
    prewhere=_RESOURCE_ATTRIBUTES_PREWHERE, where=_RESOURCE_ATTRIBUTES_WHERE
)
SEARCH_TRACES_BY_ATTRIBUTES_AND_RESOURCE = _SEARCH_TRACES_TEMPLATE.format(
    prewhere=_SPAN_ATTRIBUTES_PREWHERE + _RESOURCE_ATTRIBUTES_PREWHERE,
    where=_SPAN_ATTRIBUTES_WHERE + _RESOURCE_ATTRIBUTES_WHERE,
)
_SEARCH_TRACES_BY_FILTERS = {
    (False, False): SEARCH_TRACES,
    (True, False): SEARCH_TRACES_BY_ATTRIBUTES,
    (False, True): SEARCH_TRACES_BY_RESOURCE,
    (True, True): SEARCH_TRACES_BY_ATTRIBUTES_AND_RESOURCE,
}

# spans_by_trace ORDER BY (trace_id, start_ns): a page's traces, whole, by trace id lookups.
TRACE_SUMMARIES = """
SELECT trace_id,
       min(start_ns) AS trace_start_ns,
       max(end_ns) AS trace_end_ns,
       uniqExact(span_id) AS span_count,
       uniqExactIf(span_id, status_code = 'error') AS error_count,
       groupUniqArray(service_name) AS services,
       countIf(parent_span_id = '') AS roots,
       argMinIf(service_name, start_ns, parent_span_id = '') AS root_service,
       argMinIf(name, start_ns, parent_span_id = '') AS root_name,
       argMin(service_name, start_ns) AS first_service,
       argMin(name, start_ns) AS first_name
FROM meshtap.spans_by_trace
WHERE trace_id IN %(trace_ids)s
GROUP BY trace_id
"""

# events_by_trace ORDER BY (trace_id, published_ns): the topics of a page's traces.
TRACE_TOPICS = """
SELECT trace_id, groupUniqArray(topic) AS topics
FROM meshtap.events_by_trace
WHERE trace_id IN %(trace_ids)s
GROUP BY trace_id
"""

# --- events of a window -----------------------------------------------------------------------

# events ORDER BY (topic, published_ns, ...): a topic-prefix range over the window reads only
# those topics' granules of the window (the topics a wildcard pattern may match).
TOPICS_IN_RANGE = """
SELECT DISTINCT topic
FROM meshtap.events
WHERE topic >= %(lo_topic)s AND topic < %(hi_topic)s
  AND published_at >= %(since_at)s AND published_at <= %(until_at)s
  AND published_ns >= %(since_ns)s AND published_ns < %(until_ns)s
LIMIT %(limit)s
"""

# events ORDER BY (topic, published_ns, event_id): `topic IN (...)` and a published_ns slice
# read only that slice of each topic; rows come in (published_ns, event_id, topic) order, the
# keyset the next batch continues from.
_EVENTS_IN_SLICE_TEMPLATE = f"""
SELECT {_EVENT_COLUMNS}
FROM meshtap.events
PREWHERE published_ns >= %(lo_ns)s AND published_ns < %(hi_ns)s
WHERE topic IN %(topics)s
  AND published_at >= %(lo_at)s AND published_at <= %(hi_at)s
  AND (published_ns, event_id, topic) > (%(after_ns)s, %(after_id)s, %(after_topic)s){{attributes}}
ORDER BY published_ns, event_id, topic
LIMIT 1 BY published_ns, event_id, topic
LIMIT %(limit)s
"""

# The event's attributes as 'name\0value' strings, all of %(attributes)s among them.
_EVENT_HAS_ATTRIBUTES = """
  AND hasAll(
        arrayConcat(
            [concat('id\\0', event_id), concat('source\\0', source), concat('type\\0', type),
             concat('subject\\0', subject), concat('specversion\\0', spec_version),
             concat('datacontenttype\\0', data_content_type),
             concat('dataschema\\0', data_schema)],
            arrayMap((k, v) -> concat(k, '\\0', v), ext_keys, ext_values)),
        %(attributes)s)"""

EVENTS_IN_SLICE = _EVENTS_IN_SLICE_TEMPLATE.format(attributes="")
EVENTS_IN_SLICE_WITH_ATTRIBUTES = _EVENTS_IN_SLICE_TEMPLATE.format(attributes=_EVENT_HAS_ATTRIBUTES)

# --- events by id, by trace, replayed ---------------------------------------------------------

# events ORDER BY (topic, published_ns, event_id): `topic IN (...)` and the window read only
# those topics' granules of the window; the id list narrows them further (PREWHERE).
EVENTS_BY_ID = f"""
SELECT {_EVENT_COLUMNS}
FROM meshtap.events
PREWHERE event_id IN %(event_ids)s
WHERE topic IN %(topics)s
  AND published_at >= %(since_at)s AND published_at <= %(until_at)s
  AND published_ns >= %(since_ns)s AND published_ns < %(until_ns)s
ORDER BY published_ns, event_id, topic
LIMIT 1 BY published_ns, event_id, topic
LIMIT %(limit)s
"""

# events_by_trace ORDER BY (trace_id, published_ns) yields the keys of the traces' events (a
# granule or two per trace and part); events is then read by those whole keys, as TRACE_EVENTS.
EVENTS_OF_TRACES = f"""
SELECT {_EVENT_COLUMNS}
FROM meshtap.events
WHERE (topic, published_ns, event_id) IN (
        SELECT topic, published_ns, event_id
        FROM meshtap.events_by_trace
        WHERE trace_id IN %(trace_ids)s
          AND published_at >= %(since_at)s AND published_at <= %(until_at)s
          AND published_ns >= %(since_ns)s AND published_ns < %(until_ns)s)
  AND topic IN %(topics)s
ORDER BY published_ns, event_id, topic
LIMIT 1 BY published_ns, event_id, topic
LIMIT %(limit)s
"""

# events ORDER BY (topic, published_ns, ...): the replay's target topics from its start on.
REPLAYED_EVENT_IDS = """
SELECT DISTINCT event_id
FROM meshtap.events
WHERE topic IN %(topics)s
  AND published_at >= %(since_at)s
  AND published_ns >= %(since_ns)s
  AND replay_id = %(replay_id)s
LIMIT %(limit)s
"""

# events ORDER BY (topic, published_ns, ...): as REPLAYED_EVENT_IDS, whole rows, in order.
REPLAYED_EVENTS = f"""
SELECT {_EVENT_COLUMNS}
FROM meshtap.events
WHERE topic IN %(topics)s
  AND published_at >= %(since_at)s
  AND published_ns >= %(since_ns)s
  AND replay_id = %(replay_id)s
ORDER BY published_ns, event_id, topic
LIMIT 1 BY published_ns, event_id, topic
LIMIT %(limit)s
"""

# events ORDER BY (topic, published_ns, ...): as the slices of EVENTS_IN_SLICE, counted.
_COUNT_TEMPLATE = """
SELECT count()
FROM meshtap.events
PREWHERE published_ns >= %(since_ns)s AND published_ns < %(until_ns)s
WHERE topic IN %(topics)s
  AND published_at >= %(since_at)s AND published_at <= %(until_at)s{attributes}
"""
COUNT_EVENTS_IN_WINDOW = _COUNT_TEMPLATE.format(attributes="")
COUNT_EVENTS_IN_WINDOW_WITH_ATTRIBUTES = _COUNT_TEMPLATE.format(attributes=_EVENT_HAS_ATTRIBUTES)

# --- topic map --------------------------------------------------------------------------------

# events ORDER BY (topic, published_ns, ...): the window opens its days and, per topic, reads
# the granules of the window.
TOPIC_TOTALS = """
SELECT topic, count() AS events
FROM meshtap.events
WHERE published_at >= %(since_at)s AND published_at <= %(until_at)s
  AND published_ns >= %(since_ns)s AND published_ns < %(until_ns)s
GROUP BY topic
ORDER BY events DESC, topic
LIMIT %(limit)s
"""

# As TOPIC_TOTALS, by producer as well.
PRODUCER_TOPICS = """
SELECT producer, topic, count() AS events
FROM meshtap.events
WHERE published_at >= %(since_at)s AND published_at <= %(until_at)s
  AND published_ns >= %(since_ns)s AND published_ns < %(until_ns)s
GROUP BY producer, topic
ORDER BY events DESC, producer, topic
LIMIT %(limit)s
"""

# deliveries ORDER BY (event_id, ...) is no help by time: the window's daily partitions
# (attempted_at) are read whole -- the audit shape m0001 describes for deliveries.
TOPIC_GROUPS = """
SELECT topic, group_name,
       count() AS attempts,
       countIf(outcome = 'acked') AS acked,
       countIf(outcome != 'acked') AS failed,
       countIf(outcome = 'dead_lettered') AS dead_letters
FROM meshtap.deliveries
WHERE attempted_at >= %(since_at)s AND attempted_at <= %(until_at)s
  AND attempted_ns >= %(since_ns)s AND attempted_ns < %(until_ns)s
GROUP BY topic, group_name
ORDER BY attempts DESC, topic, group_name
LIMIT %(limit)s
"""

# --- helpers ----------------------------------------------------------------------------------


def _at(ns: int) -> datetime:
    """The ``DateTime`` partition-column value (whole seconds) of a nanosecond time."""
    return datetime.fromtimestamp(max(ns, 0) // _NS, UTC)


def _window_params(since_ns: int, until_ns: int) -> dict[str, Any]:
    """``[since, until)`` on a ns column plus the matching inclusive bounds of its seconds
    column (which is what prunes partitions)."""
    return {
        "since_ns": since_ns,
        "until_ns": until_ns,
        "since_at": _at(since_ns),
        "until_at": _at(until_ns - 1),
    }


def _checked_trace_id(trace_id: object) -> str:
    if isinstance(trace_id, str):
        text = trace_id.strip().lower()
        if _TRACE_ID.fullmatch(text) and text != "0" * 32:
            return text
    shown = repr(trace_id) if len(repr(trace_id)) <= 80 else repr(trace_id)[:80] + "..."
    raise InvalidQuery(
        f"invalid trace id {shown}: a trace id is 32 hexadecimal digits, not all zero (W3C "
        f"trace context), e.g. '4bf92f3577b34da6a3ce929d0e0e4736'"
    )


def _pairs(keys: Sequence[str], values: Sequence[str]) -> tuple[tuple[str, str], ...]:
    return tuple(zip(keys, values, strict=False))


def _json_pairs(text: str) -> tuple[tuple[str, str], ...]:
    """Span event / link attributes, stored as one JSON object of strings each."""
    try:
        parsed = json.loads(text) if text else {}
    except ValueError:
        return (("", text),)  # kept visible rather than dropped
    if not isinstance(parsed, dict):
        return (("", text),)
    return tuple((str(k), v if isinstance(v, str) else json.dumps(v)) for k, v in parsed.items())


def _span(row: Sequence[Any]) -> TraceSpan:
    (
        trace_id,
        span_id,
        parent_span_id,
        name,
        kind,
        service_name,
        scope_name,
        start_ns,
        end_ns,
        duration_ns,
        status_code,
        status_message,
        attr_keys,
        attr_values,
        resource_keys,
        resource_values,
        event_names,
        event_times_ns,
        event_attrs,
        link_trace_ids,
        link_span_ids,
        link_attrs,
    ) = row
    events = tuple(
        SpanEvent(n, t, _json_pairs(a))
        for n, t, a in zip(event_names, event_times_ns, event_attrs, strict=False)
    )
    links = tuple(
        SpanLink(t, s, _json_pairs(a))
        for t, s, a in zip(link_trace_ids, link_span_ids, link_attrs, strict=False)
    )
    return TraceSpan(
        trace_id=trace_id,
        span_id=span_id,
        parent_span_id=parent_span_id,
        name=name,
        kind=kind,
        service_name=service_name,
        scope_name=scope_name,
        start_ns=start_ns,
        end_ns=end_ns,
        duration_ns=duration_ns,
        status_code=status_code,
        status_message=status_message,
        attributes=_pairs(attr_keys, attr_values),
        resource=_pairs(resource_keys, resource_values),
        events=events,
        links=links,
    )


def _event(row: Sequence[Any]) -> EventRow:
    (
        event_id,
        topic,
        source,
        type_,
        subject,
        spec_version,
        data_content_type,
        data_schema,
        time_ns,
        published_ns,
        partition_key,
        ext_keys,
        ext_values,
        data,
        producer,
        protocol,
        instance,
        store_offset,
        trace_id,
        span_id,
        replay_id,
    ) = row
    return EventRow(
        event_id=event_id,
        topic=topic,
        source=source,
        type=type_,
        subject=subject,
        spec_version=spec_version,
        data_content_type=data_content_type,
        data_schema=data_schema,
        time_ns=time_ns,
        published_ns=published_ns,
        partition_key=partition_key,
        extensions=_pairs(ext_keys, ext_values),
        data=data,
        producer=producer,
        protocol=protocol,
        instance=instance,
        store_offset=store_offset,
        trace_id=trace_id,
        span_id=span_id,
        replay_id=replay_id,
    )


def _delivery(row: Sequence[Any]) -> DeliveryAttempt:
    (
        event_id,
        topic,
        group,
        subscription_id,
        subscriber,
        attempt,
        outcome,
        status_code,
        error,
        duration_ns,
        latency_ns,
        attempted_ns,
        instance,
        trace_id,
        span_id,
    ) = row
    return DeliveryAttempt(
        event_id=event_id,
        topic=topic,
        group=group,
        subscription_id=subscription_id,
        subscriber=subscriber,
        attempt=attempt,
        outcome=outcome,
        status_code=status_code,
        error=error,
        duration_ns=duration_ns,
        latency_ns=latency_ns,
        attempted_ns=attempted_ns,
        instance=instance,
        trace_id=trace_id,
        span_id=span_id,
    )


# --- trace_by_id ------------------------------------------------------------------------------


def trace_by_id(client: ClickHouse, trace_id: str) -> TraceView | None:
    """The whole trace ``trace_id`` (32 hex digits), or ``None`` if nothing of it is recorded.

    Three lookups, none of them a scan: spans from ``spans_by_trace``; the events, by the
    primary keys ``events_by_trace`` holds for the trace; their delivery attempts by event id.
    Raises :class:`InvalidQuery` for a malformed id (before anything is sent).
    """
    trace_id = _checked_trace_id(trace_id)
    params = {"trace_id": trace_id, "limit": MAX_TRACE_SPANS + 1}
    span_rows = client.execute(TRACE_SPANS, params, purpose=Purpose.QUERY)
    truncated = len(span_rows) > MAX_TRACE_SPANS
    spans = tuple(_span(row) for row in span_rows[:MAX_TRACE_SPANS])

    params = {"trace_id": trace_id, "limit": MAX_TRACE_EVENTS + 1}
    rows = client.execute(TRACE_EVENTS, params, purpose=Purpose.QUERY, bytes_columns={"data"})
    truncated |= len(rows) > MAX_TRACE_EVENTS
    events = [_event(row) for row in rows[:MAX_TRACE_EVENTS]]
    deliveries, more = _deliveries_of(client, events)
    truncated |= more
    if not spans and not events:
        return None
    return TraceView(
        trace_id=trace_id,
        spans=spans,
        events=tuple(
            TraceEvent(e, tuple(deliveries.get((e.event_id, e.topic), ()))) for e in events
        ),
        truncated=truncated,
    )


def _deliveries_of(
    client: ClickHouse, events: Sequence[EventRow]
) -> tuple[dict[tuple[str, str], list[DeliveryAttempt]], bool]:
    if not events:
        return {}, False
    params = {
        "event_ids": tuple(sorted({e.event_id for e in events})),
        "event_topics": tuple(sorted({(e.event_id, e.topic) for e in events})),
        "since_at": _at(min(e.published_ns for e in events) - _DELIVERY_SKEW_NS),
        "limit": MAX_TRACE_DELIVERIES + 1,
    }
    rows = client.execute(DELIVERIES_OF_EVENTS, params, purpose=Purpose.QUERY)
    by_event: dict[tuple[str, str], list[DeliveryAttempt]] = {}
    for row in rows[:MAX_TRACE_DELIVERIES]:
        attempt = _delivery(row)
        by_event.setdefault((attempt.event_id, attempt.topic), []).append(attempt)
    for attempts in by_event.values():
        attempts.sort(key=lambda a: (a.attempted_ns, a.attempt, a.group))
    return by_event, len(rows) > MAX_TRACE_DELIVERIES


# --- search_traces ----------------------------------------------------------------------------


def search_traces(
    client: ClickHouse, search: TraceSearch, *, now: datetime | None = None
) -> Page[TraceSummary]:
    """One page of traces matching ``search`` (see :class:`TraceSearch`), newest first.

    Three bounded queries: the page's trace ids from ``spans`` (time range and filters, at most
    ``limit + 1`` rows), then those traces' summaries and topics by trace id. ``now`` fixes
    the default time range's end (default: the current time).
    """
    if search.cursor is not None:
        since_ns, until_ns, after_ns, after_trace_id = _decode_cursor(search.cursor)
        for name, given, kept in (
            ("since", search.since, since_ns),
            ("until", search.until, until_ns),
        ):
            if given is not None and to_ns(given, name=name) != kept:
                raise InvalidQuery(
                    f"the cursor belongs to a search with another time range ({name} "
                    f"differs); start from the first page (no cursor) after changing it"
                )
        first_page = False
    else:
        since_ns, until_ns = search.window_ns(now or datetime.now(UTC))
        after_ns, after_trace_id, first_page = 0, "", True
    empty: Page[TraceSummary] = Page((), None, since_ns, until_ns)

    topics: tuple[str, ...] = ("",)
    if search.topic is not None:
        topics = _resolve_topics(client, (search.topic,), since_ns, until_ns)
        if not topics:
            return empty
    event_filter = search.topic is not None or search.event_type is not None
    params: dict[str, Any] = {
        **_window_params(since_ns, until_ns),
        "any_service": search.service is None,
        "service": search.service or "",
        "min_duration_ns": search.min_duration_ns,
        "max_duration_ns": search.max_duration_ns,
        "any_event": not event_filter,
        "event_filter": event_filter,
        "any_topic": search.topic is None,
        "topics": topics,
        "any_type": search.event_type is None,
        "event_type": search.event_type or "",
        "any_status": search.status is None,
        "want_error": search.status == "error",
        "first_page": first_page,
        "after_ns": after_ns,
        "after_trace_id": after_trace_id,
        "limit": search.limit + 1,
    }
    if search.attributes:
        params["attributes"] = [f"{k}\0{v}" for k, v in search.attributes]
        params["attribute_values"] = sorted({v for _, v in search.attributes})
    if search.resource_attributes:
        params["resource_attributes"] = [f"{k}\0{v}" for k, v in search.resource_attributes]
        params["resource_values"] = sorted({v for _, v in search.resource_attributes})
    query = _SEARCH_TRACES_BY_FILTERS[bool(search.attributes), bool(search.resource_attributes)]
    found = client.execute(query, params, purpose=Purpose.QUERY)
    page = found[: search.limit]
    if not page:
        return empty
    summaries = _summaries(client, [str(row[0]) for row in page])
    next_cursor = None
    if len(found) > search.limit:
        last_trace, last_ns = page[-1]
        next_cursor = _encode_cursor(since_ns, until_ns, int(last_ns), str(last_trace))
    return Page(
        tuple(summaries[t] for t, _ in page if t in summaries), next_cursor, since_ns, until_ns
    )


def _summaries(client: ClickHouse, trace_ids: Sequence[str]) -> dict[str, TraceSummary]:
    params = {"trace_ids": tuple(trace_ids)}
    topics = {
        str(t): tuple(sorted(names))
        for t, names in client.execute(TRACE_TOPICS, params, purpose=Purpose.QUERY)
    }
    summaries = {}
    for row in client.execute(TRACE_SUMMARIES, params, purpose=Purpose.QUERY):
        (
            trace_id,
            start_ns,
            end_ns,
            span_count,
            error_count,
            services,
            roots,
            root_service,
            root_name,
            first_service,
            first_name,
        ) = row
        summaries[trace_id] = TraceSummary(
            trace_id=trace_id,
            root_service=root_service if roots else first_service,
            root_name=root_name if roots else first_name,
            start_ns=start_ns,
            duration_ns=max(0, end_ns - start_ns),
            span_count=span_count,
            error_count=error_count,
            services=tuple(sorted(services)),
            topics=topics.get(trace_id, ()),
        )
    return summaries


_CURSOR_VERSION: Final = "t1"


def _encode_cursor(since_ns: int, until_ns: int, after_ns: int, after_trace_id: str) -> str:
    raw = f"{_CURSOR_VERSION}:{since_ns}:{until_ns}:{after_ns}:{after_trace_id}"
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[int, int, int, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        version, since, until, after, trace_id = raw.split(":")
        if version != _CURSOR_VERSION or not _TRACE_ID.fullmatch(trace_id):
            raise ValueError(raw)
        since_ns, until_ns, after_ns = int(since), int(until), int(after)
        if not 0 <= since_ns < until_ns or after_ns < 0:
            raise ValueError(raw)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        shown = cursor if len(cursor) <= 60 else cursor[:60] + "..."
        raise InvalidQuery(
            f"cursor {shown!r} is not one a trace search handed out (next_cursor); start "
            f"from the first page (no cursor)"
        ) from None
    return since_ns, until_ns, after_ns, trace_id


# --- events_in_window -------------------------------------------------------------------------


def events_in_window(
    client: ClickHouse, window: EventWindow, *, batch_size: int = DEFAULT_BATCH_SIZE
) -> Iterator[EventRow]:
    """Every recorded event of ``window``, in publish order, data byte-exact.

    Streams: each query reads one time slice of the matching topics and returns at most
    ``batch_size`` events; the next continues after the last one's key ``(published_ns,
    event_id, topic)`` -- keyset pagination, never ``OFFSET``. The slice adapts to the event
    rate so each query reads about a batch. Patterns are resolved to the topics recorded in the
    window when iteration starts. An event recorded twice comes once.

    Raises :class:`InvalidQuery` for a bad ``batch_size`` at once, not at the first ``next``.
    """
    if (
        not isinstance(batch_size, int)
        or isinstance(batch_size, bool)
        or not 1 <= batch_size <= MAX_BATCH_SIZE
    ):
        raise InvalidQuery(f"batch_size {batch_size!r} is not from 1 to {MAX_BATCH_SIZE}")
    if not isinstance(window, EventWindow):
        raise InvalidQuery(f"expected an EventWindow, got {type(window).__name__}")
    return _stream_events(client, window, batch_size)


def _stream_events(client: ClickHouse, window: EventWindow, batch_size: int) -> Iterator[EventRow]:
    since_ns, until_ns = window.since_ns, window.until_ns
    topics = _resolve_topics(client, window.topics, since_ns, until_ns)
    if not topics:
        return
    query = EVENTS_IN_SLICE
    extra: dict[str, Any] = {}
    if window.attributes:
        query = EVENTS_IN_SLICE_WITH_ATTRIBUTES
        extra["attributes"] = [f"{k}\0{v}" for k, v in window.attributes]
    after: tuple[int, str, str] = (0, "", "")
    lo = since_ns
    width = _INITIAL_SLICE_NS
    while lo < until_ns:
        hi = min(until_ns, lo + width)
        params = {
            "topics": topics,
            "lo_ns": lo,
            "hi_ns": hi,
            "lo_at": _at(lo),
            "hi_at": _at(hi - 1),
            "after_ns": after[0],
            "after_id": after[1],
            "after_topic": after[2],
            "limit": batch_size,
            **extra,
        }
        rows = client.execute(query, params, purpose=Purpose.QUERY, bytes_columns={"data"})
        for row in rows:
            yield _event(row)
        if rows:
            last = _event(rows[-1])
            after = (last.published_ns, last.event_id, last.topic)
        if len(rows) >= batch_size:
            # The slice holds more: continue inside it, sized to what one batch just covered.
            width = max(_MIN_SLICE_NS, after[0] - lo + 1)
            lo = after[0]
        else:
            # The slice is done: move on, wider in proportion to how little it held.
            growth = batch_size / len(rows) if rows else _MAX_SLICE_GROWTH
            width = max(_MIN_SLICE_NS, int(width * min(max(growth, 1.0), _MAX_SLICE_GROWTH)))
            lo = hi


def _topic_range(pattern: str) -> tuple[str, str]:
    """A key range ``[lo, hi)`` holding every topic ``pattern`` can match: its literal
    leading segments as a prefix (``orders`` and ``orders.*`` both live in ``[orders,
    orders/)``, as ``/`` follows ``.``), everything for a pattern that starts with a wildcard."""
    prefix = []
    for token in pattern.split("."):
        if token in ("*", "#"):
            break
        prefix.append(token)
    if not prefix:
        return "", _AFTER_ALL_TOPICS
    text = ".".join(prefix)
    return text, text + "/"


def _resolve_topics(
    client: ClickHouse, patterns: Sequence[str], since_ns: int, until_ns: int
) -> tuple[str, ...]:
    """The topics ``patterns`` stand for in ``[since, until)``: literal ones as they are,
    wildcard ones matched (with the runtime's own matcher) against the topics recorded there."""
    found: set[str] = set()
    for pattern in patterns:
        compiled = compile_pattern(pattern)
        if compiled.is_literal:
            found.add(pattern)
            continue
        lo_topic, hi_topic = _topic_range(pattern)
        params = {
            **_window_params(since_ns, until_ns),
            "lo_topic": lo_topic,
            "hi_topic": hi_topic,
            "limit": MAX_TOPICS + 1,
        }
        rows = client.execute(TOPICS_IN_RANGE, params, purpose=Purpose.QUERY)
        if len(rows) > MAX_TOPICS:
            raise InvalidQuery(
                f"topic pattern {pattern!r} may match more than {MAX_TOPICS} topics in the "
                f"time range; use a narrower pattern or a shorter range"
            )
        found.update(str(t) for (t,) in rows if compiled.matches(str(t)))
    if len(found) > MAX_TOPICS:
        raise InvalidQuery(
            f"the topic patterns {list(patterns)} match more than {MAX_TOPICS} topics in the "
            f"time range; use narrower patterns or a shorter range"
        )
    return tuple(sorted(found))


# --- events by id / by trace / replayed --------------------------------------------------------

MAX_LOOKUP_IDS: Final = 100_000
"""Ids one :func:`events_by_id` / :func:`events_of_traces` call takes."""


def _ids(values: Sequence[str], what: str, check: Any = None) -> tuple[str, ...]:
    if isinstance(values, str) or not all(isinstance(v, str) and v for v in values):
        raise InvalidQuery(f"{what} must be a list of non-empty strings, got {values!r:.80}")
    found = tuple(sorted(set(values if check is None else (check(v) for v in values))))
    if not found or len(found) > MAX_LOOKUP_IDS:
        raise InvalidQuery(
            f"{what}: {len(found)} given; pass from 1 to {MAX_LOOKUP_IDS} (split larger lists)"
        )
    return found


def events_by_id(
    client: ClickHouse, window: EventWindow, event_ids: Sequence[str]
) -> list[EventRow]:
    """The recorded events of ``window`` whose CloudEvent id is one of ``event_ids``, in
    publish order (an id on two topics comes once per topic). ``window.attributes`` also
    apply."""
    ids = _ids(event_ids, "event ids")
    topics = _resolve_topics(client, window.topics, window.since_ns, window.until_ns)
    if not topics:
        return []
    params = {
        **_window_params(window.since_ns, window.until_ns),
        "event_ids": ids,
        "topics": topics,
        "limit": MAX_BATCH_SIZE,
    }
    rows = client.execute(EVENTS_BY_ID, params, purpose=Purpose.QUERY, bytes_columns={"data"})
    return [e for e in map(_event, rows) if _has_attributes(e, window.attributes)]


def events_of_traces(
    client: ClickHouse, window: EventWindow, trace_ids: Sequence[str]
) -> list[EventRow]:
    """The recorded events of ``window`` carried by the traces ``trace_ids``, in publish
    order, by the trace-id lookup table (no scan). ``window.attributes`` also apply."""
    ids = _ids(trace_ids, "trace ids", _checked_trace_id)
    topics = _resolve_topics(client, window.topics, window.since_ns, window.until_ns)
    if not topics:
        return []
    params = {
        **_window_params(window.since_ns, window.until_ns),
        "trace_ids": ids,
        "topics": topics,
        "limit": MAX_BATCH_SIZE,
    }
    rows = client.execute(EVENTS_OF_TRACES, params, purpose=Purpose.QUERY, bytes_columns={"data"})
    return [e for e in map(_event, rows) if _has_attributes(e, window.attributes)]


def count_events_in_window(client: ClickHouse, window: EventWindow) -> int:
    """How many events :func:`events_in_window` yields for ``window`` -- at most: one
    aggregate query, no rows moved; a row recorded twice (a replayed spool batch) counts
    twice. Replay uses it as a cheap bound before streaming a window."""
    if not isinstance(window, EventWindow):
        raise InvalidQuery(f"expected an EventWindow, got {type(window).__name__}")
    topics = _resolve_topics(client, window.topics, window.since_ns, window.until_ns)
    if not topics:
        return 0
    params: dict[str, Any] = {**_window_params(window.since_ns, window.until_ns), "topics": topics}
    query = COUNT_EVENTS_IN_WINDOW
    if window.attributes:
        query = COUNT_EVENTS_IN_WINDOW_WITH_ATTRIBUTES
        params["attributes"] = [f"{k}\0{v}" for k, v in window.attributes]
    return int(client.execute(query, params, purpose=Purpose.QUERY)[0][0])


def _has_attributes(event: EventRow, wanted: Sequence[tuple[str, str]]) -> bool:
    if not wanted:
        return True
    have = event.attributes()
    return all(have.get(k) == v for k, v in wanted)


def replayed_event_ids(
    client: ClickHouse, replay_id: str, topics: Sequence[str], since_ns: int
) -> set[str]:
    """Ids of the events recorded with ``replay_id`` on ``topics`` since ``since_ns``: what a
    replay already got into a mesh whose capture writes here (its resume skips them)."""
    if not isinstance(replay_id, str) or not replay_id:
        raise InvalidQuery(f"replay id {replay_id!r} must be a non-empty string")
    if not topics:
        return set()
    params = {
        "topics": tuple(sorted(set(topics))),
        "since_ns": max(0, since_ns),
        "since_at": _at(since_ns),
        "replay_id": replay_id,
        "limit": 10 * MAX_LOOKUP_IDS,
    }
    return {str(r[0]) for r in client.execute(REPLAYED_EVENT_IDS, params, purpose=Purpose.QUERY)}


def events_of_replay(
    client: ClickHouse, replay_id: str, topics: Sequence[str], since_ns: int
) -> list[EventRow]:
    """The events recorded with ``replay_id`` on ``topics`` since ``since_ns``, in publish
    order (at most :data:`MAX_BATCH_SIZE`): a replay's events as the target mesh took them."""
    if not isinstance(replay_id, str) or not replay_id:
        raise InvalidQuery(f"replay id {replay_id!r} must be a non-empty string")
    if not topics:
        return []
    params = {
        "topics": tuple(sorted(set(topics))),
        "since_ns": max(0, since_ns),
        "since_at": _at(since_ns),
        "replay_id": replay_id,
        "limit": MAX_BATCH_SIZE,
    }
    rows = client.execute(REPLAYED_EVENTS, params, purpose=Purpose.QUERY, bytes_columns={"data"})
    return [_event(row) for row in rows]


# --- delivery_history -------------------------------------------------------------------------


def delivery_history(
    client: ClickHouse, event_id: str, *, topic: str | None = None
) -> list[DeliveryAttempt]:
    """Every delivery attempt of event ``event_id`` (on ``topic``, if given: ids are unique
    per source, so two topics may share one), oldest first, at most
    :data:`MAX_DELIVERY_ATTEMPTS`. An unknown event has none: ``[]``."""
    if not isinstance(event_id, str) or not event_id or len(event_id) > 1000:
        raise InvalidQuery(
            f"event id {event_id!r} must be a non-empty string of at most 1000 characters "
            f"(the CloudEvent's id)"
        )
    if topic is not None and not isinstance(topic, str):
        raise InvalidQuery(f"topic {topic!r} must be a string or None")
    params = {
        "event_id": event_id,
        "any_topic": not topic,
        "topic": topic or "",
        "limit": MAX_DELIVERY_ATTEMPTS,
    }
    return [
        _delivery(row) for row in client.execute(DELIVERY_HISTORY, params, purpose=Purpose.QUERY)
    ]


# --- topic_map --------------------------------------------------------------------------------


def topic_map(client: ClickHouse, since: datetime, until: datetime) -> TopicMap:
    """Producers -> topics -> consumer groups over ``[since, until)``, with rates (per second
    of the range), failed attempts and dead letters. Dead-letter topics (``_dlq.<group>``)
    appear as topics of their own."""
    since_ns, until_ns = time_range_ns(since, until, "the topic map")
    seconds = (until_ns - since_ns) / _NS
    params = {**_window_params(since_ns, until_ns), "limit": MAX_MAP_EDGES + 1}
    totals = client.execute(TOPIC_TOTALS, params, purpose=Purpose.QUERY)
    edges = client.execute(PRODUCER_TOPICS, params, purpose=Purpose.QUERY)
    groups = client.execute(TOPIC_GROUPS, params, purpose=Purpose.QUERY)
    truncated = any(len(rows) > MAX_MAP_EDGES for rows in (totals, edges, groups))
    totals, edges, groups = totals[:MAX_MAP_EDGES], edges[:MAX_MAP_EDGES], groups[:MAX_MAP_EDGES]

    producers = tuple(ProducerTopic(str(p), str(t), int(n), int(n) / seconds) for p, t, n in edges)
    topic_groups = tuple(
        TopicGroup(str(t), str(g), int(a), int(ok), int(bad), int(dead), int(ok) / seconds)
        for t, g, a, ok, bad, dead in groups
    )
    counts = {str(t): int(n) for t, n in totals}
    producers_of: dict[str, set[str]] = {}
    for edge in producers:
        producers_of.setdefault(edge.topic, set()).add(edge.producer)
    groups_of: dict[str, set[str]] = {}
    for group in topic_groups:
        groups_of.setdefault(group.topic, set()).add(group.group)
    stats = tuple(
        TopicStats(
            topic=name,
            events=counts.get(name, 0),
            rate_per_s=counts.get(name, 0) / seconds,
            producers=tuple(sorted(producers_of.get(name, ()))),
            groups=tuple(sorted(groups_of.get(name, ()))),
        )
        for name in sorted(set(counts) | set(groups_of))
    )
    return TopicMap(since_ns, until_ns, stats, producers, topic_groups, truncated)
