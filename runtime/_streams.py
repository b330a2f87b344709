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
from runtime._grpc_codec import PbCloudEvent, batch_frame, to_proto
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
    batch_frames: bool = False
    """Meshtap clients ask (`framing = batch`): a push's events go as one `batch_frame`."""
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
        if future is None or future.done():  # done: cancelled after the ack timeout
            return False
        future.set_result((acked, reason))
        return True

    def close(self) -> None:
        self.closed = True
        for future in self._waiting.values():
            future.cancel()  # deliver() sees `closed` and leaves the events pending
        self._waiting.clear()
        self.outbox.put_nowait(None)

    async def deliver(
        self, subscription: Subscription, items: Sequence[tuple[str, CloudEvent]], attempt: int
    ) -> PushResult:
        """Write `items` to the stream; with explicit acks, wait until all are acked.

        A batch is one delivery attempt (the dispatcher batches stream pushes like webhook
        pushes): it is acknowledged when every event in it is, and retried whole otherwise.
        """
        started = time.perf_counter()
        if self.closed:
            raise SubscriberGone
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[tuple[bool, str]]] = []
        frame: list[PbCloudEvent] | None = [] if self.batch_frames else None
        for topic, event in items:
            tag = f"{self.id[:8]}-{next(self._tags)}"
            extra = {
                "subject": topic,
                DELIVERY_TAG: tag,
                "consumergroup": subscription.group,
                "deliveryattempt": str(attempt),
            }
            if frame is not None:
                frame.append(to_proto(event, extra))
                continue
            if self.ack_mode == "explicit":
                future: asyncio.Future[tuple[bool, str]] = loop.create_future()
                self._waiting[tag] = future
                futures.append(future)
            self.send(to_proto(event, extra))
        if frame is not None:
            tag = f"{self.id[:8]}-{next(self._tags)}"
            if self.ack_mode == "explicit":
                futures.append(loop.create_future())
                self._waiting[tag] = futures[-1]
            self.send(batch_frame(frame, tag))
        if not futures:
            return PushResult(Outcome.ACKED, time.perf_counter() - started)
        _, pending = await asyncio.wait(futures, timeout=subscription.timeout_ms / 1000)
        if self.closed:
            raise SubscriberGone
        duration = time.perf_counter() - started
        if pending:
            for future in pending:
                future.cancel()
            return PushResult(
                Outcome.RETRY,
                duration,
                error=f"stream subscriber did not ack within {subscription.timeout_ms} ms",
                error_type="timeout",
            )
        nacked = [reason for acked, reason in (f.result() for f in futures) if not acked]
        if nacked:
            return PushResult(
                Outcome.RETRY,
                duration,
                error=f"stream subscriber nacked: {nacked[0] or 'no reason given'}",
                error_type="_OTHER",
            )
        return PushResult(Outcome.ACKED, duration)


class StreamHub:
    """The open streams of this runtime instance; the `grpc` push channel of its `Pusher`."""

    def __init__(self, consumer: str) -> None:
        self.consumer = consumer
        self.sessions: dict[str, StreamSession] = {}

    def open(self, ack_mode: AckMode, *, batch_frames: bool = False) -> StreamSession:
        session = StreamSession(ack_mode, batch_frames)
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
        return await session.deliver(subscription, items, attempt)

    def close_all(self) -> None:
        for session in list(self.sessions.values()):
            self.discard(session)
