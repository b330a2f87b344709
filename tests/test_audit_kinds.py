"""Each audit kind passes on clean data and fails on seeded bad data with the expected findings,
on clickhouse-server and on chDB (rows written as the recorder writes them, see test_queries)."""

from __future__ import annotations

import inspect
import json
from datetime import UTC, datetime
from typing import Any

import pytest

import auditing
from auditing import (
    KINDS,
    AuditContext,
    AuditResult,
    InvalidParameters,
    UnknownKind,
    run_audit,
    validate_parameters,
)
from tests.test_queries import MS, S, Store, delivery, event, insert, ns, process, publish, store

__all__ = ["store"]  # the fixture: a migrated, empty store on each backend

NOW = datetime.now(UTC).replace(microsecond=0)
T = ns(NOW) - 200 * S  # inside every default window, and checked by delivery completeness
TRACES = [f"{n:032x}" for n in range(1, 10)]


def audit(store: Store, kind: str, **params: Any) -> AuditResult:
    result = run_audit(kind, params, AuditContext(store.client, NOW))
    assert json.loads(json.dumps(result.to_json())) == result.to_json()  # stored as JSON
    return result


def traced(n: int, topic: str, published: int, **kwargs: Any) -> dict[str, Any]:
    """An event with its publish span's id in its trace context."""
    return event(f"e{n}", topic, published, TRACES[n], span_id=f"{n:015x}a", **kwargs)


def acked(n: int, topic: str, group: str, published: int, after_ms: int = 20) -> dict[str, Any]:
    at = published + after_ms * MS
    return delivery(f"e{n}", topic, group, 1, "acked", 200, at, published, TRACES[n], "f" * 16)


def clean(store: Store) -> None:
    """Two events on a topic two groups consume, each acked fast, whole traces."""
    events, deliveries, spans = [], [], []
    for n in (1, 2):
        published = T + n * S
        events.append(traced(n, "orders.eu.created", published, data=b'{"order": 1, "amount": 9}'))
        spans.append(publish(TRACES[n], f"{n:015x}a", "", "orders.eu.created", published, f"e{n}"))
        for i, group in enumerate(("billing", "shipping")):
            deliveries.append(acked(n, "orders.eu.created", group, published, 20 + 10 * i))
            spans.append(
                process(TRACES[n], f"{n:014x}b{i}", f"{n:015x}a", "orders.eu.created", group, 1,
                        published + 5 * MS, 10 * MS, "acked", 200)
            )  # fmt: skip
    insert(store.client, "events", events)
    insert(store.client, "deliveries", deliveries)
    insert(store.client, "spans", spans)


# --- delivery completeness ---------------------------------------------------------------------


def test_delivery_completeness(store: Store) -> None:
    clean(store)
    result = audit(store, "delivery_completeness", within_s=60)
    assert result.status == "pass", result
    assert result.figures["pairs"] == 4
    assert "all 4 (event, group) deliveries of 2 events acked in time" in result.summary

    topic = "orders.eu.created"
    e3, e4, e5 = T + 3 * S, T + 4 * S, T + 5 * S
    insert(store.client, "events", [traced(n, topic, t) for n, t in ((3, e3), (4, e4), (5, e5))])
    insert(
        store.client,
        "deliveries",
        [
            acked(3, topic, "billing", e3),
            delivery("e3", topic, "shipping", 1, "retry", 500, e3 + 10 * MS, e3, TRACES[3], ""),
            delivery(
                "e3", topic, "shipping", 2, "dead_lettered", 500, e3 + 900 * MS, e3, TRACES[3], ""
            ),
            acked(4, topic, "billing", e4, after_ms=90_000),  # too late
            acked(4, topic, "shipping", e4),
            acked(5, topic, "billing", e5),  # shipping never tried
        ],
    )
    result = audit(store, "delivery_completeness", within_s=60)
    assert result.status == "fail"
    assert result.summary == "3 of 10 (event, group) deliveries missing"
    assert [(f["event_id"], f["group"], f["reason"]) for f in result.findings] == [
        ("e3", "shipping", "not acked: last outcome dead_lettered (HTTP 500) after 2 attempts"),
        ("e4", "billing", "acked after 90.0 s (allowed 60 s)"),
        ("e5", "shipping", "never attempted"),
    ]
    # Scoped to one group, or to other topics, the others' gaps do not count.
    assert audit(store, "delivery_completeness", groups=["billing"]).figures["missing"] == 1
    assert audit(store, "delivery_completeness", topics=["payments.#"]).status == "pass"
    # A named group must get every event, even one whose subscriber never got anything.
    result = audit(store, "delivery_completeness", topics=["orders.#"], groups=["audit-log"])
    assert result.figures == {"events": 5, "pairs": 5, "missing": 5, "findings_total": 5}
    assert {(f["group"], f["reason"]) for f in result.findings} == {
        ("audit-log", "never attempted")
    }


# --- latency SLO -------------------------------------------------------------------------------


def test_latency_slo(store: Store) -> None:
    clean(store)
    result = audit(store, "latency_slo", p95_ms=500, p99_ms=1000)
    assert result.status == "pass", result
    assert result.figures["orders.eu.created/shipping/p50_ms"] == pytest.approx(30, abs=0.5)

    topic = "orders.eu.created"
    slow = [traced(n, topic, T + n * S) for n in (6, 7)]
    insert(store.client, "events", slow)
    insert(
        store.client,
        "deliveries",
        [acked(n, topic, "billing", T + n * S, after_ms=2_100) for n in (6, 7)],
    )
    result = audit(store, "latency_slo", p95_ms=500, p99_ms=1000)
    assert result.status == "fail"
    [finding] = result.findings
    assert (finding["topic"], finding["group"], finding["acks"]) == (topic, "billing", 4)
    assert finding["p99_ms"] == pytest.approx(2100, abs=1)
    assert finding["over"] == {"p95_ms": 500, "p99_ms": 1000}
    assert audit(store, "latency_slo", p95_ms=500, groups=["shipping"]).status == "pass"


# --- dead letters ------------------------------------------------------------------------------


def test_dead_letters(store: Store) -> None:
    clean(store)
    assert audit(store, "dead_letters").status == "pass"

    topic = "orders.us.created"
    rows = [
        delivery(f"d{n}", topic, "shipping", 3, "dead_lettered", status, T + n * S, T, "", "")
        for n, status in ((1, 500), (2, 500), (3, 410))
    ]
    insert(store.client, "deliveries", rows)
    result = audit(store, "dead_letters", max_dead_letters=1)
    assert result.status == "fail"
    assert result.summary == "3 dead letters (allowed 1) in 2 topic/group/reason groups"
    assert [(f["reason"], f["events"], sorted(f["sample"])) for f in result.findings] == [
        ("HTTP 500", 2, ["d1", "d2"]),
        ("HTTP 410", 1, ["d3"]),
    ]
    assert audit(store, "dead_letters", max_dead_letters=3).status == "pass"


# --- schema conformance ------------------------------------------------------------------------

ORDER_SCHEMA = {
    "type": "object",
    "required": ["order", "amount"],
    "properties": {"order": {"type": "integer"}, "amount": {"type": "number"}},
}


def test_schema_conformance(store: Store) -> None:
    clean(store)
    params = {"topics": ["orders.#"], "type": "order.created", "schema": ORDER_SCHEMA}
    result = audit(store, "schema_conformance", **params)
    assert result.status == "pass", result
    assert result.figures["checked"] == 2

    topic = "orders.eu.created"
    insert(
        store.client,
        "events",
        [
            traced(8, topic, T + 8 * S, data=b'{"order": 8, "amount": "ten"}'),
            traced(6, topic, T + 9 * S, data=b"not json"),
            traced(7, topic, T + 10 * S, data=b'{"order": 7}', type_="order.other"),
        ],
    )
    result = audit(store, "schema_conformance", **params)
    assert result.status == "fail"
    assert [(f["event_id"], f["path"], f["error"]) for f in result.findings] == [
        ("e8", "amount", "'ten' is not of type 'number'"),
        ("e6", "", "data is not JSON: Expecting value: line 1 column 1 (char 0)"),
    ]  # e7 is of another type
    assert audit(store, "schema_conformance", **params, max_failures=2).status == "pass"


# --- trace integrity ---------------------------------------------------------------------------


def test_trace_integrity(store: Store) -> None:
    clean(store)
    result = audit(store, "trace_integrity")
    assert result.status == "pass", result

    topic = "orders.eu.created"
    insert(store.client, "events", [event("u1", topic, T + 3 * S, ""), traced(4, topic, T + 4 * S)])
    insert(
        store.client,
        "spans",
        [process(TRACES[5], "5" * 16, "9" * 16, topic, "billing", 1, T + 5 * S, MS, "acked", 200)],
    )
    insert(  # e4's delivery was recorded under another trace: the trace is cut at the mesh
        store.client,
        "deliveries",
        [delivery("e4", topic, "billing", 1, "acked", 200, T + 4 * S, T + 4 * S, TRACES[8], "")],
    )
    result = audit(store, "trace_integrity")
    assert result.status == "fail"
    assert result.figures == {
        "untraced_events": 1, "orphan_spans": 1, "cut_traces": 1, "findings_total": 3,
    }  # fmt: skip
    untraced, orphan, cut = result.findings
    assert untraced == {
        "problem": "events without trace context", "count": 1, "sample": [f"{topic}/u1"],
    }  # fmt: skip
    assert (orphan["span_id"], orphan["parent_span_id"]) == ("5" * 16, "9" * 16)
    assert (cut["event_id"], cut["group"], cut["delivery_trace_id"]) == ("e4", "billing", TRACES[8])


# --- parameters --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "params", "complaint"),
    [
        ("latency_slo", {}, "latency_slo parameters at (top level): {} is not valid"),
        ("latency_slo", {"p95_ms": -1}, "at p95_ms: -1 is less than or equal to the minimum of 0"),
        ("dead_letters", {"max_dead_letter": 1}, "'max_dead_letter' was unexpected"),
        ("delivery_completeness", {"topics": "orders"}, "at topics: 'orders' is not of type"),
        ("delivery_completeness", {"topics": ["orders.#x"]}, "at topics: "),
        ("schema_conformance", {"schema": {"type": "thing"}}, "not a valid JSON Schema"),
        ("replay_regression", {"since": "yesterday", "until": "now"}, "since"),
    ],
)
def test_bad_parameters_say_what_and_where(kind: str, params: Any, complaint: str) -> None:
    with pytest.raises(InvalidParameters) as caught:
        validate_parameters(kind, params)
    assert complaint in str(caught.value)


def test_unknown_kind_lists_the_kinds() -> None:
    with pytest.raises(UnknownKind, match="the kinds are capture_health, dead_letters"):
        validate_parameters("nope", {})


def test_defaults_are_filled_in_and_every_kind_has_a_schema() -> None:
    assert validate_parameters("delivery_completeness", {}) == {
        "topics": ["#"], "within_s": 60, "window_s": 300,
    }  # fmt: skip
    assert sorted(KINDS) == [
        "capture_health", "dead_letters", "delivery_completeness", "latency_slo",
        "replay_regression", "schema_conformance", "trace_integrity",
    ]  # fmt: skip


def test_exported_names_are_pinned_documented_and_private() -> None:
    assert auditing.__all__ == [
        "KINDS", "MAX_FINDINGS", "AuditContext", "AuditError", "AuditKind", "AuditResult",
        "AuditUnavailable", "InvalidParameters", "UnknownKind", "run_audit", "validate_parameters",
    ]  # fmt: skip
    for name in auditing.__all__:
        member = getattr(auditing, name)
        if callable(member):
            assert inspect.getdoc(member), f"auditing.{name} has no docstring"
            assert member.__module__.startswith("auditing._"), (name, member.__module__)
    assert issubclass(auditing.InvalidParameters, ValueError)
    assert issubclass(auditing.AuditUnavailable, auditing.AuditError)
