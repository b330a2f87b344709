"""The store contract (runtime.stores.Store), held to the same tests on every backend.

These talk to the store directly, below the dispatcher, so a new backend (NATS JetStream) can be
checked against exactly what the mesh relies on.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import pytest

from runtime import CloudEvent
from runtime.stores import EventRef, GroupBacklog, Store, open_store
from runtime.stores._base import offset_key
from tests.meshes import store_params, store_url


@pytest.fixture(params=store_params())
async def store(request: pytest.FixtureRequest) -> AsyncIterator[Store]:
    s = open_store(store_url(request, request.param))
    await s.connect()
    yield s
    await s.close()


def ev(event_id: str, key: str | None = None) -> CloudEvent:
    attributes: dict[str, str | int | bool] = {
        "specversion": "1.0",
        "id": event_id,
        "source": "/t",
        "type": "t",
    }
    if key is not None:
        attributes["partitionkey"] = key
    return CloudEvent(attributes, f"data-{event_id}".encode())


def now_ms() -> int:
    return time.time_ns() // 1_000_000


async def test_append_keeps_attributes_data_and_order(store: Store) -> None:
    await store.join("g", "orders", now_ms() - 1000)
    original = CloudEvent(
        {"specversion": "1.0", "id": "1", "source": "/s", "type": "t", "n": 5, "flag": True},
        b"\x00\xffbinary",
    )
    refs = await store.append("orders", [original, ev("2"), ev("3")])
    assert [r.topic for r in refs] == ["orders"] * 3
    assert refs == sorted(refs, key=lambda r: tuple(map(int, r.offset.split("-"))))
    read = await store.read("g", "c1", ["orders"], 10, 0)
    assert [s.event for s in read] == [original, ev("2"), ev("3")]
    assert [s.ref for s in read] == refs
    assert await store.topics() == ["orders"]


async def test_group_starts_at_its_start_time(store: Store) -> None:
    await store.append("orders", [ev("old")])
    time.sleep(0.005)
    await store.join("g", "orders", now_ms())
    await store.append("orders", [ev("new")])
    read = await store.read("g", "c1", ["orders"], 10, 0)
    assert [s.event.id for s in read] == ["new"]


async def test_each_event_goes_to_one_consumer_of_a_group(store: Store) -> None:
    start = now_ms() - 1000
    await store.join("g", "orders", start)
    await store.join("h", "orders", start)
    await store.append("orders", [ev(str(i)) for i in range(6)])
    first = await store.read("g", "c1", ["orders"], 4, 0)
    second = await store.read("g", "c2", ["orders"], 4, 0)
    other_group = await store.read("h", "c1", ["orders"], 10, 0)
    assert [s.event.id for s in first + second] == [str(i) for i in range(6)]
    assert len(other_group) == 6


async def test_partition_key_links_across_topics(store: Store) -> None:
    (a,) = await store.append("orders", [ev("1", key="k")])
    (b,) = await store.append("payments", [ev("2", key="k")])
    await store.append("orders", [ev("3", key="other")])
    await store.join("g", "payments", now_ms() - 1000)
    (stored,) = await store.read("g", "c1", ["payments"], 10, 0)
    assert stored.ref == b
    assert stored.previous == a


async def test_settled_means_read_and_acknowledged(store: Store) -> None:
    await store.join("g", "orders", now_ms() - 1000)
    first, second = await store.append("orders", [ev("1"), ev("2")])
    assert not await store.is_settled("g", first)  # not read yet
    await store.read("g", "c1", ["orders"], 1, 0)
    assert not await store.is_settled("g", first)  # read, pending
    await store.ack("g", [first])
    assert await store.is_settled("g", first)
    assert not await store.is_settled("g", second)
    assert await store.is_settled("nobody", first)  # a group that never had to see it
    assert await store.is_settled("g", EventRef("no-such-topic", "1-0"))


async def test_reclaim_takes_over_idle_pending_events(store: Store) -> None:
    """An event pending `min_idle_ms` without a touch is taken over; a touched one is not.

    Polled, because stores differ in *when* an idle event becomes reclaimable: Redis at once
    (XCLAIM by idle time), JetStream once its own AckWait timer has fired (runtime.stores.nats).
    """
    await store.join("g", "orders", now_ms() - 1000)
    await store.append("orders", [ev("1"), ev("2")])
    held = await store.read("g", "dead", ["orders"], 10, 0)
    assert await store.reclaim("g", "alive", ["orders"], 60_000, 10) == []  # not idle yet
    deadline = time.monotonic() + 10
    taken = []
    while not taken and time.monotonic() < deadline:
        await store.touch("g", "dead", [held[1].ref])  # still being worked on
        taken = await store.reclaim("g", "alive", ["orders"], 400, 10)
        time.sleep(0.05)
    assert [s.event.id for s in taken] == ["1"]
    assert taken[0].deliveries == 2


async def test_backlog_counts_pending_and_unread(store: Store) -> None:
    await store.join("g", "orders", now_ms() - 1000)
    await store.append("orders", [ev(str(i)) for i in range(5)])
    read = await store.read("g", "c1", ["orders"], 2, 0)
    await store.ack("g", [read[0].ref])
    backlog = await store.backlog("g", ["orders"])
    assert (backlog.pending, backlog.lag, backlog.total) == (1, 3, 4)
    assert backlog.oldest_ms == offset_key(read[1].ref.offset)[0]  # the oldest unacknowledged
    await store.ack("g", [read[1].ref])
    rest = await store.read("g", "c1", ["orders"], 10, 0)
    assert (await store.backlog("g", ["orders"])).oldest_ms == offset_key(rest[0].ref.offset)[0]
    await store.ack("g", [s.ref for s in rest])
    assert await store.backlog("g", ["orders"]) == GroupBacklog(pending=0, lag=0, oldest_ms=None)


async def test_trim_never_drops_what_a_group_still_needs(store: Store) -> None:
    await store.join("g", "orders", now_ms() - 1000)
    refs = await store.append("orders", [ev(str(i)) for i in range(10)])
    read = await store.read("g", "c1", ["orders"], 6, 0)
    await store.ack("g", [s.ref for s in read if s.event.id not in ("3", "4")])
    await store.trim("orders", now_ms() + 1000)  # everything is older than the cutoff
    # A late group joined from the beginning sees only what was kept: from the first pending.
    await store.join("late", "orders", 0)
    kept = await store.read("late", "c1", ["orders"], 100, 0)
    assert kept[0].event.id in ("0", "3")  # approximate trimming may keep more
    assert {"3", "4", "6", "7", "8", "9"} <= {s.event.id for s in kept}
    # The group itself loses nothing: its pending and unread events are all there.
    rest = await store.read("g", "c1", ["orders"], 100, 0)
    assert [s.event.id for s in rest] == ["6", "7", "8", "9"]
    assert not await store.is_settled("g", refs[3])


async def test_trim_respects_the_retention_cutoff(store: Store) -> None:
    await store.append("orders", [ev(str(i)) for i in range(5)])
    await store.trim("orders", now_ms() - 60_000)  # nothing is that old
    await store.join("late", "orders", 0)
    kept = await store.read("late", "c1", ["orders"], 100, 0)
    assert [s.event.id for s in kept] == [str(i) for i in range(5)]


async def test_subscriptions_are_versioned_documents(store: Store) -> None:
    version = await store.subscriptions_version()
    await store.put_subscription("s1", '{"a": 1}')
    assert await store.subscriptions() == {"s1": '{"a": 1}'}
    assert await store.subscriptions_version() > version
    version = await store.subscriptions_version()
    assert await store.delete_subscription("s1") == '{"a": 1}'
    assert await store.subscriptions_version() > version  # other instances notice removals too
    assert await store.delete_subscription("s1") is None
    assert await store.subscriptions() == {}


async def test_topics_can_be_created_and_deleted(store: Store) -> None:
    assert await store.create_topic("a.b")
    assert not await store.create_topic("a.b")
    assert await store.topics() == ["a.b"]
    assert await store.delete_topic("a.b")
    assert not await store.delete_topic("a.b")


async def test_trim_frees_settled_events(store: Store) -> None:
    await store.join("g", "orders", now_ms() - 1000)
    for chunk in range(10):
        await store.append("orders", [ev(f"{chunk}-{i}") for i in range(100)])
    read = await store.read("g", "c1", ["orders"], 1000, 0)
    assert len(read) == 1000
    await store.ack("g", [s.ref for s in read])
    await store.trim("orders", now_ms() + 1000)
    await store.join("late", "orders", 0)
    kept = await store.read("late", "c1", ["orders"], 1000, 0)
    assert len(kept) < 200  # whole settled nodes are gone (Redis trims approximately)
