"""Capture cost and recorder ingest, each beside a baseline measured in the same run.

    .venv/bin/python bench/capture_throughput.py [--events 200000] [--quick]

1. Recorder ingest: PublishRecords handed to the ClickHouse capture plugin until every row is in
   the `events` table of a ClickHouse server, versus a raw clickhouse-driver columnar insert of
   the same rows into the same table (its materialized view included), in batches of the same
   size (already converted, so the baseline pays nothing but the insert).
   Aim: >= 100,000 events/s and >= 70% of raw. The recorder runs with its writer in a process of
   its own (the default for clickhouse://) and, for comparison, as a thread of the caller's
   process (what chdb:// uses).
2. Runtime throughput with capture on versus off: the same runtime (Redis store, batch publish,
   batched push) with `--capture clickhouse://...` and with `--capture none`; capture on both
   with every runtime span kept and with `--span-sample-ratio 0.1` (events and deliveries are
   always recorded in full; the ratio thins the runtime's own spans, which the runtime makes
   only when capture is on). The configurations run interleaved, `--repeat` times each (5 by
   default). Printed: the median and range of each configuration's rate, the median and range of
   the on/off ratio taken round by round (the runs of one round saw the same neighbours on the
   shared machine), and the CPU time per event of the runtime's process, of the capture's writer
   process and of clickhouse-server during each run (from /proc: where the extra work goes).
   Aim: on >= 90% of off.

Servers are started fresh on free loopback ports (tests/servers.py). Figures are printed, not
asserted: shared machines are noisy; compare the columns of one run.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import redis.asyncio as aioredis
from clickhouse_driver import Client

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import runtime_throughput as rt  # noqa: E402

from runtime import CaptureConfig, CloudEvent, PublishRecord  # noqa: E402
from tests.meshes import RuntimeProcess  # noqa: E402
from tests.servers import ClickHouseServer, RedisServer  # noqa: E402
from tracing import ClickHouseCapture  # noqa: E402
from tracing._rows import EVENTS, event_row  # noqa: E402
from tracing.clickhouse import ClickHouse, migrate  # noqa: E402


def records(count: int) -> list[PublishRecord]:
    now = time.time_ns()
    out = []
    for i in range(count):
        event = CloudEvent(
            {
                "specversion": "1.0",
                "id": uuid.uuid4().hex,
                "source": "/bench/orders",
                "type": "order.created",
                "time": "2026-11-26T12:00:00.000000Z",
                "datacontenttype": "application/json",
                "partitionkey": f"customer-{i % 1000}",
                "traceparent": f"00-{uuid.uuid4().hex}-{uuid.uuid4().hex[:16]}-01",
                "tenant": "acme",
            },
            b'{"order": %d, "items": [{"sku": "A-1", "qty": 2}], "note": "%s"}' % (i, b"x" * 200),
        )
        out.append(
            PublishRecord(
                event,
                "orders.created",
                f"{now // 1_000_000}-{i}",
                now + i,
                "10.0.0.1",
                "http",
                "bench",
            )
        )
    return out


BATCH_ROWS = 20_000
"""Rows per insert, for the recorder (its default) and the raw baseline alike."""


async def recorder_ingest(url: str, spool: str, batch: list[PublishRecord], writer: str) -> float:
    capture = ClickHouseCapture(
        CaptureConfig(
            url=url,
            spool_dir=spool,
            instance="bench",
            options={"writer": writer, "batch_rows": BATCH_ROWS},
        )
    )
    await capture.start()
    started = time.perf_counter()
    for offset in range(0, len(batch), 1000):
        capture.record_publish(batch[offset : offset + 1000])
        await asyncio.sleep(0)  # the runtime's loop keeps turning while the recorder writes
    flushed = await capture.flush(300)
    elapsed = time.perf_counter() - started  # every row inserted (the writer's own figure)
    await capture.close()
    assert flushed, "the recorder did not write its rows within 300 s"
    return elapsed


def raw_insert(server: ClickHouseServer, batch: list[PublishRecord]) -> float:
    rows = [event_row(r) for r in batch]  # tuples in EVENTS.columns order
    columns = list(EVENTS.columns)
    data = [list(column) for column in zip(*rows, strict=True)]
    client = Client("127.0.0.1", port=server.port)
    client.execute("SELECT 1")  # connected, and the driver's column types imported
    started = time.perf_counter()
    for offset in range(0, len(rows), BATCH_ROWS):
        client.execute(
            f"INSERT INTO meshtap.events ({', '.join(columns)}) VALUES",
            [col[offset : offset + BATCH_ROWS] for col in data],
            columnar=True,
        )
    elapsed = time.perf_counter() - started
    client.disconnect()
    return elapsed


def count(server: ClickHouseServer, table: str) -> int:
    client = Client("127.0.0.1", port=server.port)
    try:
        return int(client.execute(f"SELECT count() FROM meshtap.{table}")[0][0])
    finally:
        client.disconnect()


_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU time of a process (all its threads) so far; 0 once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, TypeError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICK


def children(pid: int) -> list[int]:
    """The child processes of `pid` (the capture's writer process, for the runtime)."""
    found = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                found += [int(c) for c in f.read().split()]
    except OSError:
        pass
    return found


@dataclass
class Run:
    result: rt.Result
    runtime_us: float
    """CPU time of the runtime's process per event delivered, in microseconds."""
    writer_us: float
    """The same for the capture's writer process (0 with capture off)."""
    clickhouse_us: float

    @property
    def rate(self) -> float:
        return self.result.rate


async def runtime_with_capture(
    redis_url: str, clickhouse_pid: int | None, capture: str, total: int, *extra: str
) -> Run:
    # Each run starts from an empty Redis: subscriptions live there and would otherwise carry
    # over to the next run, still pointing at the previous run's (stopped) subscriber.
    async with aioredis.Redis.from_url(redis_url) as redis_client:
        await redis_client.flushall()
    sub = rt.Subscriber()
    process = RuntimeProcess(
        ["--store", redis_url, "--capture", capture, "--log-level", "WARNING", *extra]
    )
    await sub.start()
    await process.start()
    try:
        sink = f"http://127.0.0.1:{sub.port}/events"
        body = {
            "topic": "cap.#",
            "group": "g",
            "sink": sink,
            "batch": {"max_events": 100, "max_wait_ms": 5},
        }
        async with (
            aiohttp.ClientSession() as session,
            session.post(f"{process.url}/v1/subscriptions", json=body) as r,
        ):
            assert r.status == 201, await r.text()
        topic = f"cap.{uuid.uuid4().hex[:8]}"
        await rt.warm_up(process.url, sub, topic)
        assert process.process is not None
        pid = process.process.pid
        writers = children(pid)
        before = [cpu_seconds(pid), sum(map(cpu_seconds, writers)), cpu_seconds(clickhouse_pid)]
        result = await rt.bench_batch(
            process.url, sub, total, topic, f"capture {capture.split(':')[0]}"
        )
        after = [cpu_seconds(pid), sum(map(cpu_seconds, writers)), cpu_seconds(clickhouse_pid)]
        runtime_us, writer_us, clickhouse_us = (
            (a - b) * 1e6 / total for a, b in zip(after, before, strict=True)
        )
        return Run(result, runtime_us, writer_us, clickhouse_us)
    finally:
        await sub.stop()
        process.signal(__import__("signal").SIGTERM)
        await process.wait(60)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeat", type=int, default=0, help="end-to-end runs per configuration")
    args = parser.parse_args()
    total = 100_000 if args.quick else args.events

    with tempfile.TemporaryDirectory() as tmp:
        server = ClickHouseServer(Path(tmp) / "ch").start()
        redis_server = RedisServer(Path(tmp) / "redis").start()
        try:
            client = ClickHouse.open(server.url)
            migrate(client)
            client.close()
            batch = records(total)
            raw_s = raw_insert(server, batch)
            before = count(server, "events")
            rec_s = await recorder_ingest(server.url, str(Path(tmp) / "spool"), batch, "process")
            stored = count(server, "events") - before
            thread_s = await recorder_ingest(server.url, str(Path(tmp) / "spool"), batch, "thread")
            e2e_total = 5_000 if args.quick else max(5_000, total // 10)
            configurations = {
                "capture off": ("none",),
                "capture on, every span": (server.url,),
                "capture on, span ratio 0.1": (server.url, "--span-sample-ratio", "0.1"),
            }
            repeat = args.repeat or (1 if args.quick else 5)
            runs: dict[str, list[Run]] = {name: [] for name in configurations}
            for _ in range(repeat):
                for name, (capture, *extra) in configurations.items():
                    runs[name].append(
                        await runtime_with_capture(
                            redis_server.url, server.pid, capture, e2e_total, *extra
                        )
                    )
        finally:
            server.close()
            redis_server.close()

    print()
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}, clickhouse-server 18.16 (Debian), "
        "redis-server with appendfsync always"
    )
    print(
        f"recorder ingest of {total:,} events into ClickHouse, {BATCH_ROWS:,} rows per insert "
        f"({stored:,} rows stored by the recorder):"
    )
    print(
        f"  {'Meshtap recorder (writer process)':<34}{total / rec_s:>12,.0f} events/s"
        f"   = {raw_s / rec_s:.0%} of raw"
    )
    print(
        f"  {'Meshtap recorder (writer thread)':<34}{total / thread_s:>12,.0f} events/s"
        f"   = {raw_s / thread_s:.0%} of raw"
    )
    print(f"  {'raw clickhouse-driver insert':<34}{total / raw_s:>12,.0f} events/s")
    print(
        f"runtime end to end, batch publish + batched push, {e2e_total:,} events, "
        f"{repeat} interleaved round(s); median [min-max]:"
    )
    off = runs["capture off"]
    for name, results in runs.items():
        rates = [r.rate for r in results]
        line = f"  {name:<28}{statistics.median(rates):>9,.0f} events/s [{spread(rates, ',.0f')}]"
        if results is not off:
            ratios = [r.rate / o.rate for r, o in zip(results, off, strict=True)]
            line += f"  = {statistics.median(ratios):.0%} of off [{spread(ratios, '.0%')}]"
        p99 = statistics.median(r.result.pct(0.99) for r in results)
        print(f"{line}  p99 {p99:.0f} ms")
    print("  CPU per event (median of the runs): runtime process / writer process / ClickHouse")
    for name, results in runs.items():
        print(
            f"  {name:<28}"
            + " / ".join(
                f"{statistics.median(getattr(r, part) for r in results):.1f} us"
                for part in ("runtime_us", "writer_us", "clickhouse_us")
            )
        )
    rates_text = {n: ", ".join(f"{r.rate:,.0f}" for r in results) for n, results in runs.items()}
    print("  every run (events/s): " + "; ".join(f"{n}: {r}" for n, r in rates_text.items()))
    print(f"  load average after the runs: {os.getloadavg()[0]:.1f}")


def spread(values: list[float], spec: str) -> str:
    return f"{format(min(values), spec)}-{format(max(values), spec)}"


if __name__ == "__main__":
    asyncio.run(main())
