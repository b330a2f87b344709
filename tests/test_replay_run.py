"""Replaying recorded traffic into real meshes: same mesh, another mesh, failures, pause and
resume, and a worker killed mid-replay that resumes without sending any event twice.

Originals are recorded the real way -- published through a runtime whose capture writes into
clickhouse-server -- and replayed through the mesh's HTTP API; a real subscriber receives them.
"""

from __future__ import annotations

import asyncio
import base64
import json
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from replay import (
    Command,
    FileJobStore,
    HttpTarget,
    MemoryJobStore,
    ReplaySpec,
    dry_run,
    replayed_id,
    run_replay,
)
from runtime import CaptureConfig
from runtime._server import Runtime
from tests.meshes import ROOT, Client, free_port, running
from tests.servers import ClickHouseServer
from tests.sinks import RecordingSink
from tracing import ClickHouseCapture, EventRow
from tracing.clickhouse import ClickHouse, Purpose, migrate

pytestmark = pytest.mark.clickhouse

N = 120
KEYS = 6
COUNT_REPLAYED = """
SELECT count(), uniqExact(event_id) FROM meshtap.events WHERE replay_id = %(replay_id)s
"""
COUNT_ORIGINALS = "SELECT count() FROM meshtap.events WHERE replay_id = ''"


@dataclass
class Recorded:
    runtime: Runtime
    client: Client
    store: ClickHouse
    url: str
    since: datetime
    until: datetime
    sink: RecordingSink

    def spec(self, **kwargs: Any) -> ReplaySpec:
        kwargs.setdefault("topics", ("orders.#",))
        return ReplaySpec(since=self.since, until=self.until, **kwargs)

    def count(self, sql: str, **params: Any) -> Any:
        return self.store.execute(sql, params, purpose=Purpose.QUERY)[0]


async def wait_until(check: Any, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(0.1)


def originals() -> list[dict[str, Any]]:
    events = []
    for n in range(N):
        events.append(
            {
                "specversion": "1.0",
                "id": f"o-{n:03d}",
                "source": "/shop",
                "type": "order.created" if n % 3 else "order.paid",
                "subject": f"order/{n}",
                "time": "2026-11-26T10:00:00.5Z",
                "partitionkey": f"customer-{n % KEYS}",
                "tenant": "acme",
                "datacontenttype": "application/octet-stream",
                "data_base64": base64.b64encode(bytes([n % 256, 0, 255]) + b" x ").decode(),
            }
        )
    return events


@pytest.fixture
async def recorded(clickhouse_server: ClickHouseServer, tmp_path: Path) -> AsyncIterator[Recorded]:
    """A runtime capturing into clickhouse-server, with N originals recorded over ~1 s on two
    topics, and a subscriber on ``replay.#``."""
    url = clickhouse_server.url
    with ClickHouse.open(url) as admin:
        migrate(admin)
    store = ClickHouse.open(url)
    sink = await RecordingSink().start()
    capture = ClickHouseCapture(CaptureConfig(url=url, spool_dir=str(tmp_path / "spool")))
    try:
        async with running(capture=capture) as (runtime, client):
            await client.subscribe(topic="replay.#", group="qa", sink=sink.url)
            since = datetime.now(UTC) - timedelta(seconds=1)
            events = originals()
            for i in range(0, N, 10):
                topic = "orders.eu" if i % 20 else "orders.us"
                await client.publish(topic, *events[i : i + 10])
                await asyncio.sleep(0.08)
            until = datetime.now(UTC) + timedelta(seconds=1)
            recorded = Recorded(runtime, client, store, url, since, until, sink)
            await wait_until(lambda: recorded.count(COUNT_ORIGINALS)[0] >= N)
            yield recorded
    finally:
        await sink.stop()
        store.close()


def original_rows(recorded: Recorded) -> dict[str, EventRow]:
    return {r.event_id: r for r in dry_run(recorded.store, recorded.spec()).rows()}


def _instant(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def assert_in_key_order(pushes: list[Any]) -> None:
    last: dict[str, str] = {}
    for push in pushes:
        attributes = push.attributes
        key, original = attributes["partitionkey"], attributes["replayoriginalid"]
        assert original > last.get(key, ""), (key, original, last.get(key))
        last[key] = original


async def test_same_mesh_replay_is_faithful_and_traced(recorded: Recorded) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    rows = original_rows(recorded)
    target = HttpTarget(recorded.runtime.http_url)
    try:
        result = await run_replay(
            recorded.store,
            recorded.spec(speed="max"),
            target,
            replay_id="job-faithful",
            tracer=provider.get_tracer("replay"),
        )
    finally:
        await target.close()
    assert (result.status, result.sent, result.failed, result.total) == ("completed", N, 0, N)
    pushes = await recorded.sink.wait_for(N)
    await asyncio.sleep(0.3)
    assert len(pushes) == N
    assert_in_key_order(pushes)
    spans = {s.context.span_id: s for s in exporter.get_finished_spans()}
    for push in pushes:
        attributes = push.attributes
        original = rows[attributes["replayoriginalid"]]
        assert push.path == "/events"
        assert push.body == original.data  # byte for byte
        assert attributes["id"] == replayed_id("job-faithful", original)
        assert attributes["replayid"] == "job-faithful"
        assert attributes["replayoriginaltopic"] == original.topic
        assert attributes["replayoriginaltime"].startswith(original.published.strftime("%Y-%m-%dT"))
        for name in ("source", "type", "subject", "partitionkey", "tenant"):
            assert attributes[name] == original.attributes()[name], name
        assert _instant(attributes["time"]) == _instant(original.attributes()["time"])
        trace_id, span_id = attributes["traceparent"].split("-")[1:3]
        assert trace_id != original.trace_id  # a new trace per replayed event
        span = spans[int(span_id, 16)]
        assert span.name == f"replay replay.{original.topic}"
        assert [(f"{link.context.trace_id:032x}", f"{link.context.span_id:016x}")
                for link in span.links] == [(original.trace_id, original.span_id)]  # fmt: skip
    # The mesh's capture recorded them with their replay id: what resumes and diffs read.
    await wait_until(lambda: recorded.count(COUNT_REPLAYED, replay_id="job-faithful")[0] >= N)
    provider.shutdown()


async def test_another_mesh_at_10x_keeps_key_order(recorded: Recorded) -> None:
    sink = await RecordingSink().start()
    try:
        async with running() as (other, other_client):
            await other_client.subscribe(topic="staging.#", group="qa", sink=sink.url)
            target = HttpTarget(other.http_url)
            spec = recorded.spec(speed="10x", to_prefix="staging.", allow_production=True)
            result = await run_replay(recorded.store, spec, target, replay_id="job-10x")
            await target.close()
            assert (result.status, result.sent) == ("completed", N)
            assert result.duration_s < 5
            assert result.timing_p50_ms < 50
            pushes = await sink.wait_for(N)
            assert {p.attributes["replayoriginaltopic"] for p in pushes} == {
                "orders.eu",
                "orders.us",
            }
            assert_in_key_order(pushes)
    finally:
        await sink.stop()


async def test_unreachable_target_fails_with_the_reason_and_resumes(recorded: Recorded) -> None:
    job = MemoryJobStore()
    down = HttpTarget(f"http://127.0.0.1:{free_port()}")
    result = await run_replay(
        recorded.store, recorded.spec(speed="max"), down, replay_id="job-down", job=job
    )
    await down.close()
    assert result.status == "failed"
    assert result.retryable
    assert "is unreachable" in result.error
    assert down.url in result.error
    assert result.sent == 0
    assert job.progress is not None
    assert job.progress.status == "failed"
    up = HttpTarget(recorded.runtime.http_url)
    resumed = await run_replay(
        recorded.store, recorded.spec(speed="max"), up, replay_id="job-down", job=job
    )
    await up.close()
    assert (resumed.status, resumed.sent) == ("completed", N)
    assert len(await recorded.sink.wait_for(N)) == N


async def test_pause_resume_and_cancel(recorded: Recorded) -> None:
    job = MemoryJobStore()
    target = HttpTarget(recorded.runtime.http_url)
    spec = recorded.spec(speed="100/s")
    task = asyncio.create_task(
        run_replay(recorded.store, spec, target, replay_id="job-pause", job=job, tick_s=0.1)
    )
    await asyncio.sleep(0.5)
    job.command = Command.PAUSE
    paused = await task
    assert paused.status == "paused"
    assert 10 < paused.sent < N
    job.command = Command.RUN
    resumed = await run_replay(
        recorded.store, spec, target, replay_id="job-pause", job=job, reconcile=recorded.store
    )
    assert (resumed.status, resumed.sent) == ("completed", N)
    assert resumed.skipped == paused.sent
    await recorded.sink.wait_for(N)
    await asyncio.sleep(0.5)
    assert sorted(p.attributes["replayoriginalid"] for p in recorded.sink.pushes) == sorted(
        f"o-{n:03d}" for n in range(N)
    )
    # Progress was reported at least every tick while running.
    assert len([p for p in job.history if p.status == "running"]) >= 3

    cancel_job = MemoryJobStore()
    task = asyncio.create_task(
        run_replay(recorded.store, spec, target, replay_id="job-cancel", job=cancel_job, tick_s=0.1)
    )
    await asyncio.sleep(0.3)
    cancel_job.command = Command.CANCEL
    cancelled = await task
    await target.close()
    assert cancelled.status == "cancelled"
    assert cancelled.sent < N


async def test_a_killed_worker_resumes_without_sending_any_event_twice(
    recorded: Recorded, tmp_path: Path
) -> None:
    spec = recorded.spec(speed="60/s")  # ~2 s: the kill lands mid-replay
    job_file = tmp_path / "job.json"
    job_file.write_text(
        json.dumps(
            {
                "clickhouse": recorded.url,
                "spec": spec.to_json(),
                "target": recorded.runtime.http_url,
                "replay_id": "job-kill",
            }
        )
    )
    worker = subprocess.Popen(
        [sys.executable, "-m", "tests.replay_worker", str(job_file)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    checkpoint = FileJobStore(str(job_file) + ".checkpoint")
    try:
        await wait_until(lambda: len(recorded.sink.pushes) >= N // 3, timeout=30)
        worker.send_signal(signal.SIGKILL)
        worker.wait(timeout=10)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
        assert worker.stdout is not None
        output = worker.stdout.read().decode()
        worker.stdout.close()
    assert worker.returncode == -signal.SIGKILL, output
    before = checkpoint.load()
    assert before is not None
    assert 0 < before.sent < N
    target = HttpTarget(recorded.runtime.http_url)
    resumed = await run_replay(
        recorded.store,
        spec,
        target,
        replay_id="job-kill",
        job=checkpoint,
        reconcile=recorded.store,
    )
    await target.close()
    assert resumed.status == "completed"
    assert resumed.skipped >= before.sent
    await recorded.sink.wait_for(N)
    await asyncio.sleep(1.0)
    originals_seen = [p.attributes["replayoriginalid"] for p in recorded.sink.pushes]
    assert sorted(originals_seen) == sorted(f"o-{n:03d}" for n in range(N))  # each exactly once
    await wait_until(lambda: recorded.count(COUNT_REPLAYED, replay_id="job-kill")[0] >= N)
    await asyncio.sleep(0.5)
    assert recorded.count(COUNT_REPLAYED, replay_id="job-kill") == (N, N)
