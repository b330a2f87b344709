"""Capture under faults: ClickHouse stops, crashes and comes back; the recorder loses nothing,
duplicates nothing, and never holds up publishing.

Each test has a clickhouse-server of its own (``fresh_clickhouse_server``) to stop, kill and
restart, and a runtime publishing over HTTP (in-process, or ``python -m runtime`` as a child
process for the crash case). Server stops and restarts run in a thread so the event loop --
and with it publishing -- carries on meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import re
import signal
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest
from prometheus_client import CollectorRegistry

from runtime import CaptureConfig
from tests.meshes import Client, RuntimeProcess, event, running
from tests.servers import ClickHouseServer
from tracing import ClickHouseCapture
from tracing._rows import EVENTS, TABLES
from tracing._writer import SPOOL_SUFFIX, decode_spool, spooled_rows
from tracing.clickhouse import ClickHouse, Purpose, migrate

pytestmark = pytest.mark.clickhouse

COUNTS = "SELECT count(), uniqExact(event_id) FROM meshtap.events"
SPAN_COUNTS = "SELECT count(), uniqExact(trace_id, span_id) FROM meshtap.spans"


def migrated(server: ClickHouseServer) -> ClickHouseServer:
    with ClickHouse.open(server.url) as client:
        migrate(client)
    return server


def query(server: ClickHouseServer, sql: str) -> list[tuple[object, ...]]:
    with ClickHouse.open(server.url) as client:
        return client.execute(sql, purpose=Purpose.QUERY)


def metrics_of(capture: ClickHouseCapture) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(capture.collector())
    return registry


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


async def wait_until(condition: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.05)


async def test_an_outage_mid_stream_loses_nothing_and_duplicates_nothing(
    fresh_clickhouse_server: ClickHouseServer, tmp_path: Path
) -> None:
    server = migrated(fresh_clickhouse_server)
    capture = ClickHouseCapture(CaptureConfig(url=server.url, spool_dir=str(tmp_path / "spool")))
    registry = metrics_of(capture)
    latencies: list[float] = []
    async with running(capture=capture) as (_, client):

        async def publish(first: int, batches: int) -> None:
            for b in range(first, first + batches):
                started = time.perf_counter()
                await client.publish("orders.eu", *[event(f"e-{b}-{i}") for i in range(100)])
                latencies.append(time.perf_counter() - started)
                await asyncio.sleep(0.005)

        await publish(0, 10)  # 1,000 while ClickHouse is up ...
        stopping = asyncio.create_task(asyncio.to_thread(server.stop))
        await publish(10, 10)  # ... 1,000 while it shuts down ...
        await stopping
        await publish(20, 80)  # ... and 8,000 while it is down.
        await wait_until(
            lambda: sample(registry, "meshtap_capture_spooled_rows", table="events"),
            10,
            "batches in the spool",
        )
        assert sample(registry, "meshtap_capture_clickhouse_up") == 0
        await asyncio.to_thread(server.start)
    # Closing replays the spool: each batch's keys are looked up first, so the batches the
    # server took while it was shutting down are not written twice.
    assert query(server, COUNTS) == [(10_000, 10_000)]
    spans, distinct_spans = query(server, SPAN_COUNTS)[0]
    assert spans == distinct_spans
    assert isinstance(spans, int)
    assert spans >= 100  # one publish span per batch request
    assert spooled_rows(tmp_path / "spool") == {}
    assert sample(registry, "meshtap_capture_rows_spooled_total", table="events") > 0
    assert (
        sample(registry, "meshtap_capture_dropped_rows_total", table="events", reason="overflow")
        == 0
    )
    # Every row was confirmed once: by its insert, or -- when the server took an insert but the
    # answer never came -- found stored when its spooled batch was replayed.
    assert (
        sample(registry, "meshtap_capture_rows_written_total", table="events")
        + sample(registry, "meshtap_capture_deduplicated_rows_total", table="events")
        == 10_000
    )
    assert max(latencies) < 1.0, f"a publish took {max(latencies):.2f}s while ClickHouse was away"


async def test_a_new_capture_replays_the_spool_a_crashed_runtime_left(
    fresh_clickhouse_server: ClickHouseServer, tmp_path: Path
) -> None:
    server = migrated(fresh_clickhouse_server)
    spool = tmp_path / "spool"
    child = RuntimeProcess(["--capture", server.url, "--capture-spool-dir", str(spool)])
    await child.start()
    try:
        server.kill()  # ClickHouse crashes first ...
        async with aiohttp.ClientSession() as session:
            client = Client(child.url, session)
            for b in range(20):
                await client.publish("orders.eu", *[event(f"e-{b}-{i}") for i in range(100)])
        await wait_until(
            lambda: (
                spooled_rows(spool).get("events") == 2_000
                and spooled_rows(spool).get("spans", 0) >= 20
            ),
            15,
            "2,000 events and their publish spans in the spool",
        )
        child.signal(signal.SIGKILL)  # ... then the runtime: no close, no flush
        await child.wait()
    finally:
        child.kill()
    await asyncio.to_thread(server.start)

    # Crash between "insert succeeded" and "file removed": half of one batch is stored already.
    oldest = sorted(p for p in spool.iterdir() if p.name.endswith(f".events{SPOOL_SUFFIX}"))[0]
    batch = decode_spool(oldest.read_bytes(), TABLES)
    half = batch.rows[: len(batch.rows) // 2]
    with ClickHouse.open(server.url) as ch:
        ch.insert("events", EVENTS.columns, [list(c) for c in zip(*half, strict=True)])

    capture = ClickHouseCapture(CaptureConfig(url=server.url, spool_dir=str(spool)))
    registry = metrics_of(capture)
    await capture.start()
    await capture.close()
    assert query(server, COUNTS) == [(2_000, 2_000)]
    spans, distinct_spans = query(server, SPAN_COUNTS)[0]
    assert spans == distinct_spans
    assert spans != 0
    assert sample(registry, "meshtap_capture_deduplicated_rows_total", table="events") == len(half)
    assert spooled_rows(spool) == {}


async def test_beyond_the_hard_bound_rows_are_dropped_counted_and_logged_never_blocking(
    fresh_clickhouse_server: ClickHouseServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server = migrated(fresh_clickhouse_server)
    await asyncio.to_thread(server.stop)
    caplog.set_level(logging.INFO, logger="meshtap.capture")
    capture = ClickHouseCapture(
        CaptureConfig(
            url=server.url,
            spool_dir=str(tmp_path / "spool"),
            max_buffered=50,
            span_sample_ratio=0.0,  # events only, so the bound's arithmetic is exact
        )
    )
    registry = metrics_of(capture)
    started = time.perf_counter()
    async with running(capture=capture) as (_, client):
        for b in range(10):
            accepted = await client.publish("orders", *[event(f"e-{b}-{i}") for i in range(50)])
            assert len(accepted) == 50  # publishing never fails for capture's sake
        publish_time = time.perf_counter() - started
        dropped = sample(
            registry, "meshtap_capture_dropped_rows_total", table="events", reason="overflow"
        )
        assert dropped == 450
        await asyncio.to_thread(server.start)
    assert publish_time < 5.0
    assert query(server, COUNTS) == [(50, 50)]
    messages = [r.getMessage() for r in caplog.records]
    assert any("does not answer" in m and "starting anyway" in m for m in messages), messages
    logged = [re.search(r"capture dropped rows \(overflow\): (\d+) events", m) for m in messages]
    assert sum(int(m.group(1)) for m in logged if m) == 450, messages  # the first one at once


async def test_a_server_back_without_its_schema_keeps_the_rows_until_migrated(
    fresh_clickhouse_server: ClickHouseServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server = fresh_clickhouse_server
    await asyncio.to_thread(server.stop)
    capture = ClickHouseCapture(
        CaptureConfig(url=server.url, spool_dir=str(tmp_path / "spool"), span_sample_ratio=0.0)
    )
    async with running(capture=capture) as (_, client):
        await client.publish("orders", *[event(f"e-{i}") for i in range(30)])
        await wait_until(lambda: spooled_rows(tmp_path / "spool"), 5, "the spool")
        await asyncio.to_thread(server.start)  # up, but nobody ran migrate_clickhouse yet
        await asyncio.sleep(1.0)
        assert spooled_rows(tmp_path / "spool") == {"events": 30}
        await asyncio.to_thread(migrated, server)
    assert query(server, COUNTS) == [(30, 30)]


async def test_a_batch_clickhouse_refuses_for_good_is_kept_aside_and_counted(
    clickhouse_server: ClickHouseServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server = migrated(clickhouse_server)
    with ClickHouse.open(server.url) as client:  # a schema changed by hand, behind our back
        client.execute(
            "ALTER TABLE meshtap.events DROP COLUMN data_schema", purpose=Purpose.MIGRATE
        )
    spool = tmp_path / "spool"
    capture = ClickHouseCapture(
        CaptureConfig(url=server.url, spool_dir=str(spool), span_sample_ratio=0.0)
    )
    registry = metrics_of(capture)
    async with running(capture=capture) as (_, client):
        await client.publish("orders", *[event(f"e-{i}") for i in range(5)])
    assert (
        sample(registry, "meshtap_capture_dropped_rows_total", table="events", reason="rejected")
        == 5
    )
    (kept,) = (spool / "rejected").iterdir()  # not retried forever, not thrown away
    batch = decode_spool(kept.read_bytes(), TABLES)
    assert sorted(row[0] for row in batch.rows) == [f"e-{i}" for i in range(5)]
    assert spooled_rows(spool) == {}
    assert any(
        "ClickHouse refused a batch of 5 events rows" in r.getMessage() for r in caplog.records
    )


@pytest.mark.parametrize("writer", ["process", "thread"])
async def test_an_outage_is_one_clear_log_line_not_a_traceback_per_retry(
    fresh_clickhouse_server: ClickHouseServer,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    writer: str,
) -> None:
    server = migrated(fresh_clickhouse_server)
    caplog.set_level(logging.DEBUG)  # everything, the driver's own loggers included
    capture = ClickHouseCapture(
        CaptureConfig(
            url=server.url,
            spool_dir=str(tmp_path / "spool"),
            span_sample_ratio=0.0,
            options={"writer": writer, "flush_interval_ms": 50},
        )
    )
    async with running(capture=capture) as (_, client):
        await client.publish("orders", event("before"))
        assert await capture.flush(20)
        await asyncio.to_thread(server.stop)
        for i in range(30):  # a batch every 100 ms: many failed attempts to reach ClickHouse
            await client.publish("orders", event(f"during-{i}"))
            await asyncio.sleep(0.1)
        await asyncio.to_thread(server.start)
    assert query(server, COUNTS) == [(31, 31)]
    driver = [r for r in caplog.records if r.name.startswith("clickhouse_driver")]
    assert [r.getMessage() for r in driver if r.levelno >= logging.WARNING] == []
    assert not any(r.exc_info for r in caplog.records), "a traceback was logged"
    capture_lines = [r.getMessage() for r in caplog.records if r.name == "meshtap.capture"]
    assert sum("cannot write to ClickHouse" in m for m in capture_lines) == 1, capture_lines
    assert any("answers again" in m for m in capture_lines), capture_lines
