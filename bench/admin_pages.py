"""Server-side render time of the web admin's trace search and trace view pages, beside the
read-side queries they run, on 10 million spans.

    .venv/bin/python bench/admin_pages.py [--spans 10000000] [--backend server|chdb] [--quick]

Per backend (a fresh clickhouse-server in a temp dir, or chDB in a temp dir) it loads the data
of ``bench/trace_queries.py`` (its loader: traces of 5-50 spans over 24 h, their events and
delivery attempts) plus one trace of 10,000 spans, then, in the same run:

* ``GET /?since=..&until=..`` (the trace search page, a random 1-hour window, with and without
  filters) through Django's test client with an SRE user -- URL resolving, session and
  permission checks, the queries, the template -- p50/p95;
* beside it the read side alone: ``search_traces`` with the same search;
* ``GET /traces/<id>/`` (the trace view: waterfall data, events with pretty payloads, delivery
  attempts, replays-of lookup) and beside it ``trace_by_id`` alone; and the same for the
  10,000-span trace (the waterfall renders it lazily in the browser; this is the server's part).

Aim (the web admin issue): both pages <= 300 ms p95. Figures are printed, not asserted.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.trace_queries import (  # noqa: E402
    HEADER,
    Figure,
    ReadRows,
    chdb_backend,
    load,
    machine,
    server_backend,
    trace_id_of,
)
from tracing import TraceSearch, search_traces, trace_by_id  # noqa: E402
from tracing.clickhouse import ClickHouse, Purpose, migrate  # noqa: E402

BIG_TRACE = "b" * 32
BIG_SPANS = 10_000

# One trace of 10,000 spans: a root and a wide, 4-level tree under it (the view caps at 10,000).
LOAD_BIG_TRACE = """
INSERT INTO meshtap.spans
    (trace_id, span_id, parent_span_id, name, kind, service_name, scope_name,
     start_ns, end_ns, duration_ns, start_at, status_code, status_message,
     attr_keys, attr_values, resource_keys, resource_values,
     event_names, event_times_ns, event_attrs, link_trace_ids, link_span_ids, link_attrs)
SELECT %(trace_id)s,
       lower(hex(toUInt64(number + 1))),
       if(number = 0, '', lower(hex(toUInt64(intDiv(number - 1, 10) + 1)))),
       concat('step-', toString(number %% 37)),
       'internal',
       concat('svc-', toString(number %% 9)),
       'bench',
       toUInt64(%(start_ns)s) + number * 20000,
       toUInt64(%(start_ns)s) + number * 20000 + 15000 + (number %% 13) * 1000,
       15000 + (number %% 13) * 1000,
       toDateTime(intDiv(%(start_ns)s, 1000000000)),
       if(number %% 97 = 5, 'error', 'ok'), '',
       ['messaging.system', 'step'], ['meshtap', toString(number)],
       ['service.name'], [concat('svc-', toString(number %% 9))],
       [], [], [], [], [], []
FROM numbers(%(spans)s)
"""


def timed(figure: Figure, call: Any) -> Any:
    started = time.perf_counter()
    result = call()
    figure.times_ms.append((time.perf_counter() - started) * 1000)
    return result


def setup_django(tmp: Path, url: str) -> Any:
    os.environ["DJANGO_SETTINGS_MODULE"] = "meshadmin.settings"
    os.environ["MESHTAP_VAR_DIR"] = str(tmp / "var")
    (tmp / "var").mkdir(exist_ok=True)
    import django
    from django.conf import settings

    if not settings.configured or not hasattr(setup_django, "done"):
        django.setup()
        setup_django.done = True  # type: ignore[attr-defined]
    settings.MESHTAP_CLICKHOUSE_URL = url
    settings.ALLOWED_HOSTS = ["testserver"]
    settings.DATABASES["default"]["NAME"] = str(tmp / "var" / "meshadmin.sqlite3")
    from django.contrib.auth.models import Group, User
    from django.core.management import call_command
    from django.db import connections
    from django.test import Client

    connections.close_all()
    call_command("migrate", verbosity=0)
    user, _ = User.objects.get_or_create(username="bench-sre")
    user.groups.add(Group.objects.get(name="SRE"))
    client = Client()
    client.force_login(user)
    return client


def run(kind: str, spans: int, args: argparse.Namespace) -> None:
    tmp = Path(tempfile.mkdtemp(prefix=f"meshtap-bench-pages-{kind}-"))
    backend = server_backend if kind == "server" else chdb_backend
    rng = random.Random(args.seed)
    try:
        with backend(tmp) as (url, label, _raw, _name):
            read = ReadRows()
            store = ClickHouse.open(url, tracer_provider=read.provider)
            try:
                migrate(store)
                now = datetime.now(UTC).replace(microsecond=0)
                print(f"\n== {label}: loading {spans:,} spans ...", flush=True)
                loaded = load(store, spans, now)
                big_start = int((now - timedelta(hours=2)).timestamp()) * 1_000_000_000
                store.execute(
                    LOAD_BIG_TRACE,
                    {"trace_id": BIG_TRACE, "start_ns": big_start, "spans": BIG_SPANS},
                    purpose=Purpose.MIGRATE,
                )
                print(
                    f"    {loaded.spans:,} spans in {loaded.traces:,} traces, "
                    f"{loaded.events:,} events, {loaded.deliveries:,} deliveries; plus one "
                    f"trace of {BIG_SPANS:,} spans",
                    flush=True,
                )
                web = setup_django(tmp, url)
                from meshadmin.web import _store

                figures = measure(web, store, loaded, now, rng, args)
                _store.close_all()
            finally:
                store.close()
                read.provider.shutdown()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"\n{label}, {loaded.spans:,} spans + one of {BIG_SPANS:,}")
    print(HEADER)
    for figure in figures:
        print(figure.line() + (f"  {figure.note}" if figure.note else ""))
    sys.stdout.flush()


SEARCHES: list[tuple[str, dict[str, str], dict[str, Any]]] = [
    ("no filter", {}, {}),
    ("status = error", {"status": "error"}, {"status": "error"}),
    ("topic = orders.*.created", {"topic": "orders.*.created"}, {"topic": "orders.*.created"}),
    ("service = svc-7, min 100 ms", {"service": "svc-7", "min": "100ms"},
     {"service": "svc-7", "min_duration": timedelta(milliseconds=100)}),
]  # fmt: skip


def measure(
    web: Any,
    store: ClickHouse,
    loaded: Any,
    now: datetime,
    rng: random.Random,
    args: argparse.Namespace,
) -> list[Figure]:
    figures = []
    day_start = now - timedelta(days=1)
    for name, query, filters in SEARCHES:
        page = Figure(f"page GET / (trace search 1 h): {name}", target_ms=300)
        raw = Figure(f"  read side search_traces alone: {name}")
        for _ in range(args.searches):
            since = day_start + timedelta(seconds=rng.randrange(3600, 22 * 3600))
            until = since + timedelta(hours=1)
            search = TraceSearch(since=since, until=until, limit=25, **filters)
            timed(raw, lambda s=search: search_traces(store, s))
            params = {"since": since.isoformat(), "until": until.isoformat(), **query}
            response = timed(page, lambda p=params: web.get("/", p))
            if response.status_code != 200:
                raise SystemExit(f"search page answered {response.status_code}: {params}")
        figures += [page, raw]

    ids = [trace_id_of(rng.randrange(loaded.traces)) for _ in range(args.lookups)]
    page = Figure("page GET /traces/<id>/ (trace view, 5-50 spans)", target_ms=300)
    raw = Figure("  read side trace_by_id alone")
    for trace_id in ids:
        timed(raw, lambda t=trace_id: trace_by_id(store, t))
        response = timed(page, lambda t=trace_id: web.get(f"/traces/{t}/"))
        if response.status_code != 200:
            raise SystemExit(f"trace page answered {response.status_code} for {trace_id}")
    figures += [page, raw]

    page = Figure(f"page GET /traces/<id>/ ({BIG_SPANS:,} spans)", target_ms=300)
    raw = Figure(f"  read side trace_by_id alone ({BIG_SPANS:,} spans)")
    for _ in range(args.big):
        view = timed(raw, lambda: trace_by_id(store, BIG_TRACE))
        response = timed(page, lambda: web.get(f"/traces/{BIG_TRACE}/"))
        if view is None or len(view.spans) != BIG_SPANS or response.status_code != 200:
            raise SystemExit("the 10,000-span trace did not come back whole")
    figures += [page, raw]
    page.note = f"{len(response.content) / 1e6:.1f} MB of HTML+JSON"
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--spans", type=int, default=10_000_000, help="spans to load")
    parser.add_argument("--quick", action="store_true", help="200,000 spans: check the script")
    parser.add_argument(
        "--backend", choices=["server", "chdb"], action="append", help="only these (repeatable)"
    )
    parser.add_argument("--searches", type=int, default=30, help="page loads per search mix")
    parser.add_argument("--lookups", type=int, default=100, help="trace pages opened")
    parser.add_argument("--big", type=int, default=10, help="opens of the 10,000-span trace")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    spans = 200_000 if args.quick else args.spans
    print(machine())
    started = time.perf_counter()
    for kind in args.backend or ["server"]:
        run(kind, spans, args)
    print(f"\nbench finished in {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
