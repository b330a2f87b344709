"""The outcome diff against a real system under test.

A subscriber that, like any traced service, answers each order with a ``billing.charged`` event
published with the trace context it was pushed with. In the replay it behaves differently for a
few orders (a different amount, no answer, two answers) and always lists items in another order
and stamps a new ``processed_at`` -- the diff must find exactly those, and the ignore rules must
silence the noise.
"""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from replay import DiffRules, HttpTarget, ReplaySpec, dry_run, outcome_diff, run_replay
from runtime import CaptureConfig
from tests.meshes import Client, event, running
from tests.servers import ClickHouseServer
from tests.sinks import Push, RecordingSink
from tracing import ClickHouseCapture
from tracing.clickhouse import ClickHouse, Purpose, migrate

pytestmark = pytest.mark.clickhouse

CHARGES = "SELECT count() FROM meshtap.events WHERE topic = %(topic)s"
SPANS = "SELECT count() FROM meshtap.spans WHERE name = 'process orders.batch'"


class SystemUnderTest:
    def __init__(self) -> None:
        self.client: Client | None = None

    async def __call__(self, push: Push) -> web.StreamResponse:
        assert self.client is not None
        order = json.loads(push.body)["n"]
        replayed = "replayid" in push.attributes
        n = int(order.split("-")[1])
        answers = 1
        amount = n * 10
        items = ["a", "b", "c"]
        if replayed:
            items.reverse()
            if n == 3:
                amount += 1
            if n == 5:
                answers = 0
            if n == 7:
                answers = 2
        for i in range(answers):
            status, reply = await self.client.publish_binary(
                ("replay." if replayed else "") + "billing.charged",
                json.dumps(
                    {"order": order, "amount": amount, "items": items, "processed_at": time.time()}
                ).encode(),
                id=f"charge-{order}-{i}-{time.time_ns()}",
                source="/billing",
                type="charge.made",
                traceparent=push.headers["traceparent"],
            )
            assert status == 200, reply
        return web.Response(status=204)


async def test_the_diff_finds_what_changed_and_ignores_the_noise(
    clickhouse_server: ClickHouseServer, tmp_path: Path
) -> None:
    url = clickhouse_server.url
    with ClickHouse.open(url) as admin:
        migrate(admin)
    store = ClickHouse.open(url)

    def count(sql: str, **params: Any) -> int:
        return int(store.execute(sql, params, purpose=Purpose.QUERY)[0][0])

    async def until(check: Any) -> None:
        deadline = time.monotonic() + 30
        while not check():
            assert time.monotonic() < deadline, "timed out"
            await asyncio.sleep(0.1)

    sut = SystemUnderTest()
    sink = await RecordingSink(respond=sut).start()
    capture = ClickHouseCapture(CaptureConfig(url=url, spool_dir=str(tmp_path / "spool")))
    try:
        async with running(capture=capture) as (runtime, client):
            sut.client = client
            for topic in ("orders.#", "replay.orders.#"):
                await client.subscribe(topic=topic, group=f"billing-{topic[0]}", sink=sink.url)
            since = datetime.now(UTC) - timedelta(seconds=1)
            for n in range(10):  # one trace each
                await client.publish("orders.single", event(f"order-{n}", data={"n": f"order-{n}"}))
            # One request, one trace for three orders: responses are told apart by their spans.
            await client.publish(
                "orders.batch",
                *[event(f"order-{n}", data={"n": f"order-{n}"}) for n in (10, 11, 12)],
            )
            until_ = datetime.now(UTC) + timedelta(seconds=1)
            await until(lambda: count(CHARGES, topic="billing.charged") >= 13)
            await until(lambda: count(SPANS) >= 3)

            spec = ReplaySpec(("orders.#",), since, until_, speed="max")
            selection = dry_run(store, spec)
            assert selection.report.events == 13
            started = time.time_ns()
            target = HttpTarget(runtime.http_url)
            result = await run_replay(store, spec, target, replay_id="job-diff")
            await target.close()
            assert result.status == "completed"
            await until(lambda: count(CHARGES, topic="replay.billing.charged") >= 13)
            await asyncio.sleep(1.0)  # the last spans reach the store

            rules = DiffRules(ignore=("data.processed_at",), unordered=("data.items",))
            report = outcome_diff(store, selection, "job-diff", since_ns=started, rules=rules)
            assert (report.triggers, report.matched, report.differing) == (13, 11, 1)
            assert (report.missing, report.extra) == (1, 1)
            assert report.score == pytest.approx(11 / 14)
            by_outcome = {i.outcome: i for i in report.items}
            assert by_outcome["differing"].trigger == "orders.single/order-3"
            assert [
                (d.path, d.original, d.replayed) for d in by_outcome["differing"].differences
            ] == [("data.amount", 30, 31)]
            assert by_outcome["missing"].trigger == "orders.single/order-5"
            assert by_outcome["extra"].trigger == "orders.single/order-7"
            assert by_outcome["extra"].topic == "billing.charged"
            assert json.loads(json.dumps(report.to_json()))["score"] == pytest.approx(
                0.7857, abs=1e-4
            )

            noisy = outcome_diff(store, selection, "job-diff", since_ns=started)
            assert noisy.matched == 0
            assert noisy.differing == 12
            paths = {d.path for i in noisy.items for d in i.differences}
            assert {"data.processed_at", "data.items.0", "data.items.2"} <= paths
    finally:
        await sink.stop()
        store.close()
