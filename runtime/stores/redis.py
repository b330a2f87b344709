"""Redis Streams store (`redis://host:port/db`).

Layout (every key under one prefix, default `meshtap:`)::

    {p}t:{topic}        stream per topic; fields a=attributes JSON, d=data, p=previous keyed ref
    {p}topics           set of known topics
    {p}subs             hash subscription id -> JSON document
    {p}subs:version     counter bumped on every subscription change (cheap change detection)
    {p}pk:{key}         last ref ("topic offset") per partition key, expiring after a day

A group key is a Redis consumer group on each topic stream it consumes. Appends go through one
Lua script so the partition-key link and the XADD are atomic. Durability is Redis's: run it with
`appendonly yes` (and `appendfsync always` if an acknowledged publish must survive a power cut).

Connection errors surface as `StoreUnavailable` after a short timeout, so publishers get a fast
503 rather than a hung request; the client reconnects on its own when Redis is back.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Sequence
from typing import Any
from urllib.parse import urlsplit

import redis.asyncio as aioredis
import redis.exceptions as redis_errors

from runtime._errors import StoreUnavailable
from runtime._events import CloudEvent
from runtime.stores._base import (
    MAX_SEQ,
    EventRef,
    GroupBacklog,
    StoredEvent,
    next_offset_key,
    offset_key,
)
from runtime.stores._codec import decode_event, encode_attributes

# KEYS: stream, topics set. ARGV: topic, partition-key prefix, ttl seconds, n, then n triples of
# (attributes, data-with-marker, partition key or "").
_APPEND_SCRIPT = """
redis.call('SADD', KEYS[2], ARGV[1])
local out = {}
local i = 5
for n = 1, tonumber(ARGV[4]) do
  local a, d, k = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  i = i + 3
  local id
  if k ~= '' then
    local pkey = ARGV[2] .. k
    local prev = redis.call('GET', pkey)
    if prev then
      id = redis.call('XADD', KEYS[1], '*', 'a', a, 'd', d, 'p', prev)
    else
      id = redis.call('XADD', KEYS[1], '*', 'a', a, 'd', d)
    end
    redis.call('SET', pkey, ARGV[1] .. ' ' .. id, 'EX', ARGV[3])
  else
    id = redis.call('XADD', KEYS[1], '*', 'a', a, 'd', d)
  end
  out[n] = id
end
return out
"""

_PARTITION_LINK_TTL_S = 86_400
_QueuedAppend = tuple[str, Sequence[CloudEvent], "asyncio.Future[list[EventRef]]"]
_NO_DATA = b"\x00"
_HAS_DATA = b"\x01"


def _encode_data(data: bytes | None) -> bytes:
    return _NO_DATA if data is None else _HAS_DATA + data


def _decode_data(raw: bytes) -> bytes | None:
    return None if raw[:1] == _NO_DATA else raw[1:]


class RedisStore:
    def __init__(
        self,
        url: str,
        *,
        prefix: str = "meshtap:",
        connect_timeout_s: float = 1.0,
        command_timeout_s: float = 5.0,
        consumer_idle_ms: int = 3_600_000,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("redis", "rediss"):
            raise ValueError(f"not a Redis URL: {url!r}; use redis://host:port/db")
        self.url = url
        self._prefix = prefix
        self._consumer_idle_ms = consumer_idle_ms
        self._client: aioredis.Redis = aioredis.Redis.from_url(
            url,
            socket_connect_timeout=connect_timeout_s,
            socket_timeout=command_timeout_s,
            health_check_interval=10,
            retry_on_timeout=False,
            max_connections=512,
        )
        self._append = self._client.register_script(_APPEND_SCRIPT)
        self._queued_appends: list[
            tuple[str, Sequence[CloudEvent], asyncio.Future[list[EventRef]]]
        ] = []
        self._flushes: set[asyncio.Task[None]] = set()

    # -- plumbing -------------------------------------------------------------------------
    def _stream(self, topic: str) -> str:
        return f"{self._prefix}t:{topic}"

    async def _call(self, awaitable: Awaitable[Any]) -> Any:
        """Run one Redis call, turning connection trouble into StoreUnavailable.

        Returns Any on purpose: redis-py's reply types are unions too loose to be useful, so
        each caller states the shape it relies on.
        """
        try:
            return await awaitable
        except (redis_errors.ConnectionError, redis_errors.TimeoutError, OSError) as e:
            raise StoreUnavailable(
                f"Redis at {self._where()} is unreachable ({e}); nothing was accepted, retry later"
            ) from e
        except redis_errors.BusyLoadingError as e:
            raise StoreUnavailable(
                f"Redis at {self._where()} is loading its data set; retry in a moment"
            ) from e

    def _where(self) -> str:
        parts = urlsplit(self.url)
        return f"{parts.hostname}:{parts.port or 6379}"

    async def connect(self) -> None:
        await self.ping()

    async def close(self) -> None:
        await self._client.aclose()

    async def ping(self) -> None:
        await self._call(self._client.ping())

    # -- topics ---------------------------------------------------------------------------
    async def append(self, topic: str, events: Sequence[CloudEvent]) -> list[EventRef]:
        """Append atomically per call; concurrent calls share one round trip (group commit).

        Appends issued in the same event-loop turn (many producers publishing one event each)
        go to Redis as one pipeline: one connection checkout and one network round trip for
        all of them, instead of one each. A lone append waits for nothing.
        """
        future: asyncio.Future[list[EventRef]] = asyncio.get_running_loop().create_future()
        self._queued_appends.append((topic, events, future))
        if len(self._queued_appends) == 1:
            asyncio.get_running_loop().call_soon(self._flush_appends)
        return await future

    def _flush_appends(self) -> None:
        batch, self._queued_appends = self._queued_appends, []
        task = asyncio.create_task(self._write_appends(batch))
        self._flushes.add(task)
        task.add_done_callback(self._flushes.discard)

    def _append_args(self, topic: str, events: Sequence[CloudEvent]) -> list[bytes | str | int]:
        args: list[bytes | str | int] = [
            topic,
            f"{self._prefix}pk:",
            _PARTITION_LINK_TTL_S,
            len(events),
        ]
        for event in events:
            args += [encode_attributes(event), _encode_data(event.data), event.partition_key or ""]
        return args

    async def _write_appends(self, batch: list[_QueuedAppend]) -> None:
        # EVALSHA directly: redis-py's pipelined scripts would add a SCRIPT EXISTS round trip
        # to every flush. The script is loaded only when Redis has lost it (NOSCRIPT after a
        # restart), and only the entries that failed that way are sent again.
        todo = batch
        replies: list[Any] = []
        for _ in range(2):
            try:
                async with self._client.pipeline(transaction=False) as pipe:
                    for topic, events, _ in todo:
                        pipe.evalsha(
                            self._append.sha,
                            2,
                            self._stream(topic),
                            f"{self._prefix}topics",
                            *self._append_args(topic, events),
                        )
                    replies = await self._call(pipe.execute(raise_on_error=False))
            except StoreUnavailable as e:
                for _, _, future in todo:
                    if not future.done():
                        future.set_exception(e)
                return
            lost = [isinstance(r, redis_errors.NoScriptError) for r in replies]
            self._settle_appends(
                [e for e, missing in zip(todo, lost, strict=True) if not missing],
                [r for r, missing in zip(replies, lost, strict=True) if not missing],
            )
            todo = [e for e, missing in zip(todo, lost, strict=True) if missing]
            if not todo:
                return
            try:
                await self._call(self._client.script_load(_APPEND_SCRIPT))
            except StoreUnavailable as e:
                for _, _, future in todo:
                    future.set_exception(e)
                return
        self._settle_appends(todo, replies)

    def _settle_appends(self, batch: list[_QueuedAppend], replies: list[Any]) -> None:
        for (topic, _, future), reply in zip(batch, replies, strict=True):
            if future.done():
                continue
            if isinstance(reply, Exception):
                future.set_exception(
                    StoreUnavailable(
                        f"Redis at {self._where()} refused the write ({reply}); nothing was "
                        "stored, retry later"
                    )
                )
            else:
                future.set_result([EventRef(topic, i.decode()) for i in reply])

    async def create_topic(self, topic: str) -> bool:
        added = await self._call(self._client.sadd(f"{self._prefix}topics", topic))
        return bool(added)

    async def delete_topic(self, topic: str) -> bool:
        async with self._client.pipeline(transaction=True) as pipe:
            pipe.srem(f"{self._prefix}topics", topic)
            pipe.delete(self._stream(topic))
            removed, _ = await self._call(pipe.execute())
        return bool(removed)

    async def topics(self) -> list[str]:
        members = await self._call(self._client.smembers(f"{self._prefix}topics"))
        return sorted(m.decode() for m in members)

    # -- subscriptions --------------------------------------------------------------------
    async def put_subscription(self, subscription_id: str, document: str) -> None:
        async with self._client.pipeline(transaction=True) as pipe:
            pipe.hset(f"{self._prefix}subs", subscription_id, document)
            pipe.incr(f"{self._prefix}subs:version")
            await self._call(pipe.execute())

    async def delete_subscription(self, subscription_id: str) -> str | None:
        async with self._client.pipeline(transaction=True) as pipe:
            pipe.hget(f"{self._prefix}subs", subscription_id)
            pipe.hdel(f"{self._prefix}subs", subscription_id)
            pipe.incr(f"{self._prefix}subs:version")
            document, _, _ = await self._call(pipe.execute())
        return None if document is None else bytes(document).decode()

    async def subscriptions(self) -> dict[str, str]:
        raw = await self._call(self._client.hgetall(f"{self._prefix}subs"))
        return {k.decode(): v.decode() for k, v in raw.items()}

    async def subscriptions_version(self) -> int:
        raw = await self._call(self._client.get(f"{self._prefix}subs:version"))
        return int(raw or 0)

    # -- consumption ----------------------------------------------------------------------
    async def join(self, group_key: str, topic: str, start_ms: int) -> None:
        try:
            await self._call(
                self._client.xgroup_create(
                    self._stream(topic),
                    group_key,
                    id=f"{max(start_ms - 1, 0)}-{MAX_SEQ}",
                    mkstream=True,
                )
            )
        except redis_errors.ResponseError as e:
            if "BUSYGROUP" not in str(e):
                raise

    async def leave(self, group_key: str, topic: str) -> None:
        with contextlib.suppress(redis_errors.ResponseError):  # already gone
            await self._call(self._client.xgroup_destroy(self._stream(topic), group_key))

    def _parse(
        self, stream: bytes | str, entries: list[Any], deliveries: dict[bytes, int] | None = None
    ) -> list[StoredEvent]:
        name = stream.decode() if isinstance(stream, bytes) else stream
        topic = name[len(self._prefix) + 2 :]
        out = []
        for entry_id, fields in entries:
            if fields is None:  # deleted while pending
                continue
            previous = fields.get(b"p")
            out.append(
                StoredEvent(
                    ref=EventRef(topic, entry_id.decode()),
                    event=decode_event(fields[b"a"], _decode_data(fields[b"d"])),
                    previous=EventRef.decode(previous.decode()) if previous else None,
                    deliveries=(deliveries or {}).get(entry_id, 1),
                )
            )
        return out

    async def read(
        self, group_key: str, consumer: str, topics: Sequence[str], count: int, block_ms: int
    ) -> list[StoredEvent]:
        if not topics:
            return []
        streams: dict[Any, Any] = {self._stream(t): ">" for t in topics}
        try:
            reply = await self._call(
                self._client.xreadgroup(
                    group_key, consumer, streams, count=count, block=block_ms or None
                )
            )
        except redis_errors.ResponseError as e:
            # A topic deleted under us (before or during a blocked read): the dispatcher joins
            # again if it comes back.
            if "NOGROUP" in str(e) or "UNBLOCKED" in str(e):
                return []
            raise
        out: list[StoredEvent] = []
        for stream, entries in reply or []:
            out += self._parse(stream, entries)
        return out

    async def ack(self, group_key: str, refs: Sequence[EventRef]) -> None:
        by_topic: dict[str, list[Any]] = {}
        for ref in refs:
            by_topic.setdefault(ref.topic, []).append(ref.offset)
        async with self._client.pipeline(transaction=False) as pipe:
            for topic, offsets in by_topic.items():
                pipe.xack(self._stream(topic), group_key, *offsets)
            await self._call(pipe.execute())

    async def touch(self, group_key: str, consumer: str, refs: Sequence[EventRef]) -> None:
        by_topic: dict[str, list[Any]] = {}
        for ref in refs:
            by_topic.setdefault(ref.topic, []).append(ref.offset)
        async with self._client.pipeline(transaction=False) as pipe:
            for topic, offsets in by_topic.items():
                pipe.xclaim(self._stream(topic), group_key, consumer, 0, offsets, justid=True)
            await self._call(pipe.execute(raise_on_error=False))

    async def reclaim(
        self, group_key: str, consumer: str, topics: Sequence[str], min_idle_ms: int, count: int
    ) -> list[StoredEvent]:
        out: list[StoredEvent] = []
        for topic in topics:
            stream = self._stream(topic)
            try:
                pending = await self._call(
                    self._client.xpending_range(
                        stream, group_key, min="-", max="+", count=count, idle=min_idle_ms
                    )
                )
            except redis_errors.ResponseError:
                continue
            if not pending:
                continue
            ids: list[Any] = [p["message_id"] for p in pending]
            deliveries: dict[bytes, int] = {
                p["message_id"]: int(p["times_delivered"]) + 1 for p in pending
            }
            claimed = await self._call(
                self._client.xclaim(stream, group_key, consumer, min_idle_ms, ids)
            )
            gone: list[Any] = [entry_id for entry_id, fields in claimed if fields is None]
            if gone:  # trimmed or deleted: nothing left to deliver
                await self._call(self._client.xack(stream, group_key, *gone))
            out += self._parse(stream, claimed, deliveries)
            if len(out) >= count:
                break
        return out

    async def is_settled(self, group_key: str, ref: EventRef) -> bool:
        stream = self._stream(ref.topic)
        async with self._client.pipeline(transaction=False) as pipe:
            pipe.xinfo_groups(stream)
            pipe.xpending_range(stream, group_key, min=ref.offset, max=ref.offset, count=1)
            groups, pending = await self._call(pipe.execute(raise_on_error=False))
        if isinstance(groups, Exception):  # no such stream
            return True
        group = next((g for g in groups if g["name"].decode() == group_key), None)
        if group is None:
            return True
        if offset_key(ref.offset) > offset_key(group["last-delivered-id"].decode()):
            return False
        return not pending or isinstance(pending, Exception)

    async def trim(self, topic: str, before_ms: int) -> None:
        stream = self._stream(topic)
        try:
            groups: list[dict[str, Any]] = await self._call(self._client.xinfo_groups(stream))
        except redis_errors.ResponseError:  # no such stream
            return
        floor = (before_ms, 0)
        for group in groups:
            await self._prune_consumers(stream, group["name"])
            last = offset_key(group["last-delivered-id"].decode())
            floor = min(floor, next_offset_key(last))
            if int(group["pending"]):
                summary = await self._call(self._client.xpending(stream, group["name"]))
                if summary["min"]:
                    floor = min(floor, offset_key(summary["min"].decode()))
        # Approximate trimming frees whole stream nodes only: cheap, and never past the floor.
        await self._call(
            self._client.xtrim(stream, minid=f"{floor[0]}-{floor[1]}", approximate=True)
        )

    async def _prune_consumers(self, stream: str, group: bytes) -> None:
        """Forget consumers that hold nothing and were idle for an hour: every runtime start
        registers a new consumer name, and dead ones would otherwise pile up in XINFO."""
        consumers = await self._call(self._client.xinfo_consumers(stream, group))
        for consumer in consumers:
            if int(consumer["pending"]) == 0 and int(consumer["idle"]) > self._consumer_idle_ms:
                await self._call(self._client.xgroup_delconsumer(stream, group, consumer["name"]))

    async def backlog(self, group_key: str, topics: Sequence[str]) -> GroupBacklog:
        async with self._client.pipeline(transaction=False) as pipe:
            for topic in topics:
                pipe.xinfo_groups(self._stream(topic))
            replies = await self._call(pipe.execute(raise_on_error=False))
        pending = lag = 0
        oldest: int | None = None
        for topic, groups in zip(topics, replies, strict=True):
            if isinstance(groups, Exception):
                continue
            for group in groups:
                if group["name"].decode() == group_key:
                    pending += int(group["pending"])
                    lag += int(group.get("lag") or 0)
                    ms = await self._oldest_unacked_ms(topic, group)
                    if ms is not None:
                        oldest = ms if oldest is None else min(oldest, ms)
        return GroupBacklog(pending=pending, lag=lag, oldest_ms=oldest)

    async def _oldest_unacked_ms(self, topic: str, group: dict[str, Any]) -> int | None:
        """The oldest pending entry, else the first entry after the group's read pointer."""
        stream = self._stream(topic)
        if int(group["pending"]):
            summary = await self._call(self._client.xpending(stream, group["name"]))
            if summary["min"]:
                return offset_key(summary["min"].decode())[0]
        last = group["last-delivered-id"].decode()
        unread = await self._call(self._client.xrange(stream, min=f"({last}", count=1))
        return offset_key(unread[0][0].decode())[0] if unread else None
