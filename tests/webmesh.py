"""A capturing mesh with realistic traffic, in a thread of its own, for the web admin's tests.

The web admin's tests are synchronous (Django's test client, Playwright's sync API) while the
runtime is asyncio: the runtime, its capture into ClickHouse/chDB and the test subscribers run
on an event loop in a background thread, so a replay started from a page (a Celery worker
thread) can reach the runtime while the test blocks.

Traffic: orders on ``orders.eu.created``/``orders.us.created``/``orders.eu.paid`` and payments
on ``payments.captured``, JSON payloads; consumer groups ``billing`` (acks everything),
``shipping`` (answers 503 to every fifth order, so those are retried and dead-lettered) and
``ledger`` (payments); plus ``qa`` on ``replay.#`` to receive replays.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from aiohttp import web

from runtime import CaptureConfig
from tests.meshes import running
from tests.sinks import Push, RecordingSink
from tracing import ClickHouseCapture
from tracing.clickhouse import ClickHouse, Purpose, migrate

ORDERS = 40
PAYMENTS = 10
RETRY = {"max_attempts": 2, "initial_backoff_ms": 20, "max_backoff_ms": 50}


def order(n: int) -> dict[str, Any]:
    region = "eu" if n % 2 == 0 else "us"
    return {
        "specversion": "1.0",
        "id": f"order-{n:04d}",
        "source": f"/shop/{region}",
        "type": "order.created",
        "subject": f"order/{n}",
        "partitionkey": f"customer-{n % 7}",
        "datacontenttype": "application/json",
        "data": {
            "order": n,
            "customer": f"c-{n % 7}",
            "total": round(19.99 + n * 3.5, 2),
            "items": [{"sku": f"SKU-{n % 5}", "qty": 1 + n % 3}],
            "region": region,
        },
    }


def failing_shipping(push: Push) -> web.Response:
    number = int(push.id.split("-")[1])
    return web.Response(status=503 if number % 5 == 3 else 204)


@dataclass
class Mesh:
    url: str
    """The capture store."""
    http_url: str = ""
    since: datetime = field(default_factory=lambda: datetime.now(UTC))
    until: datetime = field(default_factory=lambda: datetime.now(UTC))
    replays: RecordingSink | None = None
    events: int = 0

    def count(self, sql: str) -> int:
        with ClickHouse.open(self.url) as client:
            return int(client.execute(sql, {}, purpose=Purpose.QUERY)[0][0])

    def failed_order_trace(self) -> str:
        with ClickHouse.open(self.url) as client:
            rows = client.execute(
                "SELECT trace_id FROM meshtap.deliveries WHERE outcome = 'dead_lettered' "
                "AND topic LIKE 'orders.%%' ORDER BY attempted_ns LIMIT 1",
                {},
                purpose=Purpose.QUERY,
            )
        return str(rows[0][0])


async def _serve(mesh: Mesh, spool: Path, ready: threading.Event, stop: asyncio.Event) -> None:
    with ClickHouse.open(mesh.url) as admin:
        migrate(admin)
    sinks = [
        RecordingSink(),
        RecordingSink(respond=failing_shipping),
        RecordingSink(),
        RecordingSink(),
    ]
    for sink in sinks:
        await sink.start()
    billing, shipping, ledger, replays = sinks
    capture = ClickHouseCapture(CaptureConfig(url=mesh.url, spool_dir=str(spool)))
    try:
        async with running(capture=capture) as (runtime, client):
            mesh.http_url = runtime.http_url
            mesh.replays = replays
            await client.subscribe(topic="orders.#", group="billing", sink=billing.url)
            await client.subscribe(
                topic="orders.*.created", group="shipping", sink=shipping.url, retry=RETRY
            )
            await client.subscribe(topic="payments.#", group="ledger", sink=ledger.url)
            await client.subscribe(topic="replay.#", group="qa", sink=replays.url)
            mesh.since = datetime.now(UTC) - timedelta(seconds=2)
            for n in range(ORDERS):
                topic = f"orders.{'eu' if n % 2 == 0 else 'us'}.created"
                await client.publish(topic, order(n))
                if n % 4 == 0:
                    paid = {**order(n), "id": f"paid-{n:04d}", "type": "order.paid"}
                    await client.publish("orders.eu.paid", paid)
                    mesh.events += 1
                await asyncio.sleep(0.01)
            for n in range(PAYMENTS):
                payment = {**order(n), "id": f"pay-{n:04d}", "type": "payment.captured",
                           "source": "/payments"}  # fmt: skip
                await client.publish("payments.captured", payment)
            mesh.events += ORDERS + PAYMENTS
            mesh.until = datetime.now(UTC) + timedelta(seconds=2)
            ready.set()
            await stop.wait()
    finally:
        for sink in sinks:
            await sink.stop()


@contextmanager
def mesh_with_traffic(url: str, spool: Path, timeout: float = 60.0) -> Iterator[Mesh]:
    """A capturing runtime in a background thread, its traffic recorded (events, deliveries
    with the dead letters, spans) before this yields; stopped on exit."""
    mesh = Mesh(url)
    ready = threading.Event()
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()
    failure: list[BaseException] = []

    def main() -> None:
        try:
            loop.run_until_complete(_serve(mesh, spool, ready, stop))
        except BaseException as e:  # reported to the test below
            failure.append(e)
            ready.set()

    thread = threading.Thread(target=main, name="webmesh", daemon=True)
    thread.start()
    try:
        assert ready.wait(timeout), "the mesh did not come up"
        if failure:
            raise failure[0]
        deadline = time.monotonic() + timeout
        # Every event recorded, and the dead letters (the last thing the traffic causes).
        while (
            mesh.count("SELECT count() FROM meshtap.events WHERE replay_id = ''") < mesh.events
            or mesh.count("SELECT count() FROM meshtap.deliveries WHERE outcome = 'dead_lettered'")
            < ORDERS // 5
            or mesh.count("SELECT count() FROM meshtap.spans") < mesh.events
        ):
            assert time.monotonic() < deadline, "the traffic was not recorded in time"
            time.sleep(0.2)
        yield mesh
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(timeout=30)
        loop.close()
