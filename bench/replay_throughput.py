"""Replay throughput, timing fidelity and per-key order, each beside a baseline in the same run.

    .venv/bin/python bench/replay_throughput.py [--events 100000] [--quick]

1. As fast as possible: 100,000 recorded events (1,000 partition keys, ~300-byte JSON data)
   read from clickhouse-server and replayed into a Redis-backed runtime (its HTTP API, batch
   mode) -- streamed (``run_replay`` sends while it reads) and with the dry run first (as
   ``manage.py replay`` does) -- versus the raw baseline: read the same rows through the same
   read side, then XADD them to a Redis stream with redis-py, pipelined 500 at a time.
   Aim: >= 20,000 events/s.
2. Timing fidelity: |actual - scheduled| send time, p50/p99, for a recorded window with
   irregular gaps replayed at 1x (~200 events/s over 10 s) and at 10x. Aim: p99 <= 5 ms.
3. Order: the replayed stream in Redis read back, and every partition key's events checked to
   be in their original order. Aim: zero violations.

Servers are started fresh on free loopback ports (tests/servers.py). Figures are printed, not
asserted: shared machines are noisy; compare the columns of one run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import signal
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from replay import HttpTarget, ReplaySpec, dry_run, run_replay  # noqa: E402
from runtime import CloudEvent, PublishRecord  # noqa: E402
from tests.meshes import RuntimeProcess  # noqa: E402
from tests.servers import ClickHouseServer, RedisServer  # noqa: E402
from tracing import EventWindow, events_in_window  # noqa: E402
from tracing._rows import EVENTS, event_row  # noqa: E402
from tracing.clickhouse import ClickHouse, migrate  # noqa: E402

KEYS = 1_000
MS = 1_000_000


def record(client: ClickHouse, topic: str, times_ns: list[int]) -> None:
    """Rows as the recorder writes them, straight into `events` (fast to set up)."""
    rows = []
    for i, published_ns in enumerate(times_ns):
        event = CloudEvent(
            {
                "specversion": "1.0",
                "id": f"e-{i:07d}",
                "source": "/bench/orders",
                "type": "order.created",
                "time": "2026-11-26T12:00:00.000000Z",
                "datacontenttype": "application/json",
                "partitionkey": f"customer-{i % KEYS}",
                "traceparent": f"00-{uuid.uuid4().hex}-{uuid.uuid4().hex[:16]}-01",
                "tenant": "acme",
            },
            b'{"order": %d, "items": [{"sku": "A-1", "qty": 2}], "note": "%s"}' % (i, b"x" * 220),
        )
        record = PublishRecord(
            event, topic, f"{published_ns // MS}-{i}", published_ns, "", "http", ""
        )
        rows.append(event_row(record))
    columns = list(EVENTS.columns)
    for offset in range(0, len(rows), 20_000):
        chunk = rows[offset : offset + 20_000]
        client.insert("events", columns, [list(c) for c in zip(*chunk, strict=True)])


def window_of(topic: str, times_ns: list[int], **kwargs: object) -> ReplaySpec:
    since = datetime.fromtimestamp(times_ns[0] // 1_000_000_000, UTC)
    until = datetime.fromtimestamp(times_ns[-1] // 1_000_000_000 + 2, UTC)
    return ReplaySpec((topic,), since, until, **kwargs)  # type: ignore[arg-type]


def baseline(client: ClickHouse, spec: ReplaySpec, redis_url: str) -> tuple[int, float]:
    """Read the same rows through the read side, XADD them raw (pipelined, 500 per round trip)."""
    r = redis.Redis.from_url(redis_url)
    started = time.perf_counter()
    count = 0
    pipe = r.pipeline(transaction=False)
    for row in events_in_window(client, EventWindow(spec.topics, spec.since, spec.until)):
        pipe.xadd("bench:raw", {"a": json.dumps(row.attributes()), "d": row.data})
        count += 1
        if count % 500 == 0:
            pipe.execute()
    pipe.execute()
    elapsed = time.perf_counter() - started
    r.close()
    return count, elapsed


def order_violations(redis_url: str, topic: str) -> tuple[int, int]:
    r = redis.Redis.from_url(redis_url)
    last: dict[str, str] = {}
    violations = seen = 0
    start = "-"
    while True:
        entries = r.xrange(f"meshtap:t:{topic}", start, "+", count=10_000)
        if start != "-":
            entries = entries[1:]
        if not entries:
            break
        for _, fields in entries:
            attributes = json.loads(fields[b"a"])
            key, original = attributes["partitionkey"], attributes["replayoriginalid"]
            if original <= last.get(key, ""):
                violations += 1
            last[key] = original
            seen += 1
        start = entries[-1][0].decode()
    r.close()
    return seen, violations


LANES = {"lanes": 16, "max_batch": 500}


async def replay(  # type: ignore[no-untyped-def]
    client: ClickHouse, spec: ReplaySpec, url: str, replay_id: str, *, plan: bool = False
):
    """``plan``: the dry run first (as the CLI does), then send the kept rows; else
    ``run_replay`` on its own, which streams (sends while it reads) when a count settles the
    guard."""
    target = HttpTarget(url)
    started = time.perf_counter()
    selection = await asyncio.to_thread(dry_run, client, spec) if plan else None
    read_s = time.perf_counter() - started
    try:
        result = await run_replay(
            client, spec, target, replay_id=replay_id, selection=selection, tick_s=1.0, **LANES
        )
    finally:
        await target.close()
    return result, read_s, time.perf_counter() - started


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--lanes", type=int, default=LANES["lanes"], help="pacing lanes")
    parser.add_argument("--batch", type=int, default=LANES["max_batch"], help="events/request")
    args = parser.parse_args()
    LANES.update(lanes=args.lanes, max_batch=args.batch)
    total = 20_000 if args.quick else args.events
    rng = random.Random(1)
    base = (time.time_ns() - 3600 * 1_000_000_000) // 1_000_000_000 * 1_000_000_000
    dense = [base + i * 10_000 for i in range(total)]  # 100,000 events/s recorded
    one_x: list[int] = []
    t = base + 600 * 1_000_000_000
    for _ in range(400 if args.quick else 2_000):
        t += int(rng.expovariate(200) * 1e9)  # ~200 events/s, irregular gaps
        one_x.append(t)
    ten_x: list[int] = []
    t = base + 1200 * 1_000_000_000
    for _ in range(2_000 if args.quick else 10_000):
        t += int(rng.expovariate(200) * 1e9)
        ten_x.append(t)

    with tempfile.TemporaryDirectory() as tmp:
        server = ClickHouseServer(Path(tmp) / "ch").start()
        redis_server = RedisServer(Path(tmp) / "redis").start()
        runtime = RuntimeProcess(["--store", redis_server.url, "--log-level", "WARNING"])
        client = ClickHouse.open(server.url)
        try:
            migrate(client)
            record(client, "orders.created", dense)
            record(client, "timing.one", one_x)
            record(client, "timing.ten", ten_x)
            await runtime.start()
            # Timing first, on a runtime and Redis not yet busy with the 200,000 events below.
            one, _, _ = await replay(
                client, window_of("timing.one", one_x, speed="1x"), runtime.url, "bench-1x"
            )
            ten, _, _ = await replay(
                client, window_of("timing.ten", ten_x, speed="10x"), runtime.url, "bench-10x"
            )
            fast_spec = window_of("orders.created", dense, speed="max", max_events=total)
            raw_count, raw_s = await asyncio.to_thread(
                baseline, client, fast_spec, redis_server.url
            )
            fast, _, fast_s = await replay(client, fast_spec, runtime.url, "bench-fast")
            seen, violations = order_violations(redis_server.url, "replay.orders.created")
            planned_spec = window_of(
                "orders.created", dense, speed="max", max_events=total, to_prefix="sandbox."
            )
            planned, read_s, planned_s = await replay(
                client, planned_spec, runtime.url, "bench-planned", plan=True
            )
        finally:
            client.close()
            runtime.signal(signal.SIGTERM)
            await runtime.wait(60)
            server.close()
            redis_server.close()

    print()
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}, clickhouse-server 18.16 (Debian), redis-server with "
        "appendfsync always, runtime in its own process"
    )
    print(f"1. as fast as possible, {total:,} events, {KEYS:,} keys:")
    print(
        f"  {'Meshtap replay (streamed)':<40}{fast.sent / fast_s:>10,.0f} events/s"
        f"   ({fast.status}; read while sending)"
    )
    print(
        f"  {'Meshtap replay, dry run first (CLI)':<40}{planned.sent / planned_s:>10,.0f} events/s"
        f"   (read {read_s:.2f} s, then send {planned.duration_s:.2f} s = "
        f"{planned.rate:,.0f} events/s, {planned.status})"
    )
    print(
        f"  {'raw: read side + XADD pipelined':<40}{raw_count / raw_s:>10,.0f} events/s"
        f"   replay = {raw_s / fast_s:.0%} of raw"
    )
    print("2. timing fidelity |actual - scheduled|:")
    for name, result in (("1x", one), ("10x", ten)):
        print(
            f"  {name:<6}{result.sent:>7,} events in {result.duration_s:6.2f} s   "
            f"p50 {result.timing_p50_ms:.2f} ms  p99 {result.timing_p99_ms:.2f} ms"
        )
    print(f"3. order: {seen:,} replayed events read back, {violations} per-key order violations")


if __name__ == "__main__":
    asyncio.run(main())
