"""Delivery over gRPC `subscribeStream`: the push channel for subscriptions with protocol `grpc`.

A stream subscription is an ordinary `Subscription` in the store, so groups, clustering and
broadcast, filters, partition-key order, retries and dead letters are the dispatcher's as for a
webhook. Its sink names the runtime instance holding the stream (`stream://{consumer}/{id}`);
only that instance delivers to it (`served_here`), which is what makes clustering across
instances work: every instance with a stream of the group reads from the group's store
consumer group and pushes to its own streams.

Acknowledgement: with `ackmode = explicit` (what Meshtap's SDK asks for) an event counts as
delivered once the client sends back a message with `submessagetype = ack` and the event's
`deliverytag`; `nack`, or no ack within the subscription's timeout, is a failed attempt that is
retried (redelivered) with backoff and dead-lettered after the last one. Without it (EventMesh
clients, which never ack) an event is delivered once it is written to the stream, as in EventMesh.
When the stream ends, its unacknowledged events stay pending and the store hands them to another
subscriber of the group after `claim_idle_ms` (`SubscriberGone`).
"""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final, Literal

from runtime._events import CloudEvent
from runtime._grpc_codec import PbCloudEvent, to_proto
from runtime._push import Outcome, PushResult, SubscriberGone
from runtime._subscriptions import Subscription

STREAM_PROTOCOL: Final = "grpc"
STREAM_SCHEME: Final = "stream://"
DELIVERY_TAG: Final = "deliverytag"
AckMode = Literal["explicit", "auto"]


def stream_sink(consumer: str, session_id: str) -> str:
    return f"{STREAM_SCHEME}{consumer}/{session_id}"


def served_here(subscription: Subscription, consumer: str) -> bool:
    """Whether this runtime instance (store consumer `consumer`) delivers to `subscription`."""
    if subscription.protocol != STREAM_PROTOCOL:
        return True
    return subscription.sink.startswith(f"{STREAM_SCHEME}{consumer}/")


@dataclass(eq=False)
class StreamSession:
    """One open `subscribeStream` call: what goes out on it and which deliveries await an ack."""

    ack_mode: AckMode
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    outbox: asyncio.Queue[PbCloudEvent | None] = field(default_factory=asyncio.Queue)
    subscription_ids: list[tuple[str, bool]] = field(default_factory=list)
    """(subscription id, whether its group outlives the stream)."""
    closed: bool = False
    _waiting: dict[str, asyncio.Future[tuple[bool, str]]] = field(default_factory=dict)
    _tags: itertools.count[int] = field(default_factory=itertools.count)

    def send(self, message: PbCloudEvent) -> None:
        self.outbox.put_nowait(message)

    def settle(self, tag: str, acked: bool, reason: str = "") -> bool:
        """Record the client's ack or nack of delivery `tag`; False if nothing waits for it."""
        future = self._waiting.pop(tag, None)
        if future is None or future.done():
            return False
        future.set_result((acked, reason))
        return True

    def close(self) -> None:
        self.closed = True
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(SubscriberGone())
        self._waiting.clear()
        self.outbox.put_nowait(None)

    async def deliver(
        self, subscription: Subscription, topic: str, event: CloudEvent, attempt: int
    ) -> PushResult:
        started = time.perf_counter()
        if self.closed:
            raise SubscriberGone
        tag = f"{self.id[:8]}-{next(self._tags)}"
        extra = {
            "subject": topic,
            DELIVERY_TAG: tag,
            "consumergroup": subscription.group,
            "deliveryattempt": str(attempt),
        }
        message = to_proto(event, extra)
        if self.ack_mode == "auto":
            self.send(message)
            return PushResult(Outcome.ACKED, time.perf_counter() - started)
        future: asyncio.Future[tuple[bool, str]] = asyncio.get_running_loop().create_future()
        self._waiting[tag] = future
        self.send(message)
        try:
            acked, reason = await asyncio.wait_for(
                asyncio.shield(future), subscription.timeout_ms / 1000
            )
        except TimeoutError:
            self._waiting.pop(tag, None)
            return PushResult(
                Outcome.RETRY,
                time.perf_counter() - started,
                error=f"stream subscriber did not ack within {subscription.timeout_ms} ms",
                error_type="timeout",
            )
        if acked:
            return PushResult(Outcome.ACKED, time.perf_counter() - started)
        return PushResult(
            Outcome.RETRY,
            time.perf_counter() - started,
            error=f"stream subscriber nacked: {reason or 'no reason given'}",
            error_type="_OTHER",
        )


class StreamHub:
    """The open streams of this runtime instance; the `grpc` push channel of its `Pusher`."""

    def __init__(self, consumer: str) -> None:
        self.consumer = consumer
        self.sessions: dict[str, StreamSession] = {}

    def open(self, ack_mode: AckMode) -> StreamSession:
        session = StreamSession(ack_mode)
        self.sessions[session.id] = session
        return session

    def discard(self, session: StreamSession) -> None:
        self.sessions.pop(session.id, None)
        session.close()

    def sink(self, session: StreamSession) -> str:
        return stream_sink(self.consumer, session.id)

    async def push(
        self,
        subscription: Subscription,
        items: Sequence[tuple[str, CloudEvent]],
        attempt: int,
        trace_headers: Mapping[str, str] | None,
    ) -> PushResult:
        session_id = subscription.sink.rpartition("/")[2]
        session = self.sessions.get(session_id)
        if session is None:
            raise SubscriberGone
        # Streams are not batched (BatchPolicy applies to HTTP pushes); one item at a time.
        topic, event = items[0]
        return await session.deliver(subscription, topic, event, attempt)

    def close_all(self) -> None:
        for session in list(self.sessions.values()):
            self.discard(session)
