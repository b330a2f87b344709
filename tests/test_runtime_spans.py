"""The runtime's own spans (OpenTelemetry messaging semantic conventions), end to end.

A real runtime, real HTTP subscribers, and a fresh SDK TracerProvider with an in-memory exporter
per test (CONVENTIONS 8): assertions are on span names, kinds, attributes, parent/child, links,
and on the trace context the subscriber receives.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF
from opentelemetry.trace import SpanContext, SpanKind, StatusCode

from runtime import CloudEvent, StoreUnavailable
from runtime._config import RuntimeConfig
from runtime._events import parse_traceparent
from runtime._server import Runtime
from runtime.stores import EventRef
from runtime.stores.memory import MemoryStore
from tests.meshes import ROOT, Client, event, running
from tests.sinks import RecordingSink
from tests.test_capture_hooks import ListCapture

FAST_RETRY = {"max_attempts": 2, "initial_backoff_ms": 10, "max_backoff_ms": 10}


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    memory = InMemorySpanExporter()
    yield memory
    memory.clear()


@pytest.fixture
def provider(exporter: InMemorySpanExporter) -> Iterator[TracerProvider]:
    fresh = TracerProvider()
    fresh.add_span_processor(SimpleSpanProcessor(exporter))
    yield fresh
    fresh.shutdown()


@pytest.fixture
async def sink() -> AsyncIterator[RecordingSink]:
    s = await RecordingSink().start()
    yield s
    await s.stop()


def traceparent_of(context: SpanContext) -> str:
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}"


def context_of(traceparent: str) -> tuple[int, int]:
    parsed = parse_traceparent(traceparent)
    assert parsed is not None, traceparent
    return parsed[0], parsed[1]


def lower(headers: dict[str, str]) -> dict[str, str]:
    return {k.lower(): v for k, v in headers.items()}


async def wait_for_spans(
    exporter: InMemorySpanExporter,
    predicate: Callable[[list[ReadableSpan]], bool],
    timeout: float = 10.0,
) -> list[ReadableSpan]:
    deadline = time.monotonic() + timeout
    while True:
        spans = list(exporter.get_finished_spans())
        if predicate(spans):
            return spans
        if time.monotonic() > deadline:
            raise AssertionError(f"spans not as expected: {[s.name for s in spans]}")
        await asyncio.sleep(0.01)


def named(spans: list[ReadableSpan], prefix: str) -> list[ReadableSpan]:
    return [s for s in spans if s.name.startswith(prefix)]


def count(prefix: str, n: int) -> Callable[[list[ReadableSpan]], bool]:
    return lambda spans: len(named(spans, prefix)) >= n


def attrs(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


def parent_id(span: ReadableSpan) -> tuple[int, int] | None:
    return None if span.parent is None else (span.parent.trace_id, span.parent.span_id)


def ids(span: ReadableSpan) -> tuple[int, int]:
    assert span.context is not None
    return span.context.trace_id, span.context.span_id


def linked(span: ReadableSpan) -> list[tuple[tuple[int, int], dict[str, Any]]]:
    return [
        ((link.context.trace_id, link.context.span_id), dict(link.attributes or {}))
        for link in span.links
    ]


# --------------------------------------------------------------------------------------------
# publish
# --------------------------------------------------------------------------------------------


async def test_publish_without_traceparent_stamps_the_publish_spans_context(
    provider: TracerProvider, exporter: InMemorySpanExporter, sink: RecordingSink
) -> None:
    async with running(tracer_provider=provider) as (runtime, client):
        await client.subscribe(topic="orders.#", group="billing", sink=sink.url)
        await client.publish("orders.created", event("e-1"))
        (push,) = await sink.wait_for(1)
        spans = await wait_for_spans(exporter, count("process", 1))

    (publish,) = named(spans, "publish")
    assert publish.name == "publish orders.created"
    assert publish.kind is SpanKind.PRODUCER
    assert publish.parent is None
    assert publish.instrumentation_scope is not None
    assert publish.instrumentation_scope.name == "meshtap.runtime"
    assert attrs(publish) == {
        "messaging.system": "meshtap",
        "messaging.operation.type": "send",
        "messaging.operation.name": "publish",
        "messaging.destination.name": "orders.created",
        "messaging.message.id": "e-1",
        "messaging.meshtap.protocol": "http",
        "messaging.meshtap.producer": "127.0.0.1",
        "server.address": "127.0.0.1",
        "server.port": runtime.http_port,
    }
    assert publish.status.status_code is StatusCode.UNSET
    assert publish.context is not None
    assert push.attributes["traceparent"] == traceparent_of(publish.context)
    assert "tracestate" not in push.attributes


async def test_producer_traceparent_is_kept_and_parents_the_publish_span(
    provider: TracerProvider, exporter: InMemorySpanExporter, sink: RecordingSink
) -> None:
    with provider.get_tracer("producer-app").start_as_current_span(
        "send order", kind=SpanKind.PRODUCER
    ) as producer_span:
        creation = producer_span.get_span_context()
    traceparent = traceparent_of(creation)
    async with running(tracer_provider=provider) as (_, client):
        await client.subscribe(topic="orders.#", group="billing", sink=sink.url)
        await client.publish(
            "orders.created", event("e-1", traceparent=traceparent, tracestate="shop=7")
        )
        (push,) = await sink.wait_for(1)
        spans = await wait_for_spans(exporter, count("process", 1))

    (publish,) = named(spans, "publish")
    assert parent_id(publish) == (creation.trace_id, creation.span_id)
    assert ids(publish)[0] == creation.trace_id
    # The producer's span is the creation context: the mesh's publish span is not (semconv).
    assert publish.kind is SpanKind.CLIENT
    assert linked(publish) == [((creation.trace_id, creation.span_id), {})]
    assert push.attributes["traceparent"] == traceparent  # unchanged
    assert push.attributes["tracestate"] == "shop=7"


async def test_an_invalid_producer_traceparent_is_kept_but_parents_nothing(
    provider: TracerProvider, exporter: InMemorySpanExporter, sink: RecordingSink
) -> None:
    invalid = "00-0AF7651916CD43DD8448EB211C80319C-B7AD6B7169203331-01"  # upper case: not W3C
    async with running(tracer_provider=provider) as (_, client):
        await client.subscribe(topic="orders", group="billing", sink=sink.url)
        await client.publish("orders", event("e-1", traceparent=invalid))
        (push,) = await sink.wait_for(1)
        spans = await wait_for_spans(exporter, count("process", 1))
    assert push.attributes["traceparent"] == invalid  # byte-faithful, as the producer sent it
    (publish,) = named(spans, "publish")
    (process,) = named(spans, "process")
    assert (publish.parent, publish.links) == (None, ())
    assert (process.parent, process.links) == (None, ())
    assert context_of(lower(push.headers)["traceparent"]) == ids(process)


async def test_batch_publish_is_one_span_and_mints_a_creation_context_per_event(
    provider: TracerProvider, exporter: InMemorySpanExporter, sink: RecordingSink
) -> None:
    own = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    async with running(tracer_provider=provider) as (_, client):
        await client.subscribe(topic="orders.#", group="billing", sink=sink.url)
        await client.publish(
            "orders.paid", event("p-1"), event("p-2", traceparent=own), event("p-3")
        )
        pushes = await sink.wait_for(3)
        spans = await wait_for_spans(exporter, count("process", 3))

    (publish,) = named(spans, "publish")
    assert publish.name == "publish orders.paid"
    assert publish.kind is SpanKind.PRODUCER
    assert attrs(publish)["messaging.batch.message_count"] == 3
    assert "messaging.message.id" not in attrs(publish)
    # The first creation context the batch carried is the parent: the producer's trace.
    assert parent_id(publish) == context_of(own)
    by_id = {push.id: push.attributes["traceparent"] for push in pushes}
    assert by_id["p-2"] == own  # the producer's own context is never touched
    minted = {name: context_of(by_id[name]) for name in ("p-1", "p-3")}
    trace_id = ids(publish)[0]
    assert {trace for trace, _ in minted.values()} == {trace_id}  # the batch span's trace
    assert len({span for _, span in minted.values()} | {ids(publish)[1]}) == 3  # unique
    # It links to the context the producer brought, and names the ones it minted (in order).
    assert linked(publish) == [(context_of(own), {})]
    assert attrs(publish)["messaging.meshtap.minted_span_ids"] == tuple(
        f"{minted[name][1]:016x}" for name in ("p-1", "p-3")
    )
    # Each event's delivery is the child of its own creation context.
    processes = {attrs(s)["messaging.message.id"]: s for s in named(spans, "process")}
    assert parent_id(processes["p-1"]) == minted["p-1"]
    assert parent_id(processes["p-2"]) == context_of(own)
    assert parent_id(processes["p-3"]) == minted["p-3"]


async def test_a_batch_whose_events_all_bring_a_context_is_not_their_creation_context(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    first = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    second = "00-0af7651916cd43dd8448eb211c80319c-00f067aa0ba902b7-01"
    async with running(tracer_provider=provider) as (_, client):
        await client.publish(
            "orders.paid", event("p-1", traceparent=first), event("p-2", traceparent=second)
        )
    (publish,) = named(list(exporter.get_finished_spans()), "publish")
    assert publish.kind is SpanKind.CLIENT
    assert parent_id(publish) == context_of(first)
    assert [link for link, _ in linked(publish)] == [context_of(first), context_of(second)]


class OutageStore(MemoryStore):
    """The memory store, with an outage switched on by the test."""

    down = False

    async def append(self, topic: str, events: Sequence[CloudEvent]) -> list[EventRef]:
        if self.down:
            raise StoreUnavailable("the store is down (test outage); retry")
        return await super().append(topic, events)


async def test_a_refused_store_append_fails_the_publish_span(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    store = OutageStore()
    config = RuntimeConfig(http_port=0, otlp_http_port=0, otlp_grpc_port=0, grpc_port=0)
    runtime = Runtime(config, store=store, tracer_provider=provider)
    await runtime.start()
    try:
        async with aiohttp.ClientSession() as session:
            client = Client(runtime.http_url, session)
            store.down = True
            status, reply = await client.request(
                "POST",
                "/v1/topics/orders/events",
                json=event("e-1"),
                headers={"content-type": "application/cloudevents+json"},
            )
    finally:
        await runtime.stop(drain_timeout_s=1.0)
    assert status == 503, reply
    (publish,) = named(list(exporter.get_finished_spans()), "publish")
    assert publish.status.status_code is StatusCode.ERROR
    assert publish.status.description == "the store is down (test outage); retry"
    assert attrs(publish)["error.type"] == "runtime._errors.StoreUnavailable"


# --------------------------------------------------------------------------------------------
# delivery
# --------------------------------------------------------------------------------------------


async def test_each_delivery_is_a_consumer_span_in_the_producers_trace(
    provider: TracerProvider, exporter: InMemorySpanExporter, sink: RecordingSink
) -> None:
    capture = ListCapture()
    async with running(capture=capture, tracer_provider=provider) as (runtime, client):
        billing = await client.subscribe(topic="orders.#", group="billing", sink=sink.url)
        await client.subscribe(topic="orders.created", group="audit", sink=sink.url)
        await client.publish("orders.created", event("e-1"))
        pushes = await sink.wait_for(2)
        spans = await wait_for_spans(exporter, count("process", 2))

    (publish,) = named(spans, "publish")
    creation = ids(publish)
    processes = {attrs(s)["messaging.consumer.group.name"]: s for s in named(spans, "process")}
    assert set(processes) == {"billing", "audit"}
    process = processes["billing"]
    assert process.name == "process orders.created"
    assert process.kind is SpanKind.CONSUMER
    assert parent_id(process) == creation  # one trace: publish -> each group's delivery
    assert linked(process) == [(creation, {})]
    assert attrs(process) == {
        "messaging.system": "meshtap",
        "messaging.operation.type": "process",
        "messaging.operation.name": "process",
        "messaging.destination.name": "orders.created",
        "messaging.message.id": "e-1",
        "messaging.consumer.group.name": "billing",
        "messaging.meshtap.subscription.id": billing["id"],
        "messaging.meshtap.subscription.topic": "orders.#",
        "messaging.meshtap.sink": sink.url,
        "messaging.meshtap.delivery.attempt": 1,
        "messaging.meshtap.delivery.outcome": "acked",
        "http.response.status_code": 204,
        "server.address": "127.0.0.1",
        "server.port": runtime.http_port,
    }
    assert process.status.status_code is StatusCode.UNSET

    # The subscriber gets the creation context as ce-traceparent and the attempt's span as the
    # W3C traceparent header, so an instrumented consumer continues the trace under it.
    assert publish.context is not None
    for push in pushes:
        headers = lower(push.headers)
        assert headers["ce-traceparent"] == traceparent_of(publish.context)
        assert context_of(headers["traceparent"]) in {ids(s) for s in processes.values()}
    # The capture records point at the same spans.
    by_group = {d.group: d for d in capture.deliveries}
    for group, span in processes.items():
        trace_id, span_id = ids(span)
        assert (by_group[group].trace_id, by_group[group].span_id) == (
            f"{trace_id:032x}",
            f"{span_id:016x}",
        )


async def test_retry_then_ack_is_a_span_per_attempt_with_the_failure_marked(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    answers = iter([503, 204])
    sink = await RecordingSink(respond=lambda p: web.Response(status=next(answers))).start()
    capture = ListCapture()
    try:
        async with running(capture=capture, tracer_provider=provider) as (_, client):
            await client.subscribe(topic="orders", group="billing", sink=sink.url, retry=FAST_RETRY)
            await client.publish("orders", event("e-1"))
            pushes = await sink.wait_for(2)
            spans = await wait_for_spans(exporter, count("process", 2))
    finally:
        await sink.stop()

    (publish,) = named(spans, "publish")
    first, second = sorted(
        named(spans, "process"), key=lambda s: attrs(s)["messaging.meshtap.delivery.attempt"]
    )
    assert [parent_id(first), parent_id(second)] == [ids(publish), ids(publish)]
    assert attrs(first)["messaging.meshtap.delivery.attempt"] == 1
    assert attrs(first)["messaging.meshtap.delivery.outcome"] == "retry"
    assert attrs(first)["http.response.status_code"] == 503
    assert attrs(first)["error.type"] == "503"
    assert first.status.status_code is StatusCode.ERROR
    assert first.status.description == "sink answered HTTP 503"
    assert attrs(second)["messaging.meshtap.delivery.attempt"] == 2
    assert attrs(second)["messaging.meshtap.delivery.outcome"] == "acked"
    assert "error.type" not in attrs(second)
    assert second.status.status_code is StatusCode.UNSET
    # Each attempt's push carries that attempt's span.
    assert [context_of(lower(p.headers)["traceparent"]) for p in pushes] == [
        ids(first),
        ids(second),
    ]
    assert [(d.attempt, d.span_id) for d in capture.deliveries] == [
        (1, f"{ids(first)[1]:016x}"),
        (2, f"{ids(second)[1]:016x}"),
    ]


async def test_dead_letter_is_a_settle_span_and_keeps_the_trace(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    failing = await RecordingSink(respond=lambda p: web.Response(status=500, text="down")).start()
    letters = await RecordingSink().start()
    try:
        async with running(tracer_provider=provider) as (_, client):
            await client.subscribe(
                topic="orders", group="billing", sink=failing.url, retry=FAST_RETRY
            )
            await client.subscribe(topic="_dlq.billing", group="ops", sink=letters.url)
            await client.publish("orders", event("e-1"))
            (letter,) = await letters.wait_for(1)
            spans = await wait_for_spans(exporter, count("process", 3))
    finally:
        await failing.stop()
        await letters.stop()

    (publish,) = named(spans, "publish")
    attempts = sorted(
        (s for s in named(spans, "process") if s.name == "process orders"),
        key=lambda s: attrs(s)["messaging.meshtap.delivery.attempt"],
    )
    assert [attrs(s)["messaging.meshtap.delivery.outcome"] for s in attempts] == [
        "retry",
        "dead_lettered",
    ]
    assert all(s.status.status_code is StatusCode.ERROR for s in attempts)
    (settle,) = named(spans, "settle")
    assert settle.name == "settle orders"
    assert settle.kind is SpanKind.CLIENT
    assert parent_id(settle) == ids(publish)
    assert attrs(settle)["messaging.operation.type"] == "settle"
    assert attrs(settle)["messaging.operation.name"] == "dead_letter"
    assert attrs(settle)["messaging.meshtap.dead_letter.topic"] == "_dlq.billing"
    assert attrs(settle)["messaging.meshtap.dead_letter.reason"] == "sink answered HTTP 500: down"
    assert attrs(settle)["messaging.meshtap.delivery.attempt"] == 2
    # The dead letter keeps its creation context: its own delivery is in the same trace.
    assert publish.context is not None
    assert letter.attributes["traceparent"] == traceparent_of(publish.context)
    (dlq_process,) = [s for s in named(spans, "process") if s.name == "process _dlq.billing"]
    assert parent_id(dlq_process) == ids(publish)


async def test_batched_push_is_one_span_per_attempt_linked_to_every_event(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    sink = await RecordingSink().start()
    capture = ListCapture()
    try:
        async with running(capture=capture, tracer_provider=provider) as (_, client):
            await client.subscribe(
                topic="orders",
                group="billing",
                sink=sink.url,
                batch={"max_events": 3, "max_wait_ms": 200},
            )
            await client.publish("orders", event("b-1"), event("b-2"), event("b-3"))
            (push,) = await sink.wait_for(1)
            spans = await wait_for_spans(exporter, count("process", 1))
    finally:
        await sink.stop()

    (publish,) = named(spans, "publish")
    (process,) = named(spans, "process")
    assert process.name == "process orders"
    assert attrs(process)["messaging.batch.message_count"] == 3
    assert "messaging.message.id" not in attrs(process)
    pushed = [context_of(item["traceparent"]) for item in json.loads(push.body)]
    assert [item["id"] for item in json.loads(push.body)] == ["b-1", "b-2", "b-3"]
    # One link per event, in event order: the creation contexts the publish span minted.
    assert [link for link, _ in linked(process)] == pushed
    assert attrs(publish)["messaging.meshtap.minted_span_ids"] == tuple(
        f"{span_id:016x}" for _, span_id in pushed
    )
    # All three were minted in the batch span's trace, so the push joins that trace.
    assert ids(process)[0] == ids(publish)[0]
    assert parent_id(process) == pushed[0]
    assert context_of(lower(push.headers)["traceparent"]) == ids(process)
    assert {(d.event_id, d.span_id) for d in capture.deliveries} == {
        (event_id, f"{ids(process)[1]:016x}") for event_id in ("b-1", "b-2", "b-3")
    }


# --------------------------------------------------------------------------------------------
# which provider, and sampling
# --------------------------------------------------------------------------------------------


class TracingCapture(ListCapture):
    """A capture plugin that brings its own tracer provider, as the ClickHouse one does."""

    def __init__(self, provider: TracerProvider) -> None:
        super().__init__()
        self.provider = provider

    def tracer_provider(self) -> Any | None:
        return self.provider


async def test_spans_go_to_the_capture_plugins_provider_unless_one_is_given(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    async with running(capture=TracingCapture(provider)) as (_, client):
        await client.publish("orders", event("e-1"))
    assert [s.name for s in exporter.get_finished_spans()] == ["publish orders"]

    exporter.clear()
    given_exporter = InMemorySpanExporter()
    given = TracerProvider()
    given.add_span_processor(SimpleSpanProcessor(given_exporter))
    async with running(capture=TracingCapture(provider), tracer_provider=given) as (_, client):
        await client.publish("orders", event("e-2"))
    given.shutdown()
    assert exporter.get_finished_spans() == ()
    assert [s.name for s in given_exporter.get_finished_spans()] == ["publish orders"]


async def test_sampling_is_the_providers_and_never_loses_events_or_records(
    exporter: InMemorySpanExporter, sink: RecordingSink
) -> None:
    sampled_out = TracerProvider(sampler=ALWAYS_OFF)
    sampled_out.add_span_processor(SimpleSpanProcessor(exporter))
    capture = ListCapture()
    try:
        async with running(capture=capture, tracer_provider=sampled_out) as (_, client):
            await client.subscribe(topic="orders", group="billing", sink=sink.url)
            await client.publish("orders", event("e-1"))
            await client.publish("orders", event("e-2"), event("e-3"))
            pushes = await sink.wait_for(3)
            deadline = time.monotonic() + 5
            while len(capture.deliveries) < 3 and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
    finally:
        sampled_out.shutdown()
    assert exporter.get_finished_spans() == ()
    assert len(capture.published) == 3
    assert len(capture.deliveries) == 3
    # Valid, unique, not-sampled contexts: downstream apps follow the head decision.
    contexts = [parse_traceparent(p.attributes["traceparent"]) for p in pushes]
    assert all(c is not None and not c[2] & 1 for c in contexts)  # not sampled
    assert len({c[1] for c in contexts if c is not None}) == 3
    assert all(d.trace_id and d.span_id for d in capture.deliveries)


async def test_without_a_tracer_provider_contexts_are_random_and_passed_through(
    sink: RecordingSink,
) -> None:
    capture = ListCapture()
    async with running(capture=capture) as (_, client):
        await client.subscribe(topic="orders", group="billing", sink=sink.url)
        await client.publish("orders", event("e-1"), event("e-2"))
        pushes = await sink.wait_for(2)
        deadline = time.monotonic() + 5
        while len(capture.deliveries) < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
    contexts = [parse_traceparent(p.attributes["traceparent"]) for p in pushes]
    assert all(c is not None and c[2] == 1 for c in contexts)
    assert contexts[0] != contexts[1]
    # The API's no-op tracer propagates what it does not record: the push carries the
    # creation context, and the records name its trace but no span of their own.
    assert all(lower(p.headers)["traceparent"] == p.attributes["traceparent"] for p in pushes)
    by_id = {d.event_id: d for d in capture.deliveries}
    for push, context in zip(pushes, contexts, strict=True):
        assert context is not None
        assert (by_id[push.id].trace_id, by_id[push.id].span_id) == (f"{context[0]:032x}", "")


def test_the_runtime_uses_the_opentelemetry_api_only() -> None:
    """The SDK is the capture plugin's (or the application's) choice, never the runtime's."""
    code = (
        "import sys, runtime.__main__; "
        "print(sorted(m for m in sys.modules if m.startswith('opentelemetry.sdk')))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"
