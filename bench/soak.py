"""Soak: mixed traffic for N minutes with faults injected every few minutes, then the books.

    .venv/bin/python bench/soak.py [--minutes 30] [--fault-every 180] [--rate 200]

Two runtimes (`python -m runtime`) share one Redis (the mesh) and capture into one ClickHouse
server; one webhook subscriber group (clustering) and one broadcast subscriber receive
everything. Producers send a mix of single publishes, CloudEvents batches and EventMesh-path
publishes to both runtimes at `--rate` events/s. Every `--fault-every` seconds the next fault
of the cycle is injected:

1. Redis SIGKILLed, restarted 5 s later (its AOF is fsynced on every write)
2. ClickHouse stopped for 20 s, then started (capture spools meanwhile)
3. one runtime SIGKILLed and restarted 5 s later (its pending events are reclaimed)

Printed every 10 s: publish and delivery throughput, RSS of each runtime (flat = no leak). At
the end: accepted events, delivered (unique), lost, duplicates (at-least-once; all share an id),
publishes refused during faults (and whether such a refused event was stored anyway: a timeout
has an unknown outcome), and the events ClickHouse captured. The baseline is the throughput of
the first, fault-free interval of the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import platform
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from aiohttp import web

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.meshes import RuntimeProcess  # noqa: E402
from tests.servers import ClickHouseServer, RedisServer  # noqa: E402
from tests.sinks import RecordingSink  # noqa: E402
from tracing.clickhouse import ClickHouse, Purpose, migrate  # noqa: E402

TOPIC = "soak.orders"


@dataclass
class Books:
    accepted: set[str] = field(default_factory=set)
    refused: set[str] = field(default_factory=set)
    delivered: Counter[str] = field(default_factory=Counter)
    broadcast: Counter[str] = field(default_factory=Counter)
    published_total: int = 0


@dataclass
class Subscriber(RecordingSink):
    """Answers 204 and only counts deliveries per event id (a soak keeps no bodies)."""

    counts: Counter[str] = field(default_factory=Counter)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        await request.read()
        event_id = request.headers.get("ce-id")
        if event_id is None:
            return web.Response(status=400)
        self.counts[event_id] += 1
        return web.Response(status=204)


def rss_mb(runtime: RuntimeProcess) -> float:
    if runtime.process is None or runtime.process.poll() is not None:
        return float("nan")
    try:
        with open(f"/proc/{runtime.process.pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def _event(event_id: str) -> dict[str, object]:
    return {
        "specversion": "1.0",
        "id": event_id,
        "source": "/soak",
        "type": "soak.order",
        "partitionkey": f"k{hash(event_id) % 16}",
        "datacontenttype": "application/json",
        "data": {"id": event_id, "pad": "x" * 200},
    }


async def produce(
    session: aiohttp.ClientSession,
    urls: list[str],
    books: Books,
    rate: int,
    stop: asyncio.Event,
) -> None:
    """Mixed traffic at about `rate` events/s: singles, batches of 20, EventMesh paths."""
    ids = (f"e{n}" for n in itertools.count())
    targets = itertools.cycle(urls)
    kinds = itertools.cycle(["single", "batch", "eventmesh", "single"])
    started = time.monotonic()
    while not stop.is_set():
        kind, url = next(kinds), next(targets)
        batch = [next(ids) for _ in range(20 if kind == "batch" else 1)]
        try:
            if kind == "batch":
                body = json.dumps([_event(i) for i in batch])
                headers = {"content-type": "application/cloudevents-batch+json"}
                path = f"/v1/topics/{TOPIC}/events"
            elif kind == "single":
                body = json.dumps(_event(batch[0]))
                headers = {"content-type": "application/cloudevents+json"}
                path = f"/v1/topics/{TOPIC}/events"
            else:
                body = json.dumps({"id": batch[0]})
                headers = {"content-type": "application/json", "uniqueid": batch[0]}
                path = f"/eventmesh/publish/{TOPIC}"
            async with session.post(
                url + path, data=body, headers=headers, timeout=aiohttp.ClientTimeout(total=10)
            ) as response:
                reply = await response.json(content_type=None)
                ok = response.status == 200 and reply.get("retCode", 0) == 0
        except (aiohttp.ClientError, TimeoutError, ValueError):
            ok = False
        (books.accepted if ok else books.refused).update(batch)
        books.published_total += len(batch) if ok else 0
        # pace: `rate` events per second overall
        behind = started + books.published_total / rate - time.monotonic()
        if behind > 0:
            await asyncio.sleep(behind)
        elif not ok:
            await asyncio.sleep(0.05)


async def inject(
    number: int,
    redis: RedisServer,
    clickhouse: ClickHouseServer,
    runtimes: list[RuntimeProcess],
    log: list[str],
) -> None:
    kind = number % 3
    at = time.strftime("%H:%M:%S")
    if kind == 0:
        log.append(f"{at} fault: SIGKILL redis-server, restart in 5 s")
        redis.kill()
        await asyncio.sleep(5)
        await asyncio.to_thread(redis.restart)
    elif kind == 1:
        log.append(f"{at} fault: stop clickhouse-server for 20 s")
        await asyncio.to_thread(clickhouse.stop)
        await asyncio.sleep(20)
        await asyncio.to_thread(clickhouse.start)
    else:
        victim = runtimes[number // 3 % len(runtimes)]
        log.append(f"{at} fault: SIGKILL runtime on port {victim.port}, restart in 5 s")
        victim.kill()
        await asyncio.sleep(5)
        await victim.start(timeout=60)
    log.append(f"{time.strftime('%H:%M:%S')} recovered")
    print(log[-2], "...", log[-1], flush=True)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--fault-every", type=float, default=180.0, metavar="SECONDS")
    parser.add_argument("--rate", type=int, default=200, help="events per second offered")
    args = parser.parse_args()
    print(
        f"soak: {args.minutes:g} min at {args.rate} ev/s, a fault every {args.fault_every:g} s "
        f"({platform.node()}, {os.cpu_count()} CPUs, Python {platform.python_version()})",
        flush=True,
    )
    books = Books()
    with tempfile.TemporaryDirectory(prefix="meshtap-soak-") as tmp:
        redis = RedisServer(Path(tmp) / "redis").start()
        clickhouse = ClickHouseServer(Path(tmp) / "clickhouse").start()
        with ClickHouse.open(clickhouse.url) as client:
            migrate(client)
        runtimes = [
            RuntimeProcess(
                [
                    "--store",
                    redis.url,
                    "--capture",
                    clickhouse.url,
                    "--capture-spool-dir",
                    str(Path(tmp) / f"spool-{n}"),
                    "--claim-idle-ms",
                    "5000",
                    "--log-level",
                    "ERROR",
                    "--instance",
                    f"soak-{n}",
                ]
            )
            for n in range(2)
        ]
        clustering = Subscriber(counts=books.delivered)
        broadcast = Subscriber(counts=books.broadcast)
        await clustering.start()
        await broadcast.start()
        faults: list[str] = []
        try:
            for runtime in runtimes:
                await runtime.start(timeout=60)
            async with aiohttp.ClientSession() as session:
                for group, sub, mode in (
                    ("soak", clustering, "clustering"),
                    ("soak-all", broadcast, "broadcast"),
                ):
                    async with session.post(
                        runtimes[0].url + "/v1/subscriptions",
                        json={
                            "topic": "soak.#",
                            "group": group,
                            "mode": mode,
                            "sink": f"http://127.0.0.1:{sub.port}/events",
                            "retry": {"max_attempts": 50, "max_backoff_ms": 2000},
                        },
                    ) as response:
                        assert response.status == 201, await response.text()
                stop = asyncio.Event()
                producer = asyncio.create_task(
                    produce(session, [r.url for r in runtimes], books, args.rate, stop)
                )
                await report(args, books, runtimes, redis, clickhouse, faults)
                stop.set()
                await producer
                await drain(books)
            captured = count_captured(clickhouse, books)
        finally:
            for runtime in runtimes:
                runtime.kill()
            await clustering.stop()
            await broadcast.stop()
            redis.close()
            clickhouse.close()
        summary(books, captured, faults)


async def report(
    args: argparse.Namespace,
    books: Books,
    runtimes: list[RuntimeProcess],
    redis: RedisServer,
    clickhouse: ClickHouseServer,
    faults: list[str],
) -> None:
    started = time.monotonic()
    end = started + args.minutes * 60
    next_fault = started + args.fault_every
    fault_number = 0
    fault_task: asyncio.Task[None] | None = None
    last_pub, last_del, last_t = 0, 0, started
    baseline: float | None = None
    print(f"{'t(s)':>6} {'publish ev/s':>13} {'deliver ev/s':>13} {'RSS MB':>16}  note", flush=True)
    while time.monotonic() < end:
        await asyncio.sleep(10)
        now = time.monotonic()
        pub, dele = books.published_total, sum(books.delivered.values())
        pub_rate = (pub - last_pub) / (now - last_t)
        del_rate = (dele - last_del) / (now - last_t)
        if baseline is None:
            baseline = del_rate
        rss = " ".join(f"{rss_mb(r):7.1f}" for r in runtimes)
        note = "fault in progress" if fault_task is not None and not fault_task.done() else ""
        print(
            f"{now - started:6.0f} {pub_rate:13.0f} {del_rate:13.0f} {rss:>16}  {note}",
            flush=True,
        )
        last_pub, last_del, last_t = pub, dele, now
        if now >= next_fault and (fault_task is None or fault_task.done()):
            fault_task = asyncio.create_task(
                inject(fault_number, redis, clickhouse, runtimes, faults)
            )
            fault_number += 1
            next_fault = now + args.fault_every
    if fault_task is not None:
        await fault_task
    print(f"baseline (first, fault-free 10 s): {baseline or 0:.0f} deliveries/s", flush=True)


async def drain(books: Books, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if books.accepted <= set(books.delivered) and books.accepted <= set(books.broadcast):
            break
        await asyncio.sleep(1)
    await asyncio.sleep(3)  # late duplicates, if any


def count_captured(clickhouse: ClickHouseServer, books: Books) -> int:
    deadline = time.monotonic() + 120
    found = 0
    while time.monotonic() < deadline:
        with ClickHouse.open(clickhouse.url) as client:
            ((found,),) = client.execute(
                "SELECT uniqExact(event_id) FROM meshtap.events", purpose=Purpose.QUERY
            )
        if found >= len(books.accepted):
            break
        time.sleep(2)
    return int(found)


def summary(books: Books, captured: int, faults: list[str]) -> None:
    accepted = books.accepted
    for name, counts in (("clustering", books.delivered), ("broadcast", books.broadcast)):
        delivered = set(counts)
        lost = accepted - delivered
        duplicates = sum(counts.values()) - len(delivered)
        refused_stored = len(books.refused & delivered)
        print(
            f"{name:>10}: accepted {len(accepted)}  delivered {len(delivered & accepted)}  "
            f"lost {len(lost)}  duplicates {duplicates} (max per id "
            f"{max(counts.values(), default=0)})  refused {len(books.refused)} "
            f"(of which stored anyway: {refused_stored})"
        )
        if lost:
            print(f"            lost ids (first 10): {sorted(lost)[:10]}")
    print(f"   capture: {captured} distinct events in ClickHouse for {len(accepted)} accepted")
    print("faults:", *faults, sep="\n  ")


if __name__ == "__main__":
    asyncio.run(main())
