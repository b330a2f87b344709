"""The EventMesh-compatible gRPC API against a real grpc.aio server on 127.0.0.1:0.

Nothing below the stub is mocked: a real runtime (memory store, and Redis where it matters), real
HTTP subscribers, real gRPC streams. Semantics are the HTTP API's: the same publish path, groups,
ordering, retries, dead letters, trace stamping, capture records and spans.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace

import grpc  # type: ignore[import-untyped]
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from runtime._events import parse_traceparent
from runtime._grpc_codec import PbCloudEvent, string_attribute, unpack_frame
from runtime._subscriptions import RetryPolicy, Subscription
from tests.grpc_stubs import Api, Value, drain_events, pb_event, subscription
from tests.meshes import SERVER_STORE_KINDS, event, running, store_params, store_url
from tests.servers import Server
from tests.sinks import RecordingSink
from tests.test_capture_hooks import ListCapture


@pytest.fixture
async def sink() -> AsyncIterator[RecordingSink]:
    s = await RecordingSink().start()
    yield s
    await s.stop()


@pytest.fixture(params=store_params())
def store(request: pytest.FixtureRequest) -> str:
    """The store URL: the same behaviour is asserted on memory, Redis and NATS."""
    return store_url(request, request.param)


@pytest.fixture(params=store_params(*SERVER_STORE_KINDS))
def server(request: pytest.FixtureRequest) -> Server:
    """The session's Redis or NATS server (emptied first)."""
    found: Server = request.getfixturevalue(f"{request.param}_server")
    return found


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    memory = InMemorySpanExporter()
    yield memory
    memory.clear()


async def test_publish_reaches_a_webhook_subscriber_like_http(
    sink: RecordingSink, exporter: InMemorySpanExporter
) -> None:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    capture = ListCapture()
    async with running(grpc=True, capture=capture, tracer_provider=provider) as (runtime, client):
        await client.subscribe(topic="orders.#", group="billing", sink=sink.url)
        api = Api(runtime.grpc_target)
        try:
            message = pb_event(
                "g-1", "orders.created", '{"order": 1}', datacontenttype="application/json"
            )
            message.attributes["passwd"].CopyFrom(Value(ce_string="secret"))
            reply = await api.publish(message)
        finally:
            await api.close()
        assert string_attribute(reply, "statuscode") == "0"
        assert "g-1" in string_attribute(reply, "responsemessage")
        (push,) = await sink.wait_for(1)
    assert push.body == b'{"order": 1}'
    attributes = push.attributes
    assert attributes["id"] == "g-1"
    assert attributes["subject"] == "orders.created"
    assert "passwd" not in attributes  # credentials never travel on
    assert parse_traceparent(attributes["traceparent"]) is not None  # stamped at publish
    (record,) = capture.published
    assert (record.protocol, record.topic, record.event.id) == ("grpc", "orders.created", "g-1")
    (publish_span,) = [s for s in exporter.get_finished_spans() if s.name.startswith("publish")]
    assert publish_span.attributes is not None
    assert publish_span.attributes["messaging.system"] == "meshtap"
    assert publish_span.attributes["messaging.meshtap.protocol"] == "grpc"
    provider.shutdown()


async def test_batch_publish_and_one_way(sink: RecordingSink) -> None:
    async with running(grpc=True) as (runtime, client):
        await client.subscribe(topic="orders.#", group="billing", sink=sink.url)
        api = Api(runtime.grpc_target)
        try:
            reply = await api.batch_publish(
                pb_event("b-1", "orders.a", "x"), pb_event("b-2", "orders.b", "y")
            )
            assert "accepted 2 events" in string_attribute(reply, "responsemessage")
            await api.publish_one_way(pb_event("b-3", "orders.a", "z"))
        finally:
            await api.close()
        await sink.wait_for(3)
    assert sorted(sink.ids()) == ["b-1", "b-2", "b-3"]


async def test_stream_subscriber_gets_events_and_acks_them(store: str) -> None:
    async with running(store, grpc=True) as (runtime, client):
        api = Api(runtime.grpc_target)
        stream = api.stream()
        try:
            confirmed = await stream.open(subscription("billing", "orders.#", ackmode="explicit"))
            assert string_attribute(confirmed, "statuscode") == "0"
            await client.publish("orders.created", event("s-1"), event("s-2"))
            received = await stream.events(2)
            for message in received:
                await stream.ack(message)
            assert [m.id for m in received] == ["s-1", "s-2"]
            assert string_attribute(received[0], "subject") == "orders.created"
            assert string_attribute(received[0], "consumergroup") == "billing"
            assert json.loads(received[0].text_data) == {"n": "s-1"}
            # Acked: nothing comes again.
            assert [m async for m in drain_events(stream, 1.5)] == []
        finally:
            await stream.close()
            await api.close()


async def test_batch_framing_sends_many_events_in_one_message_acked_as_one(store: str) -> None:
    async with running(store, grpc=True) as (runtime, client):
        api = Api(runtime.grpc_target)
        stream = api.stream()
        try:
            await stream.open(
                subscription("billing", "orders.#", ackmode="explicit", framing="batch")
            )
            await asyncio.sleep(0.3)
            ids = await client.publish("orders.created", *(event(f"f-{i}") for i in range(10)))
            frames, events = [], []
            while len(events) < 10:
                frame = await stream.next_event()
                frames.append(frame)
                events += unpack_frame(frame) or []
            for frame in frames:
                await stream.ack(frame)
            assert [m async for m in drain_events(stream, 1.5)] == []  # all acked
        finally:
            await stream.close()
            await api.close()
    assert frames[0].type == "io.meshtap.batch"
    assert len(frames) < 10  # batched
    assert [e.id for e in events] == ids
    assert string_attribute(events[0], "subject") == "orders.created"


async def test_unacked_event_is_redelivered_and_nacked_goes_to_dead_letters(
    sink: RecordingSink, store: str
) -> None:
    async with running(store, grpc=True) as (runtime, client):
        await client.subscribe(topic="_dlq.billing", group="dlq-reader", sink=sink.url)
        api = Api(runtime.grpc_target)
        stream = api.stream()
        try:
            await stream.open(subscription("billing", "orders.#", ackmode="explicit"))
            subs = [s for s in await runtime.mesh.subscriptions() if s.protocol == "grpc"]
            # Short ack timeout and quick retries for this test (the stored policy is public).
            for sub in subs:
                await runtime.mesh.subscribe(
                    replace(sub, timeout_ms=300, retry=RetryPolicy(3, 50, 50))
                )
            await asyncio.sleep(0.3)
            await client.publish("orders.created", event("u-1"))
            first = await stream.next_event()
            # Not acked: it comes again (attempt 2), then a nack, then the third attempt fails
            # too and it is dead-lettered with the reason.
            second = await stream.next_event()
            assert second.id == first.id == "u-1"
            assert string_attribute(second, "deliveryattempt") == "2"
            await stream.nack(second, "cannot parse")
            third = await stream.next_event()
            await stream.nack(third, "still cannot parse")
            (letter,) = await sink.wait_for(1)
        finally:
            await stream.close()
            await api.close()
    assert letter.id == "u-1"
    assert "still cannot parse" in letter.attributes["deadletterreason"]


async def test_clustering_spreads_over_streams_and_broadcast_copies(store: str) -> None:
    async with running(store, grpc=True) as (runtime, client):
        api = Api(runtime.grpc_target)
        a, b, c = api.stream(), api.stream(), api.stream()
        try:
            await a.open(subscription("workers", "jobs.#"))
            await b.open(subscription("workers", "jobs.#"))
            await c.open(subscription("audit", "jobs.#", mode="BROADCASTING"))
            await asyncio.sleep(0.3)
            ids = await client.publish("jobs.run", *(event(f"j-{i}") for i in range(20)))
            audit = await c.events(20)
            got_a = [m.id async for m in drain_events(a, 1.0)]
            got_b = [m.id async for m in drain_events(b, 0.5)]
        finally:
            for stream in (a, b, c):
                await stream.close()
            await api.close()
    assert sorted(m.id for m in audit) == sorted(ids)
    assert sorted(got_a + got_b) == sorted(ids)  # each once per clustering group
    assert got_a
    assert got_b


async def test_partition_key_order_holds_on_a_stream(store: str) -> None:
    async with running(store, grpc=True) as (runtime, client):
        api = Api(runtime.grpc_target)
        stream = api.stream()
        try:
            await stream.open(subscription("billing", "orders.#", ackmode="explicit"))
            await asyncio.sleep(0.3)
            await client.publish(
                "orders.created", *(event(f"k-{i}", partitionkey="customer-7") for i in range(3))
            )
            first = await stream.next_event()
            # The next event of the key waits until the first is acked.
            assert [m async for m in drain_events(stream, 0.7)] == []
            await stream.ack(first)
            second = await stream.next_event()
            await stream.ack(second)
            third = await stream.next_event()
            await stream.ack(third)
        finally:
            await stream.close()
            await api.close()
    assert [first.id, second.id, third.id] == ["k-0", "k-1", "k-2"]


async def test_events_left_unacked_by_a_closed_stream_go_to_another_subscriber(
    store: str,
) -> None:
    async with running(store, grpc=True, claim_idle_ms=500) as (runtime, client):
        api = Api(runtime.grpc_target)
        leaving, staying = api.stream(), api.stream()
        try:
            await leaving.open(subscription("billing", "orders.#", ackmode="explicit"))
            await staying.open(subscription("billing", "orders.#", ackmode="explicit"))
            await asyncio.sleep(0.3)
            ids = await client.publish("orders.created", *(event(f"c-{i}") for i in range(6)))
            await asyncio.sleep(0.5)
            kept: list[str] = []
            async for message in drain_events(staying, 0.3):
                await staying.ack(message)
                kept.append(message.id)
            await leaving.close()  # whatever it held is unacked
            async for message in drain_events(staying, 4.0):
                await staying.ack(message)
                kept.append(message.id)
        finally:
            await staying.close()
            await api.close()
    assert sorted(set(kept)) == sorted(ids)


async def test_a_clustering_group_gets_what_was_published_while_its_stream_was_away(
    store: str,
) -> None:
    async with running(store, grpc=True) as (runtime, client):
        api = Api(runtime.grpc_target)
        try:
            first = api.stream()
            await first.open(subscription("billing", "orders.#", ackmode="explicit"))
            await asyncio.sleep(0.3)
            await client.publish("orders.created", event("before"))
            await first.ack(await first.next_event())
            await first.close()
            await asyncio.sleep(0.3)
            ids = await client.publish("orders.created", event("gap-1"), event("gap-2"))
            back = api.stream()
            await back.open(subscription("billing", "orders.#", ackmode="explicit"))
            got = await back.events(2)
            for message in got:
                await back.ack(message)
            await back.close()
            assert "before" not in [m.id for m in got]  # its ack counted before the close
        finally:
            await api.close()
    assert [m.id for m in got] == ids


async def test_webhook_subscribe_unsubscribe_and_heartbeat(sink: RecordingSink) -> None:
    async with running(grpc=True) as (runtime, _client):
        api = Api(runtime.grpc_target)
        try:
            sub = subscription("billing", "orders.created", url=sink.url)
            reply = await api.subscribe(sub)
            assert string_attribute(reply, "statuscode") == "0"
            beat = PbCloudEvent(id="hb", source="/tests", spec_version="1.0", type="heartbeat")
            beat.attributes["clienttype"].CopyFrom(Value(ce_string="2"))
            beat.attributes["consumergroup"].CopyFrom(Value(ce_string="billing"))
            beat.text_data = json.dumps([{"topic": "orders.created", "url": sink.url}])
            assert string_attribute(await api.heartbeat(beat), "statuscode") == "0"
            await api.publish(pb_event("w-1", "orders.created", "hello"))
            await sink.wait_for(1)
            await api.unsubscribe(sub)
            # After unsubscribing, the heartbeat says: resubscribe (EventMesh's code 30).
            assert string_attribute(await api.heartbeat(beat), "statuscode") == "30"
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await api.unsubscribe(sub)
        finally:
            await api.close()
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert "nothing to unsubscribe" in caught.value.details()
    assert sink.pushes[0].headers.get("code") == "105"  # EventMesh's webhook push contract


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"id": ""}, "missing required CloudEvents field(s) 'id'"),
        ({"spec_version": "0.3"}, "specversion"),
        ({"subject": ""}, "has no topic: put it in the 'subject' attribute"),
        ({"subject": "orders/created"}, "use '.' to separate segments"),
        ({"subject": "_dlq.billing"}, "reserved for the runtime"),
        ({"time": "yesterday"}, "not an RFC 3339 timestamp"),
    ],
)
async def test_malformed_events_are_invalid_argument(
    change: dict[str, str], expected: str, sink: RecordingSink
) -> None:
    async with running(grpc=True) as (runtime, client):
        await client.subscribe(topic="#", group="all", sink=sink.url)
        api = Api(runtime.grpc_target)
        message = pb_event("bad-1", "orders.created", "x")
        for name, value in change.items():
            if name in ("id", "spec_version"):
                setattr(message, name, value)
            else:
                message.attributes[name].CopyFrom(Value(ce_string=value))
        try:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await api.publish(message)
            # A batch with one bad event accepts none of them.
            with pytest.raises(grpc.aio.AioRpcError) as in_batch:
                await api.batch_publish(pb_event("ok-1", "orders.created", "x"), message)
        finally:
            await api.close()
        await asyncio.sleep(0.3)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert expected in caught.value.details()
    assert in_batch.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "event [1] of the batch" in in_batch.value.details()
    assert sink.pushes == []


async def test_bad_subscriptions_are_invalid_argument() -> None:
    async with running(grpc=True) as (runtime, _):
        api = Api(runtime.grpc_target)
        try:
            cases = {
                "no url": subscription("billing", "orders.#"),
                "bad mode": subscription("billing", "orders.#", mode="SOMETIMES", url="http://x/"),
                "metadata url": subscription("b", "o", url="http://169.254.169.254/"),
            }
            details = {}
            for name, message in cases.items():
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await api.subscribe(message)
                assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, name
                details[name] = caught.value.details()
            stream = api.stream()
            await stream.call.write(subscription("", "orders.#"))
            with pytest.raises(grpc.aio.AioRpcError) as on_stream:
                await stream.next_message()
        finally:
            await api.close()
    assert "call subscribeStream" in details["no url"]
    assert 'got "SOMETIMES"' in details["bad mode"]
    assert "link-local" in details["metadata url"]
    assert on_stream.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "'consumergroup' attribute is required" in on_stream.value.details()


async def test_too_large_is_resource_exhausted() -> None:
    async with running(grpc=True, max_payload_bytes=1000) as (runtime, _):
        api = Api(runtime.grpc_target)
        try:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await api.publish(pb_event("big", "orders.created", "x" * 2000))
        finally:
            await api.close()
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "the limit is 1000 bytes" in caught.value.details()
    assert "--max-payload-bytes" in caught.value.details()


@pytest.mark.parametrize("kind", store_params(*SERVER_STORE_KINDS))
async def test_store_down_is_unavailable_and_nothing_is_accepted(
    kind: str, request: pytest.FixtureRequest
) -> None:
    fresh_server: Server = request.getfixturevalue(f"fresh_{kind}_server")
    async with running(fresh_server.url, grpc=True) as (runtime, _):
        api = Api(runtime.grpc_target)
        try:
            await api.publish(pb_event("before", "orders.created", "x"))
            fresh_server.stop()
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await api.publish(pb_event("during", "orders.created", "x"))
        finally:
            await api.close()
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "retry" in caught.value.details()


async def test_streams_on_a_broker_across_two_instances(server: Server) -> None:
    """Clustering over two instances' streams: every event once, spread over both."""
    async with (
        running(server.url, grpc=True) as (one, client),
        running(server.url, grpc=True) as (two, _),
    ):
        api_one, api_two = Api(one.grpc_target), Api(two.grpc_target)
        a, b = api_one.stream(), api_two.stream()
        try:
            await a.open(subscription("workers", "jobs.#", ackmode="explicit"))
            await b.open(subscription("workers", "jobs.#", ackmode="explicit"))
            await asyncio.sleep(1.5)  # both instances see both subscriptions
            got: dict[str, list[str]] = {"a": [], "b": []}
            ids = []
            for i in range(30):  # one by one: each instance's blocked read takes a share
                ids += await client.publish("jobs.run", event(f"r-{i}"))
                await asyncio.sleep(0.03)

            async def take(name: str, stream: object) -> None:
                async for message in drain_events(stream, 2.0):  # type: ignore[arg-type]
                    await stream.ack(message)  # type: ignore[attr-defined]
                    got[name].append(message.id)

            await asyncio.gather(take("a", a), take("b", b))
        finally:
            for stream in (a, b):
                await stream.close()
            await api_one.close()
            await api_two.close()
    assert sorted(got["a"] + got["b"]) == sorted(ids)
    assert got["a"]
    assert got["b"]


async def test_stream_deliveries_are_process_spans_in_the_event_trace(
    exporter: InMemorySpanExporter,
) -> None:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    async with running(grpc=True, tracer_provider=provider) as (runtime, _):
        api = Api(runtime.grpc_target)
        stream = api.stream()
        try:
            await stream.open(subscription("billing", "orders.#", ackmode="explicit"))
            await asyncio.sleep(0.3)
            await api.publish(pb_event("sp-1", "orders.created", "x"))
            delivered = await stream.next_event()
            await stream.ack(delivered)
            await asyncio.sleep(0.3)
        finally:
            await stream.close()
            await api.close()
    spans = {s.name: s for s in exporter.get_finished_spans()}
    process = spans["process orders.created"]
    assert process.attributes is not None
    assert str(process.attributes["messaging.meshtap.sink"]).startswith("stream://")
    assert process.attributes["messaging.meshtap.delivery.outcome"] == "acked"
    parsed = parse_traceparent(string_attribute(delivered, "traceparent"))
    assert parsed is not None
    assert process.context.trace_id == parsed[0]
    provider.shutdown()


async def test_a_reply_can_come_through_publish_and_bad_ttl_is_refused() -> None:
    async with running(grpc=True) as (runtime, _):
        api = Api(runtime.grpc_target)
        stream = api.stream()
        try:
            await stream.open(subscription("pricing", "prices.#"))
            await asyncio.sleep(0.3)
            asking = asyncio.ensure_future(
                api.request_reply(pb_event("ask-1", "prices.quote", "sku-1", ttl="8000"))
            )
            request = await stream.next_event()
            answer = pb_event("ans-1", "prices.quote", "9.5", submessagetype="subscription_reply")
            for name in ("replyto", "correlationid"):
                answer.attributes[name].CopyFrom(request.attributes[name])
            await api.publish(answer)
            reply = await asking
            with pytest.raises(grpc.aio.AioRpcError) as bad_ttl:
                await api.request_reply(pb_event("ask-2", "prices.quote", "x", ttl="soon"))
            unaddressed = pb_event(
                "ans-2", "prices.quote", "x", submessagetype="subscription_reply"
            )
            with pytest.raises(grpc.aio.AioRpcError) as no_replyto:
                await api.publish(unaddressed)
        finally:
            await stream.close()
            await api.close()
    assert (reply.id, reply.text_data) == ("ans-1", "9.5")
    assert bad_ttl.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "'ttl' is the reply timeout in milliseconds, got 'soon'" in bad_ttl.value.details()
    assert no_replyto.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "copy the request's attributes into the reply" in no_replyto.value.details()


async def test_request_reply_times_out_with_deadline_exceeded() -> None:
    async with running(grpc=True) as (runtime, _):
        api = Api(runtime.grpc_target)
        try:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await api.request_reply(pb_event("lonely", "nobody.listens", "x", ttl="300"))
        finally:
            await api.close()
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "no reply to request 'lonely' on topic 'nobody.listens' within 300 ms" in (
        caught.value.details()
    )


async def test_stream_subscriptions_of_a_crashed_instance_are_removed_when_their_lease_ends(
    sink: RecordingSink,
) -> None:
    async with running(grpc=True) as (runtime, client):
        assert runtime.grpc is not None
        runtime.grpc.lease_s = 0.2
        await client.subscribe(topic="orders.#", group="webhooks", sink=sink.url)
        # What a crashed instance leaves behind: stream subscriptions nobody renews.
        ghost = Subscription(
            topic="orders.#",
            group="ghosts",
            sink="stream://crashed-instance-0a1b2c/0123",
            mode="broadcast",
            protocol="grpc",
            created_ms=time.time_ns() // 1_000_000 - 60_000,
        )
        await runtime.mesh.subscribe(ghost)
        api = Api(runtime.grpc_target)
        stream = api.stream()
        try:
            await stream.open(subscription("live", "orders.#"))
            await asyncio.sleep(1.5)  # several lease periods
            remaining = {s.group for s in await runtime.mesh.subscriptions()}
        finally:
            await stream.close()
            await api.close()
    assert remaining == {"webhooks", "live"}  # the live stream was renewed, the ghost removed
