"""The asyncio client: publish, request-reply and subscriptions over Meshtap's gRPC API.

It speaks the EventMesh-compatible gRPC API (`runtime/_proto/eventmesh.proto`) with Meshtap's
additions - acknowledged streams (`ackmode = explicit`) and request-reply through the store - so
the same code works against one runtime or many on one Redis.

Why it is shaped this way:

* Publishing is retried on UNAVAILABLE with exponential backoff and jitter (the runtime answers
  UNAVAILABLE only when it accepted nothing), so a runtime restart or a store blip costs a
  delay, not an error. Every other error is raised at once as a typed `MeshClientError`.
* A subscription is one gRPC stream that is reopened (and resubscribed) with backoff when it
  breaks; events that were in flight are redelivered by the runtime (at-least-once), so a
  reconnect never loses one. A heartbeat per subscription notices a runtime that forgot it
  (EventMesh's "resubscribe" answer) and reopens the stream.
* Trace context: `publish` puts the current OpenTelemetry context into the event's `traceparent`
  (unless it has one), and each received event starts a CONSUMER span whose parent is the
  event's `traceparent`, so producer, mesh and consumer are one trace.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import os
import random
import ssl
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

import aiohttp
import grpc  # type: ignore[import-untyped]
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from runtime._events import CloudEvent, now_rfc3339, to_binary_http
from runtime._grpc_codec import (
    PbCloudEvent,
    PbCloudEventBatch,
    from_proto,
    string_attribute,
    unpack_frame,
)
from runtime._grpc_codec import to_proto as event_to_proto
from runtime.client._errors import (
    ClientClosed,
    InvalidArgument,
    MeshClientError,
    Unavailable,
    from_grpc,
    from_http,
)

log = logging.getLogger("meshtap.client")

PACKAGE: Final = "org.apache.eventmesh.cloudevents.v1"
TARGET_ENV: Final = "MESHTAP_GRPC_TARGET"
HTTP_URL_ENV: Final = "MESHTAP_HTTP_URL"
DEFAULT_TARGET: Final = "127.0.0.1:10205"
TOKEN_ENV: Final = "MESHTAP_TOKEN"
TLS_CA_ENV: Final = "MESHTAP_TLS_CA"


class _Credentials:
    """Adds `authorization: Bearer <token>` to every call's metadata."""

    def __init__(self, token: str) -> None:
        self._header = ("authorization", f"Bearer {token}")

    def _details(self, details: Any) -> Any:
        return details._replace(metadata=[*(details.metadata or ()), self._header])


# grpc.aio files an interceptor under its first matching kind only: one class per call kind.
class _UnaryCredentials(_Credentials, grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._details(details), request)


class _StreamCredentials(_Credentials, grpc.aio.StreamStreamClientInterceptor):  # type: ignore[misc]
    async def intercept_stream_stream(
        self, continuation: Any, details: Any, request_iterator: Any
    ) -> Any:
        return await continuation(self._details(details), request_iterator)


def _channel(
    target: str, token: str | None, tls_ca: str | None, tls_cert: str | None, tls_key: str | None
) -> Any:
    interceptors = [_UnaryCredentials(token), _StreamCredentials(token)] if token else None
    if not (tls_ca or tls_cert):
        return grpc.aio.insecure_channel(target, interceptors=interceptors)
    root = Path(tls_ca).read_bytes() if tls_ca else None
    chain = Path(tls_cert).read_bytes() if tls_cert else None
    key = Path(tls_key).read_bytes() if tls_key else None
    credentials = grpc.ssl_channel_credentials(
        root_certificates=root, private_key=key, certificate_chain=chain
    )
    return grpc.aio.secure_channel(target, credentials, interceptors=interceptors)


Mode = Literal["clustering", "broadcast"]
Handler = Callable[["Delivery"], Awaitable[CloudEvent | None] | CloudEvent | None]
_PROPAGATOR: Final = TraceContextTextMapPropagator()
_RETRYABLE: Final = frozenset({"UNAVAILABLE"})
_STREAM_RETRYABLE: Final = frozenset({"UNAVAILABLE", "INTERNAL", "UNKNOWN", "CANCELLED"})
# What the runtime adds to a pushed event, not part of the event itself.
_PUSH_PLUMBING: Final = frozenset({"deliverytag", "deliveryattempt", "consumergroup"})


def new_event(
    type: str,
    data: bytes | str | dict[str, Any] | list[Any] | None = None,
    *,
    source: str = "/meshtap-client",
    id: str | None = None,
    datacontenttype: str | None = None,
    **extensions: str | int | bool,
) -> CloudEvent:
    """A CloudEvent to publish: dicts and lists become JSON data, str becomes UTF-8 text."""
    attributes: dict[str, str | int | bool] = {
        "specversion": "1.0",
        "id": id or uuid.uuid4().hex,
        "source": source,
        "type": type,
        "time": now_rfc3339(),
    }
    body: bytes | None
    if isinstance(data, dict | list):
        body = json.dumps(data, separators=(",", ":")).encode()
        attributes["datacontenttype"] = datacontenttype or "application/json"
    elif isinstance(data, str):
        body = data.encode()
        attributes["datacontenttype"] = datacontenttype or "text/plain"
    else:
        body = data
        if datacontenttype:
            attributes["datacontenttype"] = datacontenttype
    attributes.update(extensions)
    return CloudEvent(attributes, body)


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential backoff with full jitter: attempt n waits up to `initial_s * 2**n`."""

    initial_s: float = 0.1
    max_s: float = 5.0
    attempts: int = 6
    """Publishes and requests give up after this many tries (streams retry until closed)."""

    def delay(self, attempt: int) -> float:
        return random.uniform(0, min(self.max_s, self.initial_s * (2**attempt)))


def _with_trace_context(event: CloudEvent) -> CloudEvent:
    """Stamp the current OpenTelemetry context as the creation context, if the event has none."""
    if "traceparent" in event.attributes:
        return event
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier)
    if "traceparent" not in carrier:
        return event  # no active span: the runtime stamps its own
    return event.with_attributes(
        traceparent=carrier["traceparent"], tracestate=carrier.get("tracestate")
    )


def _message(topic: str, event: CloudEvent) -> PbCloudEvent:
    return event_to_proto(_with_trace_context(event), {"subject": topic})


def _typed(error: Any) -> MeshClientError:
    return from_grpc(error.code().name, error.details() or "")


def _control(kind: str, tag: str, reason: str = "") -> PbCloudEvent:
    message = PbCloudEvent()
    value = PbCloudEvent.CloudEventAttributeValue
    message.attributes["submessagetype"].CopyFrom(value(ce_string=kind))
    message.attributes["deliverytag"].CopyFrom(value(ce_string=tag))
    if reason:
        message.attributes["responsemessage"].CopyFrom(value(ce_string=reason))
    return message


class _Frame:
    """What the runtime acknowledges as one: a batch frame (or a single event). Its ack goes
    out once every delivery in it is settled; one nack makes the runtime redeliver the frame."""

    def __init__(self, tag: str, count: int, outbox: asyncio.Queue[Any]) -> None:
        self.tag = tag
        self.left = count
        self.outbox = outbox
        self.failure = ""

    def settle(self, acked: bool, reason: str = "") -> None:
        if not acked and not self.failure:
            self.failure = reason or "nacked"
        self.left -= 1
        if self.left == 0:
            kind = "nack" if self.failure else "ack"
            self.outbox.put_nowait(_control(kind, self.tag, self.failure))


class Delivery:
    """One received event: `event`, where it came from, and how to settle it.

    `ack()` confirms it; `nack(reason)` makes the runtime redeliver it (and dead-letter it after
    the subscription's last attempt); `reply(event)` answers a request (and acks it). `span` is
    the CONSUMER span started from the event's `traceparent`; it ends when the delivery is
    settled.
    """

    def __init__(self, message: PbCloudEvent, frame: _Frame, span: Span) -> None:
        self.event = from_proto(message, "the pushed event", trusted=True, drop=_PUSH_PLUMBING)
        self.topic = string_attribute(message, "subject")
        self.group = string_attribute(message, "consumergroup")
        attempt = string_attribute(message, "deliveryattempt")
        self.attempt = int(attempt) if attempt.isdigit() else 1
        self.span = span
        self._frame = frame
        self.settled = False

    @property
    def is_request(self) -> bool:
        return "replyto" in self.event.attributes

    def _settle(self, acked: bool, reason: str = "") -> None:
        if self.settled:
            return
        self.settled = True
        self._frame.settle(acked, reason)
        if not acked:
            self.span.set_status(trace.StatusCode.ERROR, reason or "nacked")
        self.span.end()

    async def ack(self) -> None:
        self._settle(True)

    async def nack(self, reason: str = "") -> None:
        self._settle(False, reason)

    async def reply(self, event: CloudEvent) -> None:
        """Send `event` back to the requester (this delivery must be a request)."""
        if not self.is_request:
            raise InvalidArgument(
                f"event {self.event.id!r} is not a request (it has no 'replyto'); only events "
                "published with request() can be replied to"
            )
        message = event_to_proto(
            event,
            {
                "replyto": str(self.event.attributes["replyto"]),
                "correlationid": str(self.event.attributes.get("correlationid", "")),
                "submessagetype": "subscription_reply",
                "subject": self.topic,
            },
        )
        if not self.settled:
            self._frame.outbox.put_nowait(message)
        self._settle(True)


class Subscription:
    """A subscription over one gRPC stream: an async iterator of `Delivery`, or a handler task.

    With `auto_ack`, an iterated delivery is acked when the next one is asked for (or when the
    handler returns; a handler that raises nacks it). Reconnects by itself until `close()`.
    """

    def __init__(
        self,
        client: AsyncMeshClient,
        topics: Sequence[str],
        group: str,
        mode: Mode,
        auto_ack: bool,
    ) -> None:
        self._client = client
        self.topics = list(topics)
        self.group = group
        self._mode = mode
        self._auto_ack = auto_ack
        self._inbox: asyncio.Queue[Delivery | BaseException] = asyncio.Queue()
        self._ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._closed = False
        self._call: Any = None
        self._outbox: asyncio.Queue[Any] | None = None
        self._renew = False
        self._last: Delivery | None = None
        self._task = asyncio.create_task(self._run(), name=f"subscription:{group}")
        self._heartbeat = asyncio.create_task(self._beat(), name=f"heartbeat:{group}")
        self._handler_task: asyncio.Task[None] | None = None

    def _subscription_message(self) -> PbCloudEvent:
        value = PbCloudEvent.CloudEventAttributeValue
        message = PbCloudEvent(
            id=uuid.uuid4().hex, source="/meshtap-client", spec_version="1.0", type="subscribe"
        )
        message.attributes["consumergroup"].CopyFrom(value(ce_string=self.group))
        message.attributes["ackmode"].CopyFrom(value(ce_string="explicit"))
        message.attributes["framing"].CopyFrom(value(ce_string="batch"))
        mode = "CLUSTERING" if self._mode == "clustering" else "BROADCASTING"
        message.text_data = json.dumps(
            [{"topic": t, "mode": mode, "type": "ASYNC"} for t in self.topics]
        )
        return message

    def _is_closed(self) -> bool:
        return self._closed

    async def _run(self) -> None:
        attempt = 0
        while not self._closed:
            try:
                await self._stream_once()
                attempt = 0
            except asyncio.CancelledError:
                # grpc.aio raises this from read() when the call is cancelled - by the
                # heartbeat asking for a fresh stream, or by close() (then it goes on up).
                if self._is_closed() or not self._renew:
                    raise
                self._renew = False
                continue
            except grpc.aio.AioRpcError as e:
                name = e.code().name
                if self._is_closed():
                    break
                if name not in _STREAM_RETRYABLE:
                    error = _typed(e)
                    if not self._ready.done():
                        self._ready.set_exception(error)
                    self._inbox.put_nowait(error)
                    return
                log.info("subscription %s: stream broke (%s), reconnecting", self.group, name)
            if self._is_closed():
                break
            await asyncio.sleep(self._client.backoff.delay(attempt))
            attempt = min(attempt + 1, 10)

    async def _stream_once(self) -> None:
        outbox: asyncio.Queue[Any] = asyncio.Queue()
        outbox.put_nowait(self._subscription_message())

        async def outgoing() -> AsyncIterator[PbCloudEvent]:
            while (item := await outbox.get()) is not None:
                yield item

        call = self._client._stream_call(outgoing())
        self._call, self._outbox = call, outbox
        try:
            confirmed = await call.read()
            if confirmed is grpc.aio.EOF:
                return
            if not self._ready.done():
                self._ready.set_result(None)
            while (message := await call.read()) is not grpc.aio.EOF:
                if string_attribute(message, "statuscode"):
                    if string_attribute(message, "statuscode") != "0":
                        log.warning(
                            "subscription %s: %s",
                            self.group,
                            string_attribute(message, "responsemessage"),
                        )
                    continue
                events = unpack_frame(message)
                tag = string_attribute(message, "deliverytag")
                if events is None:
                    events = [message]
                frame = _Frame(tag, len(events), outbox)
                for one in events:
                    self._inbox.put_nowait(self._client._delivery(one, frame))
        finally:
            outbox.put_nowait(None)
            call.cancel()

    async def _beat(self) -> None:
        interval = self._client.heartbeat_interval_s
        while not self._closed:
            await asyncio.sleep(interval)
            if not self._ready.done() or self._closed:
                continue
            with contextlib.suppress(MeshClientError):
                if not await self._client.heartbeat(self.group, self.topics):
                    log.info("subscription %s: the runtime asks to resubscribe", self.group)
                    if self._call is not None:
                        self._renew = True
                        self._call.cancel()  # _run reopens the stream and resubscribes

    async def ready(self, timeout: float = 10.0) -> Subscription:
        """Wait until the runtime confirmed the subscription."""
        try:
            await asyncio.wait_for(asyncio.shield(self._ready), timeout)
        except TimeoutError:
            raise Unavailable(
                f"the runtime did not confirm the subscription of group {self.group!r} within "
                f"{timeout:g} s; is it reachable at {self._client.target}?"
            ) from None
        return self

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Delivery:
        if self._last is not None and self._auto_ack:
            await self._last.ack()
        if self._closed and self._inbox.empty():
            raise StopAsyncIteration
        item = await self._inbox.get()
        if isinstance(item, BaseException):
            if isinstance(item, ClientClosed):
                raise StopAsyncIteration
            raise item
        self._last = item
        return item

    async def next(self, timeout: float | None = None) -> Delivery:
        """The next delivery, waiting at most `timeout` seconds (TimeoutError after)."""
        return await asyncio.wait_for(self.__anext__(), timeout)

    def run(self, handler: Handler) -> None:
        """Call `handler` for every delivery in a background task (see `subscribe`)."""
        self._handler_task = asyncio.create_task(self._serve(handler))

    async def _serve(self, handler: Handler) -> None:
        auto, self._auto_ack = self._auto_ack, False
        while True:
            try:
                delivery = await self.__anext__()
            except StopAsyncIteration:
                return
            try:
                with trace.use_span(delivery.span, end_on_exit=False):
                    result = handler(delivery)
                    if inspect.isawaitable(result):
                        result = await result
            except Exception as e:
                log.exception("handler failed on event %s", delivery.event.id)
                if auto:
                    await delivery.nack(f"{type(e).__name__}: {e}")
                continue
            if isinstance(result, CloudEvent) and delivery.is_request:
                await delivery.reply(result)
            elif auto:
                await delivery.ack()

    async def close(self) -> None:
        """End the stream. Unacked deliveries are redelivered (to another subscriber, if any)."""
        if self._closed:
            return
        self._closed = True
        self._inbox.put_nowait(ClientClosed("the subscription was closed"))
        if self._outbox is not None:
            # Half-close after the acks already queued; the runtime then ends the stream.
            self._outbox.put_nowait(None)
            await asyncio.wait({self._task}, timeout=2)
        if self._call is not None:
            self._call.cancel()
        for task in (self._heartbeat, self._task, self._handler_task):
            if task is not None and task is not asyncio.current_task():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task


class AsyncMeshClient:
    """Asyncio client of a Meshtap runtime.

    `target` is the gRPC API (`host:port`; default `$MESHTAP_GRPC_TARGET`, else
    `127.0.0.1:10205`). `http_url` (default `$MESHTAP_HTTP_URL`), if set, is used for
    `publish(..., via="http")`. Use as `async with AsyncMeshClient() as client:`.

    `token` (default `$MESHTAP_TOKEN`) is sent as `Authorization: Bearer` on every call, for a
    runtime started with authentication. `tls_ca` (default `$MESHTAP_TLS_CA`) makes the gRPC
    channel TLS, trusting that CA; `tls_cert`/`tls_key` add a client certificate (mTLS).
    """

    def __init__(
        self,
        target: str | None = None,
        *,
        http_url: str | None = None,
        timeout_s: float = 10.0,
        backoff: Backoff | None = None,
        heartbeat_interval_s: float = 30.0,
        tracer: Tracer | None = None,
        token: str | None = None,
        tls_ca: str | None = None,
        tls_cert: str | None = None,
        tls_key: str | None = None,
    ) -> None:
        self.target = target or os.environ.get(TARGET_ENV, DEFAULT_TARGET)
        token = token or os.environ.get(TOKEN_ENV) or None
        self._http_headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._tls_ca = tls_ca or os.environ.get(TLS_CA_ENV) or None
        http_url = http_url or os.environ.get(HTTP_URL_ENV)
        self.http_url = http_url.rstrip("/") if http_url else None
        self.timeout_s = timeout_s
        self.backoff = backoff or Backoff()
        self.heartbeat_interval_s = heartbeat_interval_s
        self._tracer = tracer or trace.get_tracer("meshtap.client")
        self._channel: Any = _channel(self.target, token, self._tls_ca, tls_cert, tls_key)
        self._session: aiohttp.ClientSession | None = None
        self._subscriptions: set[Subscription] = set()
        self._closed = False

    async def __aenter__(self) -> AsyncMeshClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- plumbing ----------------------------------------------------------------------------
    def _unary(self, service: str, method: str, reply: Any = PbCloudEvent) -> Any:
        return self._channel.unary_unary(
            f"/{PACKAGE}.{service}/{method}",
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=reply.FromString,
        )

    def _stream_call(self, requests: AsyncIterator[PbCloudEvent]) -> Any:
        return self._channel.stream_stream(
            f"/{PACKAGE}.ConsumerService/subscribeStream",
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=PbCloudEvent.FromString,
        )(requests)

    def _delivery(self, message: PbCloudEvent, frame: _Frame) -> Delivery:
        parent = _PROPAGATOR.extract(
            {"traceparent": string_attribute(message, "traceparent")}
            | (
                {"tracestate": string_attribute(message, "tracestate")}
                if "tracestate" in message.attributes
                else {}
            )
        )
        topic = string_attribute(message, "subject")
        span = self._tracer.start_span(
            f"process {topic}",
            context=parent,
            kind=SpanKind.CONSUMER,
            attributes={
                "messaging.system": "meshtap",
                "messaging.operation.type": "process",
                "messaging.destination.name": topic,
                "messaging.consumer.group.name": string_attribute(message, "consumergroup"),
                "messaging.message.id": message.id,
            },
        )
        return Delivery(message, frame, span)

    async def _call(
        self, service: str, method: str, message: Any, reply: Any = PbCloudEvent
    ) -> Any:
        """A unary call, retried on UNAVAILABLE with backoff; other errors typed at once."""
        if self._closed:
            raise ClientClosed("the client is closed")
        stub = self._unary(service, method, reply)
        attempt = 0
        while True:
            try:
                return await stub(message, timeout=self.timeout_s)
            except grpc.aio.AioRpcError as e:
                attempt += 1
                if e.code().name not in _RETRYABLE or attempt >= self.backoff.attempts:
                    raise _typed(e) from None
                await asyncio.sleep(self.backoff.delay(attempt))

    # -- publishing --------------------------------------------------------------------------
    async def publish(
        self, topic: str, event: CloudEvent, *, via: Literal["grpc", "http"] = "grpc"
    ) -> str:
        """Publish `event` on `topic`; returns its id once the runtime accepted (stored) it."""
        if via == "http":
            return (await self._publish_http(topic, [event]))[0]
        await self._call("PublisherService", "publish", _message(topic, event))
        return event.id

    async def publish_batch(self, topic: str, events: Iterable[CloudEvent]) -> list[str]:
        """Publish several events in one call; all are accepted or none."""
        batch = [_message(topic, e) for e in events]
        await self._call("PublisherService", "batchPublish", PbCloudEventBatch(events=batch))
        return [m.id for m in batch]

    async def _publish_http(self, topic: str, events: Sequence[CloudEvent]) -> list[str]:
        if self.http_url is None:
            raise InvalidArgument("publish(via='http') needs http_url=... on the client")
        if self._session is None:
            ssl_context: ssl.SSLContext | bool = (
                ssl.create_default_context(cafile=self._tls_ca) if self._tls_ca else True
            )
            self._session = aiohttp.ClientSession(
                headers=self._http_headers, connector=aiohttp.TCPConnector(ssl=ssl_context)
            )
        headers, body = to_binary_http(_with_trace_context(events[0]))
        url = f"{self.http_url}/v1/topics/{topic}/events"
        attempt = 0
        while True:
            try:
                async with self._session.post(
                    url, data=body, headers=headers, timeout=aiohttp.ClientTimeout(self.timeout_s)
                ) as response:
                    payload = await response.json(content_type=None)
                    if response.status == 200:
                        return list(payload["accepted"])
                    error = from_http(response.status, str(payload.get("message", "")))
            except (aiohttp.ClientError, TimeoutError) as e:
                error = Unavailable(f"cannot reach {self.http_url}: {type(e).__name__}: {e}")
            attempt += 1
            if not isinstance(error, Unavailable) or attempt >= self.backoff.attempts:
                raise error
            await asyncio.sleep(self.backoff.delay(attempt))

    # -- request-reply -----------------------------------------------------------------------
    async def request(self, topic: str, event: CloudEvent, *, timeout_s: float = 5.0) -> CloudEvent:
        """Publish `event` as a request and return the reply a subscriber sends back.

        Raises RequestTimeout when no reply comes within `timeout_s`.
        """
        message = _message(topic, event)
        message.attributes["ttl"].CopyFrom(
            PbCloudEvent.CloudEventAttributeValue(ce_string=str(int(timeout_s * 1000)))
        )
        stub = self._unary("PublisherService", "requestReply")
        try:
            reply = await stub(message, timeout=timeout_s + 2.0)
        except grpc.aio.AioRpcError as e:
            raise _typed(e) from None
        return from_proto(reply, "the reply", drop=frozenset({"statuscode", "responsemessage"}))

    # -- consuming ---------------------------------------------------------------------------
    async def subscribe(
        self,
        topics: str | Sequence[str],
        group: str,
        *,
        mode: Mode = "clustering",
        auto_ack: bool = True,
        handler: Handler | None = None,
    ) -> Subscription:
        """Subscribe `group` to `topics` (patterns allowed) over a gRPC stream.

        Iterate the result (`async for delivery in subscription`), or pass `handler`: it is
        called for each delivery in a background task; returning a CloudEvent from it answers
        a request. Returns once the runtime confirmed the subscription.
        """
        names = [topics] if isinstance(topics, str) else list(topics)
        subscription = Subscription(self, names, group, mode, auto_ack)
        self._subscriptions.add(subscription)
        await subscription.ready(self.timeout_s)
        if handler is not None:
            subscription.run(handler)
        return subscription

    async def heartbeat(self, group: str, topics: Sequence[str]) -> bool:
        """Tell the runtime this consumer is alive; False when it asks to resubscribe."""
        value = PbCloudEvent.CloudEventAttributeValue
        message = PbCloudEvent(
            id=uuid.uuid4().hex, source="/meshtap-client", spec_version="1.0", type="heartbeat"
        )
        message.attributes["clienttype"].CopyFrom(value(ce_string="2"))
        message.attributes["consumergroup"].CopyFrom(value(ce_string=group))
        message.text_data = json.dumps([{"topic": t, "url": ""} for t in topics])
        reply = await self._call("HeartbeatService", "heartbeat", message)
        return string_attribute(reply, "statuscode") == "0"

    async def close(self) -> None:
        if self._closed:
            return
        for subscription in list(self._subscriptions):
            await subscription.close()
        self._closed = True
        if self._session is not None:
            await self._session.close()
        await self._channel.close()
