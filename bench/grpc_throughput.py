"""gRPC end to end on Redis or NATS: batch publish -> stream delivery, beside the raw client.

    .venv/bin/python bench/grpc_throughput.py [--broker redis|nats] [--events 30000] [--quick]

What it measures (one consumer group, one `subscribeStream` subscriber, Redis or NATS store):

* acked stream: producers call `PublisherService.batchPublish` (100 events per call, 4 calls
  in flight); the subscriber uses the SDK (`AsyncMeshClient.subscribe`, automatic explicit acks)
  - events/s from the first publish to the last event received, and p50/p99 latency from
  publish to receipt.
* paced: 5,000 events/s in batches of 100 to an acked stream - latency when the mesh keeps up
  (in the two scenarios above producers outrun delivery, so their latency is mostly queueing).
* unacked stream: the same with an EventMesh-style stream (no `ackmode`: an event counts as
  delivered once written to the stream), read with raw grpc.

Baseline, same broker, same machine, same run: its raw client doing the store work underneath,
no gRPC, no CloudEvents -- redis-py (pipelined XADD x100, XREADGROUP, XACK), or with
`--broker nats` nats-py JetStream (async publish x100, pull fetch, ack).

The runtime runs as its own process (`python -m runtime --store redis://... --grpc-port N`);
producers and the subscriber run in this process; the broker is a fresh `redis-server` or
`nats-server -js` on a free port.
Figures are printed, not asserted: shared machines are noisy, compare the columns of one run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.runtime_throughput import Result, raw_nats, raw_redis, row  # noqa: E402
from runtime._grpc_codec import string_attribute  # noqa: E402
from runtime.client import AsyncMeshClient, new_event  # noqa: E402
from tests.grpc_stubs import Api, subscription  # noqa: E402
from tests.meshes import RuntimeProcess, free_port  # noqa: E402
from tests.servers import NatsServer, RedisServer, Server  # noqa: E402

BATCH = 100
IN_FLIGHT = 4


async def publish_all(client: AsyncMeshClient, topic: str, total: int) -> None:
    """`total` events in batches of BATCH, IN_FLIGHT batch calls at a time."""
    queue: asyncio.Queue[int] = asyncio.Queue()
    for offset in range(0, total, BATCH):
        queue.put_nowait(offset)

    async def producer() -> None:
        while not queue.empty():
            offset = queue.get_nowait()
            count = min(BATCH, total - offset)
            sent = str(time.time_ns())
            await client.publish_batch(
                topic,
                [new_event("bench", {"i": offset + i}, benchsent=sent) for i in range(count)],
            )

    await asyncio.gather(*(producer() for _ in range(IN_FLIGHT)))


async def bench_paced(target: str, topic: str, group: str, rate: int, seconds: float) -> Result:
    """Latency when the mesh keeps up: batches of 100 at a fixed rate, acked stream."""
    total = int(rate * seconds) // BATCH * BATCH
    async with AsyncMeshClient(target) as consumer, AsyncMeshClient(target) as producer:
        sub = await consumer.subscribe(f"{topic}.#", group=group)
        await warm(producer, sub, f"{topic}.warm")
        latencies: list[float] = []

        async def receive() -> None:
            for _ in range(total):
                delivery = await sub.next(60)
                latencies.append(
                    (time.time_ns() - int(delivery.event.attributes["benchsent"])) / 1e6
                )

        receiving = asyncio.create_task(receive())
        started = time.perf_counter()
        for n in range(total // BATCH):
            await asyncio.sleep(max(0.0, started + n * BATCH / rate - time.perf_counter()))
            sent = str(time.time_ns())
            await producer.publish_batch(
                f"{topic}.run", [new_event("bench", {"i": i}, benchsent=sent) for i in range(BATCH)]
            )
        await receiving
        elapsed = time.perf_counter() - started
        await sub.close()
    return Result(f"paced {rate:,}/s -> acked stream", total, elapsed, latencies)


async def bench_acked(target: str, topic: str, group: str, total: int) -> Result:
    async with AsyncMeshClient(target) as consumer, AsyncMeshClient(target) as producer:
        sub = await consumer.subscribe(f"{topic}.#", group=group)
        await warm(producer, sub, f"{topic}.warm")
        latencies: list[float] = []

        async def receive() -> None:
            for _ in range(total):
                delivery = await sub.next(60)
                latencies.append(
                    (time.time_ns() - int(delivery.event.attributes["benchsent"])) / 1e6
                )
            await delivery.ack()

        started = time.perf_counter()
        receiving = asyncio.create_task(receive())
        await publish_all(producer, f"{topic}.run", total)
        await receiving
        elapsed = time.perf_counter() - started
        await sub.close()
    return Result("gRPC batch publish -> acked stream", total, elapsed, latencies)


async def warm(producer: AsyncMeshClient, sub: object, topic: str) -> None:
    await producer.publish_batch(topic, [new_event("warm") for _ in range(50)])
    for _ in range(50):
        delivery = await sub.next(30)  # type: ignore[attr-defined]
    await delivery.ack()


async def bench_unacked(target: str, topic: str, group: str, total: int) -> Result:
    api = Api(target)
    stream = api.stream()
    await stream.open(subscription(group, f"{topic}.#"))
    async with AsyncMeshClient(target) as producer:
        await producer.publish_batch(f"{topic}.warm", [new_event("warm") for _ in range(50)])
        await stream.events(50, timeout=30)
        latencies: list[float] = []

        async def receive() -> None:
            for _ in range(total):
                message = await stream.next_message(60)
                sent = string_attribute(message, "benchsent")
                latencies.append((time.time_ns() - int(sent)) / 1e6)

        started = time.perf_counter()
        receiving = asyncio.create_task(receive())
        await publish_all(producer, f"{topic}.run", total)
        await receiving
        elapsed = time.perf_counter() - started
    await stream.close()
    await api.close()
    return Result("gRPC batch publish -> unacked stream", total, elapsed, latencies)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=30_000)
    parser.add_argument("--quick", action="store_true", help="small run to check the script")
    parser.add_argument("--broker", choices=["redis", "nats"], default="redis")
    args = parser.parse_args()
    total = 2_000 if args.quick else args.events
    nats_broker = args.broker == "nats"

    with tempfile.TemporaryDirectory() as tmp:
        broker: Server = (NatsServer if nats_broker else RedisServer)(Path(tmp)).start()
        port = free_port()
        runtime = RuntimeProcess(
            ["--store", broker.url, "--log-level", "WARNING", "--grpc-port", str(port)]
        )
        try:
            await runtime.start()
            target = f"127.0.0.1:{port}"
            if nats_broker:
                raw = await raw_nats(broker.url, total, BATCH, "raw JetStream publish x100 async")
            else:
                raw = await raw_redis(broker.url, total, BATCH, "raw XADD x100 pipelined")
            acked = await bench_acked(target, "bench.acked", "acked", total)
            unacked = await bench_unacked(target, "bench.unacked", "unacked", total)
            paced = await bench_paced(target, "bench.paced", "paced", 5_000, 2 if args.quick else 5)
        finally:
            runtime.kill()
            broker.stop()

    print(
        f"\n{platform.machine()}, Python {platform.python_version()}, {args.broker}, "
        f"{total:,} events, "
        f"batches of {BATCH}, {IN_FLIGHT} batch calls in flight"
    )
    print(f"{'scenario':<40}{'events/s':>12}{'raw/s':>12}{'p50 ms':>10}{'p99 ms':>10}")
    for result in (acked, unacked, paced):
        print(row(result, raw).replace(f"{result.name:<34}", f"{result.name:<40}"))
    print(
        f"{'baseline: ' + raw.name:<40}{raw.rate:>12,.0f}{'':>12}"
        f"{raw.pct(0.5):>10.1f}{raw.pct(0.99):>10.1f}"
    )
    print(json.dumps({r.name: round(r.rate) for r in (acked, unacked, raw)}))


if __name__ == "__main__":
    asyncio.run(main())
