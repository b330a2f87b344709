"""Read-side queries the audits run: delivery outcomes per (event, group), latency quantiles,
dead letters by reason, trace integrity.

Same rules as ``_queries`` (CONVENTIONS 4): module constants with ``%(name)s`` parameters,
full table names from the schema, a comment naming the ``ORDER BY``/``PARTITION BY`` each one
relies on, every row-returning statement bounded by ``LIMIT``, and nothing 18.16 lacks (no
window functions, joins written as ``IN`` subqueries). The functions return frozen dataclasses
(``_read_models``) and hold no audit logic: what counts as a failure is ``auditing``'s call.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, Final

from tracing._queries import _resolve_topics, _window_params
from tracing._read_models import (
    CutDelivery,
    DeadLetterGroup,
    GroupLatency,
    GroupOutcome,
    IntegrityReport,
    OrphanSpan,
    PublishedEvent,
    time_range_ns,
)
from tracing.clickhouse import ClickHouse, Purpose

__all__ = [
    "MAX_AUDIT_ROWS",
    "dead_letters_by_reason",
    "delivery_outcomes",
    "group_latencies",
    "published_events",
    "topic_groups",
    "topics_in_window",
    "trace_integrity",
]

MAX_AUDIT_ROWS: Final = 100_000
"""Rows one audit query returns; more marks the result ``truncated``."""
_SAMPLE: Final = 20
"""Example ids kept per finding group."""
_NS: Final = 1_000_000_000
# Parents and producers are looked for this long before the window (a consumer span of a
# long-lived trace may start well after its parent).
_PARENT_SLACK_NS: Final = 3600 * _NS

# deliveries PARTITION BY toYYYYMMDD(attempted_at): the window opens only its days and scans
# them (the audit shape m0001 names for deliveries).
TOPIC_GROUPS = """
SELECT DISTINCT topic, group_name
FROM meshtap.deliveries
WHERE attempted_at >= %(since_at)s AND attempted_at <= %(until_at)s
  AND attempted_ns >= %(since_ns)s AND attempted_ns < %(until_ns)s
ORDER BY topic, group_name
LIMIT %(limit)s
"""

# events ORDER BY (topic, published_ns, event_id): `topic IN (...)` and the window read only
# those topics' granules of the window. Originals only (replays are audited by their own kind).
PUBLISHED_EVENTS = """
SELECT event_id, topic, type, published_ns, trace_id
FROM meshtap.events
WHERE topic IN %(topics)s
  AND published_at >= %(since_at)s AND published_at <= %(until_at)s
  AND published_ns >= %(since_ns)s AND published_ns < %(until_ns)s
  AND replay_id = ''
ORDER BY published_ns, event_id, topic
LIMIT 1 BY published_ns, event_id, topic
LIMIT %(limit)s
"""

# deliveries PARTITION BY toYYYYMMDD(attempted_at): the window's days, scanned; one row per
# (event, group) with its first ack and its latest outcome.
DELIVERY_OUTCOMES = """
SELECT event_id, topic, group_name,
       countIf(outcome = 'acked') > 0 AS acked,
       minIf(attempted_ns, outcome = 'acked') AS first_ack_ns,
       count() AS attempts,
       argMax(outcome, attempted_ns) AS last_outcome,
       argMax(error, attempted_ns) AS last_error
FROM meshtap.deliveries
WHERE topic IN %(topics)s
  AND attempted_at >= %(since_at)s AND attempted_at <= %(until_at)s
  AND attempted_ns >= %(since_ns)s AND attempted_ns < %(until_ns)s
GROUP BY event_id, topic, group_name
ORDER BY event_id, topic, group_name
LIMIT %(limit)s
"""

# deliveries PARTITION BY toYYYYMMDD(attempted_at): the window's days, scanned. publish -> ack
# latency of the acks, per topic and group.
GROUP_LATENCIES = """
SELECT topic, group_name, count() AS acks,
       quantilesExact(0.5, 0.95, 0.99)(latency_ns) AS q
FROM meshtap.deliveries
WHERE attempted_at >= %(since_at)s AND attempted_at <= %(until_at)s
  AND attempted_ns >= %(since_ns)s AND attempted_ns < %(until_ns)s
  AND outcome = 'acked'
GROUP BY topic, group_name
ORDER BY topic, group_name
LIMIT %(limit)s
"""

# deliveries PARTITION BY toYYYYMMDD(attempted_at): the window's days, scanned.
DEAD_LETTERS_BY_REASON = f"""
SELECT topic, group_name, error, count() AS events, groupArray({_SAMPLE})(event_id) AS sample
FROM meshtap.deliveries
WHERE attempted_at >= %(since_at)s AND attempted_at <= %(until_at)s
  AND attempted_ns >= %(since_ns)s AND attempted_ns < %(until_ns)s
  AND outcome = 'dead_lettered'
GROUP BY topic, group_name, error
ORDER BY events DESC, topic, group_name, error
LIMIT %(limit)s
"""

# events PARTITION BY toYYYYMMDD(published_at): the window's days, scanned for an empty
# trace_id (no key serves it; an audit reads a window once).
UNTRACED_EVENTS = f"""
SELECT count() AS events, groupArray({_SAMPLE})(concat(topic, '/', event_id)) AS sample
FROM meshtap.events
WHERE published_at >= %(since_at)s AND published_at <= %(until_at)s
  AND published_ns >= %(since_ns)s AND published_ns < %(until_ns)s
  AND trace_id = '' AND replay_id = ''
LIMIT 1
"""

# spans PARTITION BY toYYYYMMDD(start_at): the window's days (and the slack before it for the
# parents), scanned. A span whose parent never reached the store.
ORPHAN_SPANS = """
SELECT trace_id, span_id, parent_span_id, name, service_name
FROM meshtap.spans
WHERE start_at >= %(since_at)s AND start_at <= %(until_at)s
  AND start_ns >= %(since_ns)s AND start_ns < %(until_ns)s
  AND parent_span_id != ''
  AND (trace_id, parent_span_id) NOT IN (
        SELECT trace_id, span_id
        FROM meshtap.spans
        WHERE start_at >= %(parents_since_at)s AND start_at <= %(until_at)s)
ORDER BY trace_id, span_id
LIMIT 1 BY trace_id, span_id
LIMIT %(limit)s
"""

# deliveries PARTITION BY toYYYYMMDD(attempted_at) and events PARTITION BY published_at: the
# window's days. A delivery of a traced event that does not continue the event's trace: the
# trace is cut between producer and consumer.
CUT_DELIVERIES = """
SELECT event_id, topic, group_name, trace_id
FROM meshtap.deliveries
WHERE attempted_at >= %(since_at)s AND attempted_at <= %(until_at)s
  AND attempted_ns >= %(since_ns)s AND attempted_ns < %(until_ns)s
  AND (event_id, topic) IN (
        SELECT event_id, topic
        FROM meshtap.events
        WHERE published_at >= %(parents_since_at)s AND published_at <= %(until_at)s
          AND trace_id != '')
  AND (event_id, topic, trace_id) NOT IN (
        SELECT event_id, topic, trace_id
        FROM meshtap.events
        WHERE published_at >= %(parents_since_at)s AND published_at <= %(until_at)s)
ORDER BY event_id, topic, group_name
LIMIT 1 BY event_id, topic, group_name
LIMIT %(limit)s
"""


def _params(since: datetime, until: datetime, what: str) -> dict[str, Any]:
    since_ns, until_ns = time_range_ns(since, until, what)
    return {**_window_params(since_ns, until_ns), "limit": MAX_AUDIT_ROWS}


def topics_in_window(
    client: ClickHouse, patterns: Sequence[str], since: datetime, until: datetime
) -> list[str]:
    """The topics ``patterns`` (names or subscription patterns) stand for among the events
    published in ``[since, until)``, sorted."""
    since_ns, until_ns = time_range_ns(since, until, "the topic window")
    return list(_resolve_topics(client, patterns, since_ns, until_ns))


def topic_groups(client: ClickHouse, since: datetime, until: datetime) -> list[tuple[str, str]]:
    """The (topic, consumer group) pairs that had delivery attempts in ``[since, until)``."""
    rows = client.execute(
        TOPIC_GROUPS, _params(since, until, "the delivery window"), purpose=Purpose.QUERY
    )
    return [(str(topic), str(group)) for topic, group in rows]


def published_events(
    client: ClickHouse, topics: Sequence[str], since: datetime, until: datetime
) -> list[PublishedEvent]:
    """Original events published to ``topics`` (names, not patterns) in ``[since, until)``, in
    publish order, at most :data:`MAX_AUDIT_ROWS`."""
    if not topics:
        return []
    params = {**_params(since, until, "the publish window"), "topics": tuple(topics)}
    rows = client.execute(PUBLISHED_EVENTS, params, purpose=Purpose.QUERY)
    return [PublishedEvent(str(i), str(t), str(ty), int(p), str(tr)) for i, t, ty, p, tr in rows]


def delivery_outcomes(
    client: ClickHouse, topics: Sequence[str], since: datetime, until: datetime
) -> list[GroupOutcome]:
    """Per (event, topic, group) with attempts in ``[since, until)`` on ``topics``: whether and
    when it was first acked, how many attempts, the latest outcome and error."""
    if not topics:
        return []
    params = {**_params(since, until, "the delivery window"), "topics": tuple(topics)}
    rows = client.execute(DELIVERY_OUTCOMES, params, purpose=Purpose.QUERY)
    return [
        GroupOutcome(str(e), str(t), str(g), bool(a), int(f) if a else 0, int(n), str(o), str(r))
        for e, t, g, a, f, n, o, r in rows
    ]


def group_latencies(client: ClickHouse, since: datetime, until: datetime) -> list[GroupLatency]:
    """publish -> ack latency quantiles (p50, p95, p99, exact) per topic and group, of the acks
    in ``[since, until)``."""
    rows = client.execute(
        GROUP_LATENCIES, _params(since, until, "the latency window"), purpose=Purpose.QUERY
    )
    return [
        GroupLatency(str(t), str(g), int(n), int(q[0]), int(q[1]), int(q[2])) for t, g, n, q in rows
    ]


def dead_letters_by_reason(
    client: ClickHouse, since: datetime, until: datetime
) -> list[DeadLetterGroup]:
    """Dead-lettered deliveries in ``[since, until)`` by topic, group and reason, most first,
    with up to 20 example event ids each."""
    rows = client.execute(
        DEAD_LETTERS_BY_REASON,
        _params(since, until, "the dead-letter window"),
        purpose=Purpose.QUERY,
    )
    return [
        DeadLetterGroup(str(t), str(g), str(r), int(n), tuple(str(s) for s in sample))
        for t, g, r, n, sample in rows
    ]


def trace_integrity(client: ClickHouse, since: datetime, until: datetime) -> IntegrityReport:
    """What breaks traces in ``[since, until)``: original events published without trace
    context, spans whose parent is not in the store, deliveries that do not continue their
    event's trace."""
    params = _params(since, until, "the trace window")
    params["parents_since_at"] = _window_params(
        max(params["since_ns"] - _PARENT_SLACK_NS, 0), params["until_ns"]
    )["since_at"]
    untraced_params = {k: params[k] for k in ("since_ns", "until_ns", "since_at", "until_at")}
    [(untraced, sample)] = client.execute(UNTRACED_EVENTS, untraced_params, purpose=Purpose.QUERY)
    orphans = client.execute(ORPHAN_SPANS, params, purpose=Purpose.QUERY)
    cut = client.execute(CUT_DELIVERIES, params, purpose=Purpose.QUERY)
    return IntegrityReport(
        untraced_events=int(untraced),
        untraced_sample=tuple(str(s) for s in sample),
        orphan_spans=tuple(OrphanSpan(*(str(v) for v in row)) for row in orphans),
        cut_deliveries=tuple(CutDelivery(*(str(v) for v in row)) for row in cut),
    )
