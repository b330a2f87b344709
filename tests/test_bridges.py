"""Bridges between meshes: real runtimes on separate stores, forwarding over HTTP and gRPC.

Every mesh here is a full runtime (its own store: a memory store, or its own Redis database),
and every subscriber a real HTTP server, so what is asserted is what a second mesh's consumers
would see.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import pytest

from runtime._config import config_from_args
from runtime._server import Runtime
from tests.meshes import Client, RuntimeProcess, event, free_port, running
from tests.sinks import RecordingSink
from tests.test_capture_hooks import ListCapture

STORES = ["memory", pytest.param("redis", marks=pytest.mark.redis)]
FAST_RETRY = {"max_attempts": 3, "initial_backoff_ms": 50, "max_backoff_ms": 200}


@pytest.fixture(params=STORES)
def store_urls(request: pytest.FixtureRequest) -> Callable[[int], str]:
    """The store of mesh number n: separate memory stores, or separate Redis databases."""
    if request.param == "memory":
        return lambda n: "memory://"
    base = str(request.getfixturevalue("redis_server").url).rpartition("/")[0]
    return lambda n: f"{base}/{n}"


@pytest.fixture
async def sink() -> AsyncIterator[RecordingSink]:
    s = await RecordingSink().start()
    yield s
    await s.stop()


@asynccontextmanager
async def meshes(
    store_urls: Callable[[int], str], *names: str, grpc: bool = False
) -> AsyncIterator[list[tuple[Runtime, Client]]]:
    async with AsyncExitStack() as stack:
        found = [
            await stack.enter_async_context(
                running(store_urls(n), mesh_name=name, instance=f"{name}-1", grpc=grpc)
            )
            for n, name in enumerate(names)
        ]
        yield found


async def add_bridge(client: Client, **body: Any) -> dict[str, Any]:
    status, reply = await client.request("POST", "/v1/bridges", json=body)
    assert status == 201, reply
    return reply  # type: ignore[no-any-return]


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


def target_of(runtime: Runtime, protocol: str) -> str:
    return f"grpc://{runtime.grpc_target}" if protocol == "grpc" else runtime.http_url


@pytest.mark.parametrize("protocol", ["http", "grpc"])
async def test_forwarded_events_arrive_byte_exact_with_their_attributes(
    store_urls: Callable[[int], str], protocol: str
) -> None:
    local, remote = await RecordingSink().start(), await RecordingSink().start()
    try:
        async with meshes(store_urls, "dmz", "internal", grpc=True) as [
            (_, dmz),
            (inner, internal),
        ]:
            await dmz.subscribe(topic="orders.#", group="audit", sink=local.url)
            await internal.subscribe(topic="orders.#", group="billing", sink=remote.url)
            bridge = await add_bridge(dmz, topic="orders.#", target=target_of(inner, protocol))
            assert bridge["group"].startswith("bridge.")
            raw = b'{"order": 42,   "note": "spaces \\u00e9 kept"}'
            # gRPC carries the topic in `subject` (EventMesh's convention), so only HTTP keeps
            # an event's own subject; over gRPC it arrives as the topic.
            subject = {"subject": "order-42"} if protocol == "http" else {}
            topic_subject = {"subject": "orders.eu.created"} if protocol == "grpc" else {}
            status, _ = await dmz.publish_binary(
                "orders.eu.created",
                raw,
                id="e-1",
                source="/shop",
                type="order.created",
                partitionkey="customer-7",
                tenant="acme",
                **subject,
            )
            assert status == 200
            await dmz.publish_binary(
                "orders.eu.created", b"\x00\xffbinary", content_type="application/octet-stream",
                id="e-2", source="/shop", type="order.blob",
            )  # fmt: skip
            (original, blob) = await local.wait_for(2)
            forwarded = await remote.wait_for(2)
            by_id = {p.id: p for p in forwarded}
            assert by_id["e-1"].body == raw
            assert by_id["e-2"].body == b"\x00\xffbinary"
            expected = dict(original.attributes, meshpath="dmz", **topic_subject)
            assert by_id["e-1"].attributes == expected
            assert by_id["e-2"].attributes == dict(blob.attributes, meshpath="dmz", **topic_subject)
            assert by_id["e-1"].headers["Content-Type"] == "application/json"
            # The bridge is a subscription: it shows there too, with its own group.
            status, listed = await dmz.request("GET", "/v1/bridges")
            assert status == 200
            assert listed["mesh"] == "dmz"
            assert [b["name"] for b in listed["bridges"]] == [bridge["name"]]
    finally:
        await local.stop()
        await remote.stop()


async def test_renaming_strips_and_prefixes_topics(
    store_urls: Callable[[int], str], sink: RecordingSink
) -> None:
    async with meshes(store_urls, "dmz", "internal") as [(_, dmz), (inner, internal)]:
        await internal.subscribe(topic="shop.#", group="billing", sink=sink.url)
        await add_bridge(
            dmz,
            name="orders-in",
            topic="orders.#",
            target=inner.http_url,
            rename={"strip": "orders.", "prefix": "shop.orders-dmz."},
        )
        await add_bridge(
            dmz, name="payments-in", topic="payments.*", target=inner.http_url,
            rename={"prefix": "shop."},
        )  # fmt: skip
        await dmz.publish("orders.eu.created", event("o-1"))
        await dmz.publish("payments.settled", event("p-1"))
        await dmz.publish("other.thing", event("x-1"))
        await sink.wait_for(2)
        await asyncio.sleep(0.3)  # nothing else arrives
        topics = await internal.request("GET", "/v1/topics")
        assert sorted(topics[1]["topics"]) == [
            "shop.orders-dmz.eu.created",
            "shop.payments.settled",
        ]
        assert sorted(sink.ids()) == ["o-1", "p-1"]


async def test_partition_key_order_is_kept_across_the_bridge(
    store_urls: Callable[[int], str], sink: RecordingSink
) -> None:
    async with meshes(store_urls, "dmz", "internal") as [(_, dmz), (inner, internal)]:
        await internal.subscribe(topic="orders", group="billing", sink=sink.url)
        await add_bridge(dmz, topic="orders", target=inner.http_url, batch={"max_events": 7})
        ids = [f"k{key}-{n}" for n in range(30) for key in range(3)]
        for start in range(0, len(ids), 9):
            await dmz.publish(
                "orders", *(event(i, partitionkey=i.split("-")[0]) for i in ids[start : start + 9])
            )
        await sink.wait_for(len(ids), timeout=20)
        for key in range(3):
            got = [i for i in sink.ids() if i.startswith(f"k{key}-")]
            assert got == [i for i in ids if i.startswith(f"k{key}-")]


async def test_a_loop_is_stopped_where_it_would_return(
    store_urls: Callable[[int], str],
) -> None:
    """A -> B -> C -> A and B -> A: every event reaches each mesh once, then stops."""
    sinks = [await RecordingSink().start() for _ in range(3)]
    try:
        async with meshes(store_urls, "a", "b", "c") as found:
            (ra, a), (rb, b), (rc, c) = found
            for client, s in zip((a, b, c), sinks, strict=True):
                await client.subscribe(topic="orders.#", group="app", sink=s.url)
            await add_bridge(a, name="to-b", topic="orders.#", target=rb.http_url)
            await add_bridge(b, name="to-c", topic="orders.#", target=rc.http_url)
            await add_bridge(b, name="back-to-a", topic="orders.#", target=ra.http_url)
            await add_bridge(c, name="to-a", topic="orders.#", target=ra.http_url)
            await a.publish("orders.created", event("from-a"))
            await c.publish("orders.created", event("from-c"))
            for s in sinks:
                await s.wait_for(2)

            # At A: from-a back via B and via C, from-c back via B; at C: from-c via B.
            async def loops_stopped() -> bool:
                _, at_a = await a.request("GET", "/metrics")
                _, at_c = await c.request("GET", "/metrics")
                return (
                    'meshtap_bridge_loops_stopped_total{topic="orders.created"} 3.0' in at_a
                    and 'meshtap_bridge_loops_stopped_total{topic="orders.created"} 1.0' in at_c
                )

            await eventually(loops_stopped)
            await asyncio.sleep(1.0)  # time for any further round
            for s in sinks:
                assert sorted(s.ids()) == ["from-a", "from-c"], s.ids()
            expected_paths = [
                {"from-a": None, "from-c": "c"},
                {"from-a": "a", "from-c": "c,a"},
                {"from-a": "a,b", "from-c": None},
            ]
            for s, paths in zip(sinks, expected_paths, strict=True):
                assert {p.id: p.attributes.get("meshpath") for p in s.pushes} == paths
            # Nothing was dead-lettered: a stopped loop is not a failure.
            for client in (a, b, c):
                _, topics = await client.request("GET", "/v1/topics")
                assert not [t for t in topics["topics"] if t.startswith("_dlq")]
    finally:
        for s in sinks:
            await s.stop()


async def test_max_hops_dead_letters_instead_of_forwarding(
    store_urls: Callable[[int], str], sink: RecordingSink
) -> None:
    async with meshes(store_urls, "dmz", "internal") as [(_, dmz), (inner, internal)]:
        await internal.subscribe(topic="orders", group="billing", sink=sink.url)
        await dmz.subscribe(topic="_dlq.bridge.#", group="ops", sink=sink.url)
        await add_bridge(dmz, name="in", topic="orders", target=inner.http_url, max_hops=2)
        await dmz.publish("orders", event("near", meshpath="x"))
        await dmz.publish("orders", event("far", meshpath="x,y"))
        await sink.wait_for(2)
        by_id = {p.id: p for p in sink.pushes}
        assert by_id["near"].attributes["meshpath"] == "x,dmz"
        letter = by_id["far"].attributes
        assert letter["deadlettergroup"] == "bridge.in"
        assert "already passed 2 meshes (x -> y)" in letter["deadletterreason"]


@pytest.mark.parametrize("scheme", ["http", "grpc"])
async def test_unreachable_peer_retries_then_dead_letters_with_the_reason(
    store_urls: Callable[[int], str], sink: RecordingSink, scheme: str
) -> None:
    dead = f"{scheme}://127.0.0.1:{free_port()}"
    async with running(store_urls(0), mesh_name="dmz") as (_, dmz):
        await dmz.subscribe(topic="_dlq.bridge.#", group="ops", sink=sink.url)
        await add_bridge(dmz, name="down", topic="orders.#", target=dead, retry=FAST_RETRY)
        await dmz.publish("orders.created", event("lost-1"))
        (letter,) = await sink.wait_for(1, timeout=30)
        assert letter.id == "lost-1"
        assert letter.attributes["deadletterattempts"] == "3"
        assert letter.attributes["deadlettertopic"] == "orders.created"
        assert f"cannot forward to target mesh {dead}" in letter.attributes["deadletterreason"]
        _, metrics = await dmz.request("GET", "/metrics")
        failures = 'meshtap_delivery_failures_total{group="bridge.down",topic="orders.created"} 3.0'
        assert failures in metrics


@pytest.mark.parametrize("protocol", ["http", "grpc"])
async def test_a_peer_that_refuses_gets_no_retries_the_event_is_dead_lettered(
    sink: RecordingSink, protocol: str
) -> None:
    """An event the peer refuses (here: over its --max-payload-bytes) is dead-lettered at once."""
    async with (
        running(mesh_name="internal", max_payload_bytes=4096, grpc=True) as (inner, _),
        running(mesh_name="dmz") as (_, dmz),
    ):
        await dmz.subscribe(topic="_dlq.bridge.#", group="ops", sink=sink.url)
        await add_bridge(
            dmz, name="in", topic="orders", target=target_of(inner, protocol), retry=FAST_RETRY
        )
        await dmz.publish("orders", event("huge", data={"blob": "x" * 10_000}))
        (letter,) = await sink.wait_for(1)
        assert letter.attributes["deadletterattempts"] == "1"
        reason = letter.attributes["deadletterreason"]
        expected = "413" if protocol == "http" else "refused the events"
        assert expected in reason, reason


@pytest.mark.parametrize("protocol", ["http", "grpc"])
async def test_a_batch_too_large_for_the_peer_is_split_not_dead_lettered(
    sink: RecordingSink, protocol: str
) -> None:
    async with (
        running(mesh_name="internal", max_payload_bytes=4096, grpc=True) as (inner, internal),
        running(mesh_name="dmz") as (_, dmz),
    ):
        await internal.subscribe(topic="orders", group="billing", sink=sink.url)
        await dmz.subscribe(topic="_dlq.bridge.#", group="ops", sink=sink.url)
        await add_bridge(dmz, name="in", topic="orders", target=target_of(inner, protocol))
        ids = [f"m-{n}" for n in range(12)]
        # No partition key: keyed events wait for their predecessor, so they would not batch.
        await dmz.publish("orders", *(event(i, data={"pad": "x" * 900}) for i in ids))
        await sink.wait_for(12)
        await asyncio.sleep(0.3)
        assert sorted(sink.ids()) == sorted(ids)  # all forwarded, nothing dead-lettered


async def test_peer_that_recovers_gets_everything_nothing_lost(
    store_urls: Callable[[int], str], sink: RecordingSink
) -> None:
    """The peer mesh is down while events are published, then starts: all arrive, in key order."""
    port = free_port()
    async with running(store_urls(0), mesh_name="dmz") as (_, dmz):
        await add_bridge(
            dmz,
            name="in",
            topic="orders",
            target=f"http://127.0.0.1:{port}",
            retry={"max_attempts": 100, "initial_backoff_ms": 20, "max_backoff_ms": 300},
        )
        ids = [f"e-{n}" for n in range(40)]
        for start in range(0, 40, 10):
            batch = ids[start : start + 10]
            await dmz.publish(
                "orders", *(event(i, partitionkey=f"k{int(i[2:]) % 4}") for i in batch)
            )

        async def failed_a_few_times() -> bool:
            _, metrics = await dmz.request("GET", "/metrics")
            line = 'meshtap_delivery_failures_total{group="bridge.in",topic="orders"} '
            return line in metrics and float(metrics.split(line)[1].split()[0]) >= 3

        await eventually(failed_a_few_times)
        async with running(store_urls(1), mesh_name="internal", http_port=port) as (_, internal):
            await internal.subscribe(topic="orders", group="billing", sink=sink.url)
            await sink.wait_for(40, timeout=30)
        assert sorted(set(sink.ids())) == sorted(ids)
        for key in range(4):
            got = [i for i in sink.ids() if int(i[2:]) % 4 == key]
            assert got == [i for i in ids if int(i[2:]) % 4 == key]
        _, topics = await dmz.request("GET", "/v1/topics")
        assert "_dlq.bridge.in" not in topics["topics"]


async def test_a_deleted_bridge_stops_forwarding(
    store_urls: Callable[[int], str], sink: RecordingSink
) -> None:
    async with running(store_urls(1), mesh_name="internal") as (inner, internal):
        await internal.subscribe(topic="orders", group="billing", sink=sink.url)
        async with running(store_urls(0), mesh_name="dmz") as (_, dmz):
            await add_bridge(dmz, name="in", topic="orders", target=inner.http_url)
            await dmz.publish("orders", event("before"))
            await sink.wait_for(1)
            status, reply = await dmz.request("DELETE", "/v1/bridges/in")
            assert (status, reply) == (200, {"deleted": "in"})
            status, reply = await dmz.request("GET", "/v1/bridges/in")
            assert status == 404
            assert reply["error"] == "bridge_not_found"
            await dmz.publish("orders", event("after-delete"))
            await asyncio.sleep(0.5)
            assert sink.ids() == ["before"]


@pytest.mark.redis
async def test_bridges_are_kept_in_the_store_across_restarts(
    redis_server: Any, sink: RecordingSink
) -> None:
    base = redis_server.url.rpartition("/")[0]
    async with running(f"{base}/1", mesh_name="internal") as (inner, internal):
        await internal.subscribe(topic="orders", group="billing", sink=sink.url)
        async with running(f"{base}/0", mesh_name="dmz") as (_, dmz):
            await add_bridge(dmz, name="in", topic="orders", target=inner.http_url)
        async with running(f"{base}/0", mesh_name="dmz") as (_, dmz):
            status, reply = await dmz.request("GET", "/v1/bridges/in")
            assert status == 200
            assert reply["target"] == inner.http_url
            await dmz.publish("orders", event("after-restart"))
            await sink.wait_for(1)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ([], "must be a JSON object like"),
        ({"target": "http://x:1"}, "'topic' is required"),
        ({"topic": "orders.#"}, "'target' is required"),
        ({"topic": "orders/eu", "target": "http://x:1"}, "orders/eu"),
        ({"topic": "orders", "target": "ftp://x:1"}, "got scheme 'ftp'"),
        ({"topic": "orders", "target": "http://x:1/v1/topics"}, "without a path"),
        ({"topic": "orders", "target": "grpc://x"}, "grpc://HOST:PORT"),
        ({"topic": "orders", "target": "http://169.254.169.254"}, "link-local"),
        ({"topic": "orders", "target": "grpc://169.254.169.254:10205"}, "link-local"),
        ({"topic": "orders", "target": "http://x:1", "name": "a b"}, "'name' must be"),
        ({"topic": "orders", "target": "http://x:1", "max_hops": 0}, "'max_hops' must be"),
        ({"topic": "orders", "target": "http://x:1", "rename": "dmz."}, "'rename' must be"),
        (
            {"topic": "orders", "target": "http://x:1", "rename": {"prefix": "dmz"}},
            "must end with '.'",
        ),
        (
            {"topic": "orders", "target": "http://x:1", "rename": {"prefix": "_x."}},
            "internal topics",
        ),
        (
            {"topic": "orders.#", "target": "http://x:1", "rename": {"strip": "pay."}},
            "must be the start",
        ),
        (
            {"topic": "orders", "target": "http://x:1", "retry": {"max_attempts": 0}},
            "'max_attempts'",
        ),
        (
            {"topic": "orders", "target": "http://x:1", "sink": "http://y"},
            "unknown field(s) 'sink'",
        ),
    ],
)
async def test_bad_bridges_are_refused_with_what_to_do(body: Any, message: str) -> None:
    async with running() as (_, client):
        status, reply = await client.request("POST", "/v1/bridges", json=body)
        assert status == 400, reply
        assert reply["error"] == "invalid_bridge"
        assert message in reply["message"]
        assert (await client.request("GET", "/v1/bridges"))[1]["bridges"] == []


async def test_a_second_bridge_of_the_same_name_conflicts() -> None:
    async with running() as (_, client):
        await add_bridge(client, name="in", topic="orders", target="http://127.0.0.1:9")
        status, reply = await client.request(
            "POST", "/v1/bridges", json={"name": "in", "topic": "x", "target": "http://127.0.0.1:9"}
        )
        assert status == 409
        assert reply["error"] == "bridge_exists"
        assert "DELETE /v1/bridges/in" in reply["message"]


def test_bridge_flag_is_parsed_and_bad_ones_stop_the_cli(
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = config_from_args(
        ["--mesh-name", "dmz", "--bridge", "orders.#=>http://internal:10105;prefix=dmz.;name=in"],
        environ={},
    )
    assert config.mesh_name == "dmz"
    assert config.bridges == ("orders.#=>http://internal:10105;prefix=dmz.;name=in",)
    from_env = config_from_args([], environ={"MESHTAP_BRIDGES": "a=>http://x:1,b.#=>grpc://y:2"})
    assert from_env.bridges == ("a=>http://x:1", "b.#=>grpc://y:2")
    for bad, message in [
        (["--bridge", "orders.#->http://x:1"], "PATTERN=>TARGET"),
        (["--bridge", "orders=>http://x:1;colour=red"], "unknown --bridge option 'colour'"),
        (["--bridge", "orders=>http://x:1;max_hops=many"], "must be a whole number"),
        (["--mesh-name", "a,b"], "mesh name 'a,b'"),
    ]:
        with pytest.raises(SystemExit):
            config_from_args(bad, environ={})
        assert message in capsys.readouterr().err


async def test_bridge_flag_forwards_from_a_runtime_process(sink: RecordingSink) -> None:
    async with running(mesh_name="internal") as (inner, internal):
        await internal.subscribe(topic="dmz.#", group="billing", sink=sink.url)
        process = await RuntimeProcess(
            ["--mesh-name", "dmz", "--bridge", f"orders.#=>{inner.http_url};prefix=dmz.;name=in"]
        ).start()
        try:
            async with internal.session.post(
                process.url + "/v1/topics/orders.created/events",
                json=event("flag-1"),
                headers={"content-type": "application/cloudevents+json"},
            ) as response:
                assert response.status == 200
            (push,) = await sink.wait_for(1)
            assert push.attributes["meshpath"] == "dmz"
            async with internal.session.get(process.url + "/v1/bridges/in") as response:
                assert (await response.json())["rename"] == {"strip": "", "prefix": "dmz."}
        finally:
            process.kill()


async def test_bridge_deliveries_are_captured_in_the_events_trace(sink: RecordingSink) -> None:
    """Capture sees a bridge push as a delivery attempt of group bridge.NAME to the target, and
    the forwarded event keeps its trace context, so one trace spans both meshes."""
    dmz_capture, internal_capture = ListCapture(), ListCapture()
    async with (
        running(capture=internal_capture, mesh_name="internal") as (inner, internal),
        running(capture=dmz_capture, mesh_name="dmz") as (_, dmz),
    ):
        await internal.subscribe(topic="orders", group="billing", sink=sink.url)
        await add_bridge(dmz, name="in", topic="orders", target=inner.http_url)
        await dmz.publish("orders", event("t-1"))
        await sink.wait_for(1)
        await eventually(lambda: _async(len(internal_capture.deliveries) >= 1))
        (published,) = dmz_capture.published
        (attempt,) = [d for d in dmz_capture.deliveries if d.event_id == "t-1"]
        assert (attempt.group, attempt.subscriber, attempt.outcome) == (
            "bridge.in",
            inner.http_url,
            "acked",
        )
        trace_id = str(published.event.attributes["traceparent"]).split("-")[1]
        assert attempt.trace_id == trace_id
        (arrived,) = internal_capture.published
        assert arrived.event.attributes["traceparent"] == published.event.attributes["traceparent"]
        assert arrived.event.attributes["meshpath"] == "dmz"
        assert internal_capture.deliveries[0].trace_id == trace_id


async def _async(value: bool) -> bool:
    return value
