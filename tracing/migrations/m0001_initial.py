"""The capture store: events, delivery attempts, spans, and trace-id lookup tables.

Runs unchanged on ClickHouse 18.16 (Debian's clickhouse-server, the oldest we support) and on
chDB (current ClickHouse), hence no DateTime64, Map, LowCardinality, TTL, codecs or Nullable:
timestamps are UInt64 nanoseconds plus a ``DateTime('UTC')`` column that only partitions (UTC,
so a day is the same day on every server whatever its time zone), attributes are parallel
``Array(String)`` key/value columns, and retention drops whole daily partitions
(``drop_partitions_older_than``). Free-form categorical columns (``outcome``, ``kind``,
``status_code``) are ``String`` rather than ``Enum8``: a value a new runtime version adds must
never make a whole capture batch fail.

Trace lookup by id never scans: materialized views copy every span into ``spans_by_trace`` and
every traced event's key into ``events_by_trace``, both ordered by trace id with small granules.
"""

from __future__ import annotations

CREATE_EVENTS = """
CREATE TABLE IF NOT EXISTS meshtap.events
(
    event_id String,
    topic String,
    source String,
    type String,
    subject String,
    spec_version String,
    data_content_type String,
    data_schema String,
    event_time_ns UInt64,              -- the CloudEvent `time`, 0 if absent
    published_ns UInt64,               -- accepted by the mesh
    published_at DateTime('UTC'),      -- published_ns in seconds: partitions only
    partition_key String,
    ext_keys Array(String),            -- every extension attribute ...
    ext_values Array(String),          -- ... and its value as a string
    data String,                       -- the raw data bytes, byte-exact
    data_size UInt32,
    producer String,                   -- who published (client identity or address)
    protocol String,                   -- http, eventmesh, webhook, grpc, replay
    instance String,                   -- runtime instance that accepted it
    store_offset String,               -- where the broker put it (`<ms>-<seq>`)
    trace_id String,                   -- 32 hex digits, '' if untraced
    span_id String,                    -- 16 hex digits
    replay_id String                   -- '' for originals
)
ENGINE = MergeTree
-- Retention drops whole days; a replay window or event search touches only its days.
PARTITION BY toYYYYMMDD(published_at)
-- Replay window selection and event search: topic IN (...) AND published_ns in [since, until),
-- read in publish order. It is also the key events_by_trace hands to the trace view, which
-- fetches a trace's events with (topic, published_ns, event_id) lookups, not a scan.
ORDER BY (topic, published_ns, event_id)
"""

CREATE_DELIVERIES = """
CREATE TABLE IF NOT EXISTS meshtap.deliveries
(
    event_id String,
    topic String,
    group_name String,
    subscription_id String,
    subscriber String,                 -- sink URL
    attempt UInt16,
    outcome String,                    -- acked, retry, dead_lettered, rejected
    status_code UInt16,                -- HTTP status, 0 if none
    error String,
    duration_ns UInt64,                -- the push itself
    latency_ns UInt64,                 -- publish -> this outcome
    attempted_ns UInt64,
    attempted_at DateTime('UTC'),      -- attempted_ns in seconds: partitions only
    instance String,
    trace_id String,
    span_id String
)
ENGINE = MergeTree
-- Retention drops whole days. Group and time audits (delivery completeness, latency SLOs,
-- dead letters per group over the last hour/day) filter on attempted_at, so they read only the
-- partitions of their window and scan those.
PARTITION BY toYYYYMMDD(attempted_at)
-- One event's delivery history (trace view, "what happened to event X"): event_id IN (...)
-- reads a few granules, attempts in time order.
ORDER BY (event_id, attempted_ns, attempt)
"""

_SPAN_COLUMNS = """
    trace_id String,                   -- 32 hex digits
    span_id String,                    -- 16 hex digits
    parent_span_id String,             -- '' for a root span
    name String,
    kind String,                       -- internal, server, client, producer, consumer
    service_name String,
    scope_name String,
    start_ns UInt64,
    end_ns UInt64,
    duration_ns UInt64,
    start_at DateTime('UTC'),          -- start_ns in seconds: partitions only
    status_code String,                -- unset, ok, error
    status_message String,
    attr_keys Array(String),
    attr_values Array(String),
    resource_keys Array(String),
    resource_values Array(String),
    event_names Array(String),         -- span events, in parallel arrays
    event_times_ns Array(UInt64),
    event_attrs Array(String),         -- one JSON object per span event
    link_trace_ids Array(String),      -- links, in parallel arrays
    link_span_ids Array(String),
    link_attrs Array(String)           -- one JSON object per link
"""

CREATE_SPANS = f"""
CREATE TABLE IF NOT EXISTS meshtap.spans
({_SPAN_COLUMNS})
ENGINE = MergeTree
-- Retention drops whole days; trace search over a time range reads only its days.
PARTITION BY toYYYYMMDD(start_at)
-- Trace search: by service over a time range (service_name = ? AND start_ns in [a, b)),
-- newest first; other filters (topic, status, duration) scan the days of the range.
ORDER BY (service_name, start_ns)
"""

CREATE_SPANS_BY_TRACE = f"""
CREATE TABLE IF NOT EXISTS meshtap.spans_by_trace
({_SPAN_COLUMNS})
ENGINE = MergeTree
-- Retention drops the same days as in spans.
PARTITION BY toYYYYMMDD(start_at)
-- Open a trace (the waterfall): trace_id = ? reads a granule or two per daily part, spans in
-- start order. Small granules keep that a few hundred rows.
ORDER BY (trace_id, start_ns)
SETTINGS index_granularity = 1024
"""

_SPAN_COLUMN_NAMES = """
    trace_id, span_id, parent_span_id, name, kind, service_name, scope_name,
    start_ns, end_ns, duration_ns, start_at, status_code, status_message,
    attr_keys, attr_values, resource_keys, resource_values,
    event_names, event_times_ns, event_attrs, link_trace_ids, link_span_ids, link_attrs
"""

# `TO` keeps the copy in an ordinary table, so retention drops its partitions like any other.
CREATE_SPANS_BY_TRACE_VIEW = f"""
CREATE MATERIALIZED VIEW IF NOT EXISTS meshtap.spans_by_trace_mv
TO meshtap.spans_by_trace
AS SELECT {_SPAN_COLUMN_NAMES}
FROM meshtap.spans
"""

CREATE_EVENTS_BY_TRACE = """
CREATE TABLE IF NOT EXISTS meshtap.events_by_trace
(
    trace_id String,
    published_ns UInt64,
    published_at DateTime('UTC'),
    topic String,
    event_id String,
    span_id String,
    type String,
    replay_id String
)
ENGINE = MergeTree
-- Retention drops the same days as in events.
PARTITION BY toYYYYMMDD(published_at)
-- A trace's events: trace_id = ? reads a granule or two per daily part and yields the
-- (topic, published_ns, event_id) keys to fetch the events themselves by primary key.
ORDER BY (trace_id, published_ns)
SETTINGS index_granularity = 1024
"""

CREATE_EVENTS_BY_TRACE_VIEW = """
CREATE MATERIALIZED VIEW IF NOT EXISTS meshtap.events_by_trace_mv
TO meshtap.events_by_trace
AS SELECT trace_id, published_ns, published_at, topic, event_id, span_id, type, replay_id
FROM meshtap.events
WHERE trace_id != ''
"""

OPERATIONS = [
    CREATE_EVENTS,
    CREATE_DELIVERIES,
    CREATE_SPANS,
    CREATE_SPANS_BY_TRACE,
    CREATE_SPANS_BY_TRACE_VIEW,
    CREATE_EVENTS_BY_TRACE,
    CREATE_EVENTS_BY_TRACE_VIEW,
]
