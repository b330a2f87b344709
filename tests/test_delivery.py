"""Delivery semantics, held to one contract on every store (memory, real Redis, real NATS).

Each test runs a real runtime (HTTP API, dispatcher, store) and real HTTP subscribers.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import json
import re
import time
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from tests.meshes import Client, event, running, store_params
from tests.meshes import store_url as url_of_store
from tests.sinks import KeyOverlapResponder, Push, RecordingSink


@pytest.fixture(params=store_params())
def store_url(request: pytest.FixtureRequest) -> str:
    return url_of_store(request, request.param)


@pytest.fixture
async def sink() -> AsyncIterator[RecordingSink]:
    s = await RecordingSink().start()
    yield s
    await s.stop()


@pytest.fixture
async def mesh(store_url: str) -> AsyncIterator[Client]:
    async with running(store_url) as (_, client):
        yield client


async def test_push_is_binary_mode_with_exact_data_and_stamped_context(
    mesh: Client, sink: RecordingSink
) -> None:
    await mesh.subscribe(topic="orders.created", group="billing", sink=sink.url)
    raw = b'{"order": 42,  "note": "spaces kept"}'
    status, reply = await mesh.publish_binary(
        "orders.created", raw, id="e-1", source="/shop", type="order.created", subject="42"
    )
    assert status == 200
    assert reply == {"topic": "orders.created", "accepted": ["e-1"]}
    (push,) = await sink.wait_for(1)
    attributes = push.attributes
    assert attributes["id"] == "e-1"
    assert attributes["source"] == "/shop"
    assert attributes["type"] == "order.created"
    assert attributes["subject"] == "42"
    assert attributes["specversion"] == "1.0"
    assert push.headers["Content-Type"] == "application/json"
    assert push.body == raw  # byte for byte
    assert attributes["time"].endswith("Z")  # stamped by the runtime
    version, trace_id, span_id, flags = attributes["traceparent"].split("-")
    assert (version, len(trace_id), len(span_id), flags) == ("00", 32, 16, "01")


async def test_producer_time_and_traceparent_are_kept(mesh: Client, sink: RecordingSink) -> None:
    await mesh.subscribe(topic="orders.created", group="billing", sink=sink.url)
    traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    await mesh.publish(
        "orders.created",
        event("e-1", time="2026-01-31T12:00:00Z", traceparent=traceparent, tenant="acme"),
    )
    (push,) = await sink.wait_for(1)
    assert push.attributes["time"] == "2026-01-31T12:00:00Z"
    assert push.attributes["traceparent"] == traceparent
    assert push.attributes["tenant"] == "acme"
    assert json.loads(push.body) == {"n": "e-1"}


async def test_batch_publish_delivers_every_event(mesh: Client, sink: RecordingSink) -> None:
    await mesh.subscribe(topic="orders.#", group="billing", sink=sink.url)
    ids = await mesh.publish("orders.eu.created", *(event(f"e-{i}") for i in range(50)))
    assert ids == [f"e-{i}" for i in range(50)]
    await sink.wait_for(50)
    await asyncio.sleep(0.2)
    assert sorted(sink.ids()) == sorted(ids)


async def test_clustering_delivers_once_per_group_and_balances(mesh: Client) -> None:
    a, b, other = RecordingSink(), RecordingSink(), RecordingSink()
    for s in (a, b, other):
        await s.start()
    try:
        await mesh.subscribe(topic="orders.*", group="billing", sink=a.url)
        await mesh.subscribe(topic="orders.*", group="billing", sink=b.url)
        await mesh.subscribe(topic="orders.*", group="audit", sink=other.url)
        ids = await mesh.publish("orders.created", *(event(f"e-{i}") for i in range(60)))
        await other.wait_for(60)
        deadline = time.monotonic() + 10
        while len(a.pushes) + len(b.pushes) < 60 and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.2)
        assert sorted(a.ids() + b.ids()) == sorted(ids)  # each event once in the group
        assert a.pushes  # and spread over both subscribers
        assert b.pushes
        assert sorted(other.ids()) == sorted(ids)  # another group gets everything too
    finally:
        for s in (a, b, other):
            await s.stop()


async def test_broadcast_delivers_to_every_subscriber(mesh: Client) -> None:
    a, b = RecordingSink(), RecordingSink()
    for s in (a, b):
        await s.start()
    try:
        for s in (a, b):
            await mesh.subscribe(topic="news", group="screens", mode="broadcast", sink=s.url)
        ids = await mesh.publish("news", *(event(f"n-{i}") for i in range(10)))
        await a.wait_for(10)
        await b.wait_for(10)
        assert sorted(a.ids()) == sorted(ids) == sorted(b.ids())
    finally:
        for s in (a, b):
            await s.stop()


async def test_wildcards_match_whole_segments(mesh: Client) -> None:
    one, many = RecordingSink(), RecordingSink()
    for s in (one, many):
        await s.start()
    try:
        await mesh.subscribe(topic="orders.*.created", group="one", sink=one.url)
        await mesh.subscribe(topic="orders.#", group="many", sink=many.url)
        await mesh.publish("orders.eu.created", event("a"))
        await mesh.publish("orders.eu.de.created", event("b"))
        await mesh.publish("orders", event("c"))
        await mesh.publish("payments.eu.created", event("d"))
        await many.wait_for(3)
        await one.wait_for(1)
        await asyncio.sleep(0.3)
        assert one.ids() == ["a"]
        assert sorted(many.ids()) == ["a", "b", "c"]
    finally:
        for s in (one, many):
            await s.stop()


async def test_filters_select_events(mesh: Client, sink: RecordingSink) -> None:
    await mesh.subscribe(
        topic="orders.#",
        group="vip",
        sink=sink.url,
        filters=[{"prefix": {"type": "order."}}, {"not": {"exact": {"tier": "free"}}}],
    )
    await mesh.publish(
        "orders.created",
        event("1", type="order.created", tier="gold"),
        event("2", type="order.created", tier="free"),
        event("3", type="invoice.sent", tier="gold"),
        event("4", type="order.paid"),
    )
    await sink.wait_for(2)
    await asyncio.sleep(0.3)
    assert sorted(sink.ids()) == ["1", "4"]


async def test_partition_key_order_is_kept_and_never_concurrent(mesh: Client) -> None:
    detector = KeyOverlapResponder()
    sink = await RecordingSink(respond=detector.respond).start()
    try:
        await mesh.subscribe(topic="orders.#", group="billing", sink=sink.url)
        sent: dict[str, list[str]] = {f"k{k}": [] for k in range(5)}
        batch = []
        for i in range(100):
            key = f"k{i % 5}"
            sent[key].append(f"e-{i}")
            batch.append(event(f"e-{i}", partitionkey=key))
        # Two topics under one pattern: order holds per key across topics as well.
        await mesh.publish("orders.created", *batch[:50])
        await mesh.publish("orders.updated", *batch[50:])
        await sink.wait_for(100, timeout=20)
        received: dict[str, list[str]] = {k: [] for k in sent}
        for push in sink.pushes:
            received[push.attributes["partitionkey"]].append(push.id)
        assert received == sent
        assert detector.overlaps == []
        assert sink.max_concurrent > 1  # different keys did run in parallel
    finally:
        await sink.stop()


async def test_retries_with_backoff_then_acks(mesh: Client) -> None:
    answers = iter([503, 429, 204])
    sink = await RecordingSink(respond=lambda p: web.Response(status=next(answers))).start()
    try:
        await mesh.subscribe(
            topic="orders.created",
            group="billing",
            sink=sink.url,
            retry={"max_attempts": 5, "initial_backoff_ms": 50, "max_backoff_ms": 200},
        )
        await mesh.publish("orders.created", event("e-1"))
        pushes = await sink.wait_for(3)
        await asyncio.sleep(0.5)
        assert len(sink.pushes) == 3  # acked on the third attempt, never pushed again
        gaps = [b.received_at - a.received_at for a, b in itertools.pairwise(pushes)]
        assert all(gap >= 0.02 for gap in gaps), gaps  # jittered backoff (>= half the ceiling)
    finally:
        await sink.stop()


async def _dead_letters(mesh: Client, group: str) -> RecordingSink:
    dlq = await RecordingSink().start()
    await mesh.subscribe(topic=f"_dlq.{group}", group="ops", sink=dlq.url)
    return dlq


async def test_dead_letter_after_last_attempt(mesh: Client) -> None:
    failing = await RecordingSink(
        respond=lambda p: web.Response(status=500, text="db down")
    ).start()
    dlq = await _dead_letters(mesh, "billing")
    try:
        await mesh.subscribe(
            topic="orders.created",
            group="billing",
            sink=failing.url,
            retry={"max_attempts": 3, "initial_backoff_ms": 10, "max_backoff_ms": 20},
        )
        await mesh.publish("orders.created", event("e-1"))
        (letter,) = await dlq.wait_for(1)
        assert len(failing.pushes) == 3
        assert letter.id == "e-1"
        assert letter.attributes["deadletterreason"] == "sink answered HTTP 500: db down"
        assert letter.attributes["deadlettergroup"] == "billing"
        assert letter.attributes["deadlettertopic"] == "orders.created"
        assert letter.attributes["deadletterattempts"] == "3"
        assert json.loads(letter.body) == {"n": "e-1"}
    finally:
        await failing.stop()
        await dlq.stop()


async def test_client_error_dead_letters_at_once(mesh: Client) -> None:
    rejecting = await RecordingSink(respond=lambda p: web.Response(status=422)).start()
    dlq = await _dead_letters(mesh, "billing")
    try:
        await mesh.subscribe(topic="orders.created", group="billing", sink=rejecting.url)
        await mesh.publish("orders.created", event("e-1"))
        (letter,) = await dlq.wait_for(1)
        assert len(rejecting.pushes) == 1
        assert letter.attributes["deadletterreason"] == "sink answered HTTP 422"
    finally:
        await rejecting.stop()
        await dlq.stop()


async def test_unreachable_sink_retries_then_dead_letters(mesh: Client) -> None:
    gone = await RecordingSink().start()
    url = gone.url
    await gone.stop()  # nothing listens there any more
    dlq = await _dead_letters(mesh, "billing")
    try:
        await mesh.subscribe(
            topic="orders.created",
            group="billing",
            sink=url,
            retry={"max_attempts": 2, "initial_backoff_ms": 10, "max_backoff_ms": 10},
        )
        await mesh.publish("orders.created", event("e-1"))
        (letter,) = await dlq.wait_for(1)
        assert letter.attributes["deadletterreason"].startswith(f"cannot connect to sink {url}")
    finally:
        await dlq.stop()


async def test_sink_timeout_counts_as_failed_attempt(mesh: Client) -> None:
    async def hang(push: Push) -> web.Response:
        await asyncio.sleep(2)
        return web.Response(status=204)

    slow = await RecordingSink(respond=hang).start()
    dlq = await _dead_letters(mesh, "billing")
    try:
        await mesh.subscribe(
            topic="orders.created",
            group="billing",
            sink=slow.url,
            timeout_ms=100,
            retry={"max_attempts": 2, "initial_backoff_ms": 10, "max_backoff_ms": 10},
        )
        await mesh.publish("orders.created", event("e-1"))
        (letter,) = await dlq.wait_for(1)
        assert letter.attributes["deadletterreason"] == "sink did not answer within 100 ms"
    finally:
        await slow.stop()
        await dlq.stop()


async def test_unsubscribe_stops_delivery(mesh: Client, sink: RecordingSink) -> None:
    subscription = await mesh.subscribe(topic="orders.created", group="billing", sink=sink.url)
    await mesh.publish("orders.created", event("before"))
    await sink.wait_for(1)
    status, _ = await mesh.request("DELETE", f"/v1/subscriptions/{subscription['id']}")
    assert status == 200
    await asyncio.sleep(0.2)
    await mesh.publish("orders.created", event("after"))
    await asyncio.sleep(1.2)
    assert sink.ids() == ["before"]


async def test_metrics_count_the_flow(mesh: Client) -> None:
    sink = await RecordingSink(respond=lambda p: web.Response(status=400)).start()
    try:
        await mesh.subscribe(topic="orders.created", group="billing", sink=sink.url)
        await mesh.publish("orders.created", event("e-1"), event("e-2"))
        await sink.wait_for(2)
        await asyncio.sleep(0.3)
        status, text = await mesh.request("GET", "/metrics")
        assert status == 200
        assert 'meshtap_events_published_total{topic="orders.created"} 2.0' in text
        assert (
            'meshtap_events_dead_lettered_total{group="billing",topic="orders.created"} 2.0' in text
        )
        assert 'meshtap_delivery_failures_total{group="billing",topic="orders.created"} 2.0' in text
        assert "meshtap_delivery_attempt_duration_seconds_bucket" in text
        assert "meshtap_group_backlog_events" in text
    finally:
        await sink.stop()


def _batch_ids(push: Push) -> list[str]:
    """The ids in a batched push; a batch of one goes out in binary mode (runtime._push), which
    happens when events trickle in slower than `max_wait_ms` (keyed appends on NATS)."""
    if "ce-id" in push.headers:
        return [push.headers["ce-id"]]
    assert push.headers["Content-Type"] == "application/cloudevents-batch+json"
    return [item["id"] for item in json.loads(push.body)]


async def test_batched_push_uses_batch_content_mode(mesh: Client, sink: RecordingSink) -> None:
    await mesh.subscribe(
        topic="orders.#",
        group="billing",
        sink=sink.url,
        batch={"max_events": 10, "max_wait_ms": 50},
    )
    ids = await mesh.publish("orders.created", *(event(f"e-{i}", tenant="acme") for i in range(25)))
    deadline = time.monotonic() + 10
    while sum(len(_batch_ids(p)) for p in sink.pushes) < 25 and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    received = [i for p in sink.pushes for i in _batch_ids(p)]
    assert sorted(received) == sorted(ids)
    assert all(len(_batch_ids(p)) <= 10 for p in sink.pushes)
    assert len(sink.pushes) < 25  # really batched
    first = json.loads(sink.pushes[0].body)[0]
    assert first["tenant"] == "acme"
    assert first["data"] == {"n": first["id"]}
    assert "traceparent" in first


async def test_batched_push_keeps_key_order_and_dead_letters_whole_batch(mesh: Client) -> None:
    answers: list[int] = []

    def respond(push: Push) -> web.Response:
        answers.append(len(_batch_ids(push)))
        return web.Response(status=500 if len(answers) <= 3 else 204)

    sink = await RecordingSink(respond=respond).start()
    dlq = await _dead_letters(mesh, "billing")
    try:
        await mesh.subscribe(
            topic="orders.#",
            group="billing",
            sink=sink.url,
            batch={"max_events": 50, "max_wait_ms": 20},
            retry={"max_attempts": 3, "initial_backoff_ms": 10, "max_backoff_ms": 10},
        )
        first = await mesh.publish("orders.created", *(event(f"a-{i}") for i in range(5)))
        letters = await dlq.wait_for(len(first))
        assert sorted(p.id for p in letters) == sorted(first)  # 3 failed pushes of one batch
        assert letters[0].attributes["deadletterattempts"] == "3"
        await mesh.publish(
            "orders.created", *(event(f"k-{i}", partitionkey=f"k{i % 2}") for i in range(10))
        )
        deadline = time.monotonic() + 10
        while sum(answers[3:]) < 10 and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        delivered = [i for p in sink.pushes[3:] for i in _batch_ids(p)]
        for key in ("0", "1"):
            mine = [i for i in delivered if int(i.split("-")[1]) % 2 == int(key)]
            assert mine == sorted(mine, key=lambda i: int(i.split("-")[1]))
        assert sorted(delivered) == sorted(f"k-{i}" for i in range(10))
    finally:
        await sink.stop()
        await dlq.stop()


async def test_retention_trims_only_settled_events(sink: RecordingSink) -> None:
    async with running("memory://") as (runtime, client):
        await client.subscribe(topic="orders.#", group="billing", sink=sink.url)
        await client.publish("orders.created", *(event(f"e-{i}") for i in range(50)))
        await sink.wait_for(50)
        await asyncio.sleep(0.2)  # acknowledgements are batched
        runtime.dispatcher.settings = dataclasses.replace(
            runtime.dispatcher.settings, retention_ms=0
        )
        await runtime.dispatcher.trim_now()
        await runtime.store.join("late", "orders.created", 0)
        assert await runtime.store.read("late", "c", ["orders.created"], 100, 0) == []


def _gauge(text: str, name: str, topic: str, group: str) -> float:
    match = re.search(
        rf'^{name}{{group="{group}",topic="{re.escape(topic)}"}} (\S+)$', text, re.MULTILINE
    )
    assert match, f"{name} for {topic}/{group} missing from /metrics"
    return float(match.group(1))


async def test_backlog_and_oldest_unacked_age_per_topic_and_group(store_url: str) -> None:
    release = asyncio.Event()

    async def held(push: Push) -> web.Response:
        await release.wait()
        return web.Response(status=204)

    sink = await RecordingSink(respond=held).start()
    try:
        async with running(store_url) as (runtime, client):
            await client.subscribe(topic="orders.#", group="billing", sink=sink.url)
            await client.publish("orders.created", *(event(f"e-{i}") for i in range(5)))
            await sink.wait_for(5)
            await asyncio.sleep(0.5)
            await runtime.dispatcher.measure_backlog()
            _, text = await client.request("GET", "/metrics")
            backlog = _gauge(text, "meshtap_consumer_backlog", "orders.created", "billing")
            age = _gauge(
                text, "meshtap_consumer_oldest_unacked_age_seconds", "orders.created", "billing"
            )
            assert backlog == 5
            assert 0.4 <= age < 30

            release.set()
            deadline = time.monotonic() + 10
            while backlog and time.monotonic() < deadline:  # acks go out in batches
                await asyncio.sleep(0.1)
                await runtime.dispatcher.measure_backlog()
                _, text = await client.request("GET", "/metrics")
                backlog = _gauge(text, "meshtap_consumer_backlog", "orders.created", "billing")
            age = _gauge(
                text, "meshtap_consumer_oldest_unacked_age_seconds", "orders.created", "billing"
            )
            assert (backlog, age) == (0, 0)
    finally:
        release.set()
        await sink.stop()


async def test_a_deleted_topic_that_comes_back_is_delivered_again(
    mesh: Client, sink: RecordingSink
) -> None:
    await mesh.subscribe(topic="orders.#", group="billing", sink=sink.url)
    await mesh.publish("orders.created", event("before"))
    await sink.wait_for(1)
    status, _ = await mesh.request("DELETE", "/v1/topics/orders.created")
    assert status in (200, 204)
    await asyncio.sleep(1.5)  # every instance notices the topic is gone
    await mesh.publish("orders.created", event("after"))
    await sink.wait_for(2)
    assert sink.ids() == ["before", "after"]
