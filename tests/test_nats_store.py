"""What is specific to the NATS JetStream store; the shared contract is in tests/test_stores.py
and the mesh behaviour on a real broker in tests/test_mesh_on_servers.py."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from runtime import CloudEvent, StoreUnavailable
from runtime.stores import EventRef, StoredEvent, open_store
from runtime.stores.nats import NatsStore, escape, unescape
from tests.servers import NatsServer, _NatsWire

pytestmark = pytest.mark.nats


def ev(event_id: str, key: str | None = None) -> CloudEvent:
    attributes: dict[str, str | int | bool] = {"id": event_id, "source": "/t", "type": "t"}
    if key is not None:
        attributes["partitionkey"] = key
    return CloudEvent(attributes, event_id.encode())


@pytest.fixture
async def store(nats_server: NatsServer) -> AsyncIterator[NatsStore]:
    s = NatsStore(nats_server.url)
    await s.connect()
    yield s
    await s.close()


def test_names_escape_and_decode_back() -> None:
    for text in ("orders.eu.created", "g:billing", "_dlq.ops", "a_b-c", "ünï/cödé sp"):
        name = escape(text)
        assert all(c.isascii() and (c.isalnum() or c in "_-") for c in name), name
        assert unescape(name) == text


def test_a_url_that_is_not_nats_is_refused_with_the_expected_shape() -> None:
    with pytest.raises(ValueError, match=r"not a NATS URL: 'nats://'; use nats://host:4222"):
        NatsStore("nats://")
    assert isinstance(open_store("nats://127.0.0.1:4222"), NatsStore)


async def test_odd_topic_and_group_names_round_trip(store: NatsStore) -> None:
    topic = "orders_x.eu-1." + "long" * 55  # 249 characters: longer than a stream name may be
    await store.join("b:billing/x", topic, 0)
    (ref,) = await store.append(topic, [ev("1")])
    (stored,) = await store.read("b:billing/x", "c1", [topic], 10, 0)
    assert stored.ref == ref
    assert await store.topics() == [topic]
    await store.ack("b:billing/x", [ref])
    assert await store.is_settled("b:billing/x", ref)


async def test_concurrent_keyed_appends_from_two_instances_form_one_chain(
    nats_server: NatsServer,
) -> None:
    """Two runtime instances publishing the same partition key at once: the compare-and-set on
    the key's tail puts every event in one chain, in stream order (no two events share a
    predecessor, which would let them be delivered concurrently)."""
    first, second = NatsStore(nats_server.url), NatsStore(nats_server.url)
    await first.connect()
    await second.connect()
    try:
        await first.join("g", "orders", 0)
        await asyncio.gather(
            *(
                s.append("orders", [ev(f"{n}-{i}", key="k")])
                for i in range(15)
                for n, s in (("a", first), ("b", second))
            )
        )
        read: list[StoredEvent] = await first.read("g", "c1", ["orders"], 100, 0)
        assert len(read) == 30
        assert read[0].previous is None
        for before, after in itertools.pairwise(read):
            assert after.previous == before.ref
    finally:
        await first.close()
        await second.close()


async def test_acks_for_a_group_that_left_are_ignored(store: NatsStore) -> None:
    await store.join("g", "orders", 0)
    (ref,) = await store.append("orders", [ev("1")])
    await store.read("g", "c1", ["orders"], 10, 0)
    await store.leave("g", "orders")
    await store.ack("g", [ref])  # nothing left to acknowledge: not an outage
    await store.touch("g", "c1", [EventRef("orders", ref.offset)])


class _NatsWithoutJetStream(NatsServer):
    def _command(self, binary: str) -> list[str]:
        return [binary, "-a", self.host, "-p", str(self.port)]

    def _ready(self) -> bool:
        with _NatsWire(self.host, self.port, timeout=2.0):
            return True


@pytest.fixture
def plain_nats(tmp_path: Path) -> Iterator[NatsServer]:
    """A nats-server started without -js (the store must say how to fix that)."""
    server = _NatsWithoutJetStream(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.close()


async def test_a_server_without_jetstream_is_reported_with_the_fix(
    plain_nats: NatsServer,
) -> None:
    store = NatsStore(plain_nats.url)
    with pytest.raises(StoreUnavailable, match="start nats-server with -js"):
        await store.connect()
    await store.close()


async def test_starts_without_the_server_and_connects_once_it_is_up(
    fresh_nats_server: NatsServer,
) -> None:
    fresh_nats_server.kill()
    store = NatsStore(fresh_nats_server.url)
    with pytest.raises(StoreUnavailable, match=r"NATS at 127\.0\.0\.1"):
        await store.connect()
    fresh_nats_server.restart()
    deadline = asyncio.get_running_loop().time() + 10
    while True:
        try:
            await store.append("orders", [ev("1")])
            break
        except StoreUnavailable:
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.2)
    assert await store.topics() == ["orders"]
    await store.close()


async def test_a_burst_of_first_appends_registers_the_topic_once(store: NatsStore) -> None:
    refs = await asyncio.gather(*(store.append("burst", [ev(str(i))]) for i in range(300)))
    assert len({ref for (ref,) in refs}) == 300
    assert await store.topics() == ["burst"]
    await store.join("g", "burst", 0)
    read = await store.read("g", "c1", ["burst"], 1000, 0)
    assert sorted(s.event.id for s in read) == sorted(str(i) for i in range(300))
