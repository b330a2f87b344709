"""The runtime's own spans, following the OpenTelemetry messaging semantic conventions.

Only the OpenTelemetry *API* is used here. Which provider makes the spans is decided once, at
start: the one given to `Runtime(tracer_provider=...)`, else the capture plugin's
`tracer_provider()`, else the global provider. Sampling is the provider's business (the capture
plugin configures a ratio sampler): nothing here decides what is kept, and events and delivery
attempts are captured as records whatever the sampler says. Without an SDK the API's no-op
tracer makes every span here free and creates no context (it hands back the parent's, so a
push still carries the event's creation context); events without one get a random
`traceparent` as before.

The span model (operation types and names as in semconv's messaging spans; `publish` the
operation *type* is deprecated in favour of `send`, so `publish` survives as Meshtap's operation
*name* and thus in the span name)::

    producer app's span   the creation context, if the event brings a `traceparent`
      ├─ publish {topic}    CLIENT    send / publish        Mesh.publish, covers the store append
      │                                                     (PRODUCER, and itself the creation
      │                                                     context, when the event brings none)
      ├─ process {topic}    CONSUMER  process / process     each delivery attempt of each group
      └─ settle {topic}     CLIENT    settle / dead_letter  when the event is dead-lettered

(span kind, then `messaging.operation.type` / `messaging.operation.name`; every span's parent
is the event's creation context.)

* **Creation context.** The event's `traceparent`/`tracestate` (CloudEvents distributed-tracing
  extension) is its creation context. An event that brings one keeps it byte for byte; the
  publish span is then its child, links to it, and is a CLIENT span (semconv: PRODUCER only
  when the publish span's context *is* the creation context). An event without one is stamped
  with the publish span's context, and the span is PRODUCER.
* **Batch publish** (several events in one request) makes ONE publish span, with
  `messaging.batch.message_count`, not a span per event: a span costs ~20 us in the SDK, which
  at ~10,000 batched events/s is more than the whole 10 % budget tracing may take. Each event
  without a creation context gets a *minted* one: the batch span's trace id and flags and a
  fresh random span id, so every event's `traceparent` is valid, unique, and in the trace of
  the request that carried it. A minted context has no span of its own (semconv's "create"
  span, without paying for one per event): the publish span lists the minted span ids in
  event order in `messaging.meshtap.minted_span_ids`, which is how a trace view places the
  deliveries whose parent is a minted id under it. That list, not a link per minted context:
  links cost ~10 us per event end to end (measured), a third of the tracing budget, and
  semconv asks the publish span to link only to creation contexts that came from a create
  span or from the producer. Those carried contexts are linked; the span's parent is the
  first of them, else the current context.
* **Delivery.** Each push attempt is a `process {topic}` CONSUMER span (semconv: push-based
  delivery with no receive span). For one event its parent is the event's creation context,
  so producer app -> mesh -> every consumer group is ONE trace, and it also links to it. It
  carries group, subscription, attempt, sink, HTTP status and outcome; a failed attempt has
  status ERROR and `error.type`. Its context goes out as the W3C `traceparent`/`tracestate`
  HTTP headers of the push, so an instrumented consumer continues the trace, while
  `ce-traceparent` stays the creation context. A batched push is one span per attempt, linked
  to each event's creation context in event order (semconv), and the child of that context
  only when all its events share one trace. Links carry no `messaging.message.id`: that would
  double their cost, and each event's `DeliveryRecord` already names this span
  (`DeliveryRecord.trace_id/span_id` are always the attempt span's).
* **Settlement.** A subscriber settles a pushed event by its answer, which the process span
  records (`messaging.meshtap.delivery.outcome`). The store acknowledgements that follow are
  batched bookkeeping inside the mesh and get no span (one per ack batch, with no parent,
  would only add orphan traces). Dead-lettering is a settlement in its own right - the event
  is written to `_dlq.{group}` - and gets a `settle {topic}` span (operation name
  `dead_letter`, semconv's settle operation type) in the event's trace.
* **Cost** (CPU of the runtime process per event, bench/runtime_throughput.py scenarios on
  Redis, SDK with a do-nothing exporter, 2-core VM). Every span sampled: batch publish with
  batched push 94 -> 104 us (throughput 90 % of tracing off), one push per event 314 -> 413 us
  (76 %), single publishes 404 -> 494 us (82 %) - a span per push or per publish is mostly
  the SDK's own ~20 us. With `ParentBased(TraceIdRatioBased(0.1))` (the capture plugin's
  `--span-sample-ratio 0.1`): 99 %, 94 %, 95 %. An unsampled span costs a few microseconds,
  so the ratio is the knob for high-rate per-event traffic.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from contextlib import AbstractContextManager
from functools import lru_cache
from typing import Final

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import (
    Link,
    NonRecordingSpan,
    Span,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    TraceState,
)
from opentelemetry.util.types import AttributeValue

from runtime._events import (
    TRACEPARENT,
    TRACESTATE,
    CloudEvent,
    format_traceparent,
    parse_traceparent,
    stamp,
)

SCOPE_NAME: Final = "meshtap.runtime"
SYSTEM: Final = "meshtap"

# Semantic-convention attribute names (messaging, error, HTTP, server).
MESSAGING_SYSTEM: Final = "messaging.system"
OPERATION_TYPE: Final = "messaging.operation.type"
OPERATION_NAME: Final = "messaging.operation.name"
DESTINATION_NAME: Final = "messaging.destination.name"
CONSUMER_GROUP: Final = "messaging.consumer.group.name"
MESSAGE_ID: Final = "messaging.message.id"
BATCH_COUNT: Final = "messaging.batch.message_count"
SERVER_ADDRESS: Final = "server.address"
SERVER_PORT: Final = "server.port"
ERROR_TYPE: Final = "error.type"
HTTP_STATUS: Final = "http.response.status_code"
# Meshtap's own, in the `messaging.{system}` namespace as semconv asks.
PRODUCER: Final = "messaging.meshtap.producer"
PROTOCOL: Final = "messaging.meshtap.protocol"
SUBSCRIPTION_ID: Final = "messaging.meshtap.subscription.id"
SUBSCRIPTION_TOPIC: Final = "messaging.meshtap.subscription.topic"
SINK: Final = "messaging.meshtap.sink"
ATTEMPT: Final = "messaging.meshtap.delivery.attempt"
OUTCOME: Final = "messaging.meshtap.delivery.outcome"
DEAD_LETTER_TOPIC: Final = "messaging.meshtap.dead_letter.topic"
DEAD_LETTER_REASON: Final = "messaging.meshtap.dead_letter.reason"
MINTED_SPAN_IDS: Final = "messaging.meshtap.minted_span_ids"

OTHER_ERROR: Final = "_OTHER"
_ROOT: Final = Context()  # parent of delivery spans of events without a creation context


def creation_context(event: CloudEvent) -> SpanContext | None:
    """The event's creation context (its `traceparent` and `tracestate`), if valid."""
    parsed = parse_traceparent(event.attributes.get(TRACEPARENT))
    if parsed is None:
        return None
    trace_id, span_id, flags = parsed
    state = event.attributes.get(TRACESTATE)
    return SpanContext(
        trace_id,
        span_id,
        is_remote=True,
        trace_flags=TraceFlags(flags & 0xFF),
        trace_state=_trace_state(state) if isinstance(state, str) else None,
    )


@lru_cache(maxsize=1024)
def _trace_state(header: str) -> TraceState:
    """Parsed once per distinct value: producers repeat theirs, and the API logs a warning each
    time it meets an invalid one."""
    return TraceState.from_header([header])


def span_ids(span: Span) -> tuple[str, str]:
    """`(trace_id, span_id)` in lower-case hex, or empty strings for a context-less span."""
    context = span.get_span_context()
    if not context.is_valid:
        return "", ""
    return f"{context.trace_id:032x}", f"{context.span_id:016x}"


def attempt_ids(span: Span, items: Sequence[tuple[str, CloudEvent]]) -> tuple[str, str]:
    """`span_ids` of a delivery attempt's span, for its `DeliveryRecord`s.

    Without an SDK the API's tracer hands back the parent's context (it propagates what it
    cannot record); the record then keeps the trace id but claims no span of its own.
    """
    trace_id, span_id = span_ids(span)
    if span_id and not span.is_recording():
        carried = creation_context(items[0][1])
        if carried is not None and carried.span_id == span.get_span_context().span_id:
            return trace_id, ""
    return trace_id, span_id


def trace_headers(span: Span) -> dict[str, str]:
    """W3C Trace Context headers carrying `span`'s context (none for a context-less span)."""
    context = span.get_span_context()
    if not context.is_valid:
        return {}
    headers = {
        "traceparent": format_traceparent(context.trace_id, context.span_id, context.trace_flags)
    }
    if context.trace_state:
        headers["tracestate"] = context.trace_state.to_header()
    return headers


def _parent(context: SpanContext | None, default: Context | None) -> Context | None:
    if context is None:
        return default
    return trace.set_span_in_context(NonRecordingSpan(context))


def end_span(span: Span, error: BaseException | None = None) -> None:
    """End `span`; with `error`, mark it failed (status ERROR, `error.type` = class name)."""
    if error is not None:
        span.set_attribute(ERROR_TYPE, qualified_name(error))
        span.set_status(Status(StatusCode.ERROR, str(error) or type(error).__name__))
    span.end()


def qualified_name(error: BaseException) -> str:
    """The error's class as semconv's `error.type` wants it: fully qualified, builtins bare."""
    kind = type(error)
    if kind.__module__ == "builtins":
        return kind.__qualname__
    return f"{kind.__module__}.{kind.__qualname__}"


class MeshTracing:
    """Makes the runtime's spans; one per runtime, shared by `Mesh` and the `Dispatcher`."""

    def __init__(self, provider: trace.TracerProvider | None = None) -> None:
        self._tracer: trace.Tracer = trace.NoOpTracer()
        self._base: dict[str, AttributeValue] = {MESSAGING_SYSTEM: SYSTEM}
        self.use(provider)

    def use(self, provider: trace.TracerProvider | None) -> None:
        """Make spans with `provider` (None: the global provider, as it is when spans start)."""
        provider = provider or trace.get_tracer_provider()
        self._tracer = provider.get_tracer(SCOPE_NAME)

    def set_server(self, address: str, port: int) -> None:
        """The runtime's own address (`server.address`/`server.port` of every span)."""
        self._base[SERVER_ADDRESS] = address
        self._base[SERVER_PORT] = port

    # -- publish ------------------------------------------------------------------------------

    def start_publish(
        self, topic: str, events: Sequence[CloudEvent], *, producer: str, protocol: str
    ) -> tuple[Span, list[CloudEvent]]:
        """Start the publish span and stamp the events with their creation contexts.

        Returns the span (end it with `end_span` once the store has the events) and the
        stamped events, in order.
        """
        attributes = dict(self._base)
        attributes[OPERATION_TYPE] = "send"
        attributes[OPERATION_NAME] = "publish"
        attributes[DESTINATION_NAME] = topic
        attributes[PROTOCOL] = protocol
        if producer:
            attributes[PRODUCER] = producer
        if len(events) == 1:
            return self._publish_one(topic, events[0], attributes)
        return self._publish_batch(topic, events, attributes)

    def _publish_one(
        self, topic: str, event: CloudEvent, attributes: dict[str, AttributeValue]
    ) -> tuple[Span, list[CloudEvent]]:
        attributes[MESSAGE_ID] = event.id
        if TRACEPARENT in event.attributes:  # the producer's creation context: keep it
            carried = creation_context(event)
            span = self._tracer.start_span(
                f"publish {topic}",
                context=_parent(carried, None),
                kind=SpanKind.CLIENT,
                attributes=attributes,
                links=[Link(carried)] if carried is not None else None,
            )
            return span, [stamp(event)]
        span = self._tracer.start_span(
            f"publish {topic}", kind=SpanKind.PRODUCER, attributes=attributes
        )
        context = span.get_span_context()
        if not context.is_valid:
            return span, [stamp(event)]
        traceparent = format_traceparent(context.trace_id, context.span_id, context.trace_flags)
        state = context.trace_state.to_header() if context.trace_state else None
        return span, [stamp(event, traceparent, state)]

    def _publish_batch(
        self, topic: str, events: Sequence[CloudEvent], attributes: dict[str, AttributeValue]
    ) -> tuple[Span, list[CloudEvent]]:
        attributes[BATCH_COUNT] = len(events)
        links: list[Link] = []
        parent: SpanContext | None = None
        minting = False
        for event in events:
            if TRACEPARENT not in event.attributes:
                minting = True
                continue
            carried = creation_context(event)
            if carried is not None:
                parent = parent or carried
                links.append(Link(carried))
        span = self._tracer.start_span(
            f"publish {topic}",
            context=_parent(parent, None),
            kind=SpanKind.PRODUCER if minting else SpanKind.CLIENT,
            attributes=attributes,
            links=links,
        )
        context = span.get_span_context()
        if not minting or not context.is_valid:
            return span, [stamp(event) for event in events]
        state = context.trace_state.to_header() if context.trace_state else None
        stamped = []
        minted: list[str] = []
        for event in events:
            if TRACEPARENT in event.attributes:
                stamped.append(stamp(event))
                continue
            traceparent = format_traceparent(
                context.trace_id, random.getrandbits(64) or 1, context.trace_flags
            )
            stamped.append(stamp(event, traceparent, state))
            minted.append(traceparent[36:52])
        if span.is_recording():
            span.set_attribute(MINTED_SPAN_IDS, minted)
        return span, stamped

    # -- delivery -----------------------------------------------------------------------------

    def start_process(
        self,
        *,
        group: str,
        subscription_id: str,
        subscription_topic: str,
        sink: str,
        items: Sequence[tuple[str, CloudEvent]],
        attempt: int,
    ) -> Span:
        """Start the span of one push attempt of `items` (`(topic, event)` pairs)."""
        attributes = dict(self._base)
        attributes[OPERATION_TYPE] = "process"
        attributes[OPERATION_NAME] = "process"
        attributes[CONSUMER_GROUP] = group
        attributes[SUBSCRIPTION_ID] = subscription_id
        attributes[SUBSCRIPTION_TOPIC] = subscription_topic
        attributes[SINK] = sink
        attributes[ATTEMPT] = attempt
        if len(items) == 1:
            topic, event = items[0]
            attributes[DESTINATION_NAME] = topic
            attributes[MESSAGE_ID] = event.id
            carried = creation_context(event)
            return self._tracer.start_span(
                f"process {topic}",
                context=_parent(carried, _ROOT),
                kind=SpanKind.CONSUMER,
                attributes=attributes,
                links=[Link(carried)] if carried is not None else None,
            )
        attributes[BATCH_COUNT] = len(items)
        topics = {topic for topic, _ in items}
        destination = subscription_topic
        if len(topics) == 1:
            destination = attributes[DESTINATION_NAME] = next(iter(topics))
        links: list[Link] = []
        trace_ids = set()
        for _, event in items:
            carried = creation_context(event)
            if carried is not None:
                trace_ids.add(carried.trace_id)
                links.append(Link(carried))
        shared = links[0].context if len(trace_ids) == 1 and len(links) == len(items) else None
        return self._tracer.start_span(
            f"process {destination}",
            context=_parent(shared, _ROOT),
            kind=SpanKind.CONSUMER,
            attributes=attributes,
            links=links,
        )

    @staticmethod
    def activate(span: Span) -> AbstractContextManager[Span]:
        """Make `span` the current span (an instrumented HTTP client nests under it)."""
        return trace.use_span(
            span, end_on_exit=False, record_exception=False, set_status_on_exception=False
        )

    @staticmethod
    def end_process(
        span: Span, outcome: str, status: int | None, error: str, error_type: str
    ) -> None:
        """End an attempt's span: `outcome` is `acked`, `retry` or `dead_lettered`."""
        if not span.is_recording():
            span.end()
            return
        attributes: dict[str, AttributeValue] = {OUTCOME: outcome}
        if status is not None:
            attributes[HTTP_STATUS] = status
        if outcome != "acked":
            attributes[ERROR_TYPE] = error_type or OTHER_ERROR
            span.set_status(Status(StatusCode.ERROR, error))
        span.set_attributes(attributes)
        span.end()

    @staticmethod
    def abandon_process(span: Span) -> None:
        """End an attempt's span that never got an answer (the runtime is stopping)."""
        span.set_attribute(OUTCOME, "abandoned")
        span.end()

    def start_dead_letter(
        self,
        *,
        topic: str,
        event: CloudEvent,
        group: str,
        subscription_id: str,
        dead_letter_topic: str,
        reason: str,
        attempts: int,
    ) -> Span:
        """Start the settle span of moving `event` to the dead-letter topic."""
        attributes = dict(self._base)
        attributes[OPERATION_TYPE] = "settle"
        attributes[OPERATION_NAME] = "dead_letter"
        attributes[DESTINATION_NAME] = topic
        attributes[MESSAGE_ID] = event.id
        attributes[CONSUMER_GROUP] = group
        attributes[SUBSCRIPTION_ID] = subscription_id
        attributes[DEAD_LETTER_TOPIC] = dead_letter_topic
        attributes[DEAD_LETTER_REASON] = reason
        attributes[ATTEMPT] = attempts
        carried = creation_context(event)
        return self._tracer.start_span(
            f"settle {topic}",
            context=_parent(carried, _ROOT),
            kind=SpanKind.CLIENT,
            attributes=attributes,
            links=[Link(carried)] if carried is not None else None,
        )
