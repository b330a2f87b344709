"""The gRPC API: EventMesh's PublisherService, ConsumerService and HeartbeatService on grpc.aio.

Wire-compatible with Apache EventMesh (`runtime/_proto/eventmesh.proto`, facts in
docs/eventmesh-compat-notes.md), so EventMesh gRPC clients work unchanged. Handlers are thin:
they convert the protobuf CloudEvent (`runtime._grpc_codec`) and call the same `Mesh`, delivery
machinery (`runtime._streams` for streams) and request-reply router as every other protocol, so
groups, ordering, retries, dead letters, capture and spans behave alike (`protocol = grpc`).

Conventions taken from EventMesh: the topic is the `subject` attribute; a success reply is a
CloudEvent with attributes `statuscode` "0", `responsemessage` and `time`; subscriptions carry
`consumergroup` and a JSON list of `{"topic", "mode", "type"}` items in `text_data`; a stream
reply is marked `submessagetype = subscription_reply`.

Deliberately different: errors are gRPC status codes, not a `statuscode` attribute on an OK
reply - INVALID_ARGUMENT (malformed CloudEvent, bad topic or subscription), NOT_FOUND (nothing to
unsubscribe), RESOURCE_EXHAUSTED (over --max-payload-bytes), UNAVAILABLE (store down; nothing
accepted, retry), DEADLINE_EXCEEDED (no reply to a request in time) - each with a message that
says what to do. Credentials (`username`, `passwd`, `token`) and response attributes are never
stored with an event. Streams can acknowledge (`ackmode = explicit`, see `runtime._streams`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any, Final, TypeVar

import grpc  # type: ignore[import-untyped]
from google.protobuf.empty_pb2 import Empty
from google.protobuf.message import DecodeError
from google.protobuf.timestamp_pb2 import Timestamp

from runtime._auth import Authenticator, Principal, auth_settings, bearer, current_principal
from runtime._config import RuntimeConfig
from runtime._errors import (
    CannotListen,
    Forbidden,
    InvalidRequest,
    InvalidSubscription,
    InvalidTopic,
    MeshtapError,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    ReplyTimeout,
    StoreUnavailable,
    Unauthenticated,
)
from runtime._eventmesh import (
    NEVER_FORWARDED,
    SubscriptionItem,
    _Refused,
    parse_subscription_items,
)
from runtime._eventmesh import subscribe as eventmesh_subscribe
from runtime._eventmesh import unsubscribe as eventmesh_unsubscribe
from runtime._events import CloudEvent
from runtime._grpc_codec import PbCloudEvent, PbCloudEventBatch, from_proto, string_attribute
from runtime._grpc_codec import to_proto as event_to_proto
from runtime._mesh import Mesh
from runtime._replies import ReplyRouter
from runtime._streams import DELIVERY_TAG, StreamHub, StreamSession
from runtime._subscriptions import BatchPolicy, Subscription
from runtime._topics import is_internal, validate_group, validate_topic

log = logging.getLogger("meshtap.runtime.grpc")

PACKAGE: Final = "org.apache.eventmesh.cloudevents.v1"
PROTOCOL: Final = "grpc"
SUB_MESSAGE_TYPE: Final = "submessagetype"
REPLY_MESSAGE: Final = "subscription_reply"
ACK_MESSAGE: Final = "ack"
NACK_MESSAGE: Final = "nack"
# Attributes that are protocol plumbing, never part of a stored event.
PLUMBING: Final = NEVER_FORWARDED | frozenset(
    {"statuscode", "responsemessage", SUB_MESSAGE_TYPE, DELIVERY_TAG, "ackmode", "framing"}
)
DEFAULT_TTL_MS: Final = 4000  # EventMesh's default request-reply ttl
STREAM_ACK_TIMEOUT_MS: Final = 30_000
# Up to 100 events per push, at most 2 ms after the first is ready: per-event delivery costs
# the dispatcher far more than the event (see README, Benchmarks).
STREAM_BATCH: Final = BatchPolicy(max_events=100, max_wait_ms=2)
# Stream subscriptions are leased: renewed this often by their instance, removed by any instance
# after three missed renewals (their instance crashed and cannot remove them itself).
STREAM_LEASE_S: Final = 10.0
RENEWED: Final = "renewed_ms"

Request = TypeVar("Request")
Reply = TypeVar("Reply")


def status_event(code: str, message: str, base: PbCloudEvent | None = None) -> PbCloudEvent:
    """EventMesh's reply shape: `statuscode`, `responsemessage`, `time` (on a copy of `base`)."""
    reply = PbCloudEvent()
    if base is not None:
        reply.CopyFrom(base)
    else:
        reply.spec_version = "1.0"
    value = PbCloudEvent.CloudEventAttributeValue
    reply.attributes["statuscode"].CopyFrom(value(ce_string=code))
    reply.attributes["responsemessage"].CopyFrom(value(ce_string=message))
    if "time" not in reply.attributes:  # a reply event keeps its own time
        stamp = Timestamp()
        stamp.FromDatetime(datetime.now(UTC))
        reply.attributes["time"].CopyFrom(value(ce_timestamp=stamp))
    return reply


def _grpc_status(error: Exception) -> tuple[Any, str]:
    if isinstance(error, _Refused):
        return grpc.StatusCode.INVALID_ARGUMENT, error.detail
    if isinstance(error, PayloadTooLarge):
        return grpc.StatusCode.RESOURCE_EXHAUSTED, str(error)
    if isinstance(error, Unauthenticated):
        return grpc.StatusCode.UNAUTHENTICATED, str(error)
    if isinstance(error, Forbidden):
        return grpc.StatusCode.PERMISSION_DENIED, str(error)
    if isinstance(error, RateLimited):
        return grpc.StatusCode.RESOURCE_EXHAUSTED, f"{error} (retry after {error.retry_after_s} s)"
    if isinstance(error, NotFound):
        return grpc.StatusCode.NOT_FOUND, str(error)
    if isinstance(error, StoreUnavailable):
        return grpc.StatusCode.UNAVAILABLE, f"{error}; nothing was accepted, retry shortly"
    if isinstance(error, ReplyTimeout):
        return grpc.StatusCode.DEADLINE_EXCEEDED, str(error)
    if isinstance(error, InvalidRequest):
        return grpc.StatusCode.INVALID_ARGUMENT, str(error)
    return grpc.StatusCode.INTERNAL, f"{type(error).__name__}: {error}"


def _unary(
    method: Callable[[Request, Any], Awaitable[Reply]],
) -> Callable[[Request, Any], Awaitable[Reply]]:
    """Turn the runtime's errors into gRPC status codes with their messages."""

    async def handler(request: Request, context: Any) -> Reply:
        try:
            return await method(request, context)
        except (MeshtapError, _Refused) as e:
            code, message = _grpc_status(e)
            await context.abort(code, message)
            raise AssertionError("abort returns by raising") from e

    return handler


def _topic_of(message: PbCloudEvent, where: str) -> str:
    topic = string_attribute(message, "subject")
    if not topic:
        raise InvalidRequest(
            f"{where} has no topic: put it in the 'subject' attribute (EventMesh's convention), "
            "e.g. attributes['subject'] = {ce_string: 'orders.created'}"
        )
    return validate_topic(topic)


def _items(message: PbCloudEvent) -> list[SubscriptionItem]:
    example = '[{"topic": "orders.created", "mode": "CLUSTERING", "type": "ASYNC"}]'
    try:
        raw = json.loads(message.text_data) if message.text_data else None
    except (ValueError, RecursionError) as e:
        raise InvalidSubscription(
            f"text_data must be a JSON list of subscription items like {example}: {e}"
        ) from None
    if raw is None:
        raise InvalidSubscription(f"text_data must list what to subscribe to, e.g. {example}")
    return parse_subscription_items(raw)


def _group(message: PbCloudEvent) -> str:
    group = string_attribute(message, "consumergroup")
    if not group:
        raise InvalidSubscription(
            "the 'consumergroup' attribute is required, e.g. attributes['consumergroup'] = "
            "{ce_string: 'billing'}"
        )
    return validate_group(group)


def _not_protobuf(error: Exception, what: str = "CloudEvent") -> str:
    return (
        f"the request is not an EventMesh {what} protobuf message ({error}); build it from "
        "runtime/_proto/eventmesh.proto (org.apache.eventmesh.cloudevents.v1)"
    )


def _parsed(
    method: Callable[[Any, Any], Awaitable[Reply]], message_type: Any
) -> Callable[[bytes, Any], Awaitable[Reply]]:
    async def handler(raw: bytes, context: Any) -> Reply:
        try:
            request = message_type.FromString(raw)
        except DecodeError as e:
            raise InvalidRequest(_not_protobuf(e, message_type.DESCRIPTOR.name)) from None
        return await method(request, context)

    return handler


class GrpcApi:
    """The gRPC listener of one runtime instance."""

    def __init__(
        self,
        mesh: Mesh,
        config: RuntimeConfig,
        streams: StreamHub,
        replies: ReplyRouter,
        *,
        port: int | None = None,
        auth: Authenticator | None = None,
        server_credentials: Any = None,
    ) -> None:
        self._wanted_port = config.grpc_port if port is None else port
        self._mesh = mesh
        self._config = config
        self._streams = streams
        self._replies = replies
        self._auth = auth or Authenticator(auth_settings(config))
        self._credentials = server_credentials
        self._server: Any = None
        self.port: int | None = None
        self.lease_s = STREAM_LEASE_S
        self._lease_task: asyncio.Task[None] | None = None

    # -- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        limit = self._config.max_payload_bytes
        server = grpc.aio.server(
            options=[
                # Larger than the limit we check ourselves, so oversize events get our message.
                ("grpc.max_receive_message_length", limit * 2 + 65_536),
                ("grpc.max_send_message_length", limit * 2 + 65_536),
                ("grpc.so_reuseport", 0),
            ]
        )
        server.add_generic_rpc_handlers(self._handlers())
        host = self._config.host
        try:
            address = f"{host}:{self._wanted_port}"
            if self._credentials is not None:
                port = server.add_secure_port(address, self._credentials)
            else:
                port = server.add_insecure_port(address)
        except RuntimeError as e:
            port, problem = 0, str(e)
        else:
            problem = "the port is in use or the address is not available"
        if not port:
            raise CannotListen(
                f"cannot listen for gRPC on {host}:{self._wanted_port}: {problem}; pick "
                "another port with --grpc-port (MESHTAP_GRPC_PORT), or 0 to turn gRPC off"
            )
        await server.start()
        self._server = server
        self.port = int(port)
        self._lease_task = asyncio.create_task(self._lease_loop(), name="stream-leases")
        log.info("gRPC API (EventMesh-compatible) on %s:%d", host, self.port)

    async def stop(self, grace_s: float = 1.0) -> None:
        """Stop taking calls; open streams end, their unacked events stay pending."""
        if self._lease_task is not None:
            self._lease_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._lease_task
            self._lease_task = None
        self._streams.close_all()
        if self._server is not None:
            await self._server.stop(grace=grace_s)
            self._server = None

    def _handlers(self) -> Sequence[Any]:
        pb, batch = PbCloudEvent, PbCloudEventBatch

        # Requests arrive as bytes and are parsed in the handler: a deserializer's exception
        # would reach the client as UNKNOWN, a parse error here as INVALID_ARGUMENT.
        def unary(method: Callable[..., Any], request: Any, reply: Any) -> Any:
            return grpc.unary_unary_rpc_method_handler(
                _unary(self._authenticated(_parsed(method, request))),
                response_serializer=reply.SerializeToString,
            )

        publisher = {
            "publish": unary(self.publish, pb, pb),
            "requestReply": unary(self.request_reply, pb, pb),
            "publishOneWay": unary(self.publish_one_way, pb, Empty),
            "batchPublish": unary(self.batch_publish, batch, pb),
            "batchPublishOneWay": unary(self.batch_publish_one_way, batch, Empty),
        }
        consumer = {
            "subscribe": unary(self.subscribe, pb, pb),
            "subscribeStream": grpc.stream_stream_rpc_method_handler(
                self._subscribe_stream_raw,
                response_serializer=pb.SerializeToString,
            ),
            "unsubscribe": unary(self.unsubscribe, pb, pb),
        }
        heartbeat = {"heartbeat": unary(self.heartbeat, pb, pb)}
        return [
            grpc.method_handlers_generic_handler(f"{PACKAGE}.PublisherService", publisher),
            grpc.method_handlers_generic_handler(f"{PACKAGE}.ConsumerService", consumer),
            grpc.method_handlers_generic_handler(f"{PACKAGE}.HeartbeatService", heartbeat),
        ]

    # -- stream subscription leases ----------------------------------------------------------
    # -- authentication ----------------------------------------------------------------------
    def authenticate(self, context: Any) -> Principal:
        """The caller of an RPC from its `authorization` metadata or client certificate."""
        metadata = {key: value for key, value in context.invocation_metadata() or ()}
        try:
            credential = bearer(metadata.get("authorization"), metadata.get("token"))
            cert_name = None
            names = (context.auth_context() or {}).get("x509_common_name")
            if names:
                cert_name = names[0].decode(errors="replace")
            principal = self._auth.authenticate(
                credential=credential, cert_name=cert_name, remote=context.peer()
            )
            key = principal.name if principal.method != "anonymous" else f"@{context.peer()}"
            self._auth.rate.take(key)
        except (Unauthenticated, RateLimited) as e:
            reason = "rate_limited" if isinstance(e, RateLimited) else "unauthenticated"
            self._mesh.metrics.auth_denied.labels(reason).inc()
            log.warning("denied gRPC call from %s: %s", context.peer(), e)
            raise
        current_principal.set(principal)  # each RPC runs in its own task (own context)
        return principal

    def _authenticated(
        self, method: Callable[[Request, Any], Awaitable[Reply]]
    ) -> Callable[[Request, Any], Awaitable[Reply]]:
        async def handler(request: Request, context: Any) -> Reply:
            self.authenticate(context)
            return await method(request, context)

        return handler

    async def _lease_loop(self) -> None:
        while True:
            await asyncio.sleep(self.lease_s)
            try:
                await self.renew_and_sweep()
            except StoreUnavailable as e:
                log.warning("stream subscription leases not renewed: %s", e)

    async def renew_and_sweep(self) -> None:
        """Renew this instance's stream subscriptions; remove those whose lease ran out.

        Without this, the subscriptions of an instance that crashed would stay forever, and a
        broadcast one would keep its store consumer group, which stops retention trimming.
        """
        now_ms = time.time_ns() // 1_000_000
        store = self._mesh.store
        documents = await store.subscriptions()
        mine = {
            sid
            for session in self._streams.sessions.values()
            for sid, _ in session.subscription_ids
        }
        for subscription_id, document in documents.items():
            raw = json.loads(document)
            if raw.get("protocol") != "grpc":
                continue
            if subscription_id in mine:
                raw[RENEWED] = now_ms
                await store.put_subscription(
                    subscription_id, json.dumps(raw, separators=(",", ":"))
                )
                continue
            renewed = int(raw.get(RENEWED, raw["created_ms"]))
            if now_ms - renewed > 3 * self.lease_s * 1000:
                log.info("removing stream subscription %s: its lease ran out", subscription_id)
                with contextlib.suppress(NotFound):
                    await self._mesh.unsubscribe(
                        subscription_id, keep_group=raw.get("mode") == "clustering"
                    )

    # -- helpers ---------------------------------------------------------------------------
    def _check_size(self, message: PbCloudEvent | PbCloudEventBatch) -> None:
        size, limit = message.ByteSize(), self._config.max_payload_bytes
        if size > limit:
            self._mesh.metrics.publish_rejected.labels("too_large").inc()
            raise PayloadTooLarge(
                f"the message is {size} bytes; the limit is {limit} bytes. Send smaller events, "
                "split the batch, or raise --max-payload-bytes (MESHTAP_MAX_PAYLOAD_BYTES)"
            )

    def _event(self, message: PbCloudEvent, where: str = "the event") -> tuple[str, CloudEvent]:
        """Topic and event of a publish; every check `Mesh.publish` makes happens here first,
        so a batch with one bad event is refused whole."""
        try:
            try:
                topic = _topic_of(message, where)
            except InvalidTopic as e:
                raise InvalidTopic(f"{where}: {e}") from None
            if is_internal(topic):
                raise InvalidTopic(
                    f"{where}: topic {topic!r} is reserved for the runtime (names starting with "
                    "'_' cannot be published to); pick a name like 'orders.created'"
                )
            return topic, from_proto(message, where, drop=PLUMBING)
        except InvalidRequest:
            self._mesh.metrics.publish_rejected.labels("invalid").inc()
            raise

    # -- PublisherService ------------------------------------------------------------------
    async def publish(self, request: PbCloudEvent, context: Any) -> PbCloudEvent:
        self._check_size(request)
        if string_attribute(request, SUB_MESSAGE_TYPE) == REPLY_MESSAGE:
            reply = from_proto(request, "the reply", drop=PLUMBING)
            target = await self._replies.send_reply(
                reply, producer=context.peer(), protocol=PROTOCOL
            )
            return status_event("0", f"success: reply {reply.id} routed to {target}")
        topic, event = self._event(request)
        accepted = await self._mesh.publish(
            topic, [event], producer=context.peer(), protocol=PROTOCOL
        )
        return status_event("0", f"success: accepted {accepted[0].id} on {topic}")

    async def publish_one_way(self, request: PbCloudEvent, context: Any) -> Empty:
        await self.publish(request, context)
        return Empty()

    async def batch_publish(self, request: PbCloudEventBatch, context: Any) -> PbCloudEvent:
        self._check_size(request)
        if not request.events:
            raise InvalidRequest("the batch is empty; send at least one event in 'events'")
        by_topic: dict[str, list[CloudEvent]] = {}
        for index, message in enumerate(request.events):
            topic, event = self._event(message, f"event [{index}] of the batch")
            by_topic.setdefault(topic, []).append(event)
        count = 0
        for topic, events in by_topic.items():  # all validated first: nothing half-accepted
            count += len(
                await self._mesh.publish(topic, events, producer=context.peer(), protocol=PROTOCOL)
            )
        return status_event("0", f"success: accepted {count} events")

    async def batch_publish_one_way(self, request: PbCloudEventBatch, context: Any) -> Empty:
        await self.batch_publish(request, context)
        return Empty()

    async def request_reply(self, request: PbCloudEvent, context: Any) -> PbCloudEvent:
        self._check_size(request)
        topic, event = self._event(request)
        ttl = string_attribute(request, "ttl")
        if ttl and not ttl.isdigit():
            raise InvalidRequest(
                f"'ttl' is the reply timeout in milliseconds, got {ttl!r}; e.g. '4000'"
            )
        timeout_s = int(ttl or DEFAULT_TTL_MS) / 1000
        remaining = context.time_remaining()
        if remaining is not None:
            timeout_s = min(timeout_s, max(remaining - 0.05, 0.0))
        reply = await self._replies.request(
            topic, event, timeout_s, producer=context.peer(), protocol=PROTOCOL
        )
        return status_event("0", "success", event_to_proto(reply))

    # -- ConsumerService -------------------------------------------------------------------
    async def subscribe(self, request: PbCloudEvent, context: Any) -> PbCloudEvent:
        url = string_attribute(request, "url")
        if not url:
            raise InvalidSubscription(
                "subscribe needs the webhook in the 'url' attribute (events are pushed there "
                "over HTTP); to receive events over gRPC instead, call subscribeStream"
            )
        group, items = _group(request), _items(request)
        await eventmesh_subscribe(self._mesh, url, group, items)
        return status_event("0", f"success: {url} subscribed as {group}")

    async def unsubscribe(self, request: PbCloudEvent, context: Any) -> PbCloudEvent:
        url = string_attribute(request, "url")
        if not url:
            raise InvalidSubscription(
                "unsubscribe needs the webhook 'url' the subscription was made with; a "
                "subscribeStream subscription ends when its stream is closed"
            )
        group, items = _group(request), _items(request)
        removed = await eventmesh_unsubscribe(self._mesh, url, group, [i.topic for i in items])
        if not removed:
            topics = ", ".join(i.topic for i in items)
            raise NotFound(
                f"no subscription of {url} in group {group!r} on {topics}; nothing to "
                "unsubscribe (subscriptions are listed by GET /v1/subscriptions)"
            )
        return status_event("0", f"success: {len(removed)} subscription(s) removed")

    async def _subscribe_stream_raw(
        self, raw_requests: AsyncIterator[bytes], context: Any
    ) -> AsyncIterator[PbCloudEvent]:
        async def parsed() -> AsyncIterator[PbCloudEvent]:
            async for raw in raw_requests:
                try:
                    yield PbCloudEvent.FromString(raw)
                except DecodeError as e:
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, _not_protobuf(e))

        async for message in self.subscribe_stream(parsed(), context):
            yield message

    async def subscribe_stream(
        self, requests: AsyncIterator[PbCloudEvent], context: Any
    ) -> AsyncIterator[PbCloudEvent]:
        """First message subscribes; then events flow out, acks, nacks and replies flow in."""
        session: StreamSession | None = None
        reader: asyncio.Task[None] | None = None
        try:
            try:
                self.authenticate(context)
            except (Unauthenticated, RateLimited) as e:
                code, message = _grpc_status(e)
                await context.abort(code, message)
            try:
                first = await anext(requests)
            except StopAsyncIteration:
                return
            explicit = string_attribute(first, "ackmode") == "explicit"
            session = self._streams.open(
                "explicit" if explicit else "auto",
                batch_frames=string_attribute(first, "framing") == "batch",
            )
            try:
                await self._subscribe_session(session, first)
            except (MeshtapError, _Refused) as e:
                code, message = _grpc_status(e)
                await context.abort(code, message)
            yield status_event("0", "success: subscribed", first)
            reader = asyncio.create_task(self._read_stream(session, requests, context))
            while (outgoing := await session.outbox.get()) is not None:
                yield outgoing
        finally:
            if reader is not None:
                reader.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await reader
            if session is not None:
                self._streams.discard(session)
                await self._unsubscribe_session(session)

    async def _subscribe_session(self, session: StreamSession, message: PbCloudEvent) -> None:
        group, items = _group(message), _items(message)
        for item in items:
            subscription = Subscription(
                topic=item.topic,
                group=group,
                sink=self._streams.sink(session),
                mode=item.mode,
                timeout_ms=STREAM_ACK_TIMEOUT_MS,
                batch=STREAM_BATCH,
                protocol="grpc",
            )
            await self._mesh.subscribe(subscription)
            session.subscription_ids.append((subscription.id, item.mode == "clustering"))

    async def _unsubscribe_session(self, session: StreamSession) -> None:
        """A clustering group keeps its place in the store when its stream goes (a consumer
        that reconnects gets what was published meanwhile); a broadcast subscriber's own
        group goes with it."""
        for subscription_id, durable in session.subscription_ids:
            with contextlib.suppress(NotFound, StoreUnavailable):
                await self._mesh.unsubscribe(subscription_id, keep_group=durable)

    async def _read_stream(
        self, session: StreamSession, requests: AsyncIterator[PbCloudEvent], context: Any
    ) -> None:
        try:
            async for message in requests:
                kind = string_attribute(message, SUB_MESSAGE_TYPE)
                tag = string_attribute(message, DELIVERY_TAG)
                if kind in (ACK_MESSAGE, NACK_MESSAGE):
                    reason = string_attribute(message, "responsemessage")
                    for one in tag.split(","):  # several tags may be acked at once
                        session.settle(one, kind == ACK_MESSAGE, reason)
                elif kind == REPLY_MESSAGE:
                    await self._stream_reply(session, message, context)
                    if tag:
                        session.settle(tag, True)
                else:
                    await self._subscribe_session(session, message)
                    session.send(status_event("0", "success: subscribed", message))
        except (MeshtapError, _Refused) as e:
            code, text = _grpc_status(e)
            log.info("stream %s ended: %s", session.id, text)
            session.send(status_event(str(code.value[0]), text))
        finally:
            session.close()  # the client finished sending (or failed): end the stream

    async def _stream_reply(
        self, session: StreamSession, message: PbCloudEvent, context: Any
    ) -> None:
        try:
            reply = from_proto(message, "the reply", drop=PLUMBING)
            await self._replies.send_reply(reply, producer=context.peer(), protocol=PROTOCOL)
        except (MeshtapError, _Refused) as e:
            code, text = _grpc_status(e)
            session.send(status_event(str(code.value[0]), f"reply not delivered: {text}"))

    # -- HeartbeatService ------------------------------------------------------------------
    async def heartbeat(self, request: PbCloudEvent, context: Any) -> PbCloudEvent:
        client_type = string_attribute(request, "clienttype") or "2"
        if client_type not in ("1", "2", "PUB", "SUB"):
            raise InvalidRequest(f"'clienttype' must be 1 (PUB) or 2 (SUB), got {client_type!r}")
        try:
            items = json.loads(request.text_data) if request.text_data else []
        except (ValueError, RecursionError) as e:
            raise InvalidRequest(
                f'text_data must be a JSON list like [{{"topic": "orders.created"}}]: {e}'
            ) from None
        if not isinstance(items, list) or not all(
            isinstance(i, dict) and isinstance(i.get("topic"), str) and i["topic"] for i in items
        ):
            raise InvalidRequest(
                'text_data must be a JSON list of items with a topic, like [{"topic": '
                f'"orders.created", "url": ""}}], got {request.text_data[:200]!r}'
            )
        if client_type in ("2", "SUB"):
            group = _group(request)
            subscribed = {s.topic for s in await self._mesh.subscriptions() if s.group == group}
            missing = [i["topic"] for i in items if i["topic"] not in subscribed]
            if missing:
                # EventMesh's CLIENT_RESUBSCRIBE: the client should subscribe again.
                return status_event(
                    "30",
                    f"client needs to resubscribe: group {group!r} has no subscription "
                    f"on {', '.join(missing)}",
                )
        return status_event("0", "success")
