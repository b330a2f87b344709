"""A mesh on real Redis: several instances, restarts, crashes, outages and graceful drain.

Every test asserts exact counts: nothing accepted is lost, and duplicates appear only where
at-least-once delivery allows them (after a crash).
"""

from __future__ import annotations

import asyncio
import signal
import time

import aiohttp
import pytest
from aiohttp import web

from runtime import CloudEvent
from runtime.stores.redis import RedisStore
from tests.meshes import Client, RuntimeProcess, event, running
from tests.servers import RedisServer
from tests.sinks import Push, RecordingSink

pytestmark = pytest.mark.redis


async def wait_until(predicate: object, timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.02)


async def test_subscriptions_live_in_redis_and_survive_restarts(redis_server: RedisServer) -> None:
    sink = await RecordingSink().start()
    try:
        async with running(redis_server.url) as (_, first):
            created = await first.subscribe(topic="orders.#", group="billing", sink=sink.url)
        async with running(redis_server.url) as (_, second):
            _, listed = await second.request("GET", "/v1/subscriptions")
            assert [s["id"] for s in listed["subscriptions"]] == [created["id"]]
            await second.publish("orders.created", event("e-1"))
            await sink.wait_for(1)
        assert sink.ids() == ["e-1"]
    finally:
        await sink.stop()


async def test_events_published_while_no_instance_delivers_arrive_later(
    redis_server: RedisServer,
) -> None:
    sink = await RecordingSink().start()
    try:
        async with running(redis_server.url) as (runtime, client):
            await client.subscribe(topic="orders.#", group="billing", sink=sink.url)
            await runtime.dispatcher.drain(1.0)  # this instance stops delivering ...
            ids = await client.publish("orders.created", *(event(f"e-{i}") for i in range(20)))
        assert sink.pushes == []  # ... so nothing went out yet
        async with running(redis_server.url):
            await sink.wait_for(20)
            await asyncio.sleep(0.3)
        assert sorted(sink.ids()) == sorted(ids)
    finally:
        await sink.stop()


async def test_instances_on_one_redis_form_one_mesh(redis_server: RedisServer) -> None:
    sink = await RecordingSink().start()
    try:
        async with (
            running(redis_server.url) as (a, client_a),
            running(redis_server.url) as (b, client_b),
        ):
            await client_a.subscribe(topic="orders.#", group="billing", sink=sink.url)
            await client_a.subscribe(topic="orders.#", group="audit", sink=sink.url)
            await wait_until(
                lambda: len(a.dispatcher.workers) == 2 and len(b.dispatcher.workers) == 2,
                what="both instances to pick up the subscriptions",
            )
            ids: list[str] = []
            for batch in range(40):
                publisher = client_b if batch % 2 else client_a
                ids += await publisher.publish(
                    "orders.created", *(event(f"e-{batch}-{i}") for i in range(5))
                )
                await asyncio.sleep(0.01)
            await sink.wait_for(2 * len(ids), timeout=20)
            await asyncio.sleep(0.5)
        # Each group got every event exactly once, whichever instance delivered it.
        assert sorted(sink.ids()) == sorted(ids + ids)
        delivered = {
            name: runtime.metrics.delivered.labels("orders.created", "billing")._value.get()
            for name, runtime in (("a", a), ("b", b))
        }
        assert delivered["a"] + delivered["b"] == len(ids)
        assert delivered["a"] > 0, delivered  # the work was shared
        assert delivered["b"] > 0, delivered
    finally:
        await sink.stop()


async def test_crashed_instance_events_are_reclaimed_by_another(redis_server: RedisServer) -> None:
    first_push = asyncio.Event()

    async def hang_first_then_ack(push: Push) -> web.Response:
        if not first_push.is_set():
            first_push.set()
            await asyncio.sleep(30)  # the instance holding this will be SIGKILLed meanwhile
        return web.Response(status=204)

    sink = await RecordingSink(respond=hang_first_then_ack).start()
    doomed = RuntimeProcess(["--store", redis_server.url, "--claim-idle-ms", "1000"])
    try:
        await doomed.start()
        async with aiohttp.ClientSession() as session:
            client = Client(doomed.url, session)
            await client.subscribe(topic="orders.#", group="billing", sink=sink.url)
            await asyncio.sleep(1.2)  # let the instance join the topic's group
            await client.publish("orders.created", event("e-1", partitionkey="k"))
            await client.publish("orders.created", event("e-2", partitionkey="k"))
        await asyncio.wait_for(first_push.wait(), 10)
        doomed.kill()  # SIGKILL mid-delivery: e-1 in flight, e-2 waiting behind it (same key)
        async with running(redis_server.url, claim_idle_ms=1000) as (survivor, _):
            await sink.wait_for(3, timeout=15)
            await asyncio.sleep(0.5)
            backlog = await survivor.store.backlog("g:billing", ["orders.created"])
        # e-1 was pushed twice (at-least-once across a crash), then e-2, in key order.
        assert sink.ids() == ["e-1", "e-1", "e-2"]
        assert backlog.total == 0
    finally:
        doomed.kill()
        await sink.stop()


async def test_redis_outage_fails_fast_then_recovers_without_loss(
    fresh_redis_server: RedisServer,
) -> None:
    sink = await RecordingSink().start()
    try:
        async with running(fresh_redis_server.url) as (_, client):
            await client.subscribe(topic="orders.#", group="billing", sink=sink.url)
            accepted = await client.publish("orders.created", *(event(f"a-{i}") for i in range(30)))
            fresh_redis_server.kill()  # some of those may not be delivered yet

            started = time.monotonic()
            status, reply = await client.request(
                "POST",
                "/v1/topics/orders.created/events",
                json=event("lost-1"),
                headers={"content-type": "application/cloudevents+json"},
            )
            assert status == 503
            assert time.monotonic() - started < 3.0  # fails fast, does not hang
            assert reply["error"] == "store_unavailable"
            assert "Redis at 127.0.0.1" in reply["message"]
            assert "retry" in reply["message"]
            status, ready = await client.request("GET", "/readyz")
            assert (status, ready["status"]) == (503, "store_unavailable")

            fresh_redis_server.restart()  # the client reconnects by itself on the next command
            deadline = time.monotonic() + 10
            while True:
                status, reply = await client.request(
                    "POST",
                    "/v1/topics/orders.created/events",
                    json=event("b-1"),
                    headers={"content-type": "application/cloudevents+json"},
                )
                if status == 200 or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.2)
            assert status == 200, reply
            accepted += reply["accepted"]
            await wait_until(
                lambda: set(sink.ids()) >= set(accepted), timeout=20, what="all accepted events"
            )
        assert "lost-1" not in sink.ids()  # refused with 503, so never accepted
        assert sorted(set(sink.ids())) == sorted(accepted)
    finally:
        await sink.stop()


async def test_sigterm_drains_in_flight_deliveries_then_exits_zero(
    redis_server: RedisServer,
) -> None:
    async def slow(push: Push) -> web.Response:
        await asyncio.sleep(1.5)
        return web.Response(status=204)

    sink = await RecordingSink(respond=slow).start()
    process = RuntimeProcess(["--store", redis_server.url, "--claim-idle-ms", "500"])
    try:
        await process.start()
        async with aiohttp.ClientSession() as session:
            client = Client(process.url, session)
            await client.subscribe(topic="orders.#", group="billing", sink=sink.url)
            await asyncio.sleep(1.2)
            await client.publish("orders.created", event("e-1"))
        await sink.wait_for(1)
        process.signal(signal.SIGTERM)  # while the push is in flight
        assert await process.wait(timeout=15) == 0, process.output()
        output = process.output()
        assert "draining" in output
        assert "stopped cleanly" in output
        # The push finished and was acknowledged before exit: a new instance redelivers nothing.
        async with running(redis_server.url, claim_idle_ms=500):
            await asyncio.sleep(2.0)
        assert sink.ids() == ["e-1"]
    finally:
        process.kill()
        await sink.stop()


async def test_publish_survives_a_flushed_script_cache(redis_server: RedisServer) -> None:
    """A restarted Redis has lost the append script; the store reloads it and nothing is lost."""
    sink = await RecordingSink().start()
    try:
        async with running(redis_server.url) as (runtime, client):
            await client.subscribe(topic="orders.#", group="billing", sink=sink.url)
            await client.publish("orders.created", event("before"))
            await runtime.store._client.script_flush()  # type: ignore[attr-defined]
            results = await asyncio.gather(
                *(client.publish("orders.created", event(f"after-{i}")) for i in range(20))
            )
            await sink.wait_for(21)
        assert sorted(sink.ids()) == sorted(["before", *(r[0] for r in results)])
    finally:
        await sink.stop()


async def test_trim_prunes_consumers_that_hold_nothing(redis_server: RedisServer) -> None:
    store = RedisStore(redis_server.url, consumer_idle_ms=50)
    await store.connect()
    try:
        await store.join("g", "orders", 0)
        await store.append("orders", [CloudEvent({"id": "1", "source": "/", "type": "t"})])
        await store.append("orders", [CloudEvent({"id": "2", "source": "/", "type": "t"})])
        (first,) = await store.read("g", "gone", ["orders"], 1, 0)
        await store.ack("g", [first.ref])
        await store.read("g", "busy", ["orders"], 1, 0)  # holds event 2, pending
        await asyncio.sleep(0.1)
        await store.trim("orders", 0)
        consumers = await store._client.xinfo_consumers("meshtap:t:orders", "g")
        assert [c["name"] for c in consumers] == [b"busy"]
    finally:
        await store.close()
