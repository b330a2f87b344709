"""The ClickHouse span exporter: a plain OpenTelemetry SDK exporter into ``meshtap.spans``.

A fresh SDK ``TracerProvider`` per test (CONVENTIONS 8) exports through the capture's
``span_exporter()`` into a real store -- the session's clickhouse-server or chDB in the test's
own directory -- and the rows are read back. The runtime's own spans reach the same exporter
through ``ClickHouseCapture.tracer_provider()`` (tests/test_recorder.py).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags
from prometheus_client import CollectorRegistry

from runtime import CaptureConfig
from tests.servers import ClickHouseServer
from tracing import ClickHouseCapture
from tracing._writer import spooled_rows
from tracing.clickhouse import ClickHouse, Purpose, migrate

ROOT = Path(__file__).resolve().parent.parent
BACKENDS = [pytest.param("server", marks=pytest.mark.clickhouse), "chdb"]
LINKED = SpanContext(
    0x0AF7651916CD43DD8448EB211C80319C,
    0xB7AD6B7169203331,
    is_remote=True,
    trace_flags=TraceFlags(1),
)

SPANS = """
SELECT trace_id, span_id, parent_span_id, name, kind, service_name, scope_name, start_ns,
       end_ns, duration_ns, start_at, status_code, status_message, attr_keys, attr_values,
       resource_keys, resource_values, event_names, event_times_ns, event_attrs,
       link_trace_ids, link_span_ids, link_attrs
FROM meshtap.spans
ORDER BY start_ns
"""
COLUMNS = [c.strip() for c in SPANS.split("SELECT")[1].split("FROM")[0].split(",")]


@pytest.fixture(params=BACKENDS)
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "server":
        server: ClickHouseServer = request.getfixturevalue("clickhouse_server")
        with ClickHouse.open(server.url) as client:
            migrate(client)
        yield server.url
    else:
        yield f"chdb://{tmp_path / 'chdb'}"


def stored_spans(url: str) -> dict[str, dict[str, Any]]:
    with ClickHouse.open(url) as client:
        rows = client.execute(SPANS, purpose=Purpose.QUERY)
    return {row["name"]: row for row in (dict(zip(COLUMNS, r, strict=True)) for r in rows)}


def pairs(row: dict[str, Any], keys: str, values: str) -> dict[str, str]:
    return dict(zip(row[keys], row[values], strict=True))


def make_spans(provider: TracerProvider) -> None:
    """An application's trace: a server span, a producer child with an event, a link and an
    error, and a client child."""
    tracer = provider.get_tracer("shop.checkout", "1.2.3")
    with tracer.start_as_current_span(
        "POST /pay",
        kind=SpanKind.SERVER,
        attributes={
            "http.route": "/pay",
            "retry": True,
            "http.response.status_code": 502,
            "ratio": 1.5,
            "tags": ["a", "b"],
            "codes": [1, 2],
            "note": "grüße",
        },
    ):
        with tracer.start_as_current_span(
            "publish orders",
            kind=SpanKind.PRODUCER,
            links=[Link(LINKED, {"why": "retry-of", "n": 2})],
        ) as producer:
            producer.add_event("queued", {"depth": 3, "tags": ["x"]})
            producer.set_status(Status(StatusCode.ERROR, "broker said no"))
        with tracer.start_as_current_span("SELECT orders", kind=SpanKind.CLIENT):
            pass


def finished(count: int = 3) -> list[ReadableSpan]:
    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "checkout"}))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("t")
    for i in range(count):
        with tracer.start_as_current_span(f"span-{i}"):
            pass
    provider.shutdown()
    return list(memory.get_finished_spans())


async def test_spans_are_stored_with_parents_kinds_attributes_events_and_links(
    url: str, tmp_path: Path
) -> None:
    capture = ClickHouseCapture(CaptureConfig(url=url, spool_dir=str(tmp_path / "spool")))
    await capture.start()
    provider = TracerProvider(
        resource=Resource.create({"service.name": "checkout", "deployment.environment": "qa"})
    )
    provider.add_span_processor(SimpleSpanProcessor(capture.span_exporter()))
    make_spans(provider)
    provider.shutdown()
    await capture.close()

    spans = stored_spans(url)
    assert set(spans) == {"POST /pay", "publish orders", "SELECT orders"}
    server, producer, client = spans["POST /pay"], spans["publish orders"], spans["SELECT orders"]
    assert server["parent_span_id"] == ""
    assert producer["parent_span_id"] == client["parent_span_id"] == server["span_id"]
    assert producer["trace_id"] == client["trace_id"] == server["trace_id"]
    assert len(server["trace_id"]) == 32
    assert len(server["span_id"]) == 16
    assert [s["kind"] for s in (server, producer, client)] == ["server", "producer", "client"]
    assert [s["status_code"] for s in (server, producer, client)] == ["unset", "error", "unset"]
    assert producer["status_message"] == "broker said no"
    assert server["service_name"] == "checkout"
    assert server["scope_name"] == "shop.checkout"
    resource = pairs(server, "resource_keys", "resource_values")
    assert resource["deployment.environment"] == "qa"
    assert resource["telemetry.sdk.language"] == "python"
    assert pairs(server, "attr_keys", "attr_values") == {
        "http.route": "/pay",
        "retry": "true",
        "http.response.status_code": "502",
        "ratio": "1.5",
        "tags": '["a","b"]',
        "codes": "[1,2]",
        "note": "grüße",
    }
    for span in spans.values():
        assert span["end_ns"] >= span["start_ns"] > 1_700_000_000 * 10**9
        assert span["duration_ns"] == span["end_ns"] - span["start_ns"]
        assert span["start_at"].timestamp() == span["start_ns"] // 10**9
    assert producer["event_names"] == ["queued"]
    assert producer["start_ns"] <= producer["event_times_ns"][0] <= producer["end_ns"]
    assert [json.loads(a) for a in producer["event_attrs"]] == [{"depth": "3", "tags": '["x"]'}]
    assert producer["link_trace_ids"] == ["0af7651916cd43dd8448eb211c80319c"]
    assert producer["link_span_ids"] == ["b7ad6b7169203331"]
    assert [json.loads(a) for a in producer["link_attrs"]] == [{"why": "retry-of", "n": "2"}]
    assert (server["event_names"], server["link_trace_ids"]) == ([], [])
    with ClickHouse.open(url) as ch:
        by_trace = ch.execute(
            "SELECT name FROM meshtap.spans_by_trace WHERE trace_id = %(t)s ORDER BY start_ns",
            {"t": server["trace_id"]},
            purpose=Purpose.QUERY,
        )
    assert by_trace == [("POST /pay",), ("publish orders",), ("SELECT orders",)]


@pytest.mark.clickhouse
async def test_export_never_raises_while_clickhouse_is_down_and_the_spool_keeps_the_spans(
    fresh_clickhouse_server: ClickHouseServer, tmp_path: Path
) -> None:
    server = fresh_clickhouse_server
    with ClickHouse.open(server.url) as client:
        migrate(client)
    await asyncio.to_thread(server.stop)
    spool = tmp_path / "spool"
    capture = ClickHouseCapture(CaptureConfig(url=server.url, spool_dir=str(spool)))
    await capture.start()  # starts anyway, and spools
    exporter = capture.span_exporter()
    spans = finished(5)
    assert exporter.export(spans) is SpanExportResult.SUCCESS
    assert exporter.force_flush(5_000) is True  # written to the spool, the only place it can go
    assert spooled_rows(spool) == {"spans": 5}
    exporter.shutdown()
    exporter.shutdown()  # idempotent
    assert exporter.export(spans) is SpanExportResult.FAILURE  # after shutdown, as the SDK's do
    started = time.monotonic()
    await capture.close()  # one last try, then stop: the backoff does not hold up close
    assert time.monotonic() - started < 3.0
    assert spooled_rows(spool) == {"spans": 5}

    await asyncio.to_thread(server.start)
    replay = ClickHouseCapture(CaptureConfig(url=server.url, spool_dir=str(spool)))
    await replay.start()
    await replay.close()
    assert set(stored_spans(server.url)) == {f"span-{i}" for i in range(5)}
    assert spooled_rows(spool) == {}


async def test_beyond_the_hard_bound_export_fails_and_counts_the_drops(tmp_path: Path) -> None:
    capture = ClickHouseCapture(
        CaptureConfig(url=f"chdb://{tmp_path / 'chdb'}", spool_dir=str(tmp_path), max_buffered=3)
    )
    registry = CollectorRegistry()
    registry.register(capture.collector())
    # Not started: nothing is written, so the bound is reached at once.
    assert capture.span_exporter().export(finished(5)) is SpanExportResult.FAILURE
    assert (
        registry.get_sample_value(
            "meshtap_capture_dropped_rows_total", {"table": "spans", "reason": "overflow"}
        )
        == 2
    )
    await capture.close()  # what was taken is kept in the spool
    assert spooled_rows(tmp_path) == {"spans": 3}


_NO_SPANS_ABOUT_ITSELF = """
import asyncio, sys
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

memory = InMemorySpanExporter()
everything = TracerProvider()
everything.add_span_processor(SimpleSpanProcessor(memory))
trace.set_tracer_provider(everything)  # catches every ClickHouse client span in this process

from runtime import CaptureConfig
from tracing import ClickHouseCapture
from tracing.clickhouse import ClickHouse

async def main():
    url = "chdb://" + sys.argv[1]
    capture = ClickHouseCapture(CaptureConfig(url=url, spool_dir=sys.argv[2]))
    await capture.start()
    memory.clear()  # start-up's own statements (migrations) may be traced
    with capture.tracer_provider().get_tracer("app").start_as_current_span("work"):
        pass
    await capture.close()
    during = sorted(s.name for s in memory.get_finished_spans())
    with ClickHouse.open(url) as client:
        client.ping()
        stored = client.execute("SELECT name FROM meshtap.spans", purpose=client_purpose())
    after = sorted(s.name for s in memory.get_finished_spans())
    print(during, stored, after)

def client_purpose():
    from tracing.clickhouse import Purpose
    return Purpose.QUERY

asyncio.run(main())
"""


def test_storing_spans_makes_no_spans_about_itself(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-c", _NO_SPANS_ABOUT_ITSELF, str(tmp_path / "chdb"), str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    # While exporting: no INSERT spans. Afterwards, the same client kind does make spans.
    assert result.stdout.strip() == ("[] [('work',)] ['SELECT meshtap', 'SELECT meshtap']"), (
        result.stderr
    )
