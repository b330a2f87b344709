"""A mesh on a real broker (Redis Streams and NATS JetStream alike): several instances,
restarts, crashes, outages and graceful drain.

Every test asserts exact counts: nothing accepted is lost, and duplicates appear only where
at-least-once delivery allows them (after a crash).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
import time

import aiohttp
import pytest
from aiohttp import web

from tests.meshes import (
    SERVER_STORE_KINDS,
    Client,
    RuntimeProcess,
    event,
    running,
    store_params,
    wait_until,
)
from tests.servers import Server
from tests.sinks import KeyOverlapResponder, Push, RecordingSink

BROKER_NAMES = {"redis": "Redis", "nats": "NATS"}


@pytest.fixture(params=store_params(*SERVER_STORE_KINDS))
def server(request: pytest.FixtureRequest) -> Server:
    """The session's Redis or NATS server (emptied first)."""
    found: Server = request.getfixturevalue(f"{request.param}_server")
    return found


@pytest.fixture(params=store_params(*SERVER_STORE_KINDS))
def fresh_server(request: pytest.FixtureRequest) -> Server:
    """A Redis or NATS server of this test's own, to kill and restart."""
    found: Server = request.getfixturevalue(f"fresh_{request.param}_server")
    return found


async def test_subscriptions_live_in_the_store_and_survive_restarts(server: Server) -> None:
    sink = await RecordingSink().start()
    try:
        async with running(server.url) as (_, first):
            created = await first.subscribe(topic="orders.#", group="billing", sink=sink.url)
        async with running(server.url) as (_, second):
            _, listed = await second.request("GET", "/v1/subscriptions")
            assert [s["id"] for s in listed["subscriptions"]] == [created["id"]]
            await second.publish("orders.created", event("e-1"))
            await sink.wait_for(1)
        assert sink.ids() == ["e-1"]
    finally:
        await sink.stop()


async def test_topics_live_in_the_store_and_survive_restarts(server: Server) -> None:
    async with running(server.url) as (_, first):
        status, _ = await first.request("PUT", "/v1/topics/orders.created")
        assert status in (200, 201)
    async with running(server.url) as (runtime, _):
        assert "orders.created" in await runtime.mesh.topics()


async def test_events_published_while_no_instance_delivers_arrive_later(server: Server) -> None:
    sink = await RecordingSink().start()
    try:
        async with running(server.url) as (runtime, client):
            await client.subscribe(topic="orders.#", group="billing", sink=sink.url)
            await runtime.dispatcher.drain(1.0)  # this instance stops delivering ...
            ids = await client.publish("orders.created", *(event(f"e-{i}") for i in range(20)))
        assert sink.pushes == []  # ... so nothing went out yet
        async with running(server.url):
            await sink.wait_for(20)
            await asyncio.sleep(0.3)
        assert sorted(sink.ids()) == sorted(ids)
    finally:
        await sink.stop()


async def test_instances_on_one_store_form_one_mesh(server: Server) -> None:
    sink = await RecordingSink().start()
    try:
        async with (
            running(server.url) as (a, client_a),
            running(server.url) as (b, client_b),
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


async def test_partition_key_order_holds_across_instances(server: Server) -> None:
    """Keyed events published through two instances, delivered by both: per key in publish
    order and never concurrently, across two topics."""
    detector = KeyOverlapResponder()
    sink = await RecordingSink(respond=detector.respond).start()
    try:
        async with (
            running(server.url) as (a, client_a),
            running(server.url) as (b, client_b),
        ):
            await client_a.subscribe(topic="orders.#", group="billing", sink=sink.url)
            await wait_until(
                lambda: len(a.dispatcher.workers) == 1 and len(b.dispatcher.workers) == 1,
                what="both instances to pick up the subscription",
            )
            sent: dict[str, list[str]] = {f"k{k}": [] for k in range(4)}
            for r in range(20):  # each round: one event per key at once, through either instance
                publishes = []
                for k, key in enumerate(sent):
                    sent[key].append(f"e-{r}-{k}")
                    client = client_b if (r + k) % 2 else client_a
                    topic = "orders.updated" if (r + k) % 3 else "orders.created"
                    publishes.append(client.publish(topic, event(f"e-{r}-{k}", partitionkey=key)))
                await asyncio.gather(*publishes)
            await sink.wait_for(80, timeout=60)
            await asyncio.sleep(0.3)
        received: dict[str, list[str]] = {k: [] for k in sent}
        for push in sink.pushes:
            received[push.attributes["partitionkey"]].append(push.id)
        assert received == sent
        assert detector.overlaps == []
    finally:
        await sink.stop()


async def test_crashed_instance_events_are_reclaimed_by_another(server: Server) -> None:
    first_push = asyncio.Event()
    finished = asyncio.Event()

    async def hang_first_then_ack(push: Push) -> web.Response:
        if not first_push.is_set():
            first_push.set()
            # The instance holding this is SIGKILLed meanwhile; hang until the test is done.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(finished.wait(), 30)
        return web.Response(status=204)

    sink = await RecordingSink(respond=hang_first_then_ack).start()
    doomed = RuntimeProcess(["--store", server.url, "--claim-idle-ms", "1000"])
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
        async with running(server.url, claim_idle_ms=1000) as (survivor, _):
            await sink.wait_for(3, timeout=15)
            await asyncio.sleep(0.5)
            backlog = await survivor.store.backlog("g:billing", ["orders.created"])
        # e-1 was pushed twice (at-least-once across a crash), then e-2, in key order.
        assert sink.ids() == ["e-1", "e-1", "e-2"]
        assert backlog.total == 0
    finally:
        doomed.kill()
        finished.set()
        await sink.stop()


async def _publish_one(client: Client, event_id: str) -> tuple[int, dict[str, str]]:
    status, reply = await client.request(
        "POST",
        "/v1/topics/orders.created/events",
        json=event(event_id),
        headers={"content-type": "application/cloudevents+json"},
    )
    return status, reply


async def test_store_outage_fails_fast_then_recovers_without_loss(
    fresh_server: Server,
) -> None:
    broker = BROKER_NAMES[fresh_server.kind]
    sink = await RecordingSink().start()
    try:
        async with running(fresh_server.url) as (_, client):
            await client.subscribe(topic="orders.#", group="billing", sink=sink.url)
            accepted = await client.publish("orders.created", *(event(f"a-{i}") for i in range(30)))
            fresh_server.kill()  # some of those may not be delivered yet

            started = time.monotonic()
            status, reply = await _publish_one(client, "lost-1")
            assert status == 503
            assert time.monotonic() - started < 3.0  # fails fast, does not hang
            assert reply["error"] == "store_unavailable"
            assert f"{broker} at 127.0.0.1" in reply["message"]
            assert "retry" in reply["message"]
            status, ready = await client.request("GET", "/readyz")
            assert (status, ready["status"]) == (503, "store_unavailable")

            fresh_server.restart()  # the client reconnects by itself
            deadline = time.monotonic() + 10
            while True:
                status, reply = await _publish_one(client, "b-1")
                if status == 200 or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.2)
            assert status == 200, reply
            accepted += reply["accepted"]
            while (await client.request("GET", "/readyz"))[0] != 200:  # ready again by itself
                assert time.monotonic() < deadline + 10, "readyz stayed 503 after the restart"
                await asyncio.sleep(0.1)
            await wait_until(
                lambda: set(sink.ids()) >= set(accepted), timeout=20, what="all accepted events"
            )
        assert "lost-1" not in sink.ids()  # refused with 503, so never accepted
        assert sorted(set(sink.ids())) == sorted(accepted)
    finally:
        await sink.stop()


async def test_broker_restart_during_a_publish_and_deliver_stream_loses_nothing_accepted(
    fresh_server: Server,
) -> None:
    """Publishers keep publishing while the broker is killed and restarted: every event that
    got a 200 is delivered. A 503 means "not accepted, retry": for a publish in flight at the
    moment of the crash the broker may have stored it before the reply was lost, so such an
    event may still be delivered (at-least-once), but nothing that was never sent is."""
    sink = await RecordingSink().start()
    accepted: list[str] = []
    refused: list[str] = []
    stop = asyncio.Event()

    async def publisher(client: Client, name: str) -> None:
        n = 0
        while not stop.is_set():
            n += 1
            status, reply = await _publish_one(client, f"{name}-{n}")
            if status == 200:
                accepted.extend(reply["accepted"])  # type: ignore[arg-type]
            else:
                assert status == 503, reply
                refused.append(f"{name}-{n}")
            await asyncio.sleep(0.01)

    try:
        async with running(fresh_server.url) as (_, client):
            await client.subscribe(topic="orders.#", group="billing", sink=sink.url)
            tasks = [asyncio.create_task(publisher(client, f"p{i}")) for i in range(3)]
            await wait_until(lambda: len(sink.pushes) >= 30, what="the stream to flow")
            fresh_server.kill()
            await wait_until(lambda: len(refused) >= 3, what="publishes to be refused")
            fresh_server.restart()
            settled = len(accepted)
            await wait_until(lambda: len(accepted) >= settled + 30, what="publishing to resume")
            stop.set()
            await asyncio.gather(*tasks)
            await wait_until(
                lambda: set(sink.ids()) >= set(accepted), timeout=30, what="all accepted events"
            )
        assert set(sink.ids()) >= set(accepted)
        assert set(sink.ids()) <= set(accepted) | set(refused)
    finally:
        stop.set()
        await sink.stop()


async def _delivered(client: Client, group: str) -> float:
    """meshtap_events_delivered_total of `group` on one instance (summed over topics)."""
    _, text = await client.request("GET", "/metrics")
    pattern = re.compile(
        r'^meshtap_events_delivered_total\{group="' + re.escape(group) + r'",[^}]*\} (\S+)$',
        re.MULTILINE,
    )
    return sum(float(v) for v in pattern.findall(text))


async def test_three_instances_share_a_group_and_lose_nothing_to_a_sigkill(
    server: Server,
) -> None:
    """Scale-out: a clustering group's load spreads over three instances; one is SIGKILLed
    mid-stream and its unacknowledged events are reclaimed by the others within
    --claim-idle-ms. Every event arrives; duplicates only for what the dead one held."""

    async def slow_ack(push: Push) -> web.Response:
        await asyncio.sleep(0.02)  # so every instance holds some events in flight
        return web.Response(status=204)

    sink = await RecordingSink(respond=slow_ack).start()
    args = ["--store", server.url, "--claim-idle-ms", "1500"]
    instances = [RuntimeProcess(args) for _ in range(3)]
    try:
        await asyncio.gather(*(i.start() for i in instances))
        async with aiohttp.ClientSession() as session:
            clients = [Client(i.url, session) for i in instances]
            await clients[0].subscribe(topic="orders.#", group="billing", sink=sink.url)
            await asyncio.sleep(1.5)  # every instance picks the subscription up
            ids: list[str] = []
            for n in range(60):  # first half: all three alive
                ids += await clients[n % 3].publish(
                    "orders.created", *(event(f"a-{n}-{i}") for i in range(5))
                )
            await wait_until(lambda: set(sink.ids()) >= set(ids), timeout=30, what="first half")
            deadline = time.monotonic() + 10
            while True:  # the last acks are counted just after the sink answered
                shares = [await _delivered(client, "billing") for client in clients]
                if sum(shares) >= len(ids) or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.1)
            assert sum(shares) == len(ids), shares
            assert all(share > 0 for share in shares), shares  # the load was spread over all

            publishing = asyncio.create_task(
                _publish_stream(clients[1:], ids, rounds=60, prefix="b")
            )
            await wait_until(
                lambda: sum(1 for i in sink.ids() if i.startswith("b-")) >= 50,
                timeout=30,
                what="the second half to flow",
            )
            instances[0].kill()  # SIGKILL mid-stream, holding unacknowledged events
            await publishing
            await wait_until(lambda: set(sink.ids()) >= set(ids), timeout=40, what="every event")
        assert set(sink.ids()) == set(ids)
        assert len(sink.ids()) >= len(ids)  # at-least-once: the dead one's events came again
    finally:
        for instance in instances:
            instance.kill()
        await sink.stop()


async def _publish_stream(clients: list[Client], ids: list[str], rounds: int, prefix: str) -> None:
    for n in range(rounds):
        ids += await clients[n % len(clients)].publish(
            "orders.created", *(event(f"{prefix}-{n}-{i}") for i in range(5))
        )
        await asyncio.sleep(0.01)


async def test_sigterm_drains_in_flight_deliveries_then_exits_zero(server: Server) -> None:
    async def slow(push: Push) -> web.Response:
        await asyncio.sleep(1.5)
        return web.Response(status=204)

    sink = await RecordingSink(respond=slow).start()
    process = RuntimeProcess(["--store", server.url, "--claim-idle-ms", "500"])
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
        async with running(server.url, claim_idle_ms=500):
            await asyncio.sleep(2.0)
        assert sink.ids() == ["e-1"]
    finally:
        process.kill()
        await sink.stop()
