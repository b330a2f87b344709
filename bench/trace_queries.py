"""Trace lookup and trace search latency on ClickHouse 18.16 and chDB, beside the scan they avoid.

    .venv/bin/python bench/trace_queries.py [--spans 10000000] [--quick] [--chdb-spans N]

What it does, per backend (a fresh clickhouse-server in a temp dir, then chDB in a temp dir):

* loads N spans (default 10,000,000; ``--quick``: 200,000) with their events and delivery
  attempts, generated server-side (``INSERT INTO ... SELECT ... FROM numbers(T)``): 50
  services of 3 instances each plus the mesh, traces of 5-50 spans (root app span -> mesh
  publish -> process spans and the consumers' own spans, ~1 % failed) spread over the last 24
  hours, one event per trace on one of 40 topics, two consumer groups each with some retries
  and dead letters; then merges the parts (``OPTIMIZE ... FINAL``), so every run measures the
  same layout;
* ``trace_by_id`` over 200 random trace ids: p50/p95 and rows read (all four lookups: spans,
  event keys, events, deliveries);
* baseline, same run: raw clickhouse-driver (chDB: a raw chDB connection) selecting the spans
  of a trace from the plain ``spans`` table, ``WHERE trace_id = ...`` -- the scan Meshtap
  avoids -- and the same driver on ``spans_by_trace`` (the lookup without Meshtap around it);
* ``search_traces`` over random 1-hour windows, several filter mixes: p50/p95, rows read.

Targets (the capture issue): by id <= 50 ms p95; search over a 1-hour window <= 300 ms p95.
Figures are printed, not asserted: compare the columns of one run.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.servers import ClickHouseServer  # noqa: E402
from tracing._queries import search_traces, trace_by_id  # noqa: E402
from tracing._read_models import TraceSearch  # noqa: E402
from tracing.clickhouse import ClickHouse, Purpose, migrate  # noqa: E402

RawQuery = Callable[[str, str], tuple[list[Any], int]]
"""A baseline query: ``(sql, trace_id) -> (rows, rows read)``, without Meshtap."""

MEAN_TRACE_SPANS = 27.5  # 5 + (0..45)
DAY_NS = 86_400 * 1_000_000_000

# --- the generated data (server-side; 18.16 and chDB alike) -------------------------------------

# One row per trace: its number t, a hash h that picks everything else, its topic and start.
_TRACES = """
SELECT number AS t,
       intHash32(number) AS h,
       concat(arrayElement(['orders', 'payments', 'shipping', 'inventory', 'users'], h %% 5 + 1),
              '.', arrayElement(['eu', 'us', 'apac', 'latam'], intDiv(h, 5) %% 4 + 1),
              '.', arrayElement(['created', 'updated'], intDiv(h, 20) %% 2 + 1)) AS topic,
       toUInt64(%(since_ns)s) + intHash64(number) %% %(day_ns)s AS trace_start,
       lower(hex(MD5(concat('t', toString(number))))) AS tid
FROM numbers(%(traces)s)
"""

# Span p of trace t: 0 the producer app's root, 1 the mesh's publish, then pairs of the mesh's
# `process` span (one consumer group's push) and that consumer's own span.
LOAD_SPANS = f"""
INSERT INTO meshtap.spans
    (trace_id, span_id, parent_span_id, name, kind, service_name, scope_name,
     start_ns, end_ns, duration_ns, start_at, status_code, status_message,
     attr_keys, attr_values, resource_keys, resource_values)
SELECT
    tid AS trace_id,
    substring(lower(hex(MD5(concat('s', toString(t), '-', toString(p))))), 1, 16) AS span_id,
    multiIf(p = 0, '',
            substring(lower(hex(MD5(concat('s', toString(t), '-',
                                           toString(multiIf(p = 1, 0, p %% 2 = 0, 1, p - 1)))))),
                      1, 16)) AS parent_span_id,
    multiIf(p = 0, 'POST /api', p = 1, concat('publish ', topic),
            p %% 2 = 0, concat('process ', topic), 'handle event') AS name,
    multiIf(p = 0, 'server', p = 1, 'producer', p %% 2 = 0, 'consumer', 'server') AS kind,
    multiIf(p = 0, concat('svc-', toString(h %% 50)),
            p %% 2 = 0 OR p = 1, 'meshtap-runtime',
            concat('svc-', toString((h + p * 7) %% 50))) AS service_name,
    if(service_name = 'meshtap-runtime', 'meshtap.runtime', 'app') AS scope_name,
    trace_start + p * 2000000 AS start_ns,
    start_ns + multiIf(p = 0, 50000000 + intHash32(t * 64 + p) %% 450000000,
                       p = 1, 1000000 + intHash32(t * 64 + p) %% 2000000,
                       2000000 + intHash32(t * 64 + p) %% 198000000) AS end_ns,
    end_ns - start_ns AS duration_ns,
    toDateTime(intDiv(start_ns, 1000000000)) AS start_at,
    if(p > 1 AND intHash32(t * 64 + p) %% 100 = 0, 'error', 'ok') AS status_code,
    if(status_code = 'error', 'HTTP 503', '') AS status_message,
    multiIf(p = 0, ['http.route', 'http.response.status_code'],
            p = 1, ['messaging.system', 'messaging.destination.name', 'messaging.message.id'],
            p %% 2 = 0, ['messaging.system', 'messaging.destination.name',
                        'messaging.consumer.group.name', 'messaging.meshtap.delivery.outcome'],
            ['http.route']) AS attr_keys,
    multiIf(p = 0, ['/api/v1/things', '200'],
            p = 1, ['meshtap', topic, concat('evt-', toString(t))],
            p %% 2 = 0, ['meshtap', topic, concat('group-', toString((h + p) %% 10)),
                        if(status_code = 'error', 'retry', 'acked')],
            ['/events']) AS attr_values,
    ['service.name', 'deployment.environment', 'host.name'] AS resource_keys,
    [service_name, 'prod', concat(service_name, '-', toString(intHash32(t) %% 3))]
        AS resource_values
FROM ({_TRACES}) ARRAY JOIN range(5 + h %% 46) AS p
SETTINGS max_block_size = 4096
"""

LOAD_EVENTS = f"""
INSERT INTO meshtap.events
    (event_id, topic, source, type, subject, spec_version, data_content_type,
     event_time_ns, published_ns, published_at, partition_key, ext_keys, ext_values,
     data, data_size, producer, protocol, instance, store_offset, trace_id, span_id)
SELECT
    concat('evt-', toString(t)) AS event_id,
    topic,
    concat('/svc-', toString(h %% 50)) AS source,
    concat('com.example.', replaceAll(topic, '.', '_')) AS type,
    concat('thing/', toString(t)) AS subject,
    '1.0' AS spec_version,
    'application/json' AS data_content_type,
    trace_start AS event_time_ns,
    trace_start + 3000000 AS published_ns,
    toDateTime(intDiv(published_ns, 1000000000)) AS published_at,
    concat('customer-', toString(h %% 5000)) AS partition_key,
    ['partitionkey', 'traceparent'] AS ext_keys,
    [partition_key, concat('00-', tid, '-', span_id, '-01')] AS ext_values,
    concat('{{"id": ', toString(t), ', "customer": "', partition_key, '", "note": "',
           substring(concat(tid, tid, tid, tid, tid, tid, tid, tid, tid, tid), 1, h %% 300),
           '"}}') AS data,
    length(data) AS data_size,
    concat('svc-', toString(h %% 50)) AS producer,
    'http' AS protocol,
    concat('runtime-', toString(h %% 3)) AS instance,
    concat(toString(intDiv(published_ns, 1000000)), '-0') AS store_offset,
    tid AS trace_id,
    substring(lower(hex(MD5(concat('s', toString(t), '-1')))), 1, 16) AS span_id
FROM ({_TRACES})
SETTINGS max_block_size = 8192
"""

# Two consumer groups per event; ~2 % of first attempts fail and are retried, ~0.2 % of those
# retries give up (dead letter).
LOAD_DELIVERIES = f"""
INSERT INTO meshtap.deliveries
    (event_id, topic, group_name, subscription_id, subscriber, attempt, outcome, status_code,
     error, duration_ns, latency_ns, attempted_ns, attempted_at, instance, trace_id, span_id)
SELECT
    concat('evt-', toString(t)) AS event_id,
    topic,
    concat('group-', toString((h + g) %% 10)) AS group_name,
    concat('sub-', group_name) AS subscription_id,
    concat('http://', group_name, ':8080/events') AS subscriber,
    toUInt16(n) AS attempt,
    multiIf(fails AND attempt = 1, 'retry', fails AND dead, 'dead_lettered', 'acked') AS outcome,
    toUInt16(if(outcome = 'acked', 200, 503)) AS status_code,
    if(outcome = 'acked', '', 'HTTP 503') AS error,
    toUInt64(1000000 + intHash32(t * 8 + g) %% 20000000) AS duration_ns,
    toUInt64(attempt * 5000000 + duration_ns) AS latency_ns,
    trace_start + 3000000 + latency_ns AS attempted_ns,
    toDateTime(intDiv(attempted_ns, 1000000000)) AS attempted_at,
    concat('runtime-', toString(h %% 3)) AS instance,
    tid AS trace_id,
    '' AS span_id
FROM
(
    SELECT t, h, topic, trace_start, tid, g,
           intHash32(t * 8 + g) %% 50 = 0 AS fails,
           intHash32(t * 8 + g) %% 500 = 0 AS dead
    FROM ({_TRACES}) ARRAY JOIN [1, 2] AS g
)
ARRAY JOIN if(fails, [1, 2], [1]) AS n
SETTINGS max_block_size = 8192
"""

OPTIMIZE = {
    table: f"OPTIMIZE TABLE meshtap.{table} FINAL"
    for table in ("spans", "spans_by_trace", "events", "events_by_trace", "deliveries")
}

COUNTS = """
SELECT (SELECT count() FROM meshtap.spans), (SELECT count() FROM meshtap.events),
       (SELECT count() FROM meshtap.deliveries)
"""

ACTIVE_PARTS = """
SELECT table, count() FROM system.parts
WHERE database = 'meshtap' AND active
GROUP BY table
ORDER BY table
"""

VERSION = "SELECT version()"

_SPAN_COLUMNS = (
    "trace_id, span_id, parent_span_id, name, kind, service_name, scope_name, start_ns, "
    "end_ns, duration_ns, status_code, status_message, attr_keys, attr_values, resource_keys, "
    "resource_values, event_names, event_times_ns, event_attrs, link_trace_ids, link_span_ids, "
    "link_attrs"
)
RAW_SCAN = f"SELECT {_SPAN_COLUMNS} FROM meshtap.spans WHERE trace_id = %(trace_id)s"
RAW_BY_TRACE = (
    f"SELECT {_SPAN_COLUMNS} FROM meshtap.spans_by_trace WHERE trace_id = %(trace_id)s "
    f"ORDER BY start_ns"
)


# --- measuring ---------------------------------------------------------------------------------


@dataclass
class Figure:
    name: str
    times_ms: list[float] = field(default_factory=list)
    rows_read: list[int] = field(default_factory=list)
    target_ms: float | None = None
    note: str = ""

    def pct(self, q: float) -> float:
        ordered = sorted(self.times_ms)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")

    def line(self) -> str:
        read = f"{statistics.mean(self.rows_read):>14,.0f}" if self.rows_read else f"{'':>14}"
        target = ""
        if self.target_ms is not None:
            verdict = "ok" if self.pct(0.95) <= self.target_ms else "MISSED"
            target = f"<= {self.target_ms:.0f} ms p95: {verdict}"
        return (
            f"| {self.name:<{NAME_WIDTH}} | {len(self.times_ms):>4} | {self.pct(0.5):>8.1f} | "
            f"{self.pct(0.95):>8.1f} | {read} | {target:<22} |"
        )


NAME_WIDTH = 66
HEADER = (
    f"| {'query':<{NAME_WIDTH}} | {'runs':>4} | {'p50 ms':>8} | {'p95 ms':>8} | "
    f"{'rows read avg':>14} | {'target':<22} |\n"
    f"|{'-' * (NAME_WIDTH + 2)}|{'-' * 5}:|{'-' * 9}:|{'-' * 9}:|{'-' * 15}:|{'-' * 24}|"
)


class ReadRows:
    """Sums ``meshtap.clickhouse.read_rows`` over the client's spans of one call."""

    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        self.provider = TracerProvider()
        self.provider.add_span_processor(SimpleSpanProcessor(self.exporter))

    def take(self) -> int:
        total = sum(
            int((s.attributes or {}).get("meshtap.clickhouse.read_rows", 0))
            for s in self.exporter.get_finished_spans()
        )
        self.exporter.clear()
        return total


def timed(figure: Figure, call: Callable[[], Any], read: Callable[[], int] | None) -> Any:
    started = time.perf_counter()
    result = call()
    figure.times_ms.append((time.perf_counter() - started) * 1000)
    if read is not None:
        figure.rows_read.append(read())
    return result


def raw_timed(figure: Figure, raw_query: RawQuery, sql: str, trace_id: str) -> list[Any]:
    started = time.perf_counter()
    rows, read = raw_query(sql, trace_id)
    figure.times_ms.append((time.perf_counter() - started) * 1000)
    figure.rows_read.append(read)
    return rows


def check(condition: bool, problem: str) -> None:
    if not condition:
        raise SystemExit(f"bench data is not what it should be: {problem}")


def trace_id_of(t: int) -> str:
    return hashlib.md5(f"t{t}".encode()).hexdigest()


# --- one backend -------------------------------------------------------------------------------


@dataclass
class Loaded:
    spans: int
    events: int
    deliveries: int
    traces: int
    load_s: float
    optimize_s: float
    parts: dict[str, int]


def load(client: ClickHouse, spans: int, now: datetime) -> Loaded:
    traces = max(1, round(spans / MEAN_TRACE_SPANS))
    since_ns = int((now - timedelta(days=1)).timestamp()) * 1_000_000_000
    params = {"traces": traces, "since_ns": since_ns, "day_ns": DAY_NS}
    started = time.perf_counter()
    for name, sql in (
        ("spans", LOAD_SPANS),
        ("events", LOAD_EVENTS),
        ("deliveries", LOAD_DELIVERIES),
    ):
        t0 = time.perf_counter()
        client.execute(sql, params, purpose=Purpose.MIGRATE)
        print(f"    loaded {name} in {time.perf_counter() - t0:.1f} s", flush=True)
    load_s = time.perf_counter() - started
    started = time.perf_counter()
    for sql in OPTIMIZE.values():
        client.execute(sql, purpose=Purpose.MIGRATE)
    optimize_s = time.perf_counter() - started
    [(n_spans, n_events, n_deliveries)] = client.execute(COUNTS, purpose=Purpose.QUERY)
    parts = {str(t): int(n) for t, n in client.execute(ACTIVE_PARTS, purpose=Purpose.QUERY)}
    return Loaded(n_spans, n_events, n_deliveries, traces, load_s, optimize_s, parts)


SEARCH_MIXES: list[tuple[str, dict[str, Any]]] = [
    ("no filter (newest 50)", {}),
    ("service = svc-7", {"service": "svc-7"}),
    ("service = meshtap-runtime (half the spans)", {"service": "meshtap-runtime"}),
    ("status = error", {"status": "error"}),
    ("min_duration = 400 ms", {"min_duration": timedelta(milliseconds=400)}),
    ("topic = orders.eu.created", {"topic": "orders.eu.created"}),
    ("topic = orders.*.created + event type", {
        "topic": "orders.*.created", "event_type": "com.example.orders_eu_created"}),
    ("span attribute messaging.consumer.group.name=group-3", {
        "attributes": (("messaging.consumer.group.name", "group-3"),)}),
    ("resource attribute host.name=svc-7-1", {
        "resource_attributes": (("host.name", "svc-7-1"),)}),
    ("service + status = error + min_duration 100 ms", {
        "service": "meshtap-runtime", "status": "error",
        "min_duration": timedelta(milliseconds=100)}),
]  # fmt: skip


def measure(
    kind: str,
    client: ClickHouse,
    read: ReadRows,
    raw_query: RawQuery,
    loaded: Loaded,
    now: datetime,
    args: argparse.Namespace,
) -> list[Figure]:
    rng = random.Random(args.seed)
    ids = [trace_id_of(rng.randrange(loaded.traces)) for _ in range(args.lookups)]
    figures = []

    warm = trace_by_id(client, ids[0])
    check(warm is not None and len(warm.spans) >= 5, f"trace {ids[0]} came back as {warm}")
    read.take()
    by_id = Figure("trace_by_id (spans, events, deliveries)", target_ms=50)
    for trace_id in ids:
        view = timed(by_id, lambda t=trace_id: trace_by_id(client, t), read.take)
        check(
            view is not None and 5 <= len(view.spans) <= 50 and len(view.events) == 1,
            f"trace {trace_id} came back as {view}",
        )
    figures.append(by_id)

    same = Figure(f"raw {kind}: spans_by_trace WHERE trace_id (no Meshtap)")
    for trace_id in ids:
        raw_timed(same, raw_query, RAW_BY_TRACE, trace_id)
    figures.append(same)

    scan = Figure(f"raw {kind}: spans WHERE trace_id (the scan avoided)")
    for trace_id in ids[: args.baseline_lookups]:
        rows = raw_timed(scan, raw_query, RAW_SCAN, trace_id)
        check(5 <= len(rows) <= 50, f"the scan found {len(rows)} spans of {trace_id}")
    figures.append(scan)

    day_start = now - timedelta(days=1)
    for name, filters in SEARCH_MIXES:
        figure = Figure(f"search 1 h: {name}", target_ms=300)
        hits = 0
        for _ in range(args.searches):
            since = day_start + timedelta(seconds=rng.randrange(3600, 22 * 3600))
            search = TraceSearch(since=since, until=since + timedelta(hours=1), **filters)
            page = timed(figure, lambda s=search: search_traces(client, s), read.take)
            hits += len(page.items)
        figure.note = f"{hits / args.searches:.0f} traces/page"
        figures.append(figure)

    second = Figure("search 1 h: no filter, second page (cursor)", target_ms=300)
    for _ in range(args.searches):
        since = day_start + timedelta(seconds=rng.randrange(3600, 22 * 3600))
        first = search_traces(client, TraceSearch(since=since, until=since + timedelta(hours=1)))
        read.take()
        search = TraceSearch(
            since=since, until=since + timedelta(hours=1), cursor=first.next_cursor
        )
        timed(second, lambda s=search: search_traces(client, s), read.take)
    figures.append(second)
    return figures


@contextmanager
def server_backend(tmp: Path) -> Iterator[tuple[str, str, RawQuery, str]]:
    from clickhouse_driver import Client

    server = ClickHouseServer(tmp / "clickhouse").start()
    raw = Client(server.host, port=server.port)
    try:
        version = raw.execute(VERSION)[0][0]

        def query(sql: str, trace_id: str) -> tuple[list[Any], int]:
            rows = raw.execute(sql, {"trace_id": trace_id})
            return rows, int(raw.last_query.progress.rows)

        yield server.url, f"clickhouse-server {version}", query, "clickhouse-driver"
    finally:
        raw.disconnect()
        server.close()


@contextmanager
def chdb_backend(tmp: Path) -> Iterator[tuple[str, str, RawQuery, str]]:
    import chdb

    path = tmp / "chdb"
    path.mkdir()
    holder: dict[str, Any] = {}

    def query(sql: str, trace_id: str) -> tuple[list[Any], int]:
        # A raw chDB connection on the same directory (the engine is the process's own).
        if "conn" not in holder:
            holder["conn"] = chdb.connect(str(path))
        text = sql.replace("%(trace_id)s", f"'{trace_id}'")  # hex digits only
        result = holder["conn"].query(text, "TabSeparated")
        return result.bytes().splitlines(), int(result.storage_rows_read())

    try:
        yield f"chdb://{path}", f"chDB {chdb.__version__}", query, "chdb"
    finally:
        if "conn" in holder:
            holder["conn"].close()


def run_backend(kind: str, spans: int, args: argparse.Namespace) -> None:
    tmp = Path(tempfile.mkdtemp(prefix=f"meshtap-bench-{kind}-"))
    started = time.perf_counter()
    backend = server_backend if kind == "server" else chdb_backend
    try:
        with backend(tmp) as (url, label, raw_query, raw_name):
            read = ReadRows()
            client = ClickHouse.open(url, tracer_provider=read.provider)
            try:
                migrate(client)
                if kind == "chdb":
                    [(engine,)] = client.execute(VERSION, purpose=Purpose.QUERY)
                    label += f" (ClickHouse {engine})"
                now = datetime.now(UTC).replace(microsecond=0)
                print(f"\n== {label}: loading {spans:,} spans ...", flush=True)
                loaded = load(client, spans, now)
                print(
                    f"    {loaded.spans:,} spans in {loaded.traces:,} traces, {loaded.events:,} "
                    f"events, {loaded.deliveries:,} deliveries over 24 h; insert "
                    f"{loaded.load_s:.0f} s, OPTIMIZE FINAL {loaded.optimize_s:.0f} s; active "
                    f"parts {loaded.parts}",
                    flush=True,
                )
                read.take()
                figures = measure(raw_name, client, read, raw_query, loaded, now, args)
            finally:
                client.close()
                read.provider.shutdown()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"\n{label}, {loaded.spans:,} spans (whole run {time.perf_counter() - started:.0f} s)")
    print(HEADER)
    for figure in figures:
        print(figure.line() + (f"  {figure.note}" if figure.note else ""))
    sys.stdout.flush()


def machine() -> str:
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
        mem_kb = next(
            int(line.split()[1])
            for line in Path("/proc/meminfo").read_text().splitlines()
            if line.startswith("MemTotal")
        )
        memory = f"{mem_kb / 1024 / 1024:.0f} GiB RAM"
    except (OSError, StopIteration, ValueError):
        memory = "RAM unknown"
    return (
        f"machine: {platform.machine()}, {os.cpu_count()} cores ({model}), {memory}, "
        f"{platform.system()} {platform.release()}, Python {platform.python_version()}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--spans", type=int, default=10_000_000, help="spans to load")
    parser.add_argument(
        "--chdb-spans",
        type=int,
        default=None,
        help="spans to load into chDB (default: the same as --spans)",
    )
    parser.add_argument("--quick", action="store_true", help="200,000 spans: check the script")
    parser.add_argument(
        "--backend", choices=["server", "chdb"], action="append", help="only these (repeatable)"
    )
    parser.add_argument("--lookups", type=int, default=200, help="trace ids looked up")
    parser.add_argument(
        "--baseline-lookups", type=int, default=20, help="scans of the plain spans table"
    )
    parser.add_argument("--searches", type=int, default=30, help="searches per filter mix")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    spans = 200_000 if args.quick else args.spans
    chdb_spans = args.chdb_spans or spans

    print(machine())
    print(
        f"load: {spans:,} spans (server), {chdb_spans:,} (chDB); {args.lookups} lookups, "
        f"{args.baseline_lookups} baseline scans, {args.searches} searches per mix"
    )
    started = time.perf_counter()
    for kind in args.backend or ["server", "chdb"]:
        run_backend(kind, spans if kind == "server" else chdb_spans, args)
    print(f"\nbench finished in {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
