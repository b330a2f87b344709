"""Misbehaving subscribers and a partitioned broker: nothing accepted is lost, and duplicates
appear only where at-least-once delivery allows them (a push whose answer never arrived), always
with the same event id so a subscriber can drop them.

Covered elsewhere, not repeated here: Redis killed and restarted mid-stream
(tests/test_redis_mesh.py::test_redis_outage_fails_fast_then_recovers_without_loss), a runtime
SIGKILLed with events in flight (test_redis_mesh.py::
test_crashed_instance_events_are_reclaimed_by_another), ClickHouse stopped and crashed under
load (tests/test_capture_faults.py), a replay worker SIGKILLed mid-replay
(tests/test_replay_run.py::test_a_killed_worker_resumes_without_sending_any_event_twice and
tests/test_replay_command.py::test_a_killed_replay_command_resumes_without_duplicates), a Celery
worker SIGKILLed mid-replay and Celery beat SIGKILLed mid-schedule (tests/test_celery_faults.py).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable

import pytest
from aiohttp import web

from tests.meshes import Client, event, running
from tests.servers import RedisServer
from tests.sinks import Push, RecordingSink

N = 20
FAST_RETRY = {"max_attempts": 8, "initial_backoff_ms": 50, "max_backoff_ms": 200}


async def metric(client: Client, name: str) -> float:
    _, text = await client.request("GET", "/metrics")
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + "{")
    )


async def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout}s waiting for {what}"
        await asyncio.sleep(0.05)


async def settle(client: Client, topic: str = "orders.created") -> list[str]:
    """Publish N events one by one and return their ids."""
    ids: list[str] = []
    for i in range(N):
        ids += await client.publish(topic, event(f"e-{i:02d}"))
    return ids


class RawSubscriber:
    """A TCP server that speaks just enough HTTP to misbehave on purpose.

    `first` decides what happens to the first request of each event id: "garbage" answers bytes
    that are not HTTP, "drop" reads the request and closes the connection without a word.
    Every later attempt of that id is answered 204. `received` counts requests per id.
    """

    def __init__(self, first: str) -> None:
        self.first = first
        self.received: Counter[str] = Counter()
        self._server: asyncio.Server | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/events"

    async def start(self) -> RawSubscriber:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                headers = {}
                for line in head.decode("latin-1").split("\r\n")[1:]:
                    name, _, value = line.partition(":")
                    headers[name.strip().lower()] = value.strip()
                await reader.readexactly(int(headers.get("content-length", "0")))
                event_id = headers.get("ce-id", "?")
                self.received[event_id] += 1
                if self.received[event_id] == 1:
                    if self.first == "garbage":
                        writer.write(b"\x00\xffNOT HTTP AT ALL\r\n\r\n{{{")
                        await writer.drain()
                    writer.close()
                    return
                writer.write(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()


async def test_a_slow_subscriber_gets_everything_exactly_once() -> None:
    async def slow(push: Push) -> web.Response:
        await asyncio.sleep(0.3)
        return web.Response(status=204)

    sink = await RecordingSink(respond=slow).start()
    try:
        async with running() as (_, client):
            await client.subscribe(
                topic="orders.#", group="slow", sink=sink.url, timeout_ms=5_000, retry=FAST_RETRY
            )
            ids = await settle(client)
            await wait_until(lambda: len(sink.pushes) >= N, 60, "all pushes")
            await asyncio.sleep(0.5)  # nothing more may come
            assert sorted(sink.ids()) == sorted(ids)  # each once: no loss, no duplicate
            assert await metric(client, "meshtap_delivery_failures_total") == 0
            assert await metric(client, "meshtap_events_delivered_total") == N
    finally:
        await sink.stop()


async def test_a_subscriber_that_times_out_gets_each_event_again_with_the_same_id() -> None:
    seen: Counter[str] = Counter()

    async def first_times_out(push: Push) -> web.Response:
        seen[push.id] += 1
        if seen[push.id] == 1:
            await asyncio.sleep(1.5)  # past timeout_ms: the mesh gives up on this attempt
        return web.Response(status=204)

    sink = await RecordingSink(respond=first_times_out).start()
    try:
        async with running() as (_, client):
            await client.subscribe(
                topic="orders.#", group="g", sink=sink.url, timeout_ms=300, retry=FAST_RETRY
            )
            ids = await settle(client)
            await wait_until(lambda: len(sink.pushes) >= 2 * N, 60, "every event twice")
            await asyncio.sleep(2.0)  # late answers to timed-out attempts change nothing
            # At-least-once: the timed-out attempt reached the subscriber, so each event came
            # exactly twice, both times with the same id; deduplicated, nothing is missing.
            assert Counter(sink.ids()) == dict.fromkeys(ids, 2)
            assert await metric(client, "meshtap_delivery_failures_total") == N
            assert await metric(client, "meshtap_events_delivered_total") == N
            assert await metric(client, "meshtap_events_dead_lettered_total") == 0
    finally:
        await sink.stop()


@pytest.mark.parametrize("first", ["garbage", "drop"])
async def test_garbage_answers_and_dropped_connections_are_retried(first: str) -> None:
    subscriber = await RawSubscriber(first).start()
    try:
        async with running() as (_, client):
            await client.subscribe(
                topic="orders.#", group="g", sink=subscriber.url, retry=FAST_RETRY
            )
            ids = await settle(client)
            await wait_until(
                lambda: sum(subscriber.received.values()) >= 2 * N, 60, "every event twice"
            )
            await asyncio.sleep(0.5)
            assert subscriber.received == dict.fromkeys(ids, 2)
            assert await metric(client, "meshtap_delivery_failures_total") == N
            assert await metric(client, "meshtap_events_delivered_total") == N
    finally:
        await subscriber.stop()


async def test_a_2xx_with_a_garbage_body_is_an_ack_and_never_repeated() -> None:
    sink = await RecordingSink(
        respond=lambda push: web.Response(status=200, body=b"\x00{[")
    ).start()
    try:
        async with running() as (_, client):
            await client.subscribe(topic="orders.#", group="g", sink=sink.url, retry=FAST_RETRY)
            ids = await settle(client)
            await wait_until(lambda: len(sink.pushes) >= N, 30, "all pushes")
            await asyncio.sleep(0.5)
            assert sorted(sink.ids()) == sorted(ids)
    finally:
        await sink.stop()


@pytest.mark.redis
async def test_a_partitioned_broker_refuses_then_recovers_without_loss(
    fresh_redis_server: RedisServer,
) -> None:
    """SIGSTOP of redis-server: connections hang as in a network partition."""
    sink = await RecordingSink().start()
    try:
        async with running(fresh_redis_server.url) as (_, client):
            await client.subscribe(topic="orders.#", group="g", sink=sink.url, retry=FAST_RETRY)
            accepted = await settle(client)
            await wait_until(lambda: len(sink.pushes) >= N, 30, "the first events")
            fresh_redis_server.pause()
            refused: list[str] = []

            async def try_publish(event_id: str) -> None:
                status, reply = await client.request(
                    "POST",
                    "/v1/topics/orders.created/events",
                    json=event(event_id),
                    headers={"content-type": "application/cloudevents+json"},
                )
                if status == 200:
                    accepted.extend(reply["accepted"])
                else:
                    assert status == 503, reply
                    assert reply["error"] == "store_unavailable"
                    refused.append(event_id)

            started = time.monotonic()
            await asyncio.wait_for(try_publish("during-1"), 30)
            assert time.monotonic() - started < 20  # bounded by the store's command timeout
            fresh_redis_server.resume()  # the store reconnects by itself
            deadline = time.monotonic() + 20
            i = 0
            # A 503 on a timeout is an unknown outcome: the append may sit in the paused
            # server's socket and run when it wakes. The publisher retries with the same id,
            # so at worst the subscriber sees that id twice.
            while refused:
                assert time.monotonic() < deadline, f"publishing did not recover: {refused}"
                retry = refused.pop()
                await try_publish(retry)
                if refused and refused[-1] == retry:
                    await asyncio.sleep(0.2)
            while len(accepted) < 2 * N + 1:
                assert time.monotonic() < deadline, f"publishing did not recover: {refused}"
                await try_publish(f"after-{i}")
                i += 1
            await wait_until(lambda: set(sink.ids()) >= set(accepted), 60, "every accepted event")
            await asyncio.sleep(1.0)
            assert set(sink.ids()) == set(accepted)  # nothing lost, nothing foreign
            assert "during-1" in accepted
            # Duplicates only from attempts whose ack the partition cut, or from the retried
            # publish: at most once more, with the same id.
            assert max(Counter(sink.ids()).values()) <= 2
    finally:
        await sink.stop()
