"""The capture plugin end to end: a real runtime records into a real ClickHouse.

Every store test runs twice: against the session's clickhouse-server (migrated by the test, as
``manage.py migrate_clickhouse`` would) and against chDB in a directory of the test's own,
which the capture migrates itself. Events are published over the runtime's HTTP API in every
content mode, delivered to a real webhook subscriber (tests/sinks.py) with a retry, and the
runtime's own spans go through the capture's ``tracer_provider()``; what is checked is what
ClickHouse holds once the runtime -- and with it the capture -- has closed. chDB allows one
data directory per process: the capture releases it on close, and the test reads afterwards.
"""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from prometheus_client import CollectorRegistry

from runtime import CaptureConfig, CaptureNotReady, CloudEvent, DeliveryRecord, PublishRecord
from runtime._capture import open_capture
from tests.meshes import event, free_port, running
from tests.servers import ClickHouseServer
from tests.sinks import Push, RecordingSink
from tracing import ClickHouseCapture, RedactionConfigError, trace_by_id
from tracing._rows import DELIVERIES as DELIVERIES_SPEC
from tracing._rows import EVENTS as EVENTS_SPEC
from tracing._rows import (
    TABLES,
    columns_of,
    delivery_columns,
    delivery_parts,
    delivery_row,
    event_columns,
    event_row,
    publish_parts,
    rfc3339_ns,
    traceparent_ids,
)
from tracing._writer import SpoolFormatError, decode_spool, encode_spool
from tracing.clickhouse import ClickHouse, Purpose, migrate, plan

BACKENDS = [pytest.param("server", marks=pytest.mark.clickhouse), "chdb"]
NOT_UTF8 = bytes(range(256)) + b"\xff\xfe\x00\xc3("
FAST_RETRY = {"max_attempts": 3, "initial_backoff_ms": 10, "max_backoff_ms": 10}

EVENTS = """
SELECT event_id, topic, source, type, subject, spec_version, data_content_type, data_schema,
       event_time_ns, published_ns, published_at, partition_key, ext_keys, ext_values, data,
       data_size, producer, protocol, instance, store_offset, trace_id, span_id, replay_id
FROM meshtap.events
ORDER BY published_ns, event_id
"""
EVENT_COLUMNS = [c.strip() for c in EVENTS.split("SELECT")[1].split("FROM")[0].split(",")]

DELIVERIES = """
SELECT event_id, topic, group_name, subscription_id, subscriber, attempt, outcome, status_code,
       error, duration_ns, latency_ns, attempted_ns, attempted_at, instance, trace_id, span_id
FROM meshtap.deliveries
ORDER BY attempted_ns
"""
DELIVERY_COLUMNS = [c.strip() for c in DELIVERIES.split("SELECT")[1].split("FROM")[0].split(",")]

SPANS = """
SELECT trace_id, span_id, parent_span_id, name, kind, service_name, scope_name, start_ns,
       end_ns, duration_ns, status_code, status_message, attr_keys, attr_values, resource_keys,
       resource_values, event_names, event_times_ns, event_attrs, link_trace_ids,
       link_span_ids, link_attrs
FROM meshtap.spans
ORDER BY start_ns
"""
SPAN_COLUMNS = [c.strip() for c in SPANS.split("SELECT")[1].split("FROM")[0].split(",")]

SPANS_OF_TRACE = "SELECT span_id FROM meshtap.spans_by_trace WHERE trace_id = %(trace_id)s"
EVENTS_OF_TRACE = "SELECT event_id FROM meshtap.events_by_trace WHERE trace_id = %(trace_id)s"


# --- fixtures and helpers -------------------------------------------------------------------


@dataclass
class Store:
    kind: str
    url: str
    spool: Path

    def config(self, **overrides: Any) -> CaptureConfig:
        return CaptureConfig(url=self.url, spool_dir=str(self.spool), **overrides)

    def query(self, sql: str, params: dict[str, Any] | None = None, **kw: Any) -> list[Any]:
        with ClickHouse.open(self.url) as client:
            return client.execute(sql, params, purpose=Purpose.QUERY, **kw)

    def dicts(self, sql: str, columns: list[str], **kw: Any) -> list[dict[str, Any]]:
        return [dict(zip(columns, row, strict=True)) for row in self.query(sql, **kw)]


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    """A migrated server, or an empty chDB directory the capture is to migrate itself."""
    if request.param == "server":
        server: ClickHouseServer = request.getfixturevalue("clickhouse_server")
        with ClickHouse.open(server.url) as client:
            migrate(client)
        url = server.url
    else:
        url = f"chdb://{tmp_path / 'chdb'}"
    return Store(request.param, url, tmp_path / "spool")


def by(rows: list[dict[str, Any]], key: str) -> dict[Any, dict[str, Any]]:
    return {row[key]: row for row in rows}


def extensions(row: dict[str, Any]) -> dict[str, str]:
    return dict(zip(row["ext_keys"], row["ext_values"], strict=True))


def one_string(store: Store) -> tuple[str, bytes]:
    """Everything stored in every capture table, as one string (and the data bytes)."""
    text: list[str] = []
    data: list[bytes] = []
    for table in ("events", "deliveries", "spans", "spans_by_trace", "events_by_trace"):
        for row in store.query(f"SELECT * FROM meshtap.{table}"):
            text.append(repr(row))
    for (raw,) in store.query("SELECT data FROM meshtap.events", bytes_columns=("data",)):
        data.append(raw)
    return "\n".join(text), b"\n".join(data)


class FlakySink:
    """Answers 503 to the first push of each id in `fail_once`, 204 to everything else."""

    def __init__(self, fail_once: set[str]) -> None:
        self.fail_once = set(fail_once)

    def __call__(self, push: Push) -> web.Response:
        if push.id in self.fail_once:
            self.fail_once.discard(push.id)
            return web.Response(status=503, text="busy")
        return web.Response(status=204)


async def export_app_spans(port: int, attributes: dict[str, Any]) -> None:
    """An instrumented application's span, sent to the runtime's OTLP/HTTP receiver (from a
    thread: the exporter blocks, and the receiver runs in this event loop)."""
    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "checkout"}))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("shop")
    with tracer.start_as_current_span("POST /pay", kind=SpanKind.SERVER, attributes=attributes):
        pass
    provider.shutdown()
    exporter = OTLPSpanExporter(endpoint=f"http://127.0.0.1:{port}/v1/traces")
    try:
        result = await asyncio.to_thread(exporter.export, memory.get_finished_spans())
    finally:
        exporter.shutdown()  # type: ignore[no-untyped-call]
    assert result is SpanExportResult.SUCCESS


# --- the whole flow ---------------------------------------------------------------------------


async def test_publishes_deliveries_and_spans_are_recorded_in_full(store: Store) -> None:
    sink = await RecordingSink(respond=FlakySink({"s-1"})).start()
    capture = ClickHouseCapture(store.config())
    try:
        async with running(capture=capture, otlp_http_port=free_port()) as (runtime, client):
            group = await client.subscribe(
                topic="orders.#", group="billing", sink=sink.url, retry=FAST_RETRY
            )
            status, _ = await client.publish_binary(
                "orders.bin",
                NOT_UTF8,
                content_type="application/octet-stream",
                id="b-1",
                source="/bin",
                type="blob.stored",
                partitionkey="k-1",
                tenant="acme",
            )
            assert status == 200
            await client.publish(
                "orders.structured",
                event(
                    "s-1",
                    subject="order/1",
                    dataschema="https://example.com/schema",
                    time="2026-01-31T12:00:00.123456Z",
                    partitionkey="k-9",
                    tenant="acme",
                    flag=True,
                    count=7,
                    replayid="r-9",
                ),
            )
            await client.publish("orders.batch", event("a-1"), event("a-2"), event("a-3"))
            status, reply = await client.request("POST", "/webhook/github", data=b'{"ref":"main"}')
            assert status in (200, 202), reply
            webhook_id = reply["accepted"][0]
            pushes = await sink.wait_for(6)
            assert runtime.otlp is not None
            assert runtime.otlp.http_port
            await export_app_spans(runtime.otlp.http_port, {"http.route": "/pay"})
            instance = runtime.config.instance
            http_port = runtime.http_port
    finally:
        await sink.stop()

    events = by(store.dicts(EVENTS, EVENT_COLUMNS, bytes_columns=("data",)), "event_id")
    assert set(events) == {"b-1", "s-1", "a-1", "a-2", "a-3", webhook_id}
    pushed = {p.id: p.body for p in pushes}

    structured = events["s-1"]
    tp = extensions(structured)["traceparent"]
    assert structured == {
        "event_id": "s-1",
        "topic": "orders.structured",
        "source": "/tests",
        "type": "test.event",
        "subject": "order/1",
        "spec_version": "1.0",
        "data_content_type": "application/json",
        "data_schema": "https://example.com/schema",
        "event_time_ns": 1_769_860_800_123_456_000,
        "published_ns": structured["published_ns"],
        "published_at": datetime.fromtimestamp(structured["published_ns"] // 10**9, UTC),
        "partition_key": "k-9",
        "ext_keys": ["count", "flag", "partitionkey", "replayid", "tenant", "traceparent"],
        "ext_values": ["7", "true", "k-9", "r-9", "acme", tp],
        "data": pushed["s-1"],
        "data_size": len(pushed["s-1"]),
        "producer": "127.0.0.1",
        "protocol": "http",
        "instance": instance,
        "store_offset": structured["store_offset"],
        "trace_id": tp.split("-")[1],
        "span_id": tp.split("-")[2],
        "replay_id": "r-9",
    }
    assert structured["published_ns"] > 1_700_000_000 * 10**9
    assert re.fullmatch(r"\d+-\d+", structured["store_offset"])

    binary = events["b-1"]
    assert binary["data"] == NOT_UTF8 == pushed["b-1"]  # byte for byte, through ClickHouse
    assert binary["data_size"] == len(NOT_UTF8)
    assert (binary["partition_key"], binary["data_content_type"]) == (
        "k-1",
        "application/octet-stream",
    )
    assert extensions(binary)["tenant"] == "acme"
    assert binary["event_time_ns"] > 0  # stamped by the runtime
    assert {events[i]["topic"] for i in ("a-1", "a-2", "a-3")} == {"orders.batch"}
    assert len({events[i]["span_id"] for i in ("a-1", "a-2", "a-3")}) == 3  # minted per event
    webhook = events[webhook_id]
    assert (webhook["topic"], webhook["protocol"], webhook["source"]) == (
        "webhook.github",
        "webhook",
        "/webhook/github",
    )
    assert b'"body":"{\\"ref\\":\\"main\\"}"' in webhook["data"]

    deliveries = store.dicts(DELIVERIES, DELIVERY_COLUMNS)
    assert sorted(
        (d["event_id"], d["attempt"], d["outcome"], d["status_code"]) for d in deliveries
    ) == [
        ("a-1", 1, "acked", 204),
        ("a-2", 1, "acked", 204),
        ("a-3", 1, "acked", 204),
        ("b-1", 1, "acked", 204),
        ("s-1", 1, "retry", 503),
        ("s-1", 2, "acked", 204),
    ]
    retried = next(d for d in deliveries if d["outcome"] == "retry")
    assert retried["error"] == "sink answered HTTP 503: busy"
    assert retried["group_name"] == "billing"
    assert retried["subscription_id"] == group["id"]
    assert retried["subscriber"] == sink.url
    assert retried["topic"] == "orders.structured"
    assert retried["instance"].startswith(instance)  # the consumer name: instance + suffix
    assert retried["latency_ns"] >= retried["duration_ns"] > 0
    assert retried["attempted_at"] == datetime.fromtimestamp(retried["attempted_ns"] // 10**9, UTC)

    # The runtime's spans, exported through the capture's tracer provider.
    spans = store.dicts(SPANS, SPAN_COLUMNS)
    runtime_spans = [s for s in spans if s["service_name"] == "meshtap-runtime"]
    by_id = by(runtime_spans, "span_id")
    publish = by_id[binary["span_id"]]  # without a producer context, the publish span is it
    assert (publish["name"], publish["kind"], publish["trace_id"]) == (
        "publish orders.bin",
        "producer",
        binary["trace_id"],
    )
    assert publish["scope_name"] == "meshtap.runtime"
    resource = dict(zip(publish["resource_keys"], publish["resource_values"], strict=True))
    assert resource["service.name"] == "meshtap-runtime"
    assert resource["service.instance.id"] == instance
    attrs = dict(zip(publish["attr_keys"], publish["attr_values"], strict=True))
    assert attrs["messaging.destination.name"] == "orders.bin"
    assert attrs["messaging.message.id"] == "b-1"
    assert attrs["server.port"] == str(http_port)
    assert publish["end_ns"] >= publish["start_ns"] > 0
    assert publish["duration_ns"] == publish["end_ns"] - publish["start_ns"]
    # Every delivery attempt's span is stored, in the event's trace.
    for delivery in deliveries:
        span = by_id[delivery["span_id"]]
        assert span["trace_id"] == delivery["trace_id"] == events[delivery["event_id"]]["trace_id"]
        assert span["kind"] == "consumer"
        assert span["name"] == f"process {delivery['topic']}"
        assert span["parent_span_id"] == events[delivery["event_id"]]["span_id"]
        assert span["status_code"] == ("error" if delivery["outcome"] == "retry" else "unset")
    # The application's span, received over OTLP, is there too.
    (app,) = [s for s in spans if s["service_name"] == "checkout"]
    assert (app["name"], app["kind"], app["scope_name"]) == ("POST /pay", "server", "shop")
    # Trace lookup tables are filled from the same rows.
    trace_spans = {r[0] for r in store.query(SPANS_OF_TRACE, {"trace_id": binary["trace_id"]})}
    assert {publish["span_id"], *(d["span_id"] for d in deliveries if d["event_id"] == "b-1")} <= (
        trace_spans
    )
    assert store.query(EVENTS_OF_TRACE, {"trace_id": binary["trace_id"]}) == [("b-1",)]


async def test_one_trace_shows_the_producer_app_the_mesh_and_the_consumer_app(
    store: Store,
) -> None:
    """An instrumented producer publishes inside its span; the mesh records its publish and
    process spans; the consumer handles the push inside a span continuing the push's
    ``traceparent``; both applications export to the runtime's OTLP receiver. The stored
    trace, read back with ``trace_by_id``, holds all four spans, parent by parent, and the
    event with its delivery."""
    finished = InMemorySpanExporter()
    propagator = TraceContextTextMapPropagator()

    def app_tracer(service: str) -> Any:
        provider = TracerProvider(resource=Resource.create({"service.name": service}))
        provider.add_span_processor(SimpleSpanProcessor(finished))
        return provider.get_tracer(service)

    producer, consumer = app_tracer("checkout"), app_tracer("shipping")

    def ship(push: Push) -> web.Response:
        headers = {k.lower(): v for k, v in push.headers.items()}
        context = propagator.extract({"traceparent": headers["traceparent"]})
        with consumer.start_as_current_span("ship order", context=context, kind=SpanKind.CONSUMER):
            return web.Response(status=204)

    sink = await RecordingSink(respond=ship).start()
    capture = ClickHouseCapture(store.config())
    try:
        async with running(capture=capture, otlp_http_port=free_port()) as (runtime, client):
            await client.subscribe(topic="orders.placed", group="shipping", sink=sink.url)
            with producer.start_as_current_span("POST /checkout", kind=SpanKind.SERVER):
                carrier: dict[str, str] = {}
                propagator.inject(carrier)
                await client.publish(
                    "orders.placed", event("o-1", traceparent=carrier["traceparent"])
                )
            await sink.wait_for(1)
            assert runtime.otlp is not None
            exporter = OTLPSpanExporter(
                endpoint=f"http://127.0.0.1:{runtime.otlp.http_port}/v1/traces"
            )
            try:
                result = await asyncio.to_thread(exporter.export, finished.get_finished_spans())
            finally:
                exporter.shutdown()  # type: ignore[no-untyped-call]
            assert result is SpanExportResult.SUCCESS
    finally:
        await sink.stop()

    trace_id = carrier["traceparent"].split("-")[1]
    with ClickHouse.open(store.url) as ch:
        trace = trace_by_id(ch, trace_id)
    assert trace is not None
    spans = {(s.service_name, s.name): s for s in trace.spans}
    app = spans["checkout", "POST /checkout"]
    publish = spans["meshtap-runtime", "publish orders.placed"]
    process = spans["meshtap-runtime", "process orders.placed"]
    shipped = spans["shipping", "ship order"]
    assert len(trace.spans) == 4, sorted(spans)
    assert app.parent_span_id == ""  # the producer app is the root ...
    assert publish.parent_span_id == app.span_id  # ... the mesh took the event inside it ...
    assert process.parent_span_id == app.span_id  # ... delivered it in the producer's context
    assert shipped.parent_span_id == process.span_id  # ... and the consumer app continued it
    assert (publish.kind, process.kind, shipped.kind) == ("client", "consumer", "consumer")
    (carried,) = trace.events
    assert carried.event.event_id == "o-1"
    assert [(d.group, d.outcome) for d in carried.deliveries] == [("shipping", "acked")]
    assert carried.deliveries[0].span_id == process.span_id


async def test_redacted_values_appear_in_no_stored_row(store: Store) -> None:
    sink = await RecordingSink().start()
    capture = ClickHouseCapture(
        store.config(
            redact_fields=("card.number", "items.*.iban"),
            redact_extensions=("authorization", "customer"),
            redaction_key="test-key",
        )
    )
    secrets = ["4111111111111111", "DE89370400440532013000", "Bearer TOPSECRET", "cust-4711"]
    try:
        async with running(capture=capture, otlp_http_port=free_port()) as (runtime, client):
            await client.subscribe(topic="pay.#", group="audit", sink=sink.url)
            card = {"number": "4111111111111111", "brand": "visa"}
            items = [{"iban": "DE89370400440532013000", "qty": 1}]
            await client.publish(
                "pay.in",
                event("p-1", data={"card": card, "items": items}, authorization="Bearer TOPSECRET"),
                event("p-2", data={"card": card}, customer="cust-4711"),
            )
            status, _ = await client.publish_binary(
                "pay.in",
                b'{"card": {"number": "4111111111111111"}}',
                id="p-3",
                source="/pay",
                type="pay.binary",
                authorization="Bearer TOPSECRET",
            )
            assert status == 200
            await sink.wait_for(3)
            assert runtime.otlp is not None
            assert runtime.otlp.http_port
            await export_app_spans(
                runtime.otlp.http_port,
                {
                    "authorization": "Bearer TOPSECRET",
                    "http.request.header.authorization": ["Bearer TOPSECRET"],
                    "app.customer": "cust-4711",
                    "http.route": "/pay",
                },
            )
    finally:
        await sink.stop()

    text, data = one_string(store)
    for secret in secrets:
        assert secret not in text
        assert secret.encode() not in data
    # What is left is joinable: equal secrets got equal tokens, in every table.
    events = by(store.dicts(EVENTS, EVENT_COLUMNS, bytes_columns=("data",)), "event_id")
    token = extensions(events["p-1"])["authorization"]
    assert token.startswith("redacted:")
    assert extensions(events["p-3"])["authorization"] == token
    p1_card = events["p-1"]["data"].split(b'"number":"')[1].split(b'"')[0]
    p2_card = events["p-2"]["data"].split(b'"number":"')[1].split(b'"')[0]
    assert p1_card == p2_card
    assert p1_card.startswith(b"redacted:")
    assert b'"brand":"visa"' in events["p-1"]["data"]
    (app,) = [s for s in store.dicts(SPANS, SPAN_COLUMNS) if s["service_name"] == "checkout"]
    attrs = dict(zip(app["attr_keys"], app["attr_values"], strict=True))
    assert attrs["authorization"] == token
    assert attrs["http.request.header.authorization"].startswith("redacted:")
    assert attrs["app.customer"] == extensions(events["p-2"])["customer"]
    assert attrs["http.route"] == "/pay"
    # messaging.* attributes are ids the mesh assigns: kept, so traces still join to events.
    publish = [s for s in store.dicts(SPANS, SPAN_COLUMNS) if s["name"] == "publish pay.in"]
    ids = {
        dict(zip(s["attr_keys"], s["attr_values"], strict=True)).get("messaging.message.id")
        for s in publish
    }
    assert "p-3" in ids


# --- start-up -----------------------------------------------------------------------------------


@pytest.mark.clickhouse
async def test_an_unmigrated_server_is_not_ready_and_names_the_command(
    clickhouse_server: ClickHouseServer, tmp_path: Path
) -> None:
    capture = ClickHouseCapture(CaptureConfig(url=clickhouse_server.url, spool_dir=str(tmp_path)))
    with pytest.raises(
        CaptureNotReady, match=r"python manage\.py migrate_clickhouse --url"
    ) as info:
        async with running(capture=capture):
            pass
    assert clickhouse_server.url in str(info.value)
    assert "m0001_initial" in str(info.value)


async def test_chdb_migrates_itself_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    url = f"chdb://{tmp_path / 'chdb'}"
    config = CaptureConfig(url=url, spool_dir=str(tmp_path / "spool"))
    caplog.set_level(logging.INFO, logger="meshtap.capture")
    for _ in range(2):
        async with running(capture=ClickHouseCapture(config)) as (_, client):
            await client.publish("t", event("e-1"))
    assert [r.message for r in caplog.records if "migrated chDB" in r.message] == [
        f"capture: migrated chDB at {url} (m0001_initial, m0002_skip_indexes)"
    ]
    with ClickHouse.open(url) as client:
        assert plan(client) == []
        rows = client.execute("SELECT count() FROM meshtap.events", purpose=Purpose.QUERY)
    assert rows == [(2,)]


def test_the_entry_points_build_the_capture_and_bad_config_says_what_to_fix(
    tmp_path: Path,
) -> None:
    for url in (f"chdb://{tmp_path}/chdb", "clickhouse://127.0.0.1:9000/meshtap"):
        assert isinstance(open_capture(CaptureConfig(url=url)), ClickHouseCapture)
    with pytest.raises(RedactionConfigError, match="--redaction-key"):
        ClickHouseCapture(CaptureConfig(url=f"chdb://{tmp_path}", redact_fields=("card",)))
    with pytest.raises(ValueError, match=r"unknown capture option\(s\) \['batch'\]"):
        ClickHouseCapture(CaptureConfig(url=f"chdb://{tmp_path}", options={"batch": 1}))
    with pytest.raises(ValueError, match="batch_rows='many' is not a number"):
        ClickHouseCapture(CaptureConfig(url=f"chdb://{tmp_path}", options={"batch_rows": "many"}))
    with pytest.raises(ValueError, match="not between 0 and 1"):
        ClickHouseCapture(CaptureConfig(url=f"chdb://{tmp_path}", span_sample_ratio=2.0))
    with pytest.raises(ValueError, match="OTLP export endpoint 'jaeger:4318'"):
        ClickHouseCapture(CaptureConfig(url=f"chdb://{tmp_path}", otlp_export="jaeger:4318"))
    with pytest.raises(ValueError, match="clickhouse://host:9000/meshtap"):
        ClickHouseCapture(CaptureConfig(url="postgres://x"))


async def test_a_bad_url_fails_at_start_with_what_to_write(tmp_path: Path) -> None:
    capture = ClickHouseCapture(CaptureConfig(url="chdb://relative/dir", spool_dir=str(tmp_path)))
    with pytest.raises(ValueError, match="chdb:///var/lib/meshtap/chdb"):
        await capture.start()
    await capture.close()


# --- metrics, sampling, OTLP export -------------------------------------------------------------


async def test_the_collector_reports_rows_written_and_nothing_pending(store: Store) -> None:
    capture = ClickHouseCapture(store.config())
    registry = CollectorRegistry()
    registry.register(capture.collector())  # what the runtime does with its own registry
    async with running(capture=capture) as (_, client):
        await client.publish("orders.m", *[event(f"e-{i}") for i in range(25)])

    def sample(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, labels)

    assert sample("meshtap_capture_rows_written_total", table="events") == 25
    assert sample("meshtap_capture_buffered_rows", table="events") == 0
    assert sample("meshtap_capture_spooled_rows", table="events") == 0
    assert sample("meshtap_capture_dropped_rows_total", table="events", reason="overflow") == 0
    assert sample("meshtap_capture_clickhouse_up") == 1
    assert (sample("meshtap_capture_insert_duration_seconds_count", table="events") or 0) >= 1
    assert (sample("meshtap_capture_rows_written_total", table="spans") or 0) >= 1
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        registry.register(capture.collector())


async def test_sampling_thins_spans_but_never_events_or_deliveries(store: Store) -> None:
    sink = await RecordingSink().start()
    try:
        capture = ClickHouseCapture(store.config(span_sample_ratio=0.0))
        async with running(capture=capture) as (_, client):
            await client.subscribe(topic="orders", group="g", sink=sink.url)
            await client.publish("orders", *[event(f"e-{i}") for i in range(10)])
            await sink.wait_for(10)
    finally:
        await sink.stop()
    assert store.query("SELECT count() FROM meshtap.events") == [(10,)]
    assert store.query("SELECT count() FROM meshtap.deliveries") == [(10,)]
    assert store.query("SELECT count() FROM meshtap.spans") == [(0,)]


async def test_runtime_spans_also_go_to_an_otlp_endpoint(tmp_path: Path) -> None:
    collector = await RecordingSink().start()  # stands in for Jaeger / Tempo's OTLP/HTTP port
    try:
        capture = ClickHouseCapture(
            CaptureConfig(
                url=f"chdb://{tmp_path / 'chdb'}",
                spool_dir=str(tmp_path / "spool"),
                otlp_export=f"http://127.0.0.1:{collector.port}",
                service_name="mesh-eu",
            )
        )
        async with running(capture=capture) as (_, client):
            await client.publish("orders", event("e-1"))
    finally:
        await collector.stop()
    assert {p.path for p in collector.pushes} == {"/v1/traces"}
    names = []
    for push in collector.pushes:
        request = ExportTraceServiceRequest.FromString(push.body)
        for resource_spans in request.resource_spans:
            service = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
            assert service["service.name"] == "mesh-eu"
            names += [s.name for ss in resource_spans.scope_spans for s in ss.spans]
    assert names == ["publish orders"]
    with ClickHouse.open(f"chdb://{tmp_path / 'chdb'}") as client:
        stored = client.execute(
            "SELECT name, service_name FROM meshtap.spans", purpose=Purpose.QUERY
        )
    assert stored == [("publish orders", "mesh-eu")]


# --- conversion and the spool format (pure) -----------------------------------------------------


def publish_record(event_: CloudEvent, **over: Any) -> PublishRecord:
    fields: dict[str, Any] = {
        "event": event_,
        "topic": "t",
        "offset": "1-0",
        "published_ns": 1_769_860_800_000_000_007,
        "producer": "p",
        "protocol": "http",
        "instance": "i",
    }
    fields.update(over)
    return PublishRecord(**fields)


def test_event_rows_keep_every_attribute_and_clamp_what_would_not_fit() -> None:
    attributes: dict[str, str | int | bool] = {
        "specversion": "1.0",
        "id": "e-\ud800",  # a lone surrogate cannot be UTF-8: replaced, never an insert error
        "source": "/s",
        "type": "t",
        "time": "2026-01-31T14:00:00.123456789+02:00",
        "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        "on": False,
    }
    row = dict(
        zip(EVENTS_SPEC.columns, event_row(publish_record(CloudEvent(attributes))), strict=True)
    )
    assert row["event_id"] == "e-?"
    assert row["event_time_ns"] == 1_769_860_800_123_456_789
    assert (row["trace_id"], row["span_id"]) == (
        "0af7651916cd43dd8448eb211c80319c",
        "b7ad6b7169203331",
    )
    assert (row["ext_keys"], row["ext_values"]) == (
        ["on", "traceparent"],
        ["false", attributes["traceparent"]],
    )
    assert (row["data"], row["data_size"]) == (b"", 0)
    assert row["published_at"] == 1_769_860_800
    for bad in (
        "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        "00-" + "0" * 32 + "-b7ad6b7169203331-01",
        "nope",
    ):
        assert traceparent_ids(bad) == ("", "")
    assert rfc3339_ns("1969-12-31T23:59:59Z") == 0
    assert rfc3339_ns("2026-01-31") == 0
    late = dict(
        zip(
            EVENTS_SPEC.columns,
            event_row(publish_record(CloudEvent(attributes), published_ns=-5)),
            strict=True,
        )
    )
    assert (late["published_ns"], late["published_at"]) == (0, 0)


def test_batches_convert_column_by_column_exactly_as_row_by_row() -> None:
    """The writer converts whole batches (``event_columns``/``delivery_columns``, fast paths
    for plain ASCII); every value rule of the row functions holds for them too, whichever
    record in the batch breaks the fast path."""
    plain: dict[str, Any] = {"specversion": "1.0", "id": "p", "source": "/s", "type": "t"}
    odd = [
        {**plain, "id": "e-\ud800", "subject": "caf\u00e9", "tenant": "\u00e9t\u00e9"},
        {**plain, "time": "2026-01-31T14:00:00.1+02:00", "count": 7, "on": True, "ratio": 0.5},
        {**plain, "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"},
        *(
            {**plain, "traceparent": tp}
            for tp in (
                "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",  # upper case
                "00-" + "0" * 32 + "-b7ad6b7169203331-01",
                "00-0af7651916cd43dd8448eb211c80319c-" + "0" * 16 + "-01",
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-0g",
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-x",
                "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-x",
                "00_0af7651916cd43dd8448eb211c80319c_b7ad6b7169203331_01",
                "00-0af7651916cd43dd8448eb211c8031-c-b7ad6b7169203331-01",
            )
        ),
        {**plain, "partitionkey": "k", "replayid": "r", "dataschema": "s", "\u00e9x": "v"},
    ]
    records = [publish_record(CloudEvent(plain, b"x"), topic="ascii")]
    records += [publish_record(CloudEvent(a, NOT_UTF8)) for a in odd]
    records += [
        publish_record(CloudEvent(plain), published_ns=-5, topic="t\u00e9", producer="\ud800"),
        publish_record(CloudEvent(plain), published_ns=1 << 70),
    ]
    for batch in ([records[0]], records, records[::-1]):
        expected = columns_of([event_row(r) for r in batch], len(EVENTS_SPEC.columns))
        assert event_columns([publish_parts(r) for r in batch]) == expected
    deliveries = [
        DeliveryRecord(
            event_id=f"e-{i}",
            topic="t\u00e9" if i == 1 else "t",
            group="g",
            subscription_id="s",
            subscriber="http://sink",
            attempt=attempt,
            outcome="retry",
            status_code=status,
            error="\ud800" if i == 2 else "",
            duration_ns=-1 if i == 3 else 5,
            latency_ns=1 << 70,
            attempted_ns=1_769_860_800_000_000_007,
            instance="i",
        )
        for i, (attempt, status) in enumerate([(1, 503), (70_000, 70_000), (2, 0), (3, 204)])
    ]
    for batch in (deliveries[:1], deliveries):
        expected = columns_of([delivery_row(d) for d in batch], len(DELIVERIES_SPEC.columns))
        assert delivery_columns([delivery_parts(d) for d in batch]) == expected


def test_spool_files_round_trip_byte_exact_and_refuse_what_they_cannot_trust() -> None:
    attributes: dict[str, str | int | bool] = {
        "specversion": "1.0",
        "id": "e",
        "source": "/s",
        "type": "t",
        "x": "ü",
    }
    rows = [event_row(publish_record(CloudEvent(attributes, NOT_UTF8))) for _ in range(3)]
    data = encode_spool(EVENTS_SPEC, rows, created_ns=42, writer="test")
    assert data[:8] == b"\x89MSPOOL\n"
    batch = decode_spool(data, TABLES)
    assert (batch.table, batch.created_ns, batch.rows) == ("events", 42, rows)
    assert batch.rows[0][EVENTS_SPEC.columns.index("data")] == NOT_UTF8
    damaged = bytearray(data)
    damaged[len(damaged) // 2] ^= 0xFF
    with pytest.raises(SpoolFormatError, match="checksum"):
        decode_spool(bytes(damaged), TABLES)
    newer = bytearray(data)
    newer[8] = 2
    with pytest.raises(SpoolFormatError, match="format version 2") as info:
        decode_spool(bytes(newer), TABLES)
    assert info.value.version == 2
    with pytest.raises(SpoolFormatError, match="truncated"):
        decode_spool(data[:20], TABLES)
