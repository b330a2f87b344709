"""Runtime throughput and latency end to end on a broker, beside its raw client in the same run.

    .venv/bin/python bench/runtime_throughput.py [--broker redis|nats] [--events 20000] [--quick]

What it measures (publish -> delivery, one consumer group, one webhook subscriber):

* batch publish: events/s end to end when producers send batches of 100 (CloudEvents batch mode)
* single publish: publishes/s with one event per HTTP request (16 concurrent producers)
* latency at a fixed 1,000 events/s: p50/p99 from publish to the subscriber receiving it

Baseline, same broker, same machine, same run: its raw client doing the work the runtime does
underneath with no HTTP, no CloudEvents and no webhook push -- redis-py XADD, XREADGROUP, XACK on
Redis; nats-py JetStream publish, pull-consumer fetch and ack on NATS (`--broker nats`).

The runtime runs as its own process (`python -m runtime --store redis://...` or `nats://...`);
the producers and the subscriber run in this process; the broker is a fresh `redis-server` or
`nats-server -js` on a free port. Figures are printed, not asserted: shared machines are noisy,
compare the columns of one run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import nats
import redis.asyncio as aioredis
from aiohttp import web
from nats.js.api import AckPolicy, ConsumerConfig

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.meshes import RuntimeProcess  # noqa: E402
from tests.servers import NatsServer, RedisServer, Server  # noqa: E402

BATCH = 100


@dataclass
class Result:
    name: str
    events: int
    seconds: float
    latencies_ms: list[float]

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds else 0.0

    def pct(self, q: float) -> float:
        if not self.latencies_ms:
            return float("nan")
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class Subscriber:
    """A webhook subscriber that records arrival latency from the `benchsent` extension."""

    def __init__(self) -> None:
        self.latencies_ms: list[float] = []
        self.received = 0
        self.done = asyncio.Event()
        self.expected = 0
        self.last_at = 0.0
        self.port = 0
        self._runner: web.AppRunner | None = None

    def expect(self, count: int) -> None:
        self.latencies_ms, self.received, self.expected = [], 0, count
        self.done.clear()

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        now = time.time_ns()
        if request.content_type == "application/cloudevents-batch+json":
            sent = [int(e["benchsent"]) for e in json.loads(body)]
        else:
            sent = [int(request.headers["ce-benchsent"])]
        self.latencies_ms += [(now - s) / 1e6 for s in sent]
        self.received += len(sent)
        self.last_at = time.perf_counter()
        if self.received >= self.expected:
            self.done.set()
        return web.Response(status=204)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/events", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, backlog=1024)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def stop(self) -> None:
        if self._runner:
            await self._runner.cleanup()


async def wait_delivered(sub: Subscriber, url: str, timeout: float) -> None:
    """Wait for the subscriber to have everything; on timeout show what the runtime counted."""
    try:
        await asyncio.wait_for(sub.done.wait(), timeout)
    except TimeoutError:
        async with aiohttp.ClientSession() as session, session.get(f"{url}/metrics") as r:
            counters = [
                x
                for x in (await r.text()).splitlines()
                if x.startswith("meshtap_") and "_total" in x
            ]
        raise SystemExit(
            f"only {sub.received} of {sub.expected} events arrived within {timeout}s; runtime "
            "counters:\n" + "\n".join(counters)
        ) from None


def _event(i: int) -> dict[str, object]:
    return {
        "specversion": "1.0",
        "id": f"e-{i}",
        "source": "/bench",
        "type": "bench.event",
        "benchsent": str(time.time_ns()),
        "datacontenttype": "application/json",
        "data": {"i": i, "payload": "x" * 64},
    }


async def warm_up(url: str, sub: Subscriber, topic: str) -> None:
    """Publish to `topic` once before measuring: the group joins it and connections open."""
    await bench_batch(url, sub, 200, topic, "warm-up")


async def bench_batch(
    url: str, sub: Subscriber, total: int, topic: str, name: str = "batch publish (100/request)"
) -> Result:
    sub.expect(total)
    headers = {"content-type": "application/cloudevents-batch+json"}
    started = time.perf_counter()
    async with aiohttp.ClientSession() as session:

        async def producer(first_batch: int) -> None:
            for offset in range(first_batch * BATCH, total, 4 * BATCH):
                body = json.dumps([_event(i) for i in range(offset, min(offset + BATCH, total))])
                async with session.post(
                    f"{url}/v1/topics/{topic}/events", data=body, headers=headers
                ) as r:
                    assert r.status == 200, await r.text()

        await asyncio.gather(*(producer(k) for k in range(4)))
        await wait_delivered(sub, url, 300)
    return Result(name, total, sub.last_at - started, sub.latencies_ms)


async def bench_single(
    url: str, sub: Subscriber, total: int, topic: str, name: str = "single-event publish"
) -> Result:
    sub.expect(total)
    headers = {"content-type": "application/cloudevents+json"}
    started = time.perf_counter()
    async with aiohttp.ClientSession() as session:

        async def producer(first: int) -> None:
            for i in range(first, total, 16):
                async with session.post(
                    f"{url}/v1/topics/{topic}/events", data=json.dumps(_event(i)), headers=headers
                ) as r:
                    assert r.status == 200, await r.text()

        await asyncio.gather(*(producer(k) for k in range(16)))
        published = time.perf_counter() - started
        await wait_delivered(sub, url, 120)
    return Result(name, total, published, sub.latencies_ms)


async def bench_paced(url: str, sub: Subscriber, rate: int, seconds: float, topic: str) -> Result:
    total = int(rate * seconds)
    sub.expect(total)
    headers = {"content-type": "application/cloudevents+json"}
    started = time.perf_counter()
    async with aiohttp.ClientSession() as session:
        in_flight: set[asyncio.Task[None]] = set()

        async def publish(i: int) -> None:
            async with session.post(
                f"{url}/v1/topics/{topic}/events", data=json.dumps(_event(i)), headers=headers
            ) as r:
                assert r.status == 200, await r.text()

        # Only requests in flight are kept alive, so the load generator's own garbage
        # collection does not show up as mesh latency.
        for i in range(total):
            delay = started + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.create_task(publish(i))
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
        await asyncio.gather(*in_flight)
        await wait_delivered(sub, url, 120)
    return Result(
        f"latency at {rate} events/s", total, time.perf_counter() - started, sub.latencies_ms
    )


# -- baseline: raw redis-py ------------------------------------------------------------------


async def raw_redis(redis_url: str, total: int, batch: int, name: str) -> Result:
    client = aioredis.Redis.from_url(redis_url)
    stream = f"raw:{name}:{time.time_ns()}"
    await client.xgroup_create(stream, "g", id="$", mkstream=True)
    latencies: list[float] = []
    received = 0
    done = asyncio.Event()

    async def consumer() -> None:
        nonlocal received
        while received < total:
            reply = await client.xreadgroup("g", "c", {stream: ">"}, count=256, block=100)
            for _, entries in reply or []:
                ids = []
                for entry_id, fields in entries:
                    latencies.append((time.time_ns() - int(fields[b"t"])) / 1e6)
                    ids.append(entry_id)
                received += len(ids)
                await client.xack(stream, "g", *ids)
        done.set()

    started = time.perf_counter()
    task = asyncio.create_task(consumer())
    payload = json.dumps(_event(0)).encode()
    for offset in range(0, total, batch):
        async with client.pipeline(transaction=False) as pipe:
            for _ in range(min(batch, total - offset)):
                pipe.xadd(stream, {"t": str(time.time_ns()), "a": payload})
            await pipe.execute()
    await done.wait()
    elapsed = time.perf_counter() - started
    await task
    await client.delete(stream)
    await client.aclose()
    return Result(name, total, elapsed, latencies)


# -- baseline: raw nats-py JetStream --------------------------------------------------------


async def raw_nats(nats_url: str, total: int, batch: int, name: str) -> Result:
    """JetStream publish (pipelined by `batch`, or one by one), pull fetch and ack."""
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    stream = f"RAW_{time.time_ns()}"
    subject = f"raw.{stream}"
    await js.add_stream(name=stream, subjects=[subject])
    await js.add_consumer(
        stream,
        ConsumerConfig(durable_name="g", ack_policy=AckPolicy.EXPLICIT, max_ack_pending=100_000),
    )
    pull = await js.pull_subscribe_bind("g", stream)
    latencies: list[float] = []
    done = asyncio.Event()

    async def consumer() -> None:
        while len(latencies) < total:
            try:
                msgs = await pull.fetch(256, timeout=0.5)
            except TimeoutError:
                continue
            now = time.time_ns()
            for msg in msgs:
                latencies.append((now - int((msg.headers or {})["t"])) / 1e6)
                await msg.ack()
        done.set()

    started = time.perf_counter()
    task = asyncio.create_task(consumer())
    payload = json.dumps(_event(0)).encode()
    for offset in range(0, total, batch):
        if batch == 1:
            await js.publish(subject, payload, headers={"t": str(time.time_ns())})
            continue
        acks = [
            await js.publish_async(subject, payload, headers={"t": str(time.time_ns())})
            for _ in range(min(batch, total - offset))
        ]
        await asyncio.gather(*acks)
    await done.wait()
    elapsed = time.perf_counter() - started
    await task
    await js.delete_stream(stream)
    await nc.close()
    return Result(name, total, elapsed, latencies)


def row(result: Result, baseline: Result | None) -> str:
    base = f"{baseline.rate:>12,.0f}" if baseline else f"{'':>12}"
    return (
        f"{result.name:<34}{result.rate:>12,.0f}{base}"
        f"{result.pct(0.5):>10.1f}{result.pct(0.99):>10.1f}"
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--quick", action="store_true", help="small run to check the script")
    parser.add_argument(
        "--only",
        choices=["batch", "single", "latency"],
        action="append",
        help="run only these scenarios (repeatable)",
    )
    parser.add_argument(
        "--broker",
        choices=["redis", "nats"],
        default="redis",
        help="the store the runtime runs on (a fresh server of it is started)",
    )
    args = parser.parse_args()
    total = 2_000 if args.quick else args.events
    nats_broker = args.broker == "nats"
    raw_batch = "raw JetStream publish x100 async" if nats_broker else "raw XADD x100 pipelined"
    raw_single = "raw JetStream publish one by one" if nats_broker else "raw XADD one by one"

    async def baseline(url: str, count: int, batch: int, name: str) -> Result:
        return await (raw_nats if nats_broker else raw_redis)(url, count, batch, name)

    with tempfile.TemporaryDirectory() as tmp:
        server: Server = (NatsServer if nats_broker else RedisServer)(Path(tmp)).start()
        runtime = RuntimeProcess(["--store", server.url, "--log-level", "WARNING"])
        sub = Subscriber()
        try:
            await sub.start()
            await runtime.start()
            sink = f"http://127.0.0.1:{sub.port}/events"
            async with aiohttp.ClientSession() as session:
                for body in (
                    {"topic": "bench.one.#", "group": "per-event", "sink": sink},
                    {
                        "topic": "bench.many.#",
                        "group": "batched",
                        "sink": sink,
                        "batch": {"max_events": 100, "max_wait_ms": 5},
                    },
                ):
                    async with session.post(f"{runtime.url}/v1/subscriptions", json=body) as r:
                        assert r.status == 201, await r.text()
            for topic in (
                "bench.one.batch",
                "bench.many.batch",
                "bench.one.single",
                "bench.one.paced",
            ):
                await warm_up(runtime.url, sub, topic)

            results = []
            only = set(args.only or ["batch", "single", "latency"])
            if "batch" in only:
                raw = await baseline(server.url, total, BATCH, raw_batch)
                results.append(
                    (
                        await bench_batch(
                            runtime.url,
                            sub,
                            total,
                            "bench.one.batch",
                            "batch publish, push per event",
                        ),
                        raw,
                    )
                )
                results.append(
                    (
                        await bench_batch(
                            runtime.url,
                            sub,
                            total,
                            "bench.many.batch",
                            "batch publish, batched push",
                        ),
                        raw,
                    )
                )
            if "single" in only:
                single_total = max(1_000, total // 4)
                raw = await baseline(server.url, single_total, 1, raw_single)
                results.append(
                    (
                        await bench_single(
                            runtime.url,
                            sub,
                            single_total,
                            "bench.one.single",
                            "single publish, push per event",
                        ),
                        raw,
                    )
                )
                results.append(
                    (
                        await bench_single(
                            runtime.url,
                            sub,
                            single_total,
                            "bench.many.single",
                            "single publish, batched push",
                        ),
                        raw,
                    )
                )
            if "latency" in only:
                paced_seconds = 2.0 if args.quick else 10.0
                results.append(
                    (
                        await bench_paced(
                            runtime.url, sub, 1_000, paced_seconds, "bench.one.paced"
                        ),
                        None,
                    )
                )
        finally:
            await sub.stop()
            runtime.signal(__import__("signal").SIGTERM)
            await runtime.wait(30)
            server.close()

    print()
    if nats_broker:
        version = subprocess.run(
            ["nats-server", "--version"], capture_output=True, text=True, check=True
        ).stdout.split()[-1]
        broker = f"nats-server {version} (JetStream, file storage)"
    else:
        version = subprocess.run(
            ["redis-server", "--version"], capture_output=True, text=True, check=True
        ).stdout.split()[2]
        broker = f"redis-server {version} (appendfsync always)"
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}, {broker}"
    )
    print(f"{'scenario':<34}{'events/s':>12}{'raw client':>12}{'p50 ms':>10}{'p99 ms':>10}")
    shown = set()
    for result, baseline in results:
        print(row(result, baseline))
    for _, baseline in results:
        if baseline and baseline.name not in shown:
            shown.add(baseline.name)
            print(row(baseline, None))


if __name__ == "__main__":
    asyncio.run(main())
