"""The event browser's read side (``tracing._browse``): bad input is refused with what was wrong,
before anything is sent. (What the queries return is checked through the pages, on both
engines, in tests/test_web.py.)"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tracing import EventWindow, InvalidQuery, event_histogram, replays_of_trace, search_events
from tracing.clickhouse import ClickHouse, migrate

NOW = datetime.now(UTC)
WINDOW = EventWindow(("orders.#",), NOW - timedelta(hours=1), NOW)


@pytest.fixture
def client(tmp_path: Path) -> Iterator[ClickHouse]:
    with ClickHouse.open(f"chdb://{tmp_path / 'chdb'}") as store:
        migrate(store)
        yield store


def test_an_empty_store_has_an_all_zero_histogram_and_no_events(client: ClickHouse) -> None:
    histogram = event_histogram(client, WINDOW, buckets=12)
    assert histogram.counts == (0,) * 12
    assert histogram.step_ns * 12 >= WINDOW.until_ns - WINDOW.since_ns
    page = search_events(client, WINDOW, text="x")
    assert page.items == ()
    assert page.next_cursor is None
    assert replays_of_trace(client, "ab" * 16, 0) == []


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda c: event_histogram(c, WINDOW, buckets=0), "buckets 0 is not from 1 to 500"),
        (lambda c: event_histogram(c, WINDOW, buckets="9"), "buckets '9' is not an integer"),
        (lambda c: search_events(c, WINDOW, text="x" * 201), "at most 200 characters"),
        (lambda c: search_events(c, WINDOW, limit=0), "limit 0 is not a page size"),
        (lambda c: search_events(c, WINDOW, cursor="nope"), "not one the event browser"),
        (
            lambda c: search_events(
                c, EventWindow(("a",), WINDOW.since, WINDOW.until, (("type", "t"),))
            ),
            "attribute filters belong to replay specs",
        ),
        (lambda c: replays_of_trace(c, "xyz", 0), "invalid trace id 'xyz'"),
    ],
)
def test_bad_input_says_what_was_wrong(client: ClickHouse, call: object, message: str) -> None:
    with pytest.raises(InvalidQuery, match=message):
        call(client)  # type: ignore[operator]
