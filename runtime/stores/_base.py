"""The contract every store (memory, Redis Streams, NATS JetStream ...) fulfils.

A store is an append-only log per topic with consumer groups, modelled on Redis Streams because
that is the smallest shape that gives the mesh everything it needs:

* `append` is the durability point: once it returns, the events are accepted and must survive a
  runtime crash (and, for server stores, a broker restart as far as the broker persists).
* A *group key* names one delivery unit (a clustering consumer group, or one broadcast subscriber).
  `read` hands each event to exactly one consumer of a group key; it stays *pending* until `ack`.
  Pending events of a crashed consumer are taken over with `reclaim`.
* Ordering by partition key is kept across runtime instances without leases: `append` links each
  keyed event to the previous event with the same key (`StoredEvent.previous`), and a dispatcher
  delivers an event only once `is_settled` says its predecessor was read and acknowledged by the
  group (or the group never had to see it).

Subscriptions and topic metadata live here too, so they survive restarts and are shared by all
runtime instances on the same store. The store keeps them as opaque JSON documents.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from runtime._events import CloudEvent


@dataclass(frozen=True, slots=True, order=True)
class EventRef:
    """Where an event sits: its topic and its store offset (`<ms>-<seq>`, ordered per topic)."""

    topic: str
    offset: str

    def encode(self) -> str:
        return f"{self.topic} {self.offset}"

    @classmethod
    def decode(cls, text: str) -> EventRef:
        topic, _, offset = text.partition(" ")
        return cls(topic, offset)


MAX_SEQ = 2**64 - 1


def offset_key(offset: str) -> tuple[int, int]:
    """Sort key of an offset; `<ms>-<seq>` like Redis stream ids."""
    ms, _, seq = offset.partition("-")
    return int(ms), int(seq or 0)


def next_offset_key(key: tuple[int, int]) -> tuple[int, int]:
    """The smallest offset after `key`."""
    ms, seq = key
    return (ms + 1, 0) if seq >= MAX_SEQ else (ms, seq + 1)


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """An event as handed to a consumer of a group."""

    ref: EventRef
    event: CloudEvent
    previous: EventRef | None
    """The previous event with the same partition key (any topic), if any."""
    deliveries: int = 1
    """How many times the store has handed this event to a consumer of this group."""


@dataclass(frozen=True, slots=True)
class GroupBacklog:
    pending: int
    """Handed to a consumer but not yet acknowledged."""
    lag: int
    """Not yet handed to any consumer."""
    oldest_ms: int | None = None
    """Append time (ms) of the oldest event the group has not acknowledged, if any."""

    @property
    def total(self) -> int:
        return self.pending + self.lag


@runtime_checkable
class Store(Protocol):
    """A broker backend. Every method raises `StoreUnavailable` when the backend is down."""

    url: str

    async def connect(self) -> None: ...

    async def close(self) -> None: ...

    async def ping(self) -> None: ...

    # -- topics -------------------------------------------------------------------------
    async def append(self, topic: str, events: Sequence[CloudEvent]) -> list[EventRef]: ...

    async def create_topic(self, topic: str) -> bool: ...

    async def delete_topic(self, topic: str) -> bool: ...

    async def topics(self) -> list[str]: ...

    # -- subscriptions ------------------------------------------------------------------
    async def put_subscription(self, subscription_id: str, document: str) -> None: ...

    async def delete_subscription(self, subscription_id: str) -> str | None: ...

    async def subscriptions(self) -> dict[str, str]: ...

    async def subscriptions_version(self) -> int: ...

    # -- consumption --------------------------------------------------------------------
    async def join(self, group_key: str, topic: str, start_ms: int) -> None:
        """Make sure `group_key` consumes `topic`, from events appended at or after `start_ms`."""
        ...

    async def leave(self, group_key: str, topic: str) -> None: ...

    async def read(
        self, group_key: str, consumer: str, topics: Sequence[str], count: int, block_ms: int
    ) -> list[StoredEvent]: ...

    async def ack(self, group_key: str, refs: Sequence[EventRef]) -> None: ...

    async def touch(self, group_key: str, consumer: str, refs: Sequence[EventRef]) -> None:
        """Tell the store these events are still being worked on (resets their idle time)."""
        ...

    async def reclaim(
        self, group_key: str, consumer: str, topics: Sequence[str], min_idle_ms: int, count: int
    ) -> list[StoredEvent]:
        """Take over events pending longer than `min_idle_ms` (their consumer likely died)."""
        ...

    async def is_settled(self, group_key: str, ref: EventRef) -> bool:
        """True when the group has read and acknowledged `ref`, or never had to read it."""
        ...

    async def backlog(self, group_key: str, topics: Sequence[str]) -> GroupBacklog: ...

    async def trim(self, topic: str, before_ms: int) -> None:
        """Forget events appended before `before_ms` that every group has read and acknowledged.

        Never removes an event a group still needs; retention beyond delivery is the capture
        store's job, not the broker's.
        """
        ...
