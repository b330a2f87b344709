"""A mesh on real Redis: what is specific to the Redis store.

The store-generic mesh tests (several instances, restarts, crashes, outages, drain) run on Redis
and NATS alike in tests/test_mesh_on_servers.py.
"""

from __future__ import annotations

import asyncio

import pytest

from runtime import CloudEvent
from runtime.stores.redis import RedisStore
from tests.meshes import event, running
from tests.servers import RedisServer
from tests.sinks import RecordingSink

pytestmark = pytest.mark.redis


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
