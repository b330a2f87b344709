"""NATS JetStream store (`nats://host:4222`).

Layout (names under one prefix, default `meshtap`)::

    stream {p}_t_{topic}       one stream per topic, subject `{p}.t.{topic}`; payload = attributes
                               JSON + data, headers Mt-Ms (append time) and Mt-Prev (previous
                               keyed ref)
    consumer {group key}       a durable pull consumer per group key on each topic it consumes
    KV {p}_topics              key per known topic
    KV {p}_subs                key per subscription id -> JSON document; the bucket's last
                               sequence is the subscriptions version
    KV {p}_pk                  last ref per partition key, expiring after a day

Names and keys are escaped (`_XX` per byte outside `[A-Za-z0-9-]`), so any topic or group key fits
NATS's naming rules and decodes back; stream and consumer names too long for a file name become a
digest. KV keys are listed from the bucket stream's subjects (nats-py's `keys()` watcher can wait
forever for its end marker), and a removed key leaves no marker behind.

How the Redis guarantees map, and where they differ (and why):

* **Groups, acks, one consumer per event.** A group key is a durable pull consumer with explicit
  acks, starting at the first event appended at or after `start_ms` (a start *sequence* found by
  binary search over Mt-Ms: nats-server 2.9 refuses to update a consumer that has a start time,
  and reclaim updates AckWait). An ack is confirmed by the server before `ack` returns (the last
  ack per consumer is a request; the server handles a consumer's acks in order), so
  `is_settled` right after sees it. Each instance keeps at most one pull request open per
  consumer; an open request serves events as they are appended.
* **Reclaim of a crashed instance's events.** Redis leaves redelivery to the caller (XCLAIM);
  JetStream redelivers by itself once an event has been pending for the consumer's AckWait.
  `reclaim(min_idle_ms)` therefore sets AckWait to `min_idle_ms` (the dispatcher always passes
  `--claim-idle-ms`) and returns what the server hands out again; `touch` is an in-progress ack
  that restarts the clock, like Redis's XCLAIM-to-self. A redelivery may also come out of `read`
  (with `deliveries` > 1): JetStream does not keep new and redelivered events apart. AckWait is
  per consumer, so every instance must run with the same `--claim-idle-ms` (the last one to
  reclaim sets it). Pulled events not handed out within most of AckWait are dropped locally:
  the server is about to give them to another consumer.
* **Partition-key links.** JetStream has no server-side scripts, so the link is kept with a
  compare-and-set on the `{p}_pk` KV entry of the key: read the tail, publish with it as
  `Mt-Prev`, then move the tail to the new event only if nobody moved it meanwhile. One instance
  serialises appends per key; if another instance won the race, the event is deleted and
  appended again behind the winner (a consumer that already read the first copy delivers a
  duplicate: at-least-once). A crash between publish and the compare-and-set leaves two events
  linked to one predecessor; that event was never acknowledged to its producer.
* **is_settled** is exact below the consumer's ack floor and above its delivered pointer. In
  between, while other events of the topic are still pending, JetStream cannot say whether one
  event was acked, so the answer is "not yet": ordering holds, and a keyed event whose
  predecessor was handled by *another* instance may wait until earlier pending events of that
  topic settle (the local fast path in the dispatcher covers the same-instance case).
* **Atomicity of a batch.** A Redis append is one script. A NATS append publishes event by
  event (pipelined, in order); when the server goes away midway, a prefix may be stored and the
  caller gets StoreUnavailable, so its retry may duplicate that prefix (at-least-once).
* **Retention.** `trim` purges a topic's stream below the lowest ack floor of its consumers and
  the cutoff, exactly (Redis trims whole nodes, approximately).
* **Durability** is JetStream's file storage: an acknowledged publish survives a nats-server
  crash (SIGKILL, tested); surviving a power cut depends on the server's fsync settings
  (`sync_interval` / `sync_always` from nats-server 2.10).
* **Consumer names.** Redis registers every runtime instance as a consumer and the store prunes
  idle ones; JetStream pull requests are anonymous, so nothing piles up and `consumer` is unused.

While the server is unreachable every call fails at once with `StoreUnavailable` (a publish gets
a fast 503); the client reconnects by itself, and a store that could not connect at start-up
tries again on the next call.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import re
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urlsplit

import nats
import nats.errors as nats_errors
import nats.js.errors as js_errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription as NatsSubscription
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    KeyValueConfig,
    PubAck,
    StorageType,
    StreamConfig,
)
from nats.js.kv import KeyValue

from runtime._errors import StoreUnavailable
from runtime._events import CloudEvent
from runtime.stores._base import EventRef, GroupBacklog, StoredEvent, offset_key
from runtime.stores._codec import decode_event, encode_attributes

T = TypeVar("T")

_PARTITION_LINK_TTL_S = 86_400
_MAX_ACK_PENDING = 100_000
_VERSION_KEY = "_version"
_HEADER_MS = "Mt-Ms"
_HEADER_PREV = "Mt-Prev"
_NO_DATA = b"\x00"
_HAS_DATA = b"\x01"
_SAFE = re.compile(r"[A-Za-z0-9-]")
# Connection trouble: reported as StoreUnavailable, the client reconnects by itself.
_UNREACHABLE: tuple[type[BaseException], ...] = (
    nats_errors.TimeoutError,
    nats_errors.NoRespondersError,
    nats_errors.ConnectionClosedError,
    nats_errors.ConnectionReconnectingError,
    nats_errors.ConnectionDrainingError,
    nats_errors.StaleConnectionError,
    nats_errors.OutboundBufferLimitError,
    nats_errors.NoServersError,
    js_errors.TooManyStalledMsgsError,
    js_errors.ServiceUnavailableError,
    asyncio.TimeoutError,
    OSError,
)


def escape(text: str) -> str:
    """A name NATS accepts for streams, consumers and KV keys, reversible with `unescape`."""
    return "".join(
        c if _SAFE.fullmatch(c) else "".join(f"_{b:02X}" for b in c.encode()) for c in text
    )


def _short(name: str) -> str:
    """`name`, or a digest of it when it is too long for a file name on the server (streams and
    consumers are directories there). Topic and subscription keys, which must decode back, are
    never shortened."""
    if len(name) <= 160:
        return name
    return "h" + hashlib.sha256(name.encode()).hexdigest()


def _durable(group_key: str) -> str:
    return _short(escape(group_key))


def unescape(name: str) -> str:
    out = bytearray()
    i = 0
    while i < len(name):
        if name[i] == "_":
            out.append(int(name[i + 1 : i + 3], 16))
            i += 3
        else:
            out += name[i].encode()
            i += 1
    return out.decode()


def _encode_payload(event: CloudEvent) -> bytes:
    attributes = encode_attributes(event)
    data = _NO_DATA if event.data is None else _HAS_DATA + event.data
    return struct.pack(">I", len(attributes)) + attributes + data


def _decode_payload(payload: bytes) -> CloudEvent:
    (length,) = struct.unpack_from(">I", payload)
    attributes = payload[4 : 4 + length]
    rest = payload[4 + length :]
    return decode_event(attributes, None if rest[:1] == _NO_DATA else rest[1:])


@dataclass
class _Consumer:
    """This process's view of one durable consumer (a group key on a topic)."""

    group_key: str
    topic: str
    stream: str
    durable: str
    inbox: str
    subscription: NatsSubscription | None = None
    queue: list[tuple[float, Msg]] = field(default_factory=list)
    """Pulled but not yet handed out, with the monotonic time each arrived."""
    waiting_until: float = 0.0
    """A pull request is outstanding on the server until then (or until it is answered)."""
    expected: int = 0
    ack_wait_ms: int | None = None


class NatsStore:
    def __init__(
        self,
        url: str,
        *,
        prefix: str = "meshtap",
        connect_timeout_s: float = 1.0,
        request_timeout_s: float = 5.0,
        ack_wait_ms: int = 30_000,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme != "nats" or not parts.hostname:
            raise ValueError(f"not a NATS URL: {url!r}; use nats://host:4222")
        self.url = url
        self._prefix = prefix
        self._connect_timeout_s = connect_timeout_s
        self._timeout_s = request_timeout_s
        self._default_ack_wait_ms = ack_wait_ms
        self._nc: NatsClient | None = None
        self._js: JetStreamContext | None = None
        self._kv: dict[str, KeyValue] = {}
        self._connecting = asyncio.Lock()
        self._opening_bucket = asyncio.Lock()
        self._last_failed_connect = 0.0
        self._consumers: dict[tuple[str, str], _Consumer] = {}
        self._arrived: dict[str, asyncio.Event] = {}
        self._known_topics: set[str] = set()
        self._registering: dict[str, asyncio.Future[None]] = {}
        self._streams: set[str] = set()
        self._key_locks: dict[str, tuple[asyncio.Lock, int]] = {}
        self._last_ms = 0
        self._topics_cache: tuple[int, list[str]] = (-1, [])
        self._publishing: set[asyncio.Future[PubAck]] = set()
        self._closed = False

    # -- plumbing -------------------------------------------------------------------------
    def _where(self) -> str:
        parts = urlsplit(self.url)
        return f"{parts.hostname}:{parts.port or 4222}"

    def _unavailable(self, e: BaseException | None) -> StoreUnavailable:
        why = f" ({type(e).__name__}: {e})" if e is not None and str(e) else ""
        return StoreUnavailable(
            f"NATS at {self._where()} is unreachable{why}; nothing was accepted, retry later"
        )

    async def _call(self, awaitable: Awaitable[T]) -> T:
        """Await one NATS operation, turning connection trouble into StoreUnavailable."""
        try:
            return await asyncio.wait_for(awaitable, self._timeout_s)
        except _UNREACHABLE as e:
            raise self._unavailable(e) from e

    async def _quick(self, awaitable: Awaitable[T]) -> T:
        """`_call` for what only buffers (a publish without reply) or times out by itself:
        no timer of our own, which is a good part of the cost of a small publish."""
        try:
            return await awaitable
        except _UNREACHABLE as e:
            raise self._unavailable(e) from e

    async def _client(self) -> tuple[NatsClient, JetStreamContext]:
        """The connected client; connects (again) when the first connect failed."""
        nc, js = self._nc, self._js
        if self._closed:
            raise StoreUnavailable(f"the store for NATS at {self._where()} is closed")
        if nc is not None and js is not None:
            if not nc.is_connected:
                raise self._unavailable(None)
            return nc, js
        async with self._connecting:
            if self._nc is None:
                # Fail fast while the server is down instead of paying the connect timeout on
                # every call.
                if time.monotonic() - self._last_failed_connect < 0.5:
                    raise self._unavailable(None)
                try:
                    await self._open()
                except StoreUnavailable:
                    self._last_failed_connect = time.monotonic()
                    raise
        return await self._client()

    async def _open(self) -> None:
        async def reconnected() -> None:
            for consumer in self._consumers.values():  # pull requests died with the connection
                consumer.waiting_until, consumer.expected = 0.0, 0
            # A server that lost its data (or a new one behind the same address) has none of
            # the streams and buckets made before: make them again when next needed.
            self._kv.clear()
            self._streams.clear()
            self._known_topics.clear()

        async def disconnected() -> None:
            # Unconfirmed publishes will never be confirmed: fail them now, not after a timeout.
            for future in list(self._publishing):
                if not future.done():
                    future.set_exception(self._unavailable(None))

        async def quiet(e: Exception) -> None:  # reconnects are reported through readiness
            return None

        try:
            nc = await nats.connect(
                self.url,
                connect_timeout=self._connect_timeout_s,
                reconnect_time_wait=0.5,
                # nats-py retries a failed *first* connect as often as later reconnects: keep
                # that short, so a start without the server fails fast (and is retried by the
                # next call), then reconnect forever once connected.
                max_reconnect_attempts=1,
                allow_reconnect=True,
                reconnected_cb=reconnected,
                disconnected_cb=disconnected,
                error_cb=quiet,
                name="meshtap",
            )
        except (TimeoutError, nats_errors.Error, OSError) as e:
            raise self._unavailable(e) from e
        nc.options["max_reconnect_attempts"] = -1
        js = nc.jetstream(timeout=self._timeout_s)
        try:
            await asyncio.wait_for(js.account_info(), self._timeout_s)
        except (js_errors.APIError, nats_errors.NoRespondersError) as e:
            await nc.close()
            raise StoreUnavailable(
                f"NATS at {self._where()} answers but has no JetStream ({type(e).__name__}); "
                "start nats-server with -js (or enable jetstream in its config)"
            ) from e
        except _UNREACHABLE as e:
            await nc.close()
            raise self._unavailable(e) from e
        self._nc, self._js = nc, js

    async def _bucket(self, name: str, ttl_s: float | None = None) -> KeyValue:
        kv = self._kv.get(name)
        if kv is not None:
            return kv
        async with self._opening_bucket:  # one lookup for a burst of first callers
            kv = self._kv.get(name)
            if kv is not None:
                return kv
            _, js = await self._client()
            bucket = f"{self._prefix}_{name}"
            try:
                kv = await self._call(js.key_value(bucket))
            except js_errors.BucketNotFoundError:
                config = KeyValueConfig(
                    bucket=bucket, history=1, ttl=ttl_s, storage=StorageType.FILE
                )
                kv = await self._call(js.create_key_value(config))
            self._kv[name] = kv
            return kv

    def _stream(self, topic: str) -> str:
        return f"{self._prefix}_t_{_short(escape(topic))}"

    def _subject(self, topic: str) -> str:
        return f"{self._prefix}.t.{escape(topic)}"

    async def _ensure_stream(self, topic: str) -> str:
        stream = self._stream(topic)
        if stream in self._streams:
            return stream
        _, js = await self._client()
        config = StreamConfig(
            name=stream,
            subjects=[self._subject(topic)],
            storage=StorageType.FILE,
            duplicate_window=0,
        )
        with contextlib.suppress(js_errors.BadRequestError):  # exists (maybe configured older)
            await self._call(js.add_stream(config))
        self._streams.add(stream)
        return stream

    async def connect(self) -> None:
        self._closed = False
        await self.ping()

    async def close(self) -> None:
        self._closed = True
        nc, self._nc, self._js = self._nc, None, None
        self._kv.clear()
        self._consumers.clear()
        for event in self._arrived.values():
            event.set()
        if nc is not None:
            with contextlib.suppress(Exception):
                await nc.close()

    async def ping(self) -> None:
        _, js = await self._client()
        await self._call(js.account_info())

    # -- topics ---------------------------------------------------------------------------
    def _now_ms(self) -> int:
        """Append time in ms, never going back within this process (offsets stay ordered)."""
        self._last_ms = max(self._last_ms, time.time_ns() // 1_000_000)
        return self._last_ms

    async def append(self, topic: str, events: Sequence[CloudEvent]) -> list[EventRef]:
        """Publish in order, pipelined; keyed events wait for their link (see module doc)."""
        if topic not in self._known_topics:
            await self._register(topic)
        try:
            return await self._publish_all(topic, events)
        except js_errors.NoStreamResponseError:  # the topic was deleted meanwhile
            self._streams.discard(self._stream(topic))
            self._known_topics.discard(topic)
            await self._register(topic)
            return await self._publish_all(topic, events)

    async def _register(self, topic: str) -> None:
        """Make the topic's stream and KV entry, once for all appends waiting on it."""
        registering = self._registering.get(topic)
        if registering is None:
            registering = asyncio.ensure_future(self._register_once(topic))
            self._registering[topic] = registering
            registering.add_done_callback(lambda _: self._registering.pop(topic, None))
        await asyncio.shield(registering)

    async def _register_once(self, topic: str) -> None:
        await self._ensure_stream(topic)
        await self.create_topic(topic)

    async def _publish_all(self, topic: str, events: Sequence[CloudEvent]) -> list[EventRef]:
        _, js = await self._client()
        subject = self._subject(topic)
        pending: list[tuple[asyncio.Future[PubAck] | EventRef, int]] = []
        try:
            for event in events:
                key = event.partition_key
                if key is None:
                    ms = self._now_ms()
                    ack = await self._quick(
                        js.publish_async(
                            subject,
                            _encode_payload(event),
                            headers={_HEADER_MS: str(ms)},
                        )
                    )
                    self._publishing.add(ack)
                    ack.add_done_callback(self._publishing.discard)
                    pending.append((ack, ms))
                else:
                    pending.append((await self._append_keyed(js, topic, event, key), 0))
            # One timer for the whole call (cheaper than one per event): an unconfirmed
            # publish fails the append after the timeout.
            timer = asyncio.get_running_loop().call_later(
                self._timeout_s, _expire, pending, self._unavailable(None)
            )
            try:
                return [
                    item
                    if isinstance(item, EventRef)
                    else EventRef(topic, f"{ms}-{(await self._quick(item)).seq}")
                    for item, ms in pending
                ]
            finally:
                timer.cancel()
        finally:
            # Whatever was not confirmed is given up on (and its slot in nats-py's window of
            # outstanding publishes freed): the caller reports the append as failed.
            for item, _ in pending:
                if isinstance(item, asyncio.Future) and not item.done():
                    item.cancel()

    async def _append_keyed(
        self, js: JetStreamContext, topic: str, event: CloudEvent, key: str
    ) -> EventRef:
        kv = await self._bucket("pk", ttl_s=_PARTITION_LINK_TTL_S)
        name = _short(escape(key))
        async with self._key_lock(name):
            while True:
                try:
                    entry = await self._call(kv.get(name))
                    previous, revision = (entry.value or b"").decode() or None, entry.revision
                except js_errors.NotFoundError:
                    previous, revision = None, None
                ms = self._now_ms()
                headers = {_HEADER_MS: str(ms)}
                if previous:
                    headers[_HEADER_PREV] = previous
                ack = await self._call(
                    js.publish(self._subject(topic), _encode_payload(event), headers=headers)
                )
                ref = EventRef(topic, f"{ms}-{ack.seq}")
                try:
                    if revision is None:
                        await self._call(kv.create(name, ref.encode().encode()))
                    else:
                        await self._call(kv.update(name, ref.encode().encode(), last=revision))
                    return ref
                except js_errors.KeyWrongLastSequenceError:
                    # Another instance appended with this key meanwhile: go behind it.
                    with contextlib.suppress(js_errors.NotFoundError):
                        await self._call(js.delete_msg(ack.stream, ack.seq))

    @contextlib.asynccontextmanager
    async def _key_lock(self, name: str) -> AsyncIterator[None]:
        lock, users = self._key_locks.get(name) or (asyncio.Lock(), 0)
        self._key_locks[name] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._key_locks[name]
            if users == 1:
                del self._key_locks[name]
            else:
                self._key_locks[name] = (lock, users - 1)

    async def create_topic(self, topic: str) -> bool:
        kv = await self._bucket("topics")
        self._known_topics.add(topic)
        try:
            await self._call(kv.create(escape(topic), b""))
        except js_errors.KeyWrongLastSequenceError:
            return False
        return True

    async def delete_topic(self, topic: str) -> bool:
        kv = await self._bucket("topics")
        _, js = await self._client()
        self._known_topics.discard(topic)
        self._streams.discard(self._stream(topic))
        for key in [k for k in self._consumers if k[1] == topic]:
            await self._drop_consumer(key)
        try:
            await self._call(kv.get(escape(topic)))
            existed = True
        except js_errors.NotFoundError:
            existed = False
        if existed:
            await self._remove("topics", escape(topic))
        with contextlib.suppress(js_errors.NotFoundError):
            await self._call(js.delete_stream(self._stream(topic)))
        return existed

    async def topics(self) -> list[str]:
        version = await self._bucket_version("topics")
        if version != self._topics_cache[0]:
            entries = await self._entries("topics")
            self._topics_cache = (version, sorted(entries))
        return list(self._topics_cache[1])

    def _bucket_stream(self, name: str) -> str:
        return f"KV_{self._prefix}_{name}"

    async def _bucket_version(self, name: str) -> int:
        """The bucket's last sequence: it grows with every put and every removal."""
        await self._bucket(name)
        _, js = await self._client()
        info = await self._call(js.stream_info(self._bucket_stream(name)))
        return int(info.state.last_seq)

    async def _entries(self, name: str) -> dict[str, str]:
        """Every live key of a bucket (decoded) with its value.

        Listed from the bucket stream's subjects rather than with nats-py's `keys()`, whose
        watcher can wait forever for its end-of-data marker.
        """
        kv = await self._bucket(name)
        _, js = await self._client()
        prefix = f"$KV.{self._prefix}_{name}."
        info = await self._call(js.stream_info(self._bucket_stream(name), prefix + ">"))
        keys = [
            subject[len(prefix) :]
            for subject in info.state.subjects or {}
            if subject[len(prefix) :] != _VERSION_KEY
        ]
        values = await asyncio.gather(*(self._get_or_none(kv, key) for key in keys))
        return {unescape(k): v for k, v in zip(keys, values, strict=True) if v is not None}

    async def _get_or_none(self, kv: KeyValue, key: str) -> str | None:
        try:
            entry = await self._call(kv.get(key))
        except js_errors.NotFoundError:  # removed meanwhile
            return None
        return (entry.value or b"").decode()

    async def _remove(self, name: str, key: str) -> None:
        """Remove a key leaving no delete marker behind, then move the bucket's version on
        (a put of `_VERSION_KEY`, which `escape` never produces). In that order, a put of the
        same key by another instance meanwhile is kept."""
        kv = await self._bucket(name)
        _, js = await self._client()
        subject = f"$KV.{self._prefix}_{name}.{key}"
        await self._call(js.purge_stream(self._bucket_stream(name), subject=subject))
        await self._call(kv.put(_VERSION_KEY, b""))

    # -- subscriptions --------------------------------------------------------------------
    async def put_subscription(self, subscription_id: str, document: str) -> None:
        kv = await self._bucket("subs")
        await self._call(kv.put(escape(subscription_id), document.encode()))

    async def delete_subscription(self, subscription_id: str) -> str | None:
        kv = await self._bucket("subs")
        try:
            entry = await self._call(kv.get(escape(subscription_id)))
        except js_errors.NotFoundError:
            return None
        await self._remove("subs", escape(subscription_id))
        return (entry.value or b"").decode()

    async def subscriptions(self) -> dict[str, str]:
        return await self._entries("subs")

    async def subscriptions_version(self) -> int:
        return await self._bucket_version("subs")

    # -- consumption ----------------------------------------------------------------------
    async def join(self, group_key: str, topic: str, start_ms: int) -> None:
        stream = await self._ensure_stream(topic)
        _, js = await self._client()
        durable = _durable(group_key)
        try:
            await self._call(js.consumer_info(stream, durable))
            return
        except js_errors.NotFoundError:
            pass
        # By start sequence, not start time: nats-server 2.9 refuses any later update of a
        # consumer that has a start time (reclaim changes AckWait), and the sequence is found
        # from the same append times the offsets carry.
        info = await self._call(js.stream_info(stream))
        start = await self._first_seq_at(js, stream, start_ms, int(info.state.last_seq) + 1)
        config = ConsumerConfig(
            durable_name=durable,
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=start,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=self._default_ack_wait_ms / 1000,
            max_deliver=-1,
            max_ack_pending=_MAX_ACK_PENDING,
        )
        with contextlib.suppress(js_errors.BadRequestError):  # created by another instance
            await self._call(js.add_consumer(stream, config))

    async def leave(self, group_key: str, topic: str) -> None:
        await self._drop_consumer((group_key, topic))
        _, js = await self._client()
        with contextlib.suppress(js_errors.NotFoundError):
            await self._call(js.delete_consumer(self._stream(topic), _durable(group_key)))

    async def _drop_consumer(self, key: tuple[str, str]) -> None:
        consumer = self._consumers.pop(key, None)
        if consumer is not None and consumer.subscription is not None:
            with contextlib.suppress(Exception):
                await consumer.subscription.unsubscribe()

    async def _consumer(self, group_key: str, topic: str) -> _Consumer:
        consumer = self._consumers.get((group_key, topic))
        if consumer is not None:
            return consumer
        nc, _ = await self._client()
        consumer = _Consumer(
            group_key=group_key,
            topic=topic,
            stream=self._stream(topic),
            durable=_durable(group_key),
            inbox=nc.new_inbox(),
        )
        arrived = self._arrived.setdefault(group_key, asyncio.Event())

        async def on_message(msg: Msg) -> None:
            status = (msg.headers or {}).get("Status")
            if status is None:
                consumer.queue.append((time.monotonic(), msg))
                consumer.expected -= 1
                if consumer.expected <= 0:
                    consumer.waiting_until = 0.0
            elif status in ("404", "408", "409", "503"):  # answered, expired or no consumer
                consumer.waiting_until, consumer.expected = 0.0, 0
            arrived.set()

        consumer.subscription = await self._call(nc.subscribe(consumer.inbox, cb=on_message))
        self._consumers[(group_key, topic)] = consumer
        return consumer

    async def _pull(self, consumer: _Consumer, count: int, wait_ms: int) -> bool:
        """Ask the server for up to `count` events (delivered to the consumer's queue); False
        when a request of ours is still open there (its events arrive by themselves)."""
        if consumer.waiting_until > time.monotonic():
            return False
        nc, _ = await self._client()
        request: dict[str, Any] = {"batch": count}
        if wait_ms > 0:
            request["expires"] = wait_ms * 1_000_000
        else:
            request["no_wait"] = True
        consumer.expected = count
        # A lingering request is dead on the server once it expires (it may say so with a 408,
        # or not when it was partly served); a no-wait one is answered at once.
        consumer.waiting_until = time.monotonic() + (wait_ms + 20 if wait_ms else 1000) / 1000
        await self._call(
            nc.publish(
                f"$JS.API.CONSUMER.MSG.NEXT.{consumer.stream}.{consumer.durable}",
                json.dumps(request).encode(),
                reply=consumer.inbox,
            )
        )
        return True

    def _take(self, consumers: list[_Consumer], count: int) -> list[StoredEvent]:
        out: list[StoredEvent] = []
        now = time.monotonic()
        for consumer in consumers:
            # Left here for most of AckWait: the server hands it to someone else about now
            # (and to us again later if nobody takes it); handing it out too would duplicate.
            stale_s = 0.8 * (consumer.ack_wait_ms or self._default_ack_wait_ms) / 1000
            while consumer.queue and len(out) < count:
                arrived, msg = consumer.queue.pop(0)
                if now - arrived < stale_s:
                    out.append(self._stored(consumer.topic, msg))
        return out

    @staticmethod
    def _stored(topic: str, msg: Msg) -> StoredEvent:
        metadata = msg.metadata
        headers = msg.headers or {}
        ms = headers.get(_HEADER_MS) or str(int(metadata.timestamp.timestamp() * 1000))
        previous = headers.get(_HEADER_PREV)
        return StoredEvent(
            ref=EventRef(topic, f"{ms}-{metadata.sequence.stream}"),
            event=_decode_payload(msg.data),
            previous=EventRef.decode(previous) if previous else None,
            deliveries=int(metadata.num_delivered or 1),
        )

    async def read(
        self, group_key: str, consumer: str, topics: Sequence[str], count: int, block_ms: int
    ) -> list[StoredEvent]:
        if not topics:
            return []
        consumers = await self._consumers_for(group_key, topics)
        if not consumers:  # not joined (yet), or the topics were deleted: nothing can arrive
            await asyncio.sleep(block_ms / 1000)
            return []
        out = await self._available(group_key, consumers, count)
        if out or block_ms <= 0:
            return out
        arrived = self._arrived.setdefault(group_key, asyncio.Event())
        arrived.clear()
        for c in consumers:
            await self._pull(c, count, block_ms)
        return await self._collect(consumers, [], count, arrived, block_ms, first=True)

    async def _available(
        self, group_key: str, consumers: list[_Consumer], count: int
    ) -> list[StoredEvent]:
        """What the server can hand out right now (no waiting for new events)."""
        out = self._take(consumers, count)
        if len(out) < count:
            arrived = self._arrived.setdefault(group_key, asyncio.Event())
            arrived.clear()
            asked = [c for c in consumers if await self._pull(c, count - len(out), 0)]
            out += await self._collect(consumers, asked, count - len(out), arrived, 1000)
        return out

    async def _collect(
        self,
        consumers: list[_Consumer],
        asked: list[_Consumer],
        count: int,
        arrived: asyncio.Event,
        wait_ms: int,
        *,
        first: bool = False,
    ) -> list[StoredEvent]:
        """Wait until the requests just sent to `asked` are answered (with `first`: until
        anything arrived, or every open request expired), then take what came."""
        deadline = time.monotonic() + wait_ms / 1000
        waiting_on = consumers if first else asked
        while True:
            now = time.monotonic()
            answered = all(c.waiting_until <= now for c in waiting_on)
            if answered or now >= deadline or (first and any(c.queue for c in consumers)):
                return self._take(consumers, count)
            arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(arrived.wait(), deadline - now)
            if self._nc is None:
                return []

    async def _consumers_for(self, group_key: str, topics: Sequence[str]) -> list[_Consumer]:
        _, js = await self._client()
        out = []
        for topic in topics:
            if (group_key, topic) not in self._consumers:
                try:
                    await self._call(js.consumer_info(self._stream(topic), _durable(group_key)))
                except js_errors.NotFoundError:  # not joined, or the topic was deleted
                    continue
            out.append(await self._consumer(group_key, topic))
        return out

    def _ack_subject(self, group_key: str, ref: EventRef) -> str:
        seq = offset_key(ref.offset)[1]
        return f"$JS.ACK.{self._stream(ref.topic)}.{_durable(group_key)}.1.{seq}.0.0.0"

    async def _send_acks(self, group_key: str, refs: Sequence[EventRef], body: bytes) -> None:
        """Send one ack kind per event; the last per topic is a request, so when this returns
        the server has processed them all (it handles a consumer's acks in order)."""
        nc, _ = await self._client()
        by_topic: dict[str, list[EventRef]] = {}
        for ref in refs:
            by_topic.setdefault(ref.topic, []).append(ref)
        confirmations = []
        for topic_refs in by_topic.values():
            for ref in topic_refs[:-1]:
                await self._quick(nc.publish(self._ack_subject(group_key, ref), body))
            confirmations.append(nc.request(self._ack_subject(group_key, topic_refs[-1]), body))
        for confirmation in confirmations:
            await self._call(_unless_gone(confirmation))

    async def ack(self, group_key: str, refs: Sequence[EventRef]) -> None:
        await self._send_acks(group_key, refs, b"+ACK")

    async def touch(self, group_key: str, consumer: str, refs: Sequence[EventRef]) -> None:
        await self._send_acks(group_key, refs, b"+WPI")

    async def reclaim(
        self, group_key: str, consumer: str, topics: Sequence[str], min_idle_ms: int, count: int
    ) -> list[StoredEvent]:
        """Events the server hands out again after `min_idle_ms` (its AckWait) of idleness."""
        consumers = await self._consumers_for(group_key, topics)
        for c in consumers:
            if c.ack_wait_ms != min_idle_ms:
                with contextlib.suppress(js_errors.NotFoundError):  # left meanwhile
                    await self._set_ack_wait(c, min_idle_ms * 1_000_000)
                c.ack_wait_ms = min_idle_ms
        return await self._available(group_key, consumers, count)

    async def _set_ack_wait(self, consumer: _Consumer, ack_wait_ns: int) -> None:
        """Change the consumer's AckWait, keeping the rest of its configuration exactly as the
        server has it (raw API: nats-py's config classes do not round-trip every field)."""
        nc, _ = await self._client()
        where = f"{consumer.stream}.{consumer.durable}"
        info = await self._api(nc, f"$JS.API.CONSUMER.INFO.{where}", {})
        config = info["config"]
        if config.get("ack_wait") == ack_wait_ns:
            return
        config["ack_wait"] = ack_wait_ns
        await self._api(
            nc,
            f"$JS.API.CONSUMER.DURABLE.CREATE.{where}",
            {"stream_name": consumer.stream, "config": config},
        )

    async def _api(self, nc: NatsClient, subject: str, body: dict[str, Any]) -> dict[str, Any]:
        reply = await self._call(nc.request(subject, json.dumps(body).encode()))
        answer: dict[str, Any] = json.loads(reply.data)
        if "error" in answer:
            raise js_errors.APIError.from_error(answer["error"])
        return answer

    async def is_settled(self, group_key: str, ref: EventRef) -> bool:
        _, js = await self._client()
        try:
            info = await self._call(js.consumer_info(self._stream(ref.topic), _durable(group_key)))
        except js_errors.NotFoundError:  # no such topic or group
            return True
        seq = offset_key(ref.offset)[1]
        if seq <= int(info.ack_floor.stream_seq or 0):
            return True
        if seq > int(info.delivered.stream_seq or 0):
            return False
        return not info.num_ack_pending

    async def trim(self, topic: str, before_ms: int) -> None:
        """Purge below the lowest ack floor of the topic's consumers and the cutoff."""
        _, js = await self._client()
        stream = self._stream(topic)
        try:
            info = await self._call(js.stream_info(stream))
        except js_errors.NotFoundError:
            return
        floor = int(info.state.last_seq) + 1
        consumers = await self._call(js.consumers_info(stream))
        for consumer in consumers:
            acked = consumer.ack_floor.stream_seq if consumer.ack_floor else 0
            floor = min(floor, int(acked or 0) + 1)
        floor = min(floor, await self._first_seq_at(js, stream, before_ms, floor))
        if floor > int(info.state.first_seq):
            await self._call(js.purge_stream(stream, seq=floor))

    async def _first_seq_at(self, js: JetStreamContext, stream: str, at_ms: int, upper: int) -> int:
        """The first sequence stored at or after `at_ms` (binary search over message times)."""
        info = await self._call(js.stream_info(stream))
        lo, hi = max(int(info.state.first_seq), 1), min(upper, int(info.state.last_seq) + 1)
        while lo < hi:
            mid = (lo + hi) // 2
            ms = await self._message_ms(js, stream, mid)
            if ms is not None and ms < at_ms:
                lo = mid + 1
            else:  # at or after `at_ms`, or nothing from `mid` on
                hi = mid
        return lo

    async def _message_ms(self, js: JetStreamContext, stream: str, seq: int) -> int | None:
        """Append time of the first message at or after `seq` (a deleted one is skipped, so
        the answer never goes back as `seq` grows), None past the end."""
        subject = f"{self._prefix}.t.>"
        try:
            msg = await self._call(js.get_msg(stream, seq, subject=subject, next=True))
        except js_errors.NotFoundError:
            return None
        stamp = (msg.headers or {}).get(_HEADER_MS)
        return int(stamp) if stamp else 0  # not appended by Meshtap: count it as old

    async def backlog(self, group_key: str, topics: Sequence[str]) -> GroupBacklog:
        _, js = await self._client()
        pending = lag = 0
        oldest: int | None = None
        for topic in topics:
            stream = self._stream(topic)
            try:
                info = await self._call(js.consumer_info(stream, _durable(group_key)))
            except js_errors.NotFoundError:
                continue
            pending += int(info.num_ack_pending or 0)
            lag += int(info.num_pending or 0)
            if info.num_ack_pending or info.num_pending:
                ms = await self._oldest_ms(js, stream, int(info.ack_floor.stream_seq or 0) + 1)
                if ms is not None:
                    oldest = ms if oldest is None else min(oldest, ms)
        return GroupBacklog(pending=pending, lag=lag, oldest_ms=oldest)

    async def _oldest_ms(self, js: JetStreamContext, stream: str, seq: int) -> int | None:
        return await self._message_ms(js, stream, seq)


async def _unless_gone(confirmation: Awaitable[Msg]) -> None:
    """Await an ack confirmation; no responder means the consumer is gone: nothing to ack."""
    with contextlib.suppress(nats_errors.NoRespondersError):
        await confirmation


def _expire(
    pending: list[tuple[asyncio.Future[PubAck] | EventRef, int]], error: StoreUnavailable
) -> None:
    """Fail the publishes of one append that the server has not confirmed in time."""
    for item, _ in pending:
        if isinstance(item, asyncio.Future) and not item.done():
            item.set_exception(error)
