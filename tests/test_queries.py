"""The read side (``tracing._queries``) on both engines: clickhouse-server 18.16 and chDB.

Every test runs twice, against the real server (``clickhouse_server``) and against chDB in a
directory of its own (closed at teardown: one chDB directory per process at a time). The data
is a small, realistic capture written through ``client.insert`` -- producer app span -> mesh
publish span -> consumer process spans, the events they carried and their delivery attempts,
with a retry and a dead letter -- so each function is checked against rows shaped like the
recorder's. ClickHouse calls make spans on a fresh provider per test; their
``meshtap.clickhouse.read_rows`` shows how much each lookup read.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tests.servers import ClickHouseServer
from tracing import _queries
from tracing._queries import (
    MAX_TOPICS,
    delivery_history,
    events_in_window,
    search_traces,
    topic_map,
    trace_by_id,
)
from tracing._read_models import (
    EventWindow,
    InvalidQuery,
    TraceSearch,
    parse_attribute_filter,
)
from tracing.clickhouse import TABLES, ClickHouse, Purpose, migrate

ALL_BYTES = bytes(range(256))
NOT_UTF8 = b"\xff\xfe\x00binary\x80\xc3(\x00"
MS = 1_000_000
S = 1_000_000_000

# --- fixtures -----------------------------------------------------------------------------------


@dataclass
class Store:
    kind: str
    client: ClickHouse
    spans: InMemorySpanExporter

    def calls(self) -> list[ReadableSpan]:
        """The ClickHouse calls made since the last ``spans.clear()``."""
        return [s for s in self.spans.get_finished_spans() if s.name.startswith("SELECT")]


BACKENDS = [pytest.param("server", marks=pytest.mark.clickhouse), "chdb"]


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """A migrated, empty store."""
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
        migrate(client)
        exporter.clear()
        yield Store(request.param, client, exporter)
    finally:
        client.close()
        provider.shutdown()


# --- rows -------------------------------------------------------------------------------------

NOW = datetime.now(UTC).replace(microsecond=0)
T0 = NOW - timedelta(minutes=30)


def ns(when: datetime) -> int:
    return int(when.timestamp()) * S + when.microsecond * 1000


def at(when_ns: int) -> datetime:
    return datetime.fromtimestamp(when_ns // S, UTC)


def dt(when_ns: int) -> datetime:
    return datetime.fromtimestamp(when_ns // S, UTC) + timedelta(microseconds=when_ns % S // 1000)


TA = "0af7651916cd43dd8448eb211c80319c"  # ok: shop -> mesh -> billing + shipping
TB = "4bf92f3577b34da6a3ce929d0e0e4736"  # billing retried, shipping dead-lettered
TC = "5b8aa5a2d2c872e8321cf37308d69df2"  # payments -> ledger (slow)
TD = "6e0c63257de34c92bf9efcd03927272e"  # two hours earlier
TE = "7d5f1e4a3b2c4d5e8f9a0b1c2d3e4f50"  # the producer's span is missing

A0 = ns(T0)
B0 = A0 + 60 * S
C0 = A0 + 120 * S
U0 = A0 + 150 * S  # an untraced event
E0 = A0 + 180 * S
D0 = A0 - 2 * 3600 * S


def span(
    trace_id: str,
    span_id: str,
    parent: str,
    name: str,
    service: str,
    start_ns: int,
    duration_ns: int,
    *,
    kind: str = "internal",
    status: str = "ok",
    message: str = "",
    attrs: dict[str, str] | None = None,
) -> dict[str, Any]:
    attrs = attrs or {}
    return {
        "trace_id": trace_id,
        "span_id": span_id,
        "parent_span_id": parent,
        "name": name,
        "kind": kind,
        "service_name": service,
        "scope_name": "meshtap.runtime" if service == "meshtap-runtime" else "app",
        "start_ns": start_ns,
        "end_ns": start_ns + duration_ns,
        "duration_ns": duration_ns,
        "start_at": at(start_ns),
        "status_code": status,
        "status_message": message,
        "attr_keys": list(attrs),
        "attr_values": list(attrs.values()),
        "resource_keys": ["service.name", "deployment.environment"],
        "resource_values": [service, "prod"],
        "event_names": ["exception"] if status == "error" else [],
        "event_times_ns": [start_ns + duration_ns] if status == "error" else [],
        "event_attrs": ['{"exception.type": "HTTPError"}'] if status == "error" else [],
        "link_trace_ids": [],
        "link_span_ids": [],
        "link_attrs": [],
    }


def publish(trace_id: str, span_id: str, parent: str, topic: str, start: int, eid: str) -> Any:
    return span(
        trace_id,
        span_id,
        parent,
        f"publish {topic}",
        "meshtap-runtime",
        start,
        2 * MS,
        kind="producer",
        attrs={
            "messaging.system": "meshtap",
            "messaging.operation.name": "publish",
            "messaging.destination.name": topic,
            "messaging.message.id": eid,
        },
    )


def process(
    trace_id: str,
    span_id: str,
    parent: str,
    topic: str,
    group: str,
    attempt: int,
    start: int,
    duration: int,
    outcome: str,
    status: int,
) -> Any:
    failed = outcome != "acked"
    return span(
        trace_id,
        span_id,
        parent,
        f"process {topic}",
        "meshtap-runtime",
        start,
        duration,
        kind="consumer",
        status="error" if failed else "ok",
        message=f"HTTP {status}" if failed else "",
        attrs={
            "messaging.system": "meshtap",
            "messaging.operation.name": "process",
            "messaging.destination.name": topic,
            "messaging.consumer.group.name": group,
            "messaging.meshtap.delivery.attempt": str(attempt),
            "messaging.meshtap.delivery.outcome": outcome,
            "http.response.status_code": str(status),
        },
    )


def event(
    event_id: str,
    topic: str,
    published_ns: int,
    trace_id: str,
    *,
    type_: str = "order.created",
    source: str = "/shop",
    subject: str = "",
    data: bytes = b"{}",
    producer: str = "10.0.0.5",
    ext: dict[str, str] | None = None,
    span_id: str = "",
) -> dict[str, Any]:
    ext = dict(ext or {})
    if trace_id:
        ext["traceparent"] = f"00-{trace_id}-{span_id or '1' * 16}-01"
    keys = sorted(ext)
    return {
        "event_id": event_id,
        "topic": topic,
        "source": source,
        "type": type_,
        "subject": subject,
        "spec_version": "1.0",
        "data_content_type": "application/octet-stream",
        "data_schema": "",
        "event_time_ns": published_ns - 3 * MS,
        "published_ns": published_ns,
        "published_at": at(published_ns),
        "partition_key": ext.get("partitionkey", ""),
        "ext_keys": keys,
        "ext_values": [ext[k] for k in keys],
        "data": data,
        "data_size": len(data),
        "producer": producer,
        "protocol": "http",
        "instance": "runtime-1",
        "store_offset": f"{published_ns // MS}-0",
        "trace_id": trace_id,
        "span_id": span_id,
        "replay_id": "",
    }


def delivery(
    event_id: str,
    topic: str,
    group: str,
    attempt: int,
    outcome: str,
    status: int,
    attempted_ns: int,
    published_ns: int,
    trace_id: str,
    span_id: str,
) -> dict[str, Any]:
    return {
        "event_id": event_id,
        "topic": topic,
        "group_name": group,
        "subscription_id": f"sub-{group}",
        "subscriber": f"http://{group}:8080/events",
        "attempt": attempt,
        "outcome": outcome,
        "status_code": status,
        "error": "" if outcome == "acked" else f"HTTP {status}",
        "duration_ns": 3 * MS,
        "latency_ns": attempted_ns - published_ns,
        "attempted_ns": attempted_ns,
        "attempted_at": at(attempted_ns),
        "instance": "runtime-1",
        "trace_id": trace_id,
        "span_id": span_id,
    }


BINARY = ALL_BYTES + NOT_UTF8


def dataset() -> dict[str, list[dict[str, Any]]]:
    """Five traces and an untraced event, as the recorder would write them."""
    spans = [
        # A: the shop publishes; billing (with its own app span) and shipping take it.
        span(TA, "a000000000000001", "", "POST /orders", "shop", A0, 120 * MS, kind="server",
             attrs={"http.route": "/orders", "http.response.status_code": "201"}),
        publish(TA, "a000000000000002", "a000000000000001", "orders.eu.created", A0 + 5 * MS,
                "evt-a"),
        process(TA, "a000000000000003", "a000000000000002", "orders.eu.created", "billing", 1,
                A0 + 10 * MS, 20 * MS, "acked", 204),
        span(TA, "a000000000000004", "a000000000000003", "handle order", "billing",
             A0 + 12 * MS, 16 * MS, kind="server", attrs={"http.route": "/events"}),
        process(TA, "a000000000000005", "a000000000000002", "orders.eu.created", "shipping", 1,
                A0 + 11 * MS, 4 * MS, "acked", 200),
        # B: billing fails once then acks; shipping fails twice and is dead-lettered.
        span(TB, "b000000000000001", "", "POST /orders", "shop", B0, 900 * MS, kind="server",
             attrs={"http.route": "/orders"}),
        publish(TB, "b000000000000002", "b000000000000001", "orders.us.created", B0 + 5 * MS,
                "evt-b"),
        process(TB, "b000000000000003", "b000000000000002", "orders.us.created", "billing", 1,
                B0 + 10 * MS, 500 * MS, "retry", 503),
        process(TB, "b000000000000005", "b000000000000002", "orders.us.created", "shipping", 1,
                B0 + 11 * MS, 9 * MS, "retry", 500),
        process(TB, "b000000000000006", "b000000000000002", "orders.us.created", "shipping", 2,
                B0 + 200 * MS, 10 * MS, "dead_lettered", 500),
        span(TB, "b000000000000007", "b000000000000002", "settle orders.us.created",
             "meshtap-runtime", B0 + 211 * MS, 4 * MS, kind="client",
             attrs={"messaging.operation.name": "dead_letter",
                    "messaging.meshtap.dead_letter.topic": "_dlq.shipping"}),
        process(TB, "b000000000000004", "b000000000000002", "orders.us.created", "billing", 2,
                B0 + 600 * MS, 20 * MS, "acked", 200),
        # C: payments -> ledger, whose own span is slow.
        span(TC, "c000000000000001", "", "POST /pay", "payments", C0, 50 * MS, kind="server",
             attrs={"http.route": "/pay", "customer.tier": "gold"}),
        publish(TC, "c000000000000002", "c000000000000001", "payments.captured", C0 + 5 * MS,
                "evt-c"),
        process(TC, "c000000000000003", "c000000000000002", "payments.captured", "ledger", 1,
                C0 + 10 * MS, 2100 * MS, "acked", 200),
        span(TC, "c000000000000004", "c000000000000003", "book payment", "ledger",
             C0 + 20 * MS, 2 * S),
        # D: two hours earlier.
        span(TD, "d000000000000001", "", "POST /orders", "shop", D0, 80 * MS, kind="server"),
        publish(TD, "d000000000000002", "d000000000000001", "orders.eu.created", D0 + 5 * MS,
                "evt-d"),
        # E: only the mesh's span; its parent (the producer's) was never reported.
        process(TE, "e000000000000002", "e000000000000001", "orders.eu.updated", "billing", 1,
                E0 + 10 * MS, 30 * MS, "acked", 200),
    ]  # fmt: skip
    events = [
        event("evt-a", "orders.eu.created", A0 + 6 * MS, TA, data=BINARY,
              ext={"partitionkey": "customer-7"}, span_id="a000000000000002"),
        event("evt-b", "orders.us.created", B0 + 6 * MS, TB, data=b'{"order": 43}',
              ext={"partitionkey": "customer-8"}, span_id="b000000000000002"),
        event("evt-b", "_dlq.shipping", B0 + 212 * MS, TB, data=b'{"order": 43}',
              producer="runtime-1", span_id="b000000000000002",
              ext={"partitionkey": "customer-8", "deadletterreason": "HTTP 500"}),
        event("evt-c", "payments.captured", C0 + 6 * MS, TC, type_="payment.captured",
              source="/payments", subject="payment/9", data=b"", producer="10.0.0.7",
              span_id="c000000000000002"),
        event("evt-u", "orders.eu.created", U0, "", producer="10.0.0.9", data=NOT_UTF8),
        event("evt-e", "orders.eu.updated", E0 + 6 * MS, TE, type_="order.updated",
              ext={"partitionkey": "customer-9"}, span_id="e000000000000001"),
        event("evt-d", "orders.eu.created", D0 + 6 * MS, TD, span_id="d000000000000002"),
    ]  # fmt: skip
    deliveries = [
        delivery("evt-a", "orders.eu.created", "billing", 1, "acked", 204, A0 + 30 * MS,
                 A0 + 6 * MS, TA, "a000000000000003"),
        delivery("evt-a", "orders.eu.created", "shipping", 1, "acked", 200, A0 + 15 * MS,
                 A0 + 6 * MS, TA, "a000000000000005"),
        delivery("evt-b", "orders.us.created", "billing", 1, "retry", 503, B0 + 510 * MS,
                 B0 + 6 * MS, TB, "b000000000000003"),
        delivery("evt-b", "orders.us.created", "shipping", 1, "retry", 500, B0 + 20 * MS,
                 B0 + 6 * MS, TB, "b000000000000005"),
        delivery("evt-b", "orders.us.created", "shipping", 2, "dead_lettered", 500,
                 B0 + 210 * MS, B0 + 6 * MS, TB, "b000000000000006"),
        delivery("evt-b", "orders.us.created", "billing", 2, "acked", 200, B0 + 620 * MS,
                 B0 + 6 * MS, TB, "b000000000000004"),
        delivery("evt-c", "payments.captured", "ledger", 1, "acked", 200, C0 + 2110 * MS,
                 C0 + 6 * MS, TC, "c000000000000003"),
        delivery("evt-e", "orders.eu.updated", "billing", 1, "acked", 200, E0 + 40 * MS,
                 E0 + 6 * MS, TE, "e000000000000002"),
    ]  # fmt: skip
    return {"spans": spans, "events": events, "deliveries": deliveries}


def insert(client: ClickHouse, table: str, rows: list[dict[str, Any]]) -> None:
    columns = list(rows[0])
    client.insert(table, columns, [[row[c] for row in rows] for c in columns])


@pytest.fixture
def loaded(store: Store) -> Store:
    for table, rows in dataset().items():
        insert(store.client, table, rows)
    store.spans.clear()
    return store


def search(store: Store, **kwargs: Any) -> list[str]:
    """Trace ids of every page of a search (limit 50), in order."""
    kwargs.setdefault("since", T0 - timedelta(minutes=1))
    kwargs.setdefault("until", T0 + timedelta(minutes=10))
    page = search_traces(store.client, TraceSearch(**kwargs))
    return [s.trace_id for s in page.items]


def window(*topics: str, **kwargs: Any) -> EventWindow:
    kwargs.setdefault("since", T0 - timedelta(hours=3))
    kwargs.setdefault("until", T0 + timedelta(minutes=10))
    return EventWindow(topics=topics, **kwargs)


def ids(rows: Any) -> list[tuple[str, str]]:
    return [(e.event_id, e.topic) for e in rows]


# --- the statements themselves ----------------------------------------------------------------


def test_queries_are_constants_naming_only_schema_tables() -> None:
    queries = {
        name: value
        for name, value in vars(_queries).items()
        if name.isupper()
        and not name.startswith("_")
        and isinstance(value, str)
        and "SELECT" in value
    }
    assert len(queries) >= 15
    for name, sql in queries.items():
        assert not re.search(r"[{}]", sql), name  # no template slot left unfilled
        for table in re.findall(r"\bmeshtap\.(\w+)", sql):
            assert table in TABLES, (name, table)
        assert "LIMIT" in sql or " IN %(" in sql, name  # bounded, else by the keys it is given
        assert not re.search(r"ORDER BY \d", sql), name  # 18.16: positions are constants


# --- trace_by_id ------------------------------------------------------------------------------


def test_trace_by_id_follows_the_event_through_the_mesh(loaded: Store) -> None:
    view = trace_by_id(loaded.client, TB)
    assert view is not None
    assert view.trace_id == TB
    assert not view.truncated
    assert [s.span_id for s in view.spans] == [
        "b000000000000001",
        "b000000000000002",
        "b000000000000003",
        "b000000000000005",
        "b000000000000006",
        "b000000000000007",
        "b000000000000004",
    ]
    [root] = view.roots
    assert (root.name, root.service_name, root.kind) == ("POST /orders", "shop", "server")
    assert [s.span_id for s in view.children("b000000000000002")] == [
        "b000000000000003",
        "b000000000000005",
        "b000000000000006",
        "b000000000000007",
        "b000000000000004",
    ]
    failed = next(s for s in view.spans if s.span_id == "b000000000000003")
    assert failed.is_error
    assert failed.status_message == "HTTP 503"
    assert failed.attribute("messaging.meshtap.delivery.outcome") == "retry"
    assert failed.resource == (
        ("service.name", "meshtap-runtime"),
        ("deployment.environment", "prod"),
    )
    assert [(e.name, e.attributes) for e in failed.events] == [
        ("exception", (("exception.type", "HTTPError"),))
    ]
    assert view.error_count == 3
    assert view.services == ("meshtap-runtime", "shop")
    assert view.start_ns == B0
    assert view.duration_ns == 900 * MS

    # The event, then its copy on the dead-letter topic; attempts oldest first.
    assert [(e.event.event_id, e.event.topic) for e in view.events] == [
        ("evt-b", "orders.us.created"),
        ("evt-b", "_dlq.shipping"),
    ]
    original, dead = view.events
    assert [(d.group, d.attempt, d.outcome, d.status_code) for d in original.deliveries] == [
        ("shipping", 1, "retry", 500),
        ("shipping", 2, "dead_lettered", 500),
        ("billing", 1, "retry", 503),
        ("billing", 2, "acked", 200),
    ]
    assert original.deliveries[1].dead_lettered
    assert original.deliveries[0].failed
    assert not original.deliveries[3].failed
    assert original.deliveries[2].latency_ns == 504 * MS
    assert dead.deliveries == ()
    assert dict(dead.event.extensions)["deadletterreason"] == "HTTP 500"
    assert dead.event.attributes()["deadletterreason"] == "HTTP 500"


def test_trace_by_id_event_data_is_byte_exact(loaded: Store) -> None:
    view = trace_by_id(loaded.client, TA)
    assert view is not None
    [traced] = view.events
    assert traced.event.data == BINARY
    assert traced.event.trace_id == TA
    assert traced.event.span_id == "a000000000000002"
    assert traced.event.partition_key == "customer-7"
    attributes = traced.event.attributes()
    assert attributes["id"] == "evt-a"
    assert attributes["partitionkey"] == "customer-7"
    assert "subject" not in attributes  # empty optional attributes are left out
    assert attributes["time"].endswith("Z")
    assert [(d.group, d.outcome) for d in traced.deliveries] == [
        ("shipping", "acked"),
        ("billing", "acked"),
    ]


def test_trace_by_id_without_root_or_without_events(loaded: Store) -> None:
    view = trace_by_id(loaded.client, TE)
    assert view is not None
    assert [s.name for s in view.roots] == ["process orders.eu.updated"]  # parent missing
    assert [e.event.event_id for e in view.events] == ["evt-e"]
    assert trace_by_id(loaded.client, "f" * 32) is None
    # Upper case and surrounding blanks, as pasted from a log line, are fine.
    assert trace_by_id(loaded.client, f" {TA.upper()} ") is not None


@pytest.mark.parametrize(
    "bad", ["", "xyz", "0" * 32, "g" * 32, "a" * 31, "a" * 33, TA + "-", None, 42]
)
def test_trace_by_id_refuses_malformed_ids_before_asking(store: Store, bad: Any) -> None:
    with pytest.raises(InvalidQuery, match="32 hexadecimal digits"):
        trace_by_id(store.client, bad)
    assert store.calls() == []


def test_a_huge_trace_is_cut_and_says_so(loaded: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_queries, "MAX_TRACE_SPANS", 3)
    monkeypatch.setattr(_queries, "MAX_TRACE_EVENTS", 1)
    view = trace_by_id(loaded.client, TB)
    assert view is not None
    assert view.truncated
    assert [s.span_id for s in view.spans] == [
        "b000000000000001",
        "b000000000000002",
        "b000000000000003",
    ]  # the earliest
    assert [(e.event.topic, len(e.deliveries)) for e in view.events] == [("orders.us.created", 4)]
    complete = trace_by_id(loaded.client, TE)
    assert complete is not None
    assert not complete.truncated


def test_duplicate_rows_come_back_once(loaded: Store) -> None:
    """A spooled batch replayed after an insert that had in fact committed writes rows twice."""
    data = dataset()
    insert(loaded.client, "spans", [r for r in data["spans"] if r["trace_id"] == TA])
    insert(loaded.client, "events", [r for r in data["events"] if r["event_id"] == "evt-a"])
    insert(loaded.client, "deliveries", [r for r in data["deliveries"] if r["event_id"] == "evt-a"])

    view = trace_by_id(loaded.client, TA)
    assert view is not None
    assert len(view.spans) == 5
    assert len(view.events) == 1
    assert len(view.events[0].deliveries) == 2
    [summary] = search_traces(
        loaded.client, TraceSearch(since=T0, until=T0 + timedelta(seconds=1))
    ).items
    assert summary.span_count == 5
    assert ids(events_in_window(loaded.client, window("orders.eu.created"))) == [
        ("evt-d", "orders.eu.created"),
        ("evt-a", "orders.eu.created"),
        ("evt-u", "orders.eu.created"),
    ]
    assert len(delivery_history(loaded.client, "evt-a")) == 2


def test_lookups_read_only_what_they_need(store: Store) -> None:
    """With many unrelated rows over three days, a trace is found by key, not by a scan, and a
    one-hour search opens only its day."""
    unrelated_spans = []
    unrelated_events = []
    unrelated_deliveries = []
    for i in range(30_000):
        start = A0 - (i % 3) * 86_400 * S - i * MS
        trace_id = f"{(i % 6000 + 1) * 0x9E3779B97F4A7C15F39CC0605CEDC835 % 2**128:032x}"
        unrelated_spans.append(
            span(trace_id, f"{i + 1:016x}", "", "GET /", f"svc-{i % 50}", start, MS)
        )
        if i % 5 == 0:
            unrelated_events.append(
                event(f"u-{i}", f"topic.{i % 7}", start, trace_id, span_id=f"{i + 1:016x}")
            )
            unrelated_deliveries.append(
                delivery(f"u-{i}", f"topic.{i % 7}", "g", 1, "acked", 200, start + MS, start,
                         trace_id, "")
            )  # fmt: skip
    insert(store.client, "spans", unrelated_spans)
    insert(store.client, "events", unrelated_events)
    insert(store.client, "deliveries", unrelated_deliveries)
    for table, rows in dataset().items():
        insert(store.client, table, rows)
    total_spans = len(unrelated_spans) + len(dataset()["spans"])
    total_events = len(unrelated_events) + len(dataset()["events"])

    store.spans.clear()
    view = trace_by_id(store.client, TB)
    assert view is not None
    assert len(view.spans) == 7
    assert len(view.events) == 2
    reads = {_statement(c): _read_rows(c) for c in store.calls()}
    assert set(reads) == {"spans_by_trace", "events", "deliveries"}
    # A granule (1024 rows) or two per part; far from the 30,000 a scan reads.
    assert 0 < reads["spans_by_trace"] <= 2 * 1024 * _active_parts(store, "spans_by_trace")
    assert reads["spans_by_trace"] < total_spans // 3, reads
    # The events' keys come from events_by_trace, then a granule of events per day's part.
    assert 0 < reads["events"] < total_events, reads
    assert 0 < reads["deliveries"] < len(unrelated_deliveries), reads

    store.spans.clear()
    store.client.execute(
        "SELECT span_id FROM meshtap.spans WHERE trace_id = %(t)s", {"t": TB},
        purpose=Purpose.QUERY,
    )  # fmt: skip
    [scan] = store.calls()
    assert _read_rows(scan) == total_spans
    assert sum(reads.values()) < _read_rows(scan)

    store.spans.clear()
    page = search_traces(
        store.client, TraceSearch(since=T0 - timedelta(minutes=5), until=T0 + timedelta(hours=1))
    )
    assert {TA, TB, TC, TE} <= {s.trace_id for s in page.items}
    phase1 = store.calls()[0]
    assert _statement(phase1) == "spans"
    assert _read_rows(phase1) < total_spans * 2 // 3  # only the day of the range


def _active_parts(store: Store, table: str) -> int:
    [(parts,)] = store.client.execute(
        "SELECT count() FROM system.parts WHERE database = 'meshtap' AND table = %(table)s "
        "AND active",
        {"table": table},
        purpose=Purpose.QUERY,
    )
    return int(parts)


def _read_rows(call: ReadableSpan) -> int:
    value = (call.attributes or {})["meshtap.clickhouse.read_rows"]
    assert isinstance(value, int)
    return value


def _statement(call: ReadableSpan) -> str:
    text = str((call.attributes or {})["db.query.text"])
    match = re.search(r"FROM meshtap\.(\w+)", text)
    assert match is not None
    return match.group(1)


# --- search_traces ----------------------------------------------------------------------------


def test_search_pages_newest_first_with_cursors(loaded: Store) -> None:
    since, until = T0 - timedelta(minutes=1), T0 + timedelta(minutes=10)
    assert search(loaded) == [TE, TC, TB, TA]
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        page = search_traces(
            loaded.client, TraceSearch(since=since, until=until, limit=1, cursor=cursor)
        )
        pages += 1
        assert len(page.items) == 1
        assert (page.since_ns, page.until_ns) == (ns(since), ns(until))
        seen += [s.trace_id for s in page.items]
        cursor = page.next_cursor
        if cursor is None:
            break
    assert seen == [TE, TC, TB, TA]
    assert pages == 4

    first = search_traces(loaded.client, TraceSearch(since=since, until=until, limit=2))
    assert [s.trace_id for s in first.items] == [TE, TC]
    assert first.next_cursor
    second = search_traces(
        loaded.client,
        TraceSearch(since=since, until=until, limit=2, cursor=first.next_cursor),
    )
    assert [s.trace_id for s in second.items] == [TB, TA]
    assert second.next_cursor is None


def test_search_default_window_is_the_last_hour_and_cursors_keep_it(loaded: Store) -> None:
    now = T0 + timedelta(minutes=5)
    page = search_traces(loaded.client, TraceSearch(limit=3), now=now)
    assert [s.trace_id for s in page.items] == [TE, TC, TB]
    assert (page.since_ns, page.until_ns) == (ns(now - timedelta(hours=1)), ns(now))
    assert page.next_cursor is not None
    # An hour later "the last hour" holds nothing of these, but the cursor keeps its range.
    later = now + timedelta(hours=1)
    rest = search_traces(loaded.client, TraceSearch(limit=3, cursor=page.next_cursor), now=later)
    assert [s.trace_id for s in rest.items] == [TA]
    assert search_traces(loaded.client, TraceSearch(), now=later).items == ()
    # Only `until`: the hour before it. Only `since`: from it to now.
    only_until = search_traces(loaded.client, TraceSearch(until=T0 + timedelta(seconds=90)))
    assert [s.trace_id for s in only_until.items] == [TB, TA]
    only_since = search_traces(
        loaded.client, TraceSearch(since=T0 + timedelta(seconds=90)), now=now
    )
    assert [s.trace_id for s in only_since.items] == [TE, TC]
    with pytest.raises(InvalidQuery, match="another time range"):
        search_traces(
            loaded.client, TraceSearch(since=T0, limit=3, cursor=page.next_cursor), now=now
        )


def test_search_time_bounds_are_half_open(loaded: Store) -> None:
    assert search(loaded, since=T0 - timedelta(hours=3)) == [TE, TC, TB, TA, TD]
    # A starts exactly at T0: out of [.., T0), in [T0, ..).
    assert search(loaded, since=T0 - timedelta(hours=3), until=T0) == [TD]
    assert search(loaded, since=T0, until=T0 + timedelta(seconds=1)) == [TA]
    assert search(loaded, since=dt(E0 + 10 * MS)) == [TE]
    assert search(loaded, since=dt(E0 + 10 * MS + 1000)) == []


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        ({}, [TE, TC, TB, TA]),
        ({"service": "billing"}, [TA]),
        ({"service": "shop"}, [TB, TA]),
        ({"service": "meshtap-runtime"}, [TE, TC, TB, TA]),
        ({"service": "nobody"}, []),
        ({"service": "  "}, [TE, TC, TB, TA]),  # a blank form field is no filter
        ({"topic": "orders.eu.created"}, [TA]),
        ({"topic": "orders.*.created"}, [TB, TA]),
        ({"topic": "orders.#"}, [TE, TB, TA]),
        ({"topic": "#"}, [TE, TC, TB, TA]),
        ({"topic": "_dlq.#"}, [TB]),
        ({"topic": "nothing.here"}, []),
        ({"topic": "nothing.*"}, []),
        ({"event_type": "payment.captured"}, [TC]),
        ({"event_type": "order.updated"}, [TE]),
        ({"status": "error"}, [TB]),
        ({"status": "ok"}, [TE, TC, TA]),
        ({"min_duration": timedelta(seconds=1)}, [TC]),
        ({"max_duration": timedelta(milliseconds=3)}, [TC, TB, TA]),  # publish spans: 2 ms
        ({"attributes": (("http.route", "/pay"),)}, [TC]),
        ({"resource_attributes": (("service.name", "payments"),)}, [TC]),
        ({"attributes": (("service.name", "payments"),)}, []),  # not a span attribute
        ({"resource_attributes": (("http.route", "/pay"),)}, []),  # not a resource attribute
        ({"resource_attributes": (("deployment.environment", "prod"),)}, [TE, TC, TB, TA]),
        (
            {
                "attributes": (("messaging.consumer.group.name", "ledger"),),
                "resource_attributes": (("service.name", "meshtap-runtime"),),
            },
            [TC],
        ),
        (  # both scopes on one span: ledger's own span has no group attribute
            {
                "attributes": (("messaging.consumer.group.name", "ledger"),),
                "resource_attributes": (("service.name", "ledger"),),
            },
            [],
        ),
        ({"attributes": (("http.route", "/orders"), ("http.route", "/pay"))}, []),
        ({"attributes": (("messaging.consumer.group.name", "billing"),)}, [TE, TB, TA]),
        # Every pair on one span: billing's failed attempt is B's alone ...
        (
            {
                "attributes": (
                    ("messaging.consumer.group.name", "billing"),
                    ("messaging.meshtap.delivery.outcome", "retry"),
                )
            },
            [TB],
        ),
        # ... and shipping acked only in A (B's shipping attempts both failed).
        (
            {
                "attributes": (
                    ("messaging.consumer.group.name", "shipping"),
                    ("messaging.meshtap.delivery.outcome", "acked"),
                )
            },
            [TA],
        ),
        # Combined: the filters all hold.
        ({"service": "meshtap-runtime", "status": "error", "topic": "orders.#"}, [TB]),
        ({"service": "meshtap-runtime", "status": "ok", "event_type": "order.created"}, [TA]),
        ({"service": "shop", "max_duration": timedelta(milliseconds=200)}, [TA]),
        ({"service": "ledger", "min_duration": timedelta(seconds=1)}, [TC]),
        (
            {
                "service": "meshtap-runtime",
                "topic": "payments.captured",
                "event_type": "payment.captured",
                "status": "ok",
                "min_duration": timedelta(seconds=2),
                "attributes": (("messaging.consumer.group.name", "ledger"),),
            },
            [TC],
        ),
        ({"topic": "payments.#", "event_type": "order.created"}, []),
        ({"service": "billing", "status": "error"}, []),
    ],
)
def test_search_filters(loaded: Store, filters: dict[str, Any], expected: list[str]) -> None:
    assert search(loaded, **filters) == expected


def test_search_summaries(loaded: Store) -> None:
    page = search_traces(
        loaded.client,
        TraceSearch(since=T0 - timedelta(minutes=1), until=T0 + timedelta(minutes=10)),
    )
    by_id = {s.trace_id: s for s in page.items}
    b = by_id[TB]
    assert (b.root_service, b.root_name) == ("shop", "POST /orders")
    assert (b.start_ns, b.duration_ns, b.span_count, b.error_count) == (B0, 900 * MS, 7, 3)
    assert b.services == ("meshtap-runtime", "shop")
    assert b.topics == ("_dlq.shipping", "orders.us.created")
    assert b.start == dt(B0)
    assert b.duration == timedelta(milliseconds=900)
    c = by_id[TC]
    assert c.services == ("ledger", "meshtap-runtime", "payments")
    assert c.duration_ns == 2110 * MS
    assert c.error_count == 0
    assert c.topics == ("payments.captured",)
    e = by_id[TE]  # no root span: the earliest span stands in
    assert (e.root_service, e.root_name, e.span_count) == (
        "meshtap-runtime",
        "process orders.eu.updated",
        1,
    )


@pytest.mark.parametrize(
    ("fields", "complaint"),
    [
        ({"since": T0, "until": T0 - timedelta(seconds=1)}, "empty or inverted"),
        ({"since": T0, "until": T0}, "empty or inverted"),
        ({"since": T0.replace(tzinfo=None)}, "no time zone"),
        ({"until": "yesterday"}, "must be a datetime"),
        ({"status": "failed"}, "not one of ok, error"),
        ({"limit": 0}, "page size from 1 to 1000"),
        ({"limit": 1001}, "page size from 1 to 1000"),
        ({"limit": True}, "page size"),
        (
            {"min_duration": timedelta(seconds=2), "max_duration": timedelta(seconds=1)},
            "above max_duration",
        ),
        ({"min_duration": timedelta(seconds=-1)}, "negative"),
        ({"min_duration": 5}, "must be a timedelta"),
        ({"topic": "orders..created"}, "segment 2 is empty"),
        ({"topic": "orders*"}, "mixes a wildcard"),
        ({"topic": "orders/eu"}, "contains '/'"),
        ({"attributes": ("http.route=/pay",)}, "not a \\(key, value\\) pair"),
        ({"attributes": "http.route=/pay"}, "not a string"),
        ({"attributes": (("", "x"),)}, "non-empty key"),
        ({"resource_attributes": (("host.name",),)}, "resource attribute filter"),
        ({"service": 7}, "must be a string"),
    ],
)
def test_search_refuses_bad_input_clearly(fields: dict[str, Any], complaint: str) -> None:
    with pytest.raises(InvalidQuery, match=complaint):
        TraceSearch(**fields)


@pytest.mark.parametrize("cursor", ["garbage", "dDE6MTox", "x" * 200])
def test_search_refuses_cursors_it_did_not_hand_out(store: Store, cursor: str) -> None:
    with pytest.raises(InvalidQuery, match="not one a trace search handed out"):
        search_traces(store.client, TraceSearch(cursor=cursor))
    assert store.calls() == []


def test_attribute_filters_from_text() -> None:
    assert parse_attribute_filter("http.route=/a=b") == ("http.route", "/a=b")
    assert parse_attribute_filter(" k =") == ("k", "")
    with pytest.raises(InvalidQuery, match="not key=value"):
        parse_attribute_filter("http.route")
    assert TraceSearch(attributes={"a": "b"}).attributes == (("a", "b"),)  # type: ignore[arg-type]


# --- events_in_window -------------------------------------------------------------------------


def test_events_in_window_in_publish_order_byte_exact(loaded: Store) -> None:
    everything = list(events_in_window(loaded.client, window("#")))
    assert ids(everything) == [
        ("evt-d", "orders.eu.created"),
        ("evt-a", "orders.eu.created"),
        ("evt-b", "orders.us.created"),
        ("evt-c", "payments.captured"),
        ("evt-u", "orders.eu.created"),
        ("evt-e", "orders.eu.updated"),
    ]  # a leading wildcard leaves internal topics (dead letters) out
    by_id = {e.event_id: e for e in everything}
    assert by_id["evt-a"].data == BINARY
    assert by_id["evt-u"].data == NOT_UTF8
    assert by_id["evt-u"].trace_id == ""
    assert by_id["evt-c"].data == b""
    assert by_id["evt-c"].attributes()["subject"] == "payment/9"
    published = [e.published_ns for e in everything]
    assert published == sorted(published)
    # Batches of one give the same stream.
    assert list(events_in_window(loaded.client, window("#"), batch_size=1)) == everything


@pytest.mark.parametrize(
    ("topics", "expected"),
    [
        (("_dlq.#",), ["evt-b@_dlq.shipping"]),
        (("_dlq.shipping",), ["evt-b@_dlq.shipping"]),
        (("orders.*.created",), ["evt-d", "evt-a", "evt-b", "evt-u"]),
        (("orders.eu.*",), ["evt-d", "evt-a", "evt-u", "evt-e"]),
        (("*.eu.#",), ["evt-d", "evt-a", "evt-u", "evt-e"]),
        (("orders",), []),
        (("orders.#",), ["evt-d", "evt-a", "evt-b", "evt-u", "evt-e"]),
        (("orders.eu.created", "payments.#"), ["evt-d", "evt-a", "evt-c", "evt-u"]),
        (("#.created",), ["evt-d", "evt-a", "evt-b", "evt-u"]),
        (("#", "_dlq.#"), ["evt-d", "evt-a", "evt-b", "evt-b@_dlq.shipping", "evt-c", "evt-u",
                           "evt-e"]),
    ],
)  # fmt: skip
def test_events_in_window_topic_patterns(
    loaded: Store, topics: tuple[str, ...], expected: list[str]
) -> None:
    got = [
        e.event_id if not e.topic.startswith("_") else f"{e.event_id}@{e.topic}"
        for e in events_in_window(loaded.client, window(*topics))
    ]
    assert got == expected


@pytest.mark.parametrize(
    ("attributes", "expected"),
    [
        ((("type", "order.created"),), ["evt-d", "evt-a", "evt-b", "evt-u"]),
        ((("partitionkey", "customer-7"),), ["evt-a"]),
        ((("source", "/payments"), ("subject", "payment/9")), ["evt-c"]),
        ((("type", "order.created"), ("partitionkey", "customer-9")), []),
        ((("id", "evt-e"),), ["evt-e"]),
        ((("specversion", "1.0"), ("datacontenttype", "application/octet-stream")),
         ["evt-d", "evt-a", "evt-b", "evt-c", "evt-u", "evt-e"]),
        ((("traceparent", f"00-{TA}-a000000000000002-01"),), ["evt-a"]),
    ],
)  # fmt: skip
def test_events_in_window_attribute_filters(
    loaded: Store, attributes: tuple[tuple[str, str], ...], expected: list[str]
) -> None:
    got = events_in_window(loaded.client, window("#", attributes=attributes), batch_size=2)
    assert [e.event_id for e in got] == expected


def test_events_in_window_bounds_are_half_open(loaded: Store) -> None:
    a = A0 + 6 * MS
    assert ids(events_in_window(loaded.client, window("#", since=dt(a), until=dt(a + 1000)))) == [
        ("evt-a", "orders.eu.created")
    ]
    assert list(events_in_window(loaded.client, window("#", since=dt(a - 1000), until=dt(a)))) == []


def test_events_in_window_streams_in_bounded_batches(store: Store) -> None:
    base = A0
    rows = []
    for i in range(2500):
        # Seven events share each nanosecond, spread over three topics and three seconds.
        rows.append(event(f"e{i:05d}", f"load.t{i % 3}", base + (i // 7) * 8 * MS, ""))
    insert(store.client, "events", rows)
    insert(store.client, "events", rows[:40])  # written twice: still streamed once
    expected = sorted((r["published_ns"], r["event_id"], r["topic"]) for r in rows)

    store.spans.clear()
    got = [
        (e.published_ns, e.event_id, e.topic)
        for e in events_in_window(
            store.client,
            EventWindow(("load.#",), dt(base - S), dt(base + 10 * S)),
            batch_size=100,
        )
    ]
    assert got == expected
    calls = store.calls()
    returned = [int((c.attributes or {})["db.response.returned_rows"]) for c in calls]
    assert max(returned) <= 100
    assert len(calls) <= 3 * 2500 // 100  # the slices adapt: no query-per-event crawl
    assert all("OFFSET" not in str((c.attributes or {})["db.query.text"]) for c in calls)


def test_events_in_window_refuses_bad_input_at_once(store: Store) -> None:
    with pytest.raises(InvalidQuery, match="batch_size 0"):
        events_in_window(store.client, window("#"), batch_size=0)
    with pytest.raises(InvalidQuery, match="batch_size"):
        events_in_window(store.client, window("#"), batch_size=10**9)
    assert store.calls() == []


@pytest.mark.parametrize(
    ("fields", "complaint"),
    [
        ({"topics": ()}, "at least one topic"),
        ({"topics": ("orders.#x",)}, "mixes a wildcard"),
        ({"topics": ("orders.eu.created", "")}, "topics\\[1\\]: invalid topic pattern ''"),
        ({"topics": (7,)}, "not a string"),
        ({"since": T0, "until": T0 - timedelta(seconds=1)}, "empty or inverted"),
        ({"until": T0.replace(tzinfo=None)}, "no time zone"),
        ({"attributes": (("Type", "x"),)}, "not a CloudEvents attribute name"),
        ({"attributes": (("time", "x"),)}, "since/until"),
        ({"attributes": (("type", ""),)}, "empty value"),
    ],
)
def test_event_window_refuses_bad_input_clearly(fields: dict[str, Any], complaint: str) -> None:
    values: dict[str, Any] = {"topics": ("#",), "since": T0, "until": T0 + timedelta(hours=1)}
    values.update(fields)
    with pytest.raises(InvalidQuery, match=complaint):
        EventWindow(**values)


def test_event_window_takes_one_pattern_as_a_string() -> None:
    w = EventWindow("orders.#", T0, T0 + timedelta(hours=1))  # type: ignore[arg-type]
    assert w.topics == ("orders.#",)


def test_a_pattern_matching_too_many_topics_is_refused(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_queries, "MAX_TOPICS", 2)
    insert(store.client, "events", [event(f"e{i}", f"many.t{i}", A0 + i, "") for i in range(3)])
    with pytest.raises(InvalidQuery, match="more than 2 topics"):
        list(events_in_window(store.client, window("many.*")))
    assert _queries.MAX_TOPICS < MAX_TOPICS


# --- delivery_history -------------------------------------------------------------------------


def test_delivery_history(loaded: Store) -> None:
    history = delivery_history(loaded.client, "evt-b")
    assert [(d.topic, d.group, d.attempt, d.outcome, d.error) for d in history] == [
        ("orders.us.created", "shipping", 1, "retry", "HTTP 500"),
        ("orders.us.created", "shipping", 2, "dead_lettered", "HTTP 500"),
        ("orders.us.created", "billing", 1, "retry", "HTTP 503"),
        ("orders.us.created", "billing", 2, "acked", ""),
    ]
    first = history[0]
    assert first.subscriber == "http://shipping:8080/events"
    assert first.subscription_id == "sub-shipping"
    assert (first.attempted_ns, first.latency_ns, first.duration_ns) == (
        B0 + 20 * MS,
        14 * MS,
        3 * MS,
    )
    assert (first.trace_id, first.span_id, first.instance) == (TB, "b000000000000005", "runtime-1")
    assert delivery_history(loaded.client, "evt-b", topic="orders.us.created") == history
    assert delivery_history(loaded.client, "evt-b", topic="_dlq.shipping") == []
    assert delivery_history(loaded.client, "no-such-event") == []
    with pytest.raises(InvalidQuery, match="non-empty string"):
        delivery_history(loaded.client, "")


# --- topic_map --------------------------------------------------------------------------------


def test_topic_map(loaded: Store) -> None:
    since, until = T0 - timedelta(minutes=1), T0 + timedelta(minutes=10)
    seconds = 11 * 60
    m = topic_map(loaded.client, since, until)
    assert (m.since_ns, m.until_ns, m.truncated) == (ns(since), ns(until), False)
    assert [(t.topic, t.events, t.producers, t.groups) for t in m.topics] == [
        ("_dlq.shipping", 1, ("runtime-1",), ()),
        ("orders.eu.created", 2, ("10.0.0.5", "10.0.0.9"), ("billing", "shipping")),
        ("orders.eu.updated", 1, ("10.0.0.5",), ("billing",)),
        ("orders.us.created", 1, ("10.0.0.5",), ("billing", "shipping")),
        ("payments.captured", 1, ("10.0.0.7",), ("ledger",)),
    ]
    eu = m.topic("orders.eu.created")
    assert eu is not None
    assert eu.rate_per_s == pytest.approx(2 / seconds)
    assert {(p.producer, p.topic, p.events) for p in m.producers} == {
        ("runtime-1", "_dlq.shipping", 1),
        ("10.0.0.5", "orders.eu.created", 1),
        ("10.0.0.9", "orders.eu.created", 1),
        ("10.0.0.5", "orders.eu.updated", 1),
        ("10.0.0.5", "orders.us.created", 1),
        ("10.0.0.7", "payments.captured", 1),
    }
    groups = {(g.topic, g.group): (g.attempts, g.acked, g.failed, g.dead_letters) for g in m.groups}
    assert groups == {
        ("orders.eu.created", "billing"): (1, 1, 0, 0),
        ("orders.eu.created", "shipping"): (1, 1, 0, 0),
        ("orders.us.created", "billing"): (2, 1, 1, 0),
        ("orders.us.created", "shipping"): (2, 0, 2, 1),
        ("orders.eu.updated", "billing"): (1, 1, 0, 0),
        ("payments.captured", "ledger"): (1, 1, 0, 0),
    }
    assert m.dead_letters == 1
    billing = next(g for g in m.groups if (g.topic, g.group) == ("orders.us.created", "billing"))
    assert billing.rate_per_s == pytest.approx(1 / seconds)

    earlier = topic_map(loaded.client, T0 - timedelta(hours=3), T0 - timedelta(hours=1))
    assert [(t.topic, t.events, t.groups) for t in earlier.topics] == [("orders.eu.created", 1, ())]
    with pytest.raises(InvalidQuery, match="empty or inverted"):
        topic_map(loaded.client, until, since)


# --- events_by_id / events_of_traces / replayed_event_ids (replay's selection) -----------------


def test_events_by_id_in_publish_order_within_the_window(loaded: Store) -> None:
    got = _queries.events_by_id(loaded.client, window("#", "_dlq.#"), ["evt-u", "evt-b", "nope"])
    assert ids(got) == [
        ("evt-b", "orders.us.created"),
        ("evt-b", "_dlq.shipping"),
        ("evt-u", "orders.eu.created"),
    ]
    assert got[-1].data == NOT_UTF8
    narrow = window("orders.#", attributes={"partitionkey": "customer-8"})
    assert ids(_queries.events_by_id(loaded.client, narrow, ["evt-b", "evt-a"])) == [
        ("evt-b", "orders.us.created")
    ]
    assert _queries.events_by_id(loaded.client, window("nothing.here"), ["evt-a"]) == []


def test_events_of_traces_by_the_trace_table(loaded: Store) -> None:
    got = _queries.events_of_traces(loaded.client, window("#"), [TB, TA.upper()])
    assert ids(got) == [("evt-a", "orders.eu.created"), ("evt-b", "orders.us.created")]
    with pytest.raises(InvalidQuery, match="32 hexadecimal digits"):
        _queries.events_of_traces(loaded.client, window("#"), ["not-a-trace"])
    with pytest.raises(InvalidQuery, match="from 1 to"):
        _queries.events_by_id(loaded.client, window("#"), [])


def test_replayed_event_ids_finds_a_replays_events_on_its_topics(store: Store) -> None:
    rows = [
        event("r-1", "replay.orders.eu.created", A0, "", ext={"replayid": "job-1"}),
        event("r-2", "replay.orders.eu.created", A0 + S, "", ext={"replayid": "job-2"}),
        event("r-3", "replay.orders.us.created", A0 + 2 * S, "", ext={"replayid": "job-1"}),
        event("r-0", "replay.orders.eu.created", A0 - 10 * S, "", ext={"replayid": "job-1"}),
    ]
    for row in rows:
        row["replay_id"] = dict(zip(row["ext_keys"], row["ext_values"], strict=True))["replayid"]
    insert(store.client, "events", rows)
    topics = ["replay.orders.eu.created", "replay.orders.us.created"]
    assert _queries.replayed_event_ids(store.client, "job-1", topics, A0) == {"r-1", "r-3"}
    assert _queries.replayed_event_ids(store.client, "job-1", topics[:1], 0) == {"r-0", "r-1"}
    assert _queries.replayed_event_ids(store.client, "job-1", [], 0) == set()
    got = _queries.events_of_replay(store.client, "job-1", topics, 0)
    assert [(e.event_id, e.replay_id) for e in got] == [("r-0", "job-1"), ("r-1", "job-1"),
                                                        ("r-3", "job-1")]  # fmt: skip
    assert _queries.events_of_replay(store.client, "job-1", [], 0) == []
    with pytest.raises(InvalidQuery, match="replay id"):
        _queries.replayed_event_ids(store.client, "", topics, 0)


def test_count_events_in_window_bounds_the_stream(loaded: Store) -> None:
    for topics, attributes in [(("#",), {}), (("orders.#",), {"partitionkey": "customer-8"}),
                               (("_dlq.#", "payments.#"), {}), (("nothing",), {})]:  # fmt: skip
        w = window(*topics, attributes=attributes)
        assert _queries.count_events_in_window(loaded.client, w) == len(
            list(events_in_window(loaded.client, w))
        )
    with pytest.raises(InvalidQuery, match="expected an EventWindow"):
        _queries.count_events_in_window(loaded.client, "orders.#")  # type: ignore[arg-type]
