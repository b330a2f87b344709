"""ReplaySpec, Filter and Pacing check themselves: every bad input is refused clearly."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

import replay
from replay import Filter, InvalidSpec, Pacing, ReplaySpec, parse_time
from replay._pacing import Schedule

SINCE = datetime(2026, 11, 26, 10, 0, tzinfo=UTC)
UNTIL = SINCE + timedelta(minutes=5)


def spec(**kwargs: Any) -> ReplaySpec:
    kwargs.setdefault("topics", ("orders.#",))
    kwargs.setdefault("since", SINCE)
    kwargs.setdefault("until", UNTIL)
    return ReplaySpec(**kwargs)


def test_exported_names_are_pinned() -> None:
    assert replay.__all__ == [
        "SANDBOX_PREFIXES",
        "CapExceeded",
        "Checkpoint",
        "Command",
        "DiffReport",
        "DiffRules",
        "DryRun",
        "FieldDiff",
        "FileJobStore",
        "Filter",
        "HttpTarget",
        "InvalidSpec",
        "MemoryJobStore",
        "NoEventsMatched",
        "Pacer",
        "Pacing",
        "PacingReport",
        "ProductionTargetRefused",
        "Progress",
        "ReplayError",
        "ReplayJobStore",
        "ReplayRefused",
        "ReplayResult",
        "ReplaySpec",
        "ResponseDiff",
        "Selection",
        "Target",
        "TargetError",
        "TargetRejected",
        "TargetUnavailable",
        "dry_run",
        "outcome_diff",
        "parse_time",
        "replayed_event",
        "replayed_id",
        "run_replay",
        "select",
        "streaming_plan",
    ]
    for name in replay.__all__:
        member = getattr(replay, name)
        if not isinstance(member, tuple):
            assert member.__module__.startswith("replay._"), name


@pytest.mark.parametrize(
    ("fields", "complaint"),
    [
        ({"since": UNTIL, "until": SINCE}, "since .* is not before until"),
        ({"until": SINCE}, "empty or inverted"),
        ({"since": datetime(2026, 11, 26)}, "no time zone"),
        ({"topics": ()}, "at least one topic"),
        ({"topics": ("orders.#.x#",)}, r"orders\.#\.x#"),
        ({"topics": ("orders..eu",)}, r"orders\.\.eu"),
        ({"filters": ("type",)}, "no operator"),
        ({"filters": ("Type=x",)}, "neither a CloudEvents attribute"),
        ({"filters": ("data..x=1",)}, "empty path segment"),
        ({"filters": ("data.x~=(",)}, "not a valid regular expression"),
        ({"filters": ("time=1",)}, "since/until select by time"),
        ({"speed": "fast"}, "speed 'fast' is not one of"),
        ({"speed": "0x"}, "above zero"),
        ({"speed": "10xs"}, "is not one of"),
        ({"sample_percent": 0}, "sample_percent 0"),
        ({"sample_percent": 101}, "sample_percent 101"),
        ({"limit": 0}, "limit 0"),
        ({"max_events": 0}, "max_events 0"),
        ({"max_idle_gap_s": -1}, "max_idle_gap_s -1"),
        ({"to_prefix": "replay"}, "end with a dot"),
        ({"to_prefix": "re play."}, "dot-separated segments"),
        ({"trace_ids": ("xyz",)}, "not a trace id"),
        ({"event_ids": ("a",), "trace_ids": ("0" * 31 + "1",)}, "not both"),
        ({"keys": ("",)}, "non-empty strings"),
    ],
)
def test_bad_specs_are_refused_with_the_offending_value(
    fields: dict[str, Any], complaint: str
) -> None:
    with pytest.raises(InvalidSpec, match=complaint):
        spec(**fields)


def test_filters_parse_from_text() -> None:
    assert Filter.parse("type=order.created") == Filter("type", "eq", "order.created")
    assert Filter.parse("source^=/shop") == Filter("source", "prefix", "/shop")
    assert Filter.parse("data.total~=^9") == Filter("data.total", "regex", "^9")
    assert Filter.parse("data.note=a=b").value == "a=b"  # the first operator wins
    assert Filter.parse("data.items.0.sku=X").path == ("items", "0", "sku")
    assert str(Filter.parse("region^=eu")) == "region^=eu"
    s = spec(filters=("type=a", Filter("source", "prefix", "/x")))
    assert [str(f) for f in s.filters] == ["type=a", "source^=/x"]


def test_speeds() -> None:
    assert Pacing.parse("1x") == Pacing(factor=1.0)
    assert Pacing.parse("0.5x") == Pacing(factor=0.5)
    assert Pacing.parse("250/s") == Pacing(rate=250.0)
    assert Pacing.parse("max").as_fast_as_possible
    assert spec(speed="10x", max_idle_gap_s=2).pacing == Pacing(factor=10.0, max_idle_gap_s=2)


def test_schedule_scales_time_and_compresses_silences() -> None:
    s = 1_000_000_000
    times = [0, s, 2 * s, 62 * s, 63 * s]
    scaled = Schedule(Pacing(factor=2.0, max_idle_gap_s=5.0))
    assert [scaled.offset(t) for t in times] == [0.0, 0.5, 1.0, 3.5, 4.0]
    rate = Schedule(Pacing(rate=4.0))
    assert [rate.offset(t) for t in times] == [0.0, 0.25, 0.5, 0.75, 1.0]
    fast = Schedule(Pacing())
    assert {fast.offset(t) for t in times} == {0.0}


def test_spec_round_trips_through_json_and_describes_itself() -> None:
    s = spec(filters=("type=a",), keys=("k1",), limit=5, speed="10x", allow_production=True)
    assert ReplaySpec.from_json(s.to_json()) == s
    assert "topics=orders.# " in s.describe()
    assert "filter=type=a" in s.describe()
    with pytest.raises(InvalidSpec, match="not a replay spec document"):
        ReplaySpec.from_json({"topics": ["a"]})


def test_times_from_text() -> None:
    assert parse_time("2026-11-26T10:00:00Z", "since") == SINCE
    with pytest.raises(InvalidSpec, match="no time zone"):
        parse_time("2026-11-26T10:00:00", "since")
    with pytest.raises(InvalidSpec, match="not an ISO 8601 time"):
        parse_time("yesterday", "until")
