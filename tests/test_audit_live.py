"""The audit kinds that need a live mesh: capture health (the runtime's /metrics, ClickHouse,
retention) and replay regression (a real replay into a sandbox, a real system under test that
answers, the outcome diff) -- each passing on a healthy setup and failing on a broken one."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from auditing import AuditContext, AuditResult, run_audit
from runtime import CaptureConfig
from runtime._server import Runtime
from tests.meshes import Client, event, free_port, running
from tests.servers import ClickHouseServer
from tests.sinks import Push, RecordingSink
from tests.test_queries import event as event_row
from tests.test_queries import insert, ns
from tracing import ClickHouseCapture
from tracing.clickhouse import ClickHouse, Purpose, migrate

pytestmark = pytest.mark.clickhouse

CHARGES = "SELECT count() FROM meshtap.events WHERE topic = %(topic)s"


@dataclass
class Mesh:
    runtime: Runtime
    client: Client
    store: ClickHouse
    sink: RecordingSink

    async def audit(self, kind: str, **params: Any) -> AuditResult:
        context = AuditContext(
            self.store, datetime.now(UTC), runtime_url=self.runtime.http_url, retention_days=30
        )
        # The checks are synchronous (HTTP to this runtime, their own replay loop): off the loop.
        result = await asyncio.to_thread(run_audit, kind, params, context)
        assert json.loads(json.dumps(result.to_json())) == result.to_json()
        return result

    def count(self, topic: str) -> int:
        return int(self.store.execute(CHARGES, {"topic": topic}, purpose=Purpose.QUERY)[0][0])


class Billing:
    """The system under test: answers each order with a ``charge.made`` event in the order's
    trace. With ``drift`` on, replayed order 3 is charged a different amount."""

    def __init__(self) -> None:
        self.client: Client | None = None
        self.drift = False

    async def __call__(self, push: Push) -> web.StreamResponse:
        assert self.client is not None
        n = int(json.loads(push.body)["n"].split("-")[1])
        replayed = "replayid" in push.attributes
        amount = n * 10 + (1 if replayed and self.drift and n == 3 else 0)
        status, reply = await self.client.publish_binary(
            ("replay." if replayed else "") + "billing.charged",
            json.dumps({"order": n, "amount": amount}).encode(),
            id=f"charge-{n}-{time.time_ns()}",
            source="/billing",
            type="charge.made",
            traceparent=push.headers["traceparent"],
        )
        assert status == 200, reply
        return web.Response(status=204)


@pytest.fixture
async def mesh(clickhouse_server: ClickHouseServer, tmp_path: Path) -> AsyncIterator[Mesh]:
    url = clickhouse_server.url
    with ClickHouse.open(url) as admin:
        migrate(admin)
    store = ClickHouse.open(url)
    billing = Billing()
    sink = await RecordingSink(respond=billing).start()
    capture = ClickHouseCapture(CaptureConfig(url=url, spool_dir=str(tmp_path / "spool")))
    try:
        async with running(capture=capture) as (runtime, client):
            billing.client = client
            yield Mesh(runtime, client, store, sink)
    finally:
        await sink.stop()
        store.close()


async def test_capture_health(mesh: Mesh) -> None:
    await mesh.client.publish("orders.eu", event("o-1"))
    result = await mesh.audit("capture_health")
    assert result.status == "pass", result
    assert result.summary == "capture healthy"
    assert result.figures["clickhouse_up"] == 1
    assert result.figures["overdue_partitions"] == 0

    # Retention was not applied (a 40-day-old partition) and the runtime's /metrics is gone.
    old = datetime.now(UTC) - timedelta(days=40)
    insert(mesh.store, "events", [event_row("old-1", "orders.eu", ns(old), "")])
    nowhere = f"http://127.0.0.1:{free_port()}"
    result = await mesh.audit("capture_health", runtime_url=nowhere)
    assert result.status == "fail"
    assert result.summary == "capture unhealthy: runtime metrics, retention applied"
    metrics, retention = result.findings
    assert metrics["url"] == nowhere
    assert "Connection refused" in metrics["error"]
    assert retention["overdue_partitions"] == [f"events/{old:%Y%m%d}"]
    # Kept for 60 days, that partition is not overdue: healthy again.
    assert (await mesh.audit("capture_health", retention_days=60)).status == "pass"


async def test_replay_regression(mesh: Mesh) -> None:
    for topic in ("orders.#", "replay.orders.#"):
        await mesh.client.subscribe(topic=topic, group=f"billing-{topic[0]}", sink=mesh.sink.url)
    since = datetime.now(UTC) - timedelta(seconds=1)
    for n in range(6):  # one trace each
        await mesh.client.publish("orders.single", event(f"order-{n}", data={"n": f"order-{n}"}))
    until = datetime.now(UTC) + timedelta(seconds=1)
    deadline = time.monotonic() + 30
    while mesh.count("billing.charged") < 6:
        assert time.monotonic() < deadline, "the originals' charges were not recorded"
        await asyncio.sleep(0.1)
    await asyncio.sleep(1.0)  # their spans too

    window = {"topics": ["orders.#"], "since": since.isoformat(), "until": until.isoformat()}
    result = await mesh.audit("replay_regression", **window, settle_s=2)
    assert result.status == "pass", result
    assert result.figures["score"] == 1.0
    assert result.figures["matched"] == 6

    mesh.sink.respond.drift = True  # type: ignore[union-attr]
    result = await mesh.audit("replay_regression", **window, settle_s=2, min_score=0.9)
    assert result.status == "fail"
    assert result.figures["score"] == pytest.approx(5 / 6, abs=1e-3)
    [finding] = result.findings
    assert finding["outcome"] == "differing"
    assert finding["trigger"] == "orders.single/order-3"
    assert finding["differences"] == [{"path": "data.amount", "original": 30, "replayed": 31}]
