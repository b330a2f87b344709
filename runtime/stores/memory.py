"""The in-process store: the embedded default (`memory://`).

Same semantics as the server stores (consumer groups, pending lists, reclaim, partition-key
links), so the dispatcher cannot tell them apart and one behavioural test suite covers both.
It lives and dies with the process: use Redis or NATS when events must outlive a restart.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from runtime._events import CloudEvent
from runtime.stores._base import (
    MAX_SEQ,
    EventRef,
    GroupBacklog,
    StoredEvent,
    next_offset_key,
    offset_key,
)


@dataclass(slots=True)
class _Entry:
    key: tuple[int, int]
    offset: str
    event: CloudEvent
    previous: EventRef | None


@dataclass(slots=True)
class _Pending:
    consumer: str
    since: float
    deliveries: int


@dataclass(slots=True)
class _Group:
    last_delivered: tuple[int, int]
    pending: dict[str, _Pending] = field(default_factory=dict)


@dataclass(slots=True)
class _Stream:
    entries: list[_Entry] = field(default_factory=list)
    by_offset: dict[str, _Entry] = field(default_factory=dict)
    groups: dict[str, _Group] = field(default_factory=dict)
    last_key: tuple[int, int] = (0, 0)


class MemoryStore:
    """Everything in dictionaries; `retain` bounds how many settled events each topic keeps."""

    def __init__(self, url: str = "memory://", *, retain: int = 100_000) -> None:
        self.url = url
        self._retain = retain
        self._streams: dict[str, _Stream] = {}
        self._subscriptions: dict[str, str] = {}
        self._subscriptions_version = 0
        self._partition_tails: dict[str, EventRef] = {}
        self._appended = asyncio.Event()

    async def connect(self) -> None:
        return None

    async def close(self) -> None:
        self._appended.set()

    async def ping(self) -> None:
        return None

    # -- topics -------------------------------------------------------------------------
    def _stream(self, topic: str) -> _Stream:
        stream = self._streams.get(topic)
        if stream is None:
            stream = self._streams[topic] = _Stream()
        return stream

    def _next_key(self, stream: _Stream) -> tuple[int, int]:
        ms = time.time_ns() // 1_000_000
        last_ms, last_seq = stream.last_key
        key = (last_ms, last_seq + 1) if ms <= last_ms else (ms, 0)
        stream.last_key = key
        return key

    async def append(self, topic: str, events: Sequence[CloudEvent]) -> list[EventRef]:
        stream = self._stream(topic)
        refs = []
        for event in events:
            key = self._next_key(stream)
            offset = f"{key[0]}-{key[1]}"
            ref = EventRef(topic, offset)
            previous = None
            partition_key = event.partition_key
            if partition_key is not None:
                previous = self._partition_tails.get(partition_key)
                self._partition_tails[partition_key] = ref
            entry = _Entry(key, offset, event, previous)
            stream.entries.append(entry)
            stream.by_offset[offset] = entry
            refs.append(ref)
        self._trim(stream)
        self._appended.set()
        self._appended = asyncio.Event()
        return refs

    def _trim(self, stream: _Stream) -> None:
        """Keep memory bounded: beyond `retain` events, drop the oldest all groups are done with."""
        excess = len(stream.entries) - self._retain
        if excess >= max(1000, self._retain // 10):
            self._drop_before(stream, stream.entries[excess].key)

    def _drop_before(self, stream: _Stream, key: tuple[int, int]) -> None:
        floor = key
        for group in stream.groups.values():
            floor = min(floor, next_offset_key(group.last_delivered))
            for offset in group.pending:
                floor = min(floor, offset_key(offset))
        keep_from = 0
        while keep_from < len(stream.entries) and stream.entries[keep_from].key < floor:
            del stream.by_offset[stream.entries[keep_from].offset]
            keep_from += 1
        del stream.entries[:keep_from]

    async def create_topic(self, topic: str) -> bool:
        created = topic not in self._streams
        self._stream(topic)
        return created

    async def delete_topic(self, topic: str) -> bool:
        return self._streams.pop(topic, None) is not None

    async def topics(self) -> list[str]:
        return sorted(self._streams)

    # -- subscriptions ------------------------------------------------------------------
    async def put_subscription(self, subscription_id: str, document: str) -> None:
        self._subscriptions[subscription_id] = document
        self._subscriptions_version += 1

    async def delete_subscription(self, subscription_id: str) -> str | None:
        document = self._subscriptions.pop(subscription_id, None)
        if document is not None:
            self._subscriptions_version += 1
        return document

    async def subscriptions(self) -> dict[str, str]:
        return dict(self._subscriptions)

    async def subscriptions_version(self) -> int:
        return self._subscriptions_version

    # -- consumption --------------------------------------------------------------------
    async def join(self, group_key: str, topic: str, start_ms: int) -> None:
        stream = self._stream(topic)
        if group_key not in stream.groups:
            stream.groups[group_key] = _Group(last_delivered=(start_ms - 1, MAX_SEQ))

    async def leave(self, group_key: str, topic: str) -> None:
        stream = self._streams.get(topic)
        if stream is not None:
            stream.groups.pop(group_key, None)

    def _take_new(
        self, group_key: str, consumer: str, topics: Sequence[str], count: int
    ) -> list[StoredEvent]:
        out: list[StoredEvent] = []
        now = time.monotonic()
        for topic in topics:
            stream = self._streams.get(topic)
            group = stream.groups.get(group_key) if stream else None
            if stream is None or group is None:
                continue
            start = _bisect_after(stream.entries, group.last_delivered)
            for entry in stream.entries[start : start + count]:
                group.pending[entry.offset] = _Pending(consumer, now, 1)
                group.last_delivered = entry.key
                out.append(StoredEvent(EventRef(topic, entry.offset), entry.event, entry.previous))
        return out

    async def read(
        self, group_key: str, consumer: str, topics: Sequence[str], count: int, block_ms: int
    ) -> list[StoredEvent]:
        deadline = time.monotonic() + block_ms / 1000
        while True:
            appended = self._appended
            out = self._take_new(group_key, consumer, topics, count)
            remaining = deadline - time.monotonic()
            if out or remaining <= 0:
                return out
            try:
                await asyncio.wait_for(appended.wait(), remaining)
            except TimeoutError:
                return []

    async def ack(self, group_key: str, refs: Sequence[EventRef]) -> None:
        for ref in refs:
            stream = self._streams.get(ref.topic)
            group = stream.groups.get(group_key) if stream else None
            if group is not None:
                group.pending.pop(ref.offset, None)

    async def touch(self, group_key: str, consumer: str, refs: Sequence[EventRef]) -> None:
        now = time.monotonic()
        for ref in refs:
            stream = self._streams.get(ref.topic)
            group = stream.groups.get(group_key) if stream else None
            pending = group.pending.get(ref.offset) if group else None
            if pending is not None:
                pending.consumer = consumer
                pending.since = now

    async def reclaim(
        self, group_key: str, consumer: str, topics: Sequence[str], min_idle_ms: int, count: int
    ) -> list[StoredEvent]:
        out: list[StoredEvent] = []
        now = time.monotonic()
        for topic in topics:
            stream = self._streams.get(topic)
            group = stream.groups.get(group_key) if stream else None
            if stream is None or group is None:
                continue
            for offset, pending in sorted(group.pending.items(), key=lambda i: offset_key(i[0])):
                if len(out) >= count:
                    return out
                if (now - pending.since) * 1000 < min_idle_ms:
                    continue
                entry = stream.by_offset.get(offset)
                if entry is None:
                    del group.pending[offset]
                    continue
                pending.consumer, pending.since = consumer, now
                pending.deliveries += 1
                ref = EventRef(topic, offset)
                out.append(StoredEvent(ref, entry.event, entry.previous, pending.deliveries))
        return out

    async def is_settled(self, group_key: str, ref: EventRef) -> bool:
        stream = self._streams.get(ref.topic)
        group = stream.groups.get(group_key) if stream else None
        if group is None:
            return True
        if offset_key(ref.offset) > group.last_delivered:
            return False
        return ref.offset not in group.pending

    async def trim(self, topic: str, before_ms: int) -> None:
        stream = self._streams.get(topic)
        if stream is not None:
            self._drop_before(stream, (before_ms, 0))

    async def backlog(self, group_key: str, topics: Sequence[str]) -> GroupBacklog:
        pending = lag = 0
        oldest: int | None = None
        for topic in topics:
            stream = self._streams.get(topic)
            group = stream.groups.get(group_key) if stream else None
            if stream is None or group is None:
                continue
            pending += len(group.pending)
            first_unread = _bisect_after(stream.entries, group.last_delivered)
            lag += len(stream.entries) - first_unread
            candidates = [offset_key(o)[0] for o in group.pending]
            if first_unread < len(stream.entries):
                candidates.append(stream.entries[first_unread].key[0])
            if candidates:
                oldest = min([*candidates, *([] if oldest is None else [oldest])])
        return GroupBacklog(pending=pending, lag=lag, oldest_ms=oldest)


def _bisect_after(entries: list[_Entry], key: tuple[int, int]) -> int:
    """Index of the first entry whose key is greater than `key`."""
    lo, hi = 0, len(entries)
    while lo < hi:
        mid = (lo + hi) // 2
        if entries[mid].key <= key:
            lo = mid + 1
        else:
            hi = mid
    return lo
