"""Replay selection and dry run on both engines (clickhouse-server 18.16 and chDB).

The rows are written the way the recorder writes them (``tests.test_queries.event``), so the
selection reads exactly what capture stores.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from replay import (
    CapExceeded,
    NoEventsMatched,
    ProductionTargetRefused,
    ReplaySpec,
    dry_run,
    select,
    streaming_plan,
)
from tests.servers import ClickHouseServer
from tests.test_queries import MS, T0, S, dt, event, insert, ns
from tracing.clickhouse import ClickHouse, migrate

BASE = ns(T0)
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


def _rows() -> list[dict[str, Any]]:
    rows = []
    for i in range(40):
        key = f"customer-{i % 8}"
        region = "eu" if i % 2 else "us"
        data = json.dumps({"order": i, "customer": {"tier": "gold" if i % 4 == 0 else "free"}})
        row = event(
            f"o-{i:02d}",
            f"orders.{region}.created",
            BASE + i * 100 * MS,
            TRACE if i == 7 else "",
            type_="order.created" if i % 5 else "order.special",
            source=f"/shop/{region}",
            data=data.encode(),
            ext={"partitionkey": key, "region": region},
        )
        rows.append(row)
    replayed = event("r-1", "orders.eu.created", BASE + 5 * S, "", ext={"replayid": "job-0"})
    replayed["replay_id"] = "job-0"
    rows.append(replayed)
    rows.append(event("p-1", "payments.captured", BASE + 50 * MS, "", data=b"\xff\x00"))
    return rows


@pytest.fixture(params=[pytest.param("server", marks=pytest.mark.clickhouse), "chdb"])
def client(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ClickHouse]:
    if request.param == "server":
        server: ClickHouseServer = request.getfixturevalue("clickhouse_server")
        url = server.url
    else:
        url = f"chdb://{tmp_path / 'chdb'}"
    store = ClickHouse.open(url)
    try:
        migrate(store)
        insert(store, "events", _rows())
        yield store
    finally:
        store.close()


def spec(**kwargs: Any) -> ReplaySpec:
    kwargs.setdefault("topics", ("orders.#",))
    kwargs.setdefault("since", dt(BASE))
    kwargs.setdefault("until", dt(BASE + 60 * S))
    return ReplaySpec(**kwargs)


def ids(client: ClickHouse, **kwargs: Any) -> list[str]:
    return [r.event_id for r in select(client, spec(**kwargs))]


def test_originals_in_time_order(client: ClickHouse) -> None:
    got = ids(client)
    assert got == [f"o-{i:02d}" for i in range(40)]  # the replayed r-1 is left out
    assert "r-1" in ids(client, include_replayed=True)
    assert ids(client, topics=("#",))[:2] == ["o-00", "p-1"]
    assert ids(client, until=dt(BASE + 300 * MS)) == ["o-00", "o-01", "o-02"]  # [since, until)


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        (("type=order.special",), [f"o-{i:02d}" for i in range(0, 40, 5)]),
        (("source^=/shop/e", "type~=spec"), ["o-05", "o-15", "o-25", "o-35"]),
        (("region=us", "data.customer.tier=gold"), [f"o-{i:02d}" for i in range(0, 40, 4)]),
        (("data.order~=^3[0-3]$",), ["o-30", "o-31", "o-32", "o-33"]),
        (("data.order=7",), ["o-07"]),
        (("data.missing.path=1",), []),
    ],
)
def test_filters(client: ClickHouse, filters: tuple[str, ...], expected: list[str]) -> None:
    assert ids(client, filters=filters) == expected


def test_keys_limit_ids_and_traces(client: ClickHouse) -> None:
    assert ids(client, keys=("customer-3",)) == ["o-03", "o-11", "o-19", "o-27", "o-35"]
    assert ids(client, keys=("customer-3", "customer-4"), limit=3) == ["o-03", "o-04", "o-11"]
    assert ids(client, event_ids=("o-09", "o-02", "zz")) == ["o-02", "o-09"]
    assert ids(client, trace_ids=(TRACE,)) == ["o-07"]


def test_sampling_is_consistent_per_key(client: ClickHouse) -> None:
    half = select(client, spec(sample_percent=50))
    by_key: dict[str, int] = {}
    for row in half:
        by_key[row.partition_key] = by_key.get(row.partition_key, 0) + 1
    assert by_key
    assert all(n == 5 for n in by_key.values())  # a key is wholly in or out
    assert 1 <= len(by_key) <= 7
    assert select(client, spec(sample_percent=50)).__next__().partition_key in by_key
    assert ids(client, sample_percent=50) == ids(client, sample_percent=50)


def test_dry_run_counts_and_expected_duration(client: ClickHouse) -> None:
    report = dry_run(client, spec(topics=("#",), speed="1x")).report
    assert report.events == 41
    assert dict(report.per_topic) == {
        "orders.us.created": 20,
        "orders.eu.created": 20,
        "payments.captured": 1,
    }
    assert dict(report.target_topics)["payments.captured"] == "replay.payments.captured"
    assert report.distinct_keys == 8
    assert (report.first_ns, report.last_ns) == (BASE, BASE + 39 * 100 * MS)
    assert report.expected_duration_s == pytest.approx(3.9)
    ten = dry_run(client, spec(topics=("#",), speed="10x")).report
    assert ten.expected_duration_s == pytest.approx(0.39)
    gap = dry_run(client, spec(speed="1x", max_idle_gap_s=0.05)).report
    assert gap.expected_duration_s == pytest.approx(39 * 0.05)
    rate = dry_run(client, spec(speed="20/s")).report
    assert rate.expected_duration_s == pytest.approx(39 / 20)
    assert dry_run(client, spec(speed="max")).report.expected_duration_s is None


def test_no_events_matched_echoes_the_spec(client: ClickHouse) -> None:
    with pytest.raises(NoEventsMatched, match=r"topics=orders\.# since=.*filter=type=nothing"):
        dry_run(client, spec(filters=("type=nothing",)))
    with pytest.raises(NoEventsMatched, match="no events matched"):
        dry_run(client, spec(since=dt(BASE - 3600 * S), until=dt(BASE - 60 * S)))


def test_the_guard_refuses_before_sending(client: ClickHouse) -> None:
    with pytest.raises(ProductionTargetRefused, match=r"\['orders.eu.created'.*allow_production"):
        dry_run(client, spec(to_prefix=""))
    assert dry_run(client, spec(to_prefix="", allow_production=True)).report.events == 40
    with pytest.raises(ProductionTargetRefused, match=r"staging\.orders"):
        dry_run(client, spec(to_prefix="staging."))
    assert dry_run(client, spec(to_prefix="sandbox.qa.")).report.events == 40
    with pytest.raises(CapExceeded, match=r"more than max_events=39 .*Nothing was sent"):
        dry_run(client, spec(max_events=39))
    assert dry_run(client, spec(max_events=40)).report.events == 40
    assert dry_run(client, spec(max_events=5, limit=5)).report.events == 5


def test_big_selections_stream_again_instead_of_being_kept(client: ClickHouse) -> None:
    selection = dry_run(client, spec(), keep=False)
    assert not selection.kept
    assert [r.event_id for r in selection.rows()] == ids(client)


def test_streaming_plan_when_a_count_settles_the_guard(client: ClickHouse) -> None:
    selection = streaming_plan(client, spec())
    assert selection is not None
    assert selection.streaming
    assert selection.estimate == 41  # the bound: the replayed r-1 is still counted
    assert [r.event_id for r in selection.rows()] == ids(client)
    assert selection.report == dry_run(client, spec()).report  # tallied while read
    assert streaming_plan(client, spec(limit=7)).estimate == 7  # type: ignore[union-attr]
    # Not settled by a count: production targets, a bound above the cap, id lists.
    assert streaming_plan(client, spec(to_prefix="")) is None
    assert streaming_plan(client, spec(to_prefix="", allow_production=True)) is not None
    assert streaming_plan(client, spec(max_events=40)) is None  # 41 > 40, the dry run decides
    assert streaming_plan(client, spec(event_ids=("o-01",))) is None
    with pytest.raises(NoEventsMatched, match="no events matched"):
        streaming_plan(client, spec(topics=("nothing.here",)))
    with pytest.raises(NoEventsMatched, match="filter=type=nothing"):
        streaming_plan(client, spec(filters=("type=nothing",)))  # pushed down, counted
    emptied = streaming_plan(client, spec(filters=("type~=^nothing$",)))  # only known when read
    assert emptied is not None
    with pytest.raises(NoEventsMatched, match=r"filter=type~=\^nothing\$"):
        list(emptied.rows())
