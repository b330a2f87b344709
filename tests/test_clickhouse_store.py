"""The ClickHouse store's one entry point, on both engines: clickhouse-server 18.16 and chDB.

Every store test runs twice, against the real server (``clickhouse_server``) and against chDB
in a directory of its own (closed after the test: chDB hosts one data directory per process,
and the engine only lets go of it when its last connection closes). Spans go to a fresh
``TracerProvider`` per test with an in-memory exporter (CONVENTIONS 8), which is also how the
tests see how many rows ClickHouse read for a query.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

import tracing.clickhouse
from tests.servers import ClickHouseServer
from tracing.clickhouse import (
    ClickHouse,
    ClickhouseQueryError,
    ClickhouseUnavailable,
    ClickhouseUsageError,
    Purpose,
    all_migrations,
    drop_partitions_older_than,
    migrate,
    suppress_tracing,
)
from tracing.clickhouse._sql import quote, render, table_sql

ROOT = Path(__file__).resolve().parent.parent

ALL_BYTES = bytes(range(256))
NOT_UTF8 = b"\xff\xfe\x00binary\x80\xc3(\x00"


# --- fixtures -----------------------------------------------------------------------------------


@dataclass
class Store:
    kind: str  # "server" or "chdb"
    url: str
    client: ClickHouse
    spans: InMemorySpanExporter
    provider: TracerProvider

    def open_another(self, **kwargs: Any) -> ClickHouse:
        return ClickHouse.open(self.url, tracer_provider=self.provider, **kwargs)

    def finished_spans(self) -> list[ReadableSpan]:
        return list(self.spans.get_finished_spans())


BACKENDS = [pytest.param("server", marks=pytest.mark.clickhouse), "chdb"]


@pytest.fixture(params=BACKENDS)
def bare(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """A client on an empty store (server: empty `meshtap` database; chDB: empty directory)."""
    if request.param == "server":
        server: ClickHouseServer = request.getfixturevalue("clickhouse_server")
        url = server.url
    else:
        url = f"chdb://{tmp_path / 'chdb'}"
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    client = ClickHouse.open(url, tracer_provider=provider)
    try:
        yield Store(request.param, url, client, exporter, provider)
    finally:
        client.close()
        provider.shutdown()


@pytest.fixture
def store(bare: Store) -> Store:
    """A migrated store, with no spans recorded yet."""
    migrate(bare.client)
    bare.spans.clear()
    return bare


# --- rows -----------------------------------------------------------------------------------


def _ns(when: datetime) -> int:
    return int(when.timestamp()) * 1_000_000_000


NOW = datetime.now(UTC).replace(microsecond=0)


def event_row(event_id: str = "evt-1", *, when: datetime = NOW, **over: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "event_id": event_id,
        "topic": "orders.eu.created",
        "source": "/shop",
        "type": "order.created",
        "subject": "order/42",
        "spec_version": "1.0",
        "data_content_type": "application/octet-stream",
        "data_schema": "https://example.com/schema",
        "event_time_ns": _ns(when) - 5,
        "published_ns": _ns(when) + 123,
        "published_at": when,
        "partition_key": "customer-7",
        "ext_keys": ["partitionkey", "traceparent", "weird"],
        "ext_values": ["customer-7", "00-" + "a" * 32 + "-" + "b" * 16 + "-01", "it's \\ ☃"],
        "data": ALL_BYTES + NOT_UTF8,
        "data_size": len(ALL_BYTES + NOT_UTF8),
        "producer": "127.0.0.1:5555",
        "protocol": "http",
        "instance": "host-1",
        "store_offset": "1700000000000-0",
        "trace_id": "a" * 32,
        "span_id": "b" * 16,
        "replay_id": "",
    }
    row.update(over)
    return row


def delivery_row(event_id: str = "evt-1", **over: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "event_id": event_id,
        "topic": "orders.eu.created",
        "group_name": "billing",
        "subscription_id": "sub-1",
        "subscriber": "http://billing:8080/events?x='1'",
        "attempt": 65535,
        "outcome": "dead_lettered",
        "status_code": 503,
        "error": "Service Unavailable: \x00 'quoted' \\ back",
        "duration_ns": 2**64 - 1,
        "latency_ns": 12_345_678,
        "attempted_ns": _ns(NOW),
        "attempted_at": NOW,
        "instance": "host-1",
        "trace_id": "a" * 32,
        "span_id": "c" * 16,
    }
    row.update(over)
    return row


def span_row(trace_id: str = "a" * 32, span_id: str = "d" * 16, **over: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "trace_id": trace_id,
        "span_id": span_id,
        "parent_span_id": "b" * 16,
        "name": "process orders.eu.created",
        "kind": "consumer",
        "service_name": "meshtap-runtime",
        "scope_name": "runtime",
        "start_ns": _ns(NOW),
        "end_ns": _ns(NOW) + 1000,
        "duration_ns": 1000,
        "start_at": NOW,
        "status_code": "error",
        "status_message": "HTTP 503",
        "attr_keys": ["messaging.system", "messaging.destination.name"],
        "attr_values": ["meshtap", "orders.eu.created"],
        "resource_keys": ["service.name"],
        "resource_values": ["meshtap-runtime"],
        "event_names": ["exception", "retry"],
        "event_times_ns": [1, 2**64 - 1],
        "event_attrs": ['{"exception.type": "Timeout"}', "{}"],
        "link_trace_ids": ["e" * 32],
        "link_span_ids": ["f" * 16],
        "link_attrs": ['{"messaging.message.id": "evt-1"}'],
    }
    row.update(over)
    return row


def insert_rows(client: ClickHouse, table: str, rows: list[dict[str, Any]]) -> int:
    columns = list(rows[0])
    return client.insert(table, columns, [[row[c] for row in rows] for c in columns])


def select_all(
    store: Store, table: str, columns: list[str], **kwargs: Any
) -> list[tuple[Any, ...]]:
    # Test-only SQL built from literal column names of the rows above; product code uses
    # constants (CONVENTIONS 4).
    order = ", ".join(columns[:2])  # by name: 18.16 reads `ORDER BY 1` as a constant
    query = table_sql(f"SELECT {', '.join(columns)} FROM meshtap.{{table}} ORDER BY {order}", table)
    return store.client.execute(query, purpose=Purpose.QUERY, **kwargs)


def read_rows(span: ReadableSpan) -> int:
    """How many rows ClickHouse read for the call (storage rows, not result rows)."""
    value = (span.attributes or {})["meshtap.clickhouse.read_rows"]
    assert isinstance(value, int)
    return value


def expected(row: dict[str, Any]) -> tuple[Any, ...]:
    return tuple(row.values())


# --- the package's surface ------------------------------------------------------------------


def test_exported_names_are_pinned() -> None:
    assert sorted(tracing.clickhouse.__all__) == sorted(
        [
            "DATABASE",
            "INSERT_TABLES",
            "TABLES",
            "ClickHouse",
            "ClickhouseError",
            "ClickhouseQueryError",
            "ClickhouseUnavailable",
            "ClickhouseUsageError",
            "Migration",
            "Operation",
            "Purpose",
            "SchemaNotMigrated",
            "all_migrations",
            "check",
            "drop_partitions_older_than",
            "migrate",
            "partitions_older_than",
            "plan",
            "suppress_tracing",
        ]
    )
    for name in tracing.clickhouse.__all__:
        assert getattr(tracing.clickhouse, name) is not None


def test_error_hierarchy() -> None:
    from tracing.clickhouse import ClickhouseError, SchemaNotMigrated

    for cls in (ClickhouseUnavailable, ClickhouseQueryError, ClickhouseUsageError):
        assert issubclass(cls, ClickhouseError)
    assert issubclass(SchemaNotMigrated, ClickhouseError)
    assert issubclass(ClickhouseUsageError, ValueError)
    assert not issubclass(ClickhouseUnavailable, ClickhouseQueryError)


# --- parameters: the one place values become SQL (pure) ---------------------------------------


@pytest.mark.parametrize(
    ("value", "literal"),
    [
        (None, "NULL"),
        (True, "1"),
        (False, "0"),
        (-42, "-42"),
        (2**64 - 1, "18446744073709551615"),
        (1.5, "1.5"),
        (float("nan"), "nan"),
        (float("-inf"), "-inf"),
        ("plain", "'plain'"),
        ("it's", "'it\\'s'"),
        ("back\\slash", "'back\\\\slash'"),
        ("nul\0nl\ntab\tcr\r", "'nul\\0nl\\ntab\\tcr\\r'"),
        ("\x1b[31m", "'\\x1b[31m'"),
        ("é☃😀", "'é☃😀'"),
        (b"\x00\xff'\\a", "'\\0\\xff\\'\\\\a'"),
        (
            datetime(2024, 1, 2, 3, 4, 5, 999, tzinfo=UTC),
            "toDateTime('2024-01-02 03:04:05', 'UTC')",
        ),
        (
            datetime(2024, 1, 2, 12, 0, tzinfo=UTC).astimezone(
                __import__("zoneinfo").ZoneInfo("Asia/Tokyo")
            ),
            "toDateTime('2024-01-02 12:00:00', 'UTC')",
        ),
        (date(2024, 2, 29), "toDate('2024-02-29')"),
        (UUID(int=1), "'00000000-0000-0000-0000-000000000001'"),
        (["a", "b'"], "['a', 'b\\'']"),
        ([], "[]"),
        (("x",), "('x')"),
        ((1, 2), "(1, 2)"),
    ],
)
def test_quote(value: Any, literal: str) -> None:
    assert quote(value) == literal


@pytest.mark.parametrize(
    ("value", "complaint"),
    [
        (datetime(2024, 1, 1), "naive datetime"),
        ((), "empty tuple"),
        ({"a": 1}, "no safe SQL literal"),
        ({1, 2}, "no safe SQL literal"),
        ("\udc80", "not valid Unicode"),
    ],
)
def test_quote_refuses(value: Any, complaint: str) -> None:
    with pytest.raises(ClickhouseUsageError, match=complaint):
        quote(value, name="p")


def test_render_placeholders() -> None:
    assert render("SELECT %(a)s, %(b)s LIKE 'x%%'", {"a": 1, "b": "o'k"}) == (
        "SELECT 1, 'o\\'k' LIKE 'x%'"
    )
    assert render("SELECT 1", None) == "SELECT 1"
    # A value that looks like a placeholder is data, never rendered again.
    assert render("SELECT %(a)s", {"a": "%(b)s %%"}) == "SELECT '%(b)s %%'"
    with pytest.raises(ClickhouseUsageError, match=r"%\(b\)s has no value"):
        render("SELECT %(a)s, %(b)s", {"a": 1})
    with pytest.raises(ClickhouseUsageError, match=r"\['c'\] are not used by the query"):
        render("SELECT %(a)s", {"a": 1, "c": 2})
    with pytest.raises(ClickhouseUsageError, match="stray '%'"):
        render("SELECT 'x%'", {})
    with pytest.raises(ClickhouseUsageError, match="stray '%'"):
        render("SELECT %(a)d", {"a": 1})


def test_table_sql_allows_only_schema_tables() -> None:
    assert table_sql("SELECT 1 FROM meshtap.{table}", "events") == "SELECT 1 FROM meshtap.events"
    with pytest.raises(ClickhouseUsageError, match="unknown table 'events; DROP'"):
        table_sql("SELECT 1 FROM meshtap.{table}", "events; DROP")


@pytest.mark.parametrize(
    ("url", "complaint"),
    [
        ("postgres://x/meshtap", "unsupported ClickHouse URL"),
        ("chdb://relative/dir", "absolute directory"),
        ("chdb:///abs/dir?x=1", "absolute directory"),
        ("clickhouse:///meshtap", "names no host"),
        ("clickhouse://h:9000/other", "lives in database 'meshtap'"),
        ("clickhouse://h:99999/meshtap", "bad port"),
        ("clickhouse://h:9000/meshtap?secure=1", "options"),
    ],
)
def test_bad_urls_are_refused_before_connecting(url: str, complaint: str) -> None:
    with pytest.raises(ClickhouseUsageError, match=complaint):
        ClickHouse.open(url)


def test_password_never_shows_in_the_url() -> None:
    with ClickHouse.open("clickhouse://meshtap:s3cret@db.example:9000/meshtap") as client:
        assert "s3cret" not in client.url
        assert "s3cret" not in repr(client)
        assert client.backend == "server"


# --- both engines -----------------------------------------------------------------------------


def test_every_table_round_trips_a_full_row_byte_exact(store: Store) -> None:
    event = event_row()
    delivery = delivery_row()
    span = span_row()
    assert insert_rows(store.client, "events", [event]) == 1
    assert insert_rows(store.client, "deliveries", [delivery]) == 1
    assert insert_rows(store.client, "spans", [span]) == 1

    got_event = select_all(store, "events", list(event), bytes_columns={"data"})
    assert got_event == [expected(event)]
    assert got_event[0][list(event).index("data")] == ALL_BYTES + NOT_UTF8
    assert select_all(store, "deliveries", list(delivery)) == [expected(delivery)]
    assert select_all(store, "spans", list(span)) == [expected(span)]
    # The materialized views copied them into the trace-id lookup tables.
    assert select_all(store, "spans_by_trace", list(span)) == [expected(span)]
    keys = ["trace_id", "published_ns", "published_at", "topic", "event_id", "span_id", "type"]
    assert select_all(store, "events_by_trace", keys) == [tuple(event[k] for k in keys)]


def test_binary_data_without_bytes_columns_is_text_with_replacement(store: Store) -> None:
    insert_rows(store.client, "events", [event_row(data=b"ok\xff")])
    [(data,)] = store.client.execute("SELECT data FROM meshtap.events", purpose=Purpose.QUERY)
    assert data == "ok\ufffd"


def test_columns_left_out_get_defaults_and_str_or_bytes_both_work(store: Store) -> None:
    store.client.insert(
        "events",
        ["event_id", "data", "published_at"],
        [["x", "y"], ["é", b"\xc3\xa9"], [NOW, int(NOW.timestamp())]],
    )
    rows = store.client.execute(
        "SELECT event_id, data, topic, ext_keys, data_size FROM meshtap.events ORDER BY event_id",
        purpose=Purpose.QUERY,
        bytes_columns=["data"],
    )
    assert rows == [("x", "é".encode(), "", [], 0), ("y", "é".encode(), "", [], 0)]


def test_untraced_events_stay_out_of_events_by_trace(store: Store) -> None:
    insert_rows(store.client, "events", [event_row("traced"), event_row("untraced", trace_id="")])
    rows = store.client.execute(
        "SELECT event_id FROM meshtap.events_by_trace", purpose=Purpose.QUERY
    )
    assert rows == [("traced",)]


NASTY = [
    "it's",
    "'; DROP TABLE meshtap.events; --",
    "back\\slash\\",
    "\\'",
    "new\nline\ttab\r\0nul",
    "é☃😀 ünïcödé",
    "%(other)s %% %s",
    '`backtick` "double"',
]


def test_parameters_are_data_never_sql(store: Store) -> None:
    rows = [event_row(f"e{i}", topic=value) for i, value in enumerate(NASTY)]
    insert_rows(store.client, "events", rows)
    for i, value in enumerate(NASTY):
        got = store.client.execute(
            "SELECT event_id, topic FROM meshtap.events WHERE topic = %(topic)s",
            {"topic": value},
            purpose=Purpose.QUERY,
        )
        assert got == [(f"e{i}", value)]
    # Arrays and IN lists of the same values.
    got = store.client.execute(
        "SELECT count() FROM meshtap.events WHERE has(%(topics)s, topic) AND topic IN %(again)s",
        {"topics": NASTY, "again": tuple(NASTY)},
        purpose=Purpose.QUERY,
    )
    assert got == [(len(NASTY),)]
    # An injection attempt matched nothing and dropped nothing.
    got = store.client.execute(
        "SELECT count() FROM meshtap.events WHERE event_id = %(id)s",
        {"id": "x' OR 1 = 1 OR event_id = '"},
        purpose=Purpose.QUERY,
    )
    assert got == [(0,)]
    assert store.client.execute("SELECT count() FROM meshtap.events", purpose=Purpose.QUERY) == [
        (len(NASTY),)
    ]


def test_parameter_values_come_back_equal(store: Store) -> None:
    params: dict[str, Any] = {
        "s": "".join(NASTY),
        "b": ALL_BYTES,
        "arr": NASTY,
        "ints": [0, 2**64 - 1],
        "neg": -(2**63),
        "f": 0.1,
        "when": datetime(2030, 5, 6, 7, 8, 9, tzinfo=UTC),
        "day": date(2030, 5, 6),
        "none": None,
        "yes": True,
    }
    query = (
        "SELECT %(s)s AS s, %(b)s AS b, %(arr)s AS arr, %(ints)s AS ints, %(neg)s AS neg, "
        "%(f)s AS f, %(when)s AS w, %(day)s AS d, %(none)s AS n, %(yes)s AS y"
    )
    [row] = store.client.execute(query, params, purpose=Purpose.QUERY, bytes_columns={"b"})
    assert row == (
        params["s"],
        ALL_BYTES,
        NASTY,
        [0, 2**64 - 1],
        -(2**63),
        0.1,
        params["when"],
        params["day"],
        None,
        1,
    )


def test_results_have_one_shape_on_both_engines(store: Store) -> None:
    [row] = store.client.execute(
        "SELECT toUInt8(255) AS u8, toInt64(-5) AS i64, toFloat32(1.5) AS f32, 'é' AS s, "
        "toFixedString('ab', 3) AS fs, toDate('2024-02-29') AS d, "
        "toDateTime('2024-02-29 12:34:56', 'Asia/Tokyo') AS dt, "
        "toUUID('61f0c404-5cb3-11e7-907b-a6006ad3dba0') AS u, [[1, 2], [3]] AS nested, "
        "['a', NULL] AS with_null, NULL AS n, CAST('b' AS Enum8('a' = 1, 'b' = 2)) AS e, "
        "(1, 'x') AS t, [toDateTime(0, 'UTC')] AS dts",
        purpose=Purpose.QUERY,
    )
    assert row == (
        255,
        -5,
        1.5,
        "é",
        "ab\x00",
        date(2024, 2, 29),
        datetime(2024, 2, 29, 3, 34, 56, tzinfo=UTC),
        UUID("61f0c404-5cb3-11e7-907b-a6006ad3dba0"),
        [[1, 2], [3]],
        ["a", None],
        None,
        "b",
        (1, "x"),
        [datetime(1970, 1, 1, tzinfo=UTC)],
    )


def test_trace_lookup_reads_few_rows(store: Store) -> None:
    traces = 3000
    per_trace = 10
    rows = []
    for t in range(traces):
        for s in range(per_trace):
            start = NOW - timedelta(days=t % 3, seconds=s)
            rows.append(
                span_row(
                    trace_id=f"{t:032x}",
                    span_id=f"{s:016x}",
                    service_name=f"svc-{s % 4}",
                    start_ns=_ns(start) + s,
                    start_at=start,
                )
            )
    insert_rows(store.client, "spans", rows)
    total = traces * per_trace
    wanted = f"{123:032x}"

    store.spans.clear()
    found = store.client.execute(
        "SELECT span_id FROM meshtap.spans_by_trace WHERE trace_id = %(trace_id)s "
        "ORDER BY start_ns",
        {"trace_id": wanted},
        purpose=Purpose.QUERY,
    )
    assert sorted(found) == [(f"{s:016x}",) for s in range(per_trace)]
    [span] = store.finished_spans()
    by_trace_read = read_rows(span)

    store.spans.clear()
    store.client.execute(
        "SELECT span_id FROM meshtap.spans WHERE trace_id = %(trace_id)s",
        {"trace_id": wanted},
        purpose=Purpose.QUERY,
    )
    [span] = store.finished_spans()
    scan_read = read_rows(span)

    # A granule (1024 rows) or two per daily part (3 of them), not the whole table.
    assert scan_read == total
    assert 0 < by_trace_read <= 3 * 2 * 1024, (by_trace_read, scan_read)


def test_trace_events_lookup_then_fetch_by_primary_key(store: Store) -> None:
    rows = [
        event_row(f"e{i}", trace_id=f"{i % 50:032x}", published_ns=_ns(NOW) + i)
        for i in range(3000)
    ]
    insert_rows(store.client, "events", rows)
    keys = store.client.execute(
        "SELECT topic, published_ns, event_id FROM meshtap.events_by_trace "
        "WHERE trace_id = %(trace_id)s ORDER BY published_ns",
        {"trace_id": f"{7:032x}"},
        purpose=Purpose.QUERY,
    )
    assert [k[2] for k in keys] == [f"e{i}" for i in range(7, 3000, 50)]
    got = store.client.execute(
        "SELECT event_id, data FROM meshtap.events WHERE (topic, published_ns, event_id) "
        "IN %(keys)s ORDER BY published_ns",
        {"keys": tuple(keys)},
        purpose=Purpose.QUERY,
        bytes_columns={"data"},
    )
    assert [(e, d) for e, d in got] == [(k[2], ALL_BYTES + NOT_UTF8) for k in keys]


def test_retention_drops_old_partitions_and_keeps_new(store: Store) -> None:
    old = NOW - timedelta(days=40)
    recent = NOW - timedelta(days=2)
    insert_rows(
        store.client,
        "events",
        [event_row("old", when=old), event_row("recent", when=recent), event_row("now")],
    )
    insert_rows(store.client, "spans", [span_row(start_at=old, start_ns=_ns(old))])
    insert_rows(store.client, "deliveries", [delivery_row(attempted_at=recent)])

    dropped = drop_partitions_older_than(store.client, 30)

    old_day = old.strftime("%Y%m%d")
    assert sorted(dropped) == sorted(
        [
            ("events", old_day),
            ("events_by_trace", old_day),
            ("spans", old_day),
            ("spans_by_trace", old_day),
        ]
    )
    ids = store.client.execute(
        "SELECT event_id FROM meshtap.events ORDER BY event_id", purpose=Purpose.QUERY
    )
    assert ids == [("now",), ("recent",)]
    for table in ("spans", "spans_by_trace"):
        assert select_all(store, table, ["trace_id", "span_id"]) == []
    assert len(select_all(store, "deliveries", ["event_id", "attempt"])) == 1
    # Nothing left to drop; the migrations table (one partition, `all`) is never touched.
    assert drop_partitions_older_than(store.client, 30) == []
    assert drop_partitions_older_than(store.client, 1, today=NOW.date()) == [
        ("deliveries", recent.strftime("%Y%m%d")),
        ("events", recent.strftime("%Y%m%d")),
        ("events_by_trace", recent.strftime("%Y%m%d")),
    ]
    assert store.client.execute(
        "SELECT count() FROM meshtap.schema_migrations", purpose=Purpose.QUERY
    ) == [(len(all_migrations()),)]
    with pytest.raises(ClickhouseUsageError, match="days >= 0"):
        drop_partitions_older_than(store.client, -1)


def test_spans_describe_each_call(store: Store) -> None:
    store.client.execute(
        "SELECT count() FROM meshtap.events WHERE topic = %(topic)s",
        {"topic": "secret-topic-value"},
        purpose=Purpose.QUERY,
    )
    insert_rows(store.client, "events", [event_row()])
    select_span, insert_span = store.finished_spans()

    assert select_span.name == "SELECT meshtap"
    assert select_span.kind is SpanKind.CLIENT
    attrs = dict(select_span.attributes or {})
    assert attrs["db.system"] == "clickhouse"
    assert attrs["db.operation.name"] == "SELECT"
    assert attrs["meshtap.clickhouse.purpose"] == "query"
    assert attrs["meshtap.clickhouse.backend"] == store.kind
    assert attrs["db.response.returned_rows"] == 1
    # The statement is recorded as the constant, with its placeholder and without the value.
    assert "%(topic)s" in str(attrs["db.query.text"])
    assert "secret-topic-value" not in str(attrs)

    assert insert_span.name == "INSERT meshtap.events"
    attrs = dict(insert_span.attributes or {})
    assert attrs["db.collection.name"] == "events"
    assert attrs["db.operation.batch.size"] == 1
    assert attrs["meshtap.clickhouse.purpose"] == "insert"


def test_failed_calls_make_error_spans(store: Store) -> None:
    with pytest.raises(ClickhouseQueryError):
        store.client.execute("SELECT nope FROM meshtap.events", purpose=Purpose.QUERY)
    [span] = store.finished_spans()
    assert span.status.status_code is StatusCode.ERROR
    assert (span.attributes or {})["error.type"] == "ClickhouseQueryError"
    assert [e.name for e in span.events] == ["exception"]


def test_suppressed_instrumentation_makes_no_spans(store: Store) -> None:
    with suppress_tracing():
        store.client.ping()
        insert_rows(store.client, "spans", [span_row()])
    untraced = store.open_another(traced=False)
    try:
        untraced.ping()
    finally:
        untraced.close()
    assert store.finished_spans() == []
    store.client.ping()
    assert [s.name for s in store.finished_spans()] == ["SELECT meshtap"]


def test_span_exporter_writes_are_not_traced(store: Store) -> None:
    """The SDK suppresses instrumentation around export(); an exporter writing spans to
    ClickHouse through the client must not make spans about its own writes."""
    from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

    client = store.client

    class ToClickHouse(SpanExporter):
        def export(self, spans: Any) -> SpanExportResult:
            for span in spans:
                ctx = span.context
                insert_rows(
                    client,
                    "spans",
                    [span_row(trace_id=f"{ctx.trace_id:032x}", span_id=f"{ctx.span_id:016x}")],
                )
            return SpanExportResult.SUCCESS

    store.provider.add_span_processor(SimpleSpanProcessor(ToClickHouse()))
    client.ping()  # one span, exported by both processors
    assert [s.name for s in store.finished_spans()] == ["SELECT meshtap"]
    assert client.execute("SELECT count() FROM meshtap.spans", purpose=Purpose.QUERY) == [(1,)]


def test_usage_errors_send_nothing(store: Store) -> None:
    client = store.client
    with pytest.raises(ClickhouseUsageError, match="cannot insert into 'spans_by_trace'"):
        client.insert("spans_by_trace", ["trace_id"], [["x"]])
    with pytest.raises(ClickhouseUsageError, match="cannot insert into 'users'"):
        client.insert("users", ["name"], [["x"]])
    with pytest.raises(ClickhouseUsageError, match=r"no column\(s\) \['nope'\]"):
        client.insert("events", ["event_id", "nope"], [["x"], ["y"]])
    with pytest.raises(ClickhouseUsageError, match="different numbers of values"):
        client.insert("events", ["event_id", "topic"], [["x", "y"], ["t"]])
    with pytest.raises(ClickhouseUsageError, match="one list of values per column"):
        client.insert("events", ["event_id", "topic"], [["x"]])
    with pytest.raises(ClickhouseUsageError, match="naive datetime"):
        client.insert("events", ["published_at"], [[datetime(2024, 1, 1)]])
    with pytest.raises(ClickhouseUsageError, match="do not fit its column types"):
        client.insert("events", ["data_size"], [["not a number"]])
    with pytest.raises(ClickhouseUsageError, match="has no value"):
        client.execute("SELECT %(x)s", purpose=Purpose.QUERY)
    assert client.insert("events", ["event_id"], [[]]) == 0
    assert client.execute("SELECT count() FROM meshtap.events", purpose=Purpose.QUERY) == [(0,)]


def test_bad_queries_raise_query_errors_that_say_what_to_do(store: Store) -> None:
    with pytest.raises(ClickhouseQueryError) as syntax:
        store.client.execute("SELEC 1", purpose=Purpose.QUERY)
    assert syntax.value.code == 62
    assert "Syntax error" in str(syntax.value)
    assert "SELEC 1" in str(syntax.value)
    assert "Stack trace" not in str(syntax.value)

    with pytest.raises(ClickhouseQueryError) as missing:
        store.client.execute("SELECT * FROM meshtap.nope", purpose=Purpose.QUERY)
    assert missing.value.code == 60
    assert "migrate_clickhouse" in str(missing.value)

    with pytest.raises(ClickhouseQueryError) as slow:
        store.client.execute(
            "SELECT count() FROM system.numbers WHERE sipHash64(number) = 0 "
            "SETTINGS max_execution_time = 1",
            purpose=Purpose.QUERY,
        )
    assert slow.value.code == 159
    assert "max_execution_time" in str(slow.value)
    # The client still works after each failure, and answers the next query, not leftovers of
    # the failed one (chDB 4.x keeps those in the connection: the backend replaces it).
    assert store.client.execute("SELECT 42 AS x", purpose=Purpose.QUERY) == [(42,)]


def test_insert_before_migrating_says_to_migrate(bare: Store) -> None:
    with pytest.raises(ClickhouseQueryError, match="migrate_clickhouse"):
        insert_rows(bare.client, "events", [event_row()])


def test_closed_client_refuses_calls(store: Store) -> None:
    other = store.open_another()
    other.ping()
    other.close()
    other.close()  # idempotent
    with pytest.raises(ClickhouseUsageError, match="closed"):
        other.ping()
    store.client.ping()  # closing one client leaves the others working (chDB: same engine)


def test_a_big_batch_is_one_insert(store: Store) -> None:
    rows = 20_000
    columns = ["event_id", "topic", "published_ns", "published_at", "data", "ext_keys"]
    values: list[list[Any]] = [
        [f"e{i}" for i in range(rows)],
        ["orders"] * rows,
        list(range(rows)),
        [NOW] * rows,
        [os.urandom(64) for _ in range(rows)],
        [["k"] * (i % 3) for i in range(rows)],
    ]
    started = time.monotonic()
    assert store.client.insert("events", columns, values) == rows
    elapsed = time.monotonic() - started
    assert elapsed < 20, elapsed  # generous: a sanity bound, not a benchmark
    got = store.client.execute(
        "SELECT count(), sum(length(data)), sum(length(ext_keys)) FROM meshtap.events",
        purpose=Purpose.QUERY,
    )
    assert got == [(rows, rows * 64, sum(i % 3 for i in range(rows)))]


# --- server only: outages -----------------------------------------------------------------------


@pytest.mark.clickhouse
def test_stopped_server_is_unavailable_quickly_and_recovers(
    fresh_clickhouse_server: ClickHouseServer,
) -> None:
    with ClickHouse.open(fresh_clickhouse_server.url, connect_timeout=1.0) as client:
        migrate(client)
        insert_rows(client, "events", [event_row("before")])

        fresh_clickhouse_server.stop()
        for call in (
            client.ping,
            lambda: insert_rows(client, "events", [event_row("during")]),
            lambda: client.execute("SELECT 1", purpose=Purpose.MIGRATE),
        ):
            started = time.monotonic()
            with pytest.raises(ClickhouseUnavailable, match="is unavailable") as error:
                call()
            assert time.monotonic() - started < 5
            assert str(fresh_clickhouse_server.port) in str(error.value)
            assert error.value.__cause__ is not None

        fresh_clickhouse_server.restart()
        client.ping()
        insert_rows(client, "events", [event_row("after")])
        ids = client.execute(
            "SELECT event_id FROM meshtap.events ORDER BY event_id", purpose=Purpose.QUERY
        )
        assert ids == [("after",), ("before",)]


@pytest.mark.clickhouse
def test_killed_server_mid_session_is_unavailable_then_recovers(
    fresh_clickhouse_server: ClickHouseServer,
) -> None:
    with ClickHouse.open(fresh_clickhouse_server.url, connect_timeout=1.0) as client:
        client.ping()  # an open connection, which the kill breaks under the client
        fresh_clickhouse_server.kill()
        with pytest.raises(ClickhouseUnavailable):
            client.ping()
        fresh_clickhouse_server.restart()
        client.ping()


# --- chDB only: one process per data directory ------------------------------------------------


def test_chdb_keeps_data_across_close_and_reopen(tmp_path: Path) -> None:
    url = f"chdb://{tmp_path / 'chdb'}"
    with ClickHouse.open(url) as client:
        migrate(client)
        insert_rows(client, "events", [event_row()])
    with ClickHouse.open(url) as client:
        assert client.execute("SELECT count() FROM meshtap.events", purpose=Purpose.QUERY) == [(1,)]


def test_chdb_one_directory_per_process(tmp_path: Path) -> None:
    with ClickHouse.open(f"chdb://{tmp_path / 'a'}") as first:
        first.ping()
        second = ClickHouse.open(f"chdb://{tmp_path / 'b'}")
        with pytest.raises(ClickhouseUsageError, match="one data directory per process"):
            second.ping()
        second.close()
        # Two clients of the same directory share the engine.
        with ClickHouse.open(f"chdb://{tmp_path / 'a'}") as same:
            same.ping()
        first.ping()
    # Once every client closed, another directory can be opened.
    with ClickHouse.open(f"chdb://{tmp_path / 'b'}") as second:
        second.ping()


def test_chdb_directory_held_by_another_process_is_refused_clearly(tmp_path: Path) -> None:
    data = tmp_path / "chdb"
    with ClickHouse.open(f"chdb://{data}") as client:
        client.ping()
        probe = (
            "import sys\n"
            "from tracing.clickhouse import ClickHouse, ClickhouseUnavailable\n"
            "try:\n"
            f"    ClickHouse.open({f'chdb://{data}'!r}).ping()\n"
            "except ClickhouseUnavailable as e:\n"
            "    print(e)\n"
            "    sys.exit(3)\n"
        )
        result = subprocess.run(
            [sys.executable, "-c", probe],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert result.returncode == 3, result.stdout + result.stderr
    assert f"in use by another process (pid {os.getpid()})" in result.stdout
    assert "one process per data directory" in result.stdout
