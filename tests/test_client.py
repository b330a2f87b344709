"""The Python client SDK (`runtime.client`) against real runtimes: publish, subscribe, acks,
request-reply (also across two instances on one Redis), reconnects, typed errors and tracing."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

import runtime.client
from runtime._events import parse_traceparent
from runtime.client import (
    AsyncMeshClient,
    Backoff,
    CloudEvent,
    InvalidArgument,
    MeshClient,
    RequestTimeout,
    TooLarge,
    Unavailable,
    new_event,
)
from tests.meshes import SERVER_STORE_KINDS, event, free_port, running, store_params
from tests.servers import Server
from tests.sinks import RecordingSink

QUICK = Backoff(initial_s=0.05, max_s=0.2, attempts=3)


def test_exported_names_are_pinned() -> None:
    assert sorted(runtime.client.__all__) == [
        "AsyncMeshClient",
        "AuthenticationFailed",
        "Backoff",
        "ClientClosed",
        "CloudEvent",
        "Delivery",
        "InvalidArgument",
        "MeshClient",
        "MeshClientError",
        "NotFound",
        "PermissionDenied",
        "RequestTimeout",
        "Subscription",
        "SyncDelivery",
        "SyncSubscription",
        "TooLarge",
        "Unavailable",
        "new_event",
    ]
    for name in runtime.client.__all__:
        assert getattr(runtime.client, name) is not None


@pytest.fixture
def provider() -> Iterator[tuple[TracerProvider, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    fresh = TracerProvider()
    fresh.add_span_processor(SimpleSpanProcessor(exporter))
    yield fresh, exporter
    fresh.shutdown()


async def test_publish_and_subscribe_with_automatic_ack() -> None:
    async with (
        running(grpc=True) as (rt, _),
        AsyncMeshClient(rt.grpc_target, http_url=rt.http_url) as client,
    ):
        subscription = await client.subscribe("orders.#", group="billing")
        first = await client.publish("orders.created", new_event("order.created", {"n": 1}))
        batch = await client.publish_batch(
            "orders.paid", [new_event("order.paid", "two"), new_event("order.paid", b"3")]
        )
        via_http = await client.publish(
            "orders.created", new_event("order.created", {"n": 4}), via="http"
        )
        received = [await subscription.next(10) for _ in range(4)]
        await subscription.close()
    assert sorted(d.event.id for d in received) == sorted([first, *batch, via_http])
    by_id = {d.event.id: d for d in received}
    assert by_id[first].event.data == b'{"n":1}'
    assert by_id[first].topic == "orders.created"
    assert by_id[first].group == "billing"
    assert by_id[batch[0]].event.data == b"two"


async def test_explicit_ack_and_nack_redelivers() -> None:
    async with running(grpc=True) as (rt, _), AsyncMeshClient(rt.grpc_target) as client:
        subscription = await client.subscribe("jobs.#", group="workers", auto_ack=False)
        await client.publish("jobs.run", new_event("job", {"j": 1}, id="job-1"))
        first = await subscription.next(10)
        await first.nack("try later")
        again = await subscription.next(10)
        await again.ack()
        with pytest.raises(TimeoutError):
            await subscription.next(1.5)  # acked: not delivered again
        await subscription.close()
    assert (first.event.id, first.attempt) == ("job-1", 1)
    assert (again.event.id, again.attempt) == ("job-1", 2)


async def test_handler_callback_acks_and_answers_requests() -> None:
    seen: list[str] = []

    async def handle(delivery: runtime.client.Delivery) -> CloudEvent | None:
        seen.append(delivery.event.id)
        if delivery.is_request:
            return new_event("price.quote", {"price": 42})
        return None

    async with running(grpc=True) as (rt, _), AsyncMeshClient(rt.grpc_target) as client:
        await client.subscribe("prices.#", group="pricing", handler=handle)
        await client.publish("prices.updated", new_event("price.updated", id="p-1"))
        reply = await client.request(
            "prices.quote", new_event("price.ask", {"sku": "x"}, id="ask-1"), timeout_s=10
        )
    assert reply.type == "price.quote"
    assert reply.data == b'{"price":42}'
    assert reply.attributes["correlationid"]
    assert sorted(seen) == ["ask-1", "p-1"]


async def test_request_without_responder_times_out_with_a_clear_error() -> None:
    async with running(grpc=True) as (rt, _), AsyncMeshClient(rt.grpc_target) as client:
        started = time.monotonic()
        with pytest.raises(RequestTimeout) as caught:
            await client.request("nobody.home", new_event("ask", id="q-1"), timeout_s=0.5)
    assert time.monotonic() - started < 5
    message = str(caught.value)
    assert "no reply to request 'q-1' on topic 'nobody.home'" in message
    assert "check that a subscriber of the topic replies" in message


@pytest.mark.parametrize("kind", store_params(*SERVER_STORE_KINDS))
async def test_request_reply_across_two_instances_on_a_broker(
    kind: str, request: pytest.FixtureRequest
) -> None:
    server: Server = request.getfixturevalue(f"{kind}_server")
    async with (
        running(server.url, grpc=True) as (asking, _),
        running(server.url, grpc=True) as (answering, _),
        AsyncMeshClient(asking.grpc_target) as requester,
        AsyncMeshClient(answering.grpc_target) as responder,
    ):

        def echo(delivery: runtime.client.Delivery) -> CloudEvent:
            assert delivery.event.data is not None
            return new_event("echo.reply", delivery.event.data.decode().upper())

        await responder.subscribe("echo.requests", group="echo", handler=echo)
        await asyncio.sleep(1.5)  # the asking instance sees the subscription too
        replies = [
            await requester.request("echo.requests", new_event("echo", f"hello {i}"), timeout_s=10)
            for i in range(5)
        ]
    assert [r.data for r in replies] == [f"HELLO {i}".encode() for i in range(5)]
    # The reply was routed through the store to the requester's instance.
    assert all(str(r.attributes["replyto"]).startswith("_reply.") for r in replies)


async def test_typed_errors() -> None:
    async with (
        running(grpc=True, max_payload_bytes=500) as (rt, _),
        AsyncMeshClient(rt.grpc_target, backoff=QUICK) as client,
    ):
        with pytest.raises(InvalidArgument, match=r"use '\.' to separate segments"):
            await client.publish("orders/created", new_event("t"))
        with pytest.raises(TooLarge, match="--max-payload-bytes"):
            await client.publish("orders.created", new_event("t", "x" * 1000))
    async with AsyncMeshClient(f"127.0.0.1:{free_port()}", backoff=QUICK, timeout_s=1) as client:
        with pytest.raises(Unavailable):
            await client.publish("orders.created", new_event("t"))


async def test_subscription_reconnects_after_a_runtime_restart() -> None:
    port = free_port()
    async with running() as (first, _):
        await first.start_grpc(port)
        client = AsyncMeshClient(f"127.0.0.1:{port}", backoff=QUICK)
        subscription = await client.subscribe("orders.#", group="billing")
    # The runtime is gone (memory store: it forgot the subscription). A new one comes up on the
    # same port; the client reconnects and subscribes again by itself.
    async with running() as (second, http):
        await second.start_grpc(port)
        delivered = None
        deadline = time.monotonic() + 20
        while delivered is None and time.monotonic() < deadline:
            await http.publish("orders.created", event(f"r-{time.monotonic()}"))
            try:
                delivered = await subscription.next(0.5)
            except TimeoutError:
                continue
        await client.close()
    assert delivered is not None


async def test_heartbeat_notices_a_forgotten_subscription_and_resubscribes() -> None:
    async with (
        running(grpc=True) as (rt, http),
        AsyncMeshClient(rt.grpc_target, heartbeat_interval_s=0.2, backoff=QUICK) as client,
    ):
        subscription = await client.subscribe("orders.#", group="billing")
        (first,) = [s for s in await rt.mesh.subscriptions() if s.group == "billing"]
        await rt.mesh.unsubscribe(first.id)  # the runtime forgets it (as after a store reset)
        deadline = time.monotonic() + 10
        again: list[str] = []
        while not again and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
            again = [s.id for s in await rt.mesh.subscriptions() if s.group == "billing"]
        await http.publish("orders.created", event("after"))
        delivery = await subscription.next(10)
        await subscription.close()
    assert again
    assert again != [first.id]
    assert delivery.event.id == "after"


async def test_trace_context_flows_from_publisher_span_to_consumer_span(
    provider: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    tracer_provider, exporter = provider
    tracer = tracer_provider.get_tracer("app")
    async with (
        running(grpc=True) as (rt, _),
        AsyncMeshClient(rt.grpc_target, tracer=tracer) as client,
    ):
        subscription = await client.subscribe("orders.#", group="billing")
        with tracer.start_as_current_span("checkout") as checkout:
            await client.publish("orders.created", new_event("order.created", id="t-1"))
        delivery = await subscription.next(10)
        await delivery.ack()
        await subscription.close()
    checkout_context = checkout.get_span_context()
    parsed = parse_traceparent(delivery.event.attributes["traceparent"])
    assert parsed is not None
    assert parsed[:2] == (checkout_context.trace_id, checkout_context.span_id)
    (process,) = [s for s in exporter.get_finished_spans() if s.name == "process orders.created"]
    assert process.kind == SpanKind.CONSUMER
    assert process.parent is not None
    assert process.parent.span_id == checkout_context.span_id
    assert process.context.trace_id == checkout_context.trace_id
    assert process.attributes is not None
    assert process.attributes["messaging.consumer.group.name"] == "billing"


async def test_sync_client(sink: RecordingSink) -> None:
    async with running(grpc=True) as (rt, http):
        await http.subscribe(topic="orders.#", group="audit", sink=sink.url)

        def use_it() -> tuple[list[str], CloudEvent]:
            with MeshClient(rt.grpc_target) as client:
                subscription = client.subscribe("orders.#", group="billing", auto_ack=False)
                client.publish("orders.created", new_event("order.created", id="s-1"))
                client.publish_batch("orders.created", [new_event("order.created", id="s-2")])
                got = []
                for _ in range(2):
                    delivery = subscription.next(10)
                    delivery.ack()
                    got.append(delivery.event.id)
                client.subscribe(
                    "ping", group="pong", handler=lambda d: new_event("pong", id="reply-1")
                )
                reply = client.request("ping", new_event("ping"), timeout_s=10)
                subscription.close()
            return got, reply

        got, reply = await asyncio.to_thread(use_it)
        await sink.wait_for(2)
    assert sorted(got) == ["s-1", "s-2"]
    assert reply.id == "reply-1"


@pytest.fixture
async def sink() -> AsyncIterator[RecordingSink]:
    s = await RecordingSink().start()
    yield s
    await s.stop()
