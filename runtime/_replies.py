"""Request-reply through the store, so a reply finds its requester on any runtime instance.

A request is an ordinary event published to its topic, with two extensions added:
`replyto` - this instance's reply topic `_reply.{consumer}` - and `correlationid` (the
producer's, or a fresh one). A responder sends its reply back carrying both (EventMesh's stream
clients copy the request's attributes into the reply, Meshtap's SDK does the same); whichever
instance receives it appends it to the `replyto` topic in the store, and the requester's
instance, which alone reads that topic, hands it to the waiting request by correlation id.

Reply topics are internal (`_`), so no wildcard subscription sees them, and they are read by
one store consumer group per instance (`r:{consumer}`), acknowledged as they are read.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
import uuid
from typing import Final

from runtime._errors import InvalidRequest, ReplyTimeout, StoreUnavailable
from runtime._events import CloudEvent
from runtime._mesh import Mesh
from runtime._topics import validate_topic

log = logging.getLogger("meshtap.runtime.replies")

REPLY_PREFIX: Final = "_reply."
REPLY_TO: Final = "replyto"
CORRELATION_ID: Final = "correlationid"


def reply_topic(consumer: str) -> str:
    return REPLY_PREFIX + re.sub(r"[^A-Za-z0-9_-]", "-", consumer)


class ReplyRouter:
    """Sends requests, routes replies. One per runtime instance; reading starts on first use."""

    def __init__(self, mesh: Mesh, consumer: str) -> None:
        self._mesh = mesh
        self._consumer = consumer
        self.topic = reply_topic(consumer)
        self._group_key = f"r:{consumer}"
        self._waiting: dict[str, asyncio.Future[CloudEvent]] = {}
        self._task: asyncio.Task[None] | None = None
        self._joined = False
        self._closing = False

    async def request(
        self, topic: str, event: CloudEvent, timeout_s: float, *, producer: str, protocol: str
    ) -> CloudEvent:
        """Publish `event` as a request on `topic` and return the reply.

        Raises ReplyTimeout when none arrives within `timeout_s`.
        """
        correlation = str(event.attributes.get(CORRELATION_ID) or uuid.uuid4().hex)
        request = event.with_attributes(replyto=self.topic, correlationid=correlation)
        await self._start()
        future: asyncio.Future[CloudEvent] = asyncio.get_running_loop().create_future()
        self._waiting[correlation] = future
        try:
            await self._mesh.publish(topic, [request], producer=producer, protocol=protocol)
            return await asyncio.wait_for(future, timeout_s)
        except TimeoutError:
            raise ReplyTimeout(
                f"no reply to request {event.id!r} on topic {topic!r} within "
                f"{timeout_s * 1000:.0f} ms (correlationid {correlation!r}); the request was "
                "published: check that a subscriber of the topic replies, or allow more time "
                "(the 'ttl' attribute in ms, or the client's timeout)"
            ) from None
        finally:
            self._waiting.pop(correlation, None)

    async def send_reply(self, reply: CloudEvent, *, producer: str, protocol: str) -> str:
        """Route `reply` to its requester; returns the reply topic. Invalid replies are refused."""
        target = str(reply.attributes.get(REPLY_TO, ""))
        if not target.startswith(REPLY_PREFIX):
            raise InvalidRequest(
                f"a reply needs the request's 'replyto' attribute (a {REPLY_PREFIX}... topic), "
                f"got {target or 'none'!r}; copy the request's attributes into the reply"
            )
        validate_topic(target)
        if not reply.attributes.get(CORRELATION_ID):
            raise InvalidRequest(
                "a reply needs the request's 'correlationid' attribute; copy the request's "
                "attributes into the reply"
            )
        await self._mesh.publish(
            target, [reply], producer=producer, protocol=protocol, internal_ok=True
        )
        return target

    async def _start(self) -> None:
        if not self._joined:
            # From a second back: a reply can never predate its request.
            await self._mesh.store.join(self._group_key, self.topic, time.time_ns() // 10**6 - 1000)
            self._joined = True
        if self._task is None:
            self._task = asyncio.create_task(self._read_loop(), name="replies")

    async def _read_loop(self) -> None:
        store = self._mesh.store
        backoff = 0.1
        while not self._closing:
            try:
                batch = await store.read(self._group_key, self._consumer, [self.topic], 100, 100)
                if batch:
                    await store.ack(self._group_key, [stored.ref for stored in batch])
                backoff = 0.1
            except StoreUnavailable as e:
                log.warning("reading replies paused: %s", e)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            for stored in batch:
                correlation = str(stored.event.attributes.get(CORRELATION_ID, ""))
                future = self._waiting.get(correlation)
                if future is not None and not future.done():
                    future.set_result(stored.event)

    async def close(self) -> None:
        self._closing = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait({self._task}, timeout=2.0)
            self._task = None
        if self._joined:
            with contextlib.suppress(StoreUnavailable):
                await self._mesh.store.delete_topic(self.topic)
