"""The audit kinds: each a JSON Schema for its parameters and a check that reads the capture
store (through ``tracing``'s read side) or the mesh, and returns an :class:`AuditResult`.

Pure domain code: no Django, no Celery. meshadmin stores audits, validates their parameters
with :func:`validate_parameters` in the admin form, and calls :func:`run_audit` from a task.

Windows end at the context's ``now``. Delivery completeness checks events published in
``[now - within_s - window_s, now - within_s)``, so every event checked has had its
``within_s`` to be acked (an event published a second ago is not "missing" yet).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError, best_match
from prometheus_client.parser import text_string_to_metric_families

from auditing._errors import AuditUnavailable, InvalidParameters, UnknownKind
from auditing._model import AuditContext, AuditResult
from runtime import InvalidTopic, compile_pattern
from tracing import (
    EventWindow,
    dead_letters_by_reason,
    delivery_outcomes,
    events_in_window,
    group_latencies,
    published_events,
    topic_groups,
    topics_in_window,
    trace_integrity,
)
from tracing.clickhouse import ClickhouseError, ClickhouseUnavailable, partitions_older_than

__all__ = ["KINDS", "MAX_FINDINGS", "AuditKind", "run_audit", "validate_parameters"]

MAX_FINDINGS: Final = 200
"""Findings one run keeps (``figures["findings_total"]`` counts them all)."""
_NS: Final = 1_000_000_000
_MS: Final = 1_000_000

Check = Callable[[AuditContext, dict[str, Any]], AuditResult]


@dataclass(frozen=True)
class AuditKind:
    """One kind of audit: its name, what it checks, its parameters' JSON Schema, the check."""

    name: str
    title: str
    schema: Mapping[str, Any]
    check: Check

    def defaults(self) -> dict[str, Any]:
        """The parameters' defaults, as the schema declares them."""
        props: Mapping[str, Any] = self.schema.get("properties", {})
        return {k: v["default"] for k, v in props.items() if "default" in v}


# --- parameter schemas -------------------------------------------------------------------------

_WINDOW = {"type": "integer", "minimum": 1, "default": 300, "description": "seconds looked back"}
_TOPICS = {
    "type": "array",
    "items": {"type": "string", "minLength": 1},
    "minItems": 1,
    "default": ["#"],
    "description": "topic names or patterns (* one segment, # any)",
}
_GROUPS = {
    "type": "array",
    "items": {"type": "string", "minLength": 1},
    "minItems": 1,
    "description": "only these consumer groups (default: every group seen)",
}
_EXPECTED_GROUPS = {
    **_GROUPS,
    "description": "groups that must get every event of the topics, whether or not they got "
    "any (default: every group that got some must get all)",
}
_COUNT = {"type": "integer", "minimum": 0, "default": 0}
_MS_THRESHOLD = {"type": "number", "exclusiveMinimum": 0}


def _object(properties: Mapping[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "properties": dict(properties),
        "additionalProperties": False,
        **extra,
    }


# --- helpers -------------------------------------------------------------------------------------


def _window(ctx: AuditContext, params: Mapping[str, Any]) -> tuple[datetime, datetime]:
    return ctx.now - timedelta(seconds=int(params["window_s"])), ctx.now


def _matcher(params: Mapping[str, Any]) -> Callable[[str, str], bool]:
    patterns = [compile_pattern(p) for p in params.get("topics", ["#"])]
    groups = set(params.get("groups") or ())

    def wanted(topic: str, group: str) -> bool:
        return any(p.matches(topic) for p in patterns) and (not groups or group in groups)

    return wanted


def _result(
    failed: bool, summary: str, findings: Sequence[Mapping[str, Any]], figures: dict[str, float]
) -> AuditResult:
    figures["findings_total"] = len(findings)
    return AuditResult(
        status="fail" if failed else "pass",
        summary=summary,
        findings=tuple(findings[:MAX_FINDINGS]),
        figures=figures,
    )


def _iso(ns: int) -> str:
    return datetime.fromtimestamp(ns / _NS, UTC).isoformat()


# --- delivery completeness ---------------------------------------------------------------------


def _delivery_completeness(ctx: AuditContext, params: dict[str, Any]) -> AuditResult:
    within_ns = int(float(params["within_s"]) * _NS)
    until = ctx.now - timedelta(seconds=float(params["within_s"]))
    since = until - timedelta(seconds=int(params["window_s"]))
    groups_of: dict[str, list[str]] = defaultdict(list)
    if params.get("groups"):  # named groups must get every event of the topics
        for topic in topics_in_window(ctx.clickhouse, params["topics"], since, until):
            groups_of[topic] = list(params["groups"])
    else:  # every group that got any of a topic's events must get them all
        wanted = _matcher(params)
        for topic, group in topic_groups(ctx.clickhouse, since, ctx.now):
            if wanted(topic, group):
                groups_of[topic].append(group)
    topics = sorted(groups_of)
    events = published_events(ctx.clickhouse, topics, since, until)
    outcomes = {
        (o.event_id, o.topic, o.group): o
        for o in delivery_outcomes(ctx.clickhouse, topics, since, ctx.now)
    }
    missing: list[dict[str, Any]] = []
    pairs = 0
    for event in events:
        for group in groups_of[event.topic]:
            pairs += 1
            outcome = outcomes.get((event.event_id, event.topic, group))
            if outcome is None:
                reason = "never attempted"
            elif not outcome.acked:
                reason = (
                    f"not acked: last outcome {outcome.last_outcome}"
                    f"{f' ({outcome.last_error})' if outcome.last_error else ''} after "
                    f"{outcome.attempts} attempt{'s' if outcome.attempts != 1 else ''}"
                )
            elif outcome.first_ack_ns - event.published_ns > within_ns:
                late = (outcome.first_ack_ns - event.published_ns) / _NS
                reason = f"acked after {late:.1f} s (allowed {params['within_s']} s)"
            else:
                continue
            missing.append(
                {
                    "event_id": event.event_id,
                    "topic": event.topic,
                    "group": group,
                    "published_at": _iso(event.published_ns),
                    "reason": reason,
                }
            )
    summary = (
        f"{len(missing)} of {pairs} (event, group) deliveries missing"
        if missing
        else f"all {pairs} (event, group) deliveries of {len(events)} events acked in time"
    )
    figures = {"events": float(len(events)), "pairs": float(pairs), "missing": float(len(missing))}
    return _result(bool(missing), summary, missing, figures)


# --- latency SLO -------------------------------------------------------------------------------


def _latency_slo(ctx: AuditContext, params: dict[str, Any]) -> AuditResult:
    since, until = _window(ctx, params)
    wanted = _matcher(params)
    thresholds = {q: params[f"{q}_ms"] for q in ("p50", "p95", "p99") if f"{q}_ms" in params}
    findings: list[dict[str, Any]] = []
    figures: dict[str, float] = {}
    groups = 0
    for row in group_latencies(ctx.clickhouse, since, until):
        if not wanted(row.topic, row.group) or row.acks < int(params["min_acks"]):
            continue
        groups += 1
        measured = {"p50": row.p50_ns / _MS, "p95": row.p95_ns / _MS, "p99": row.p99_ns / _MS}
        for q, value in measured.items():
            figures[f"{row.topic}/{row.group}/{q}_ms"] = round(value, 3)
        over = {q: limit for q, limit in thresholds.items() if measured[q] > limit}
        if over:
            findings.append(
                {
                    "topic": row.topic,
                    "group": row.group,
                    "acks": row.acks,
                    **{f"{q}_ms": round(v, 3) for q, v in measured.items()},
                    "over": {f"{q}_ms": limit for q, limit in over.items()},
                }
            )
    summary = (
        f"{len(findings)} of {groups} topic/group pairs over their latency SLO"
        if findings
        else f"all {groups} topic/group pairs within their latency SLO"
    )
    return _result(bool(findings), summary, findings, figures)


# --- dead letters ------------------------------------------------------------------------------


def _dead_letters(ctx: AuditContext, params: dict[str, Any]) -> AuditResult:
    since, until = _window(ctx, params)
    wanted = _matcher(params)
    rows = [
        r for r in dead_letters_by_reason(ctx.clickhouse, since, until) if wanted(r.topic, r.group)
    ]
    total = sum(r.events for r in rows)
    limit = int(params["max_dead_letters"])
    findings = [
        {
            "topic": r.topic,
            "group": r.group,
            "reason": r.reason,
            "events": r.events,
            "sample": list(r.sample),
        }
        for r in rows
    ]
    failed = total > limit
    summary = (
        f"{total} dead letters (allowed {limit}) in {len(rows)} topic/group/reason groups"
        if failed
        else f"{total} dead letters, within the allowed {limit}"
    )
    return _result(failed, summary, findings if failed else [], {"dead_letters": float(total)})


# --- schema conformance ------------------------------------------------------------------------


def _schema_conformance(ctx: AuditContext, params: dict[str, Any]) -> AuditResult:
    since, until = _window(ctx, params)
    validator = Draft202012Validator(params["schema"])
    attributes = (("type", params["type"]),) if params.get("type") else ()
    window = EventWindow(tuple(params["topics"]), since, until, attributes=attributes)
    findings: list[dict[str, Any]] = []
    checked = 0
    for row in events_in_window(ctx.clickhouse, window):
        if row.replay_id:
            continue
        checked += 1
        where = {"event_id": row.event_id, "topic": row.topic, "type": row.type}
        try:
            data = json.loads(row.data) if row.data else None
        except ValueError as e:
            findings.append({**where, "path": "", "error": f"data is not JSON: {e}"})
            continue
        error = best_match(validator.iter_errors(data))
        if error is not None:
            path = "/".join(str(p) for p in error.absolute_path)
            findings.append({**where, "path": path, "error": error.message})
    limit = int(params["max_failures"])
    failed = len(findings) > limit
    summary = (
        f"{len(findings)} of {checked} events do not conform to the schema"
        if findings
        else f"all {checked} events conform to the schema"
    )
    return _result(failed, summary, findings, {"checked": float(checked)})


# --- trace integrity ---------------------------------------------------------------------------


def _trace_integrity(ctx: AuditContext, params: dict[str, Any]) -> AuditResult:
    since, until = _window(ctx, params)
    report = trace_integrity(ctx.clickhouse, since, until)
    findings: list[dict[str, Any]] = []
    if report.untraced_events > int(params["max_untraced_events"]):
        findings.append(
            {
                "problem": "events without trace context",
                "count": report.untraced_events,
                "sample": list(report.untraced_sample),
            }
        )
    if len(report.orphan_spans) > int(params["max_orphan_spans"]):
        findings.extend(
            {
                "problem": "span whose parent is missing",
                "trace_id": s.trace_id,
                "span_id": s.span_id,
                "parent_span_id": s.parent_span_id,
                "name": s.name,
                "service": s.service,
            }
            for s in report.orphan_spans
        )
    if len(report.cut_deliveries) > int(params["max_cut_traces"]):
        findings.extend(
            {
                "problem": "trace cut between producer and consumer",
                "event_id": c.event_id,
                "topic": c.topic,
                "group": c.group,
                "delivery_trace_id": c.trace_id,
            }
            for c in report.cut_deliveries
        )
    figures = {
        "untraced_events": float(report.untraced_events),
        "orphan_spans": float(len(report.orphan_spans)),
        "cut_traces": float(len(report.cut_deliveries)),
    }
    summary = (
        f"trace integrity broken: {report.untraced_events} untraced events, "
        f"{len(report.orphan_spans)} orphan spans, {len(report.cut_deliveries)} cut traces"
        if findings
        else "every trace in the window is whole"
    )
    return _result(bool(findings), summary, findings, figures)


# --- capture health ----------------------------------------------------------------------------

_CAPTURE_GAUGES = {
    "meshtap_capture_buffered_rows": "buffered_rows",
    "meshtap_capture_spooled_rows": "spooled_rows",
    "meshtap_capture_clickhouse_up": "clickhouse_up",
}


def _capture_metrics(url: str) -> dict[str, float]:
    """The recorder's figures from the runtime's Prometheus endpoint, summed over tables."""
    with urllib.request.urlopen(url.rstrip("/") + "/metrics", timeout=10) as response:
        text = response.read().decode()
    figures: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            name = _CAPTURE_GAUGES.get(sample.name)
            if sample.name == "meshtap_capture_dropped_rows_total":
                name = "dropped_rows"
            if name is not None:
                figures[name] = figures.get(name, 0.0) + float(sample.value)
    return figures


def _capture_health(ctx: AuditContext, params: dict[str, Any]) -> AuditResult:
    findings: list[dict[str, Any]] = []
    figures: dict[str, float] = {}
    try:
        ctx.clickhouse.ping()
        figures["clickhouse_reachable"] = 1.0
    except ClickhouseError as e:
        figures["clickhouse_reachable"] = 0.0
        findings.append({"check": "clickhouse reachable", "error": str(e)})
    runtime_url = params.get("runtime_url") or ctx.runtime_url
    if runtime_url:
        try:
            metrics = _capture_metrics(runtime_url)
        except (OSError, ValueError) as e:
            findings.append({"check": "runtime metrics", "url": runtime_url, "error": str(e)})
        else:
            figures.update(metrics)
            if "clickhouse_up" not in metrics:
                findings.append(
                    {"check": "capture enabled", "url": runtime_url,
                     "error": "the runtime exposes no capture metrics: start it with --capture"}
                )  # fmt: skip
            limits = {
                "buffered_rows": params["max_buffered_rows"],
                "spooled_rows": params["max_spooled_rows"],
                "dropped_rows": params["max_dropped_rows"],
            }
            for name, limit in limits.items():
                if metrics.get(name, 0.0) > limit:
                    findings.append({"check": name, "value": metrics[name], "limit": limit})
            if metrics.get("clickhouse_up", 1.0) < 1.0:
                findings.append({"check": "recorder reaches clickhouse", "value": 0})
    if figures.get("clickhouse_reachable"):
        days = int(params.get("retention_days", ctx.retention_days))
        # Retention runs daily: a day of slack before a partition counts as overdue.
        overdue = partitions_older_than(ctx.clickhouse, days + 1, today=ctx.now.date())
        figures["overdue_partitions"] = float(len(overdue))
        if overdue:
            findings.append(
                {
                    "check": "retention applied",
                    "retention_days": days,
                    "overdue_partitions": [f"{t}/{p}" for t, p in overdue[:50]],
                }
            )
    summary = (
        f"capture unhealthy: {', '.join(str(f['check']) for f in findings)}"
        if findings
        else "capture healthy"
    )
    return _result(bool(findings), summary, findings, figures)


# --- the registry ------------------------------------------------------------------------------


def _replay_regression(ctx: AuditContext, params: dict[str, Any]) -> AuditResult:
    from auditing._regression import replay_regression  # replay's machinery, loaded on use

    return replay_regression(ctx, params)


KINDS: Final[Mapping[str, AuditKind]] = {
    kind.name: kind
    for kind in (
        AuditKind(
            "delivery_completeness",
            "Every event published to a subscribed topic was acked by each group in time",
            _object(
                {
                    "topics": _TOPICS,
                    "groups": _EXPECTED_GROUPS,
                    "within_s": {"type": "number", "exclusiveMinimum": 0, "default": 60},
                    "window_s": _WINDOW,
                }
            ),
            _delivery_completeness,
        ),
        AuditKind(
            "latency_slo",
            "publish -> ack p50/p95/p99 per topic and group within thresholds",
            _object(
                {
                    "topics": _TOPICS,
                    "groups": _GROUPS,
                    "p50_ms": _MS_THRESHOLD,
                    "p95_ms": _MS_THRESHOLD,
                    "p99_ms": _MS_THRESHOLD,
                    "min_acks": {"type": "integer", "minimum": 1, "default": 1},
                    "window_s": _WINDOW,
                },
                anyOf=[
                    {"required": ["p50_ms"]},
                    {"required": ["p95_ms"]},
                    {"required": ["p99_ms"]},
                ],
            ),
            _latency_slo,
        ),
        AuditKind(
            "dead_letters",
            "Dead-lettered events above a threshold, grouped by reason",
            _object(
                {
                    "topics": _TOPICS,
                    "groups": _GROUPS,
                    "max_dead_letters": _COUNT,
                    "window_s": _WINDOW,
                }
            ),
            _dead_letters,
        ),
        AuditKind(
            "schema_conformance",
            "Events of a topic/type validate against a JSON Schema",
            _object(
                {
                    "topics": _TOPICS,
                    "type": {"type": "string", "minLength": 1},
                    "schema": {"type": "object", "description": "the events' data JSON Schema"},
                    "max_failures": _COUNT,
                    "window_s": _WINDOW,
                },
                required=["schema"],
            ),
            _schema_conformance,
        ),
        AuditKind(
            "trace_integrity",
            "No events without trace context, orphan spans or traces cut at the mesh",
            _object(
                {
                    "max_untraced_events": _COUNT,
                    "max_orphan_spans": _COUNT,
                    "max_cut_traces": _COUNT,
                    "window_s": _WINDOW,
                }
            ),
            _trace_integrity,
        ),
        AuditKind(
            "replay_regression",
            "Replay a saved window into a sandbox; fail if the outcome-diff score drops",
            _object(
                {
                    "topics": _TOPICS,
                    "since": {"type": "string", "format": "date-time"},
                    "until": {"type": "string", "format": "date-time"},
                    "min_score": {"type": "number", "minimum": 0, "maximum": 1, "default": 1.0},
                    "target_url": {"type": "string", "minLength": 1},
                    "to_prefix": {"type": "string", "default": "replay."},
                    "speed": {"type": "string", "default": "max"},
                    "ignore": {"type": "array", "items": {"type": "string"}, "default": []},
                    "unordered": {"type": "array", "items": {"type": "string"}, "default": []},
                    "settle_s": {"type": "number", "minimum": 0, "default": 5},
                },
                required=["since", "until"],
            ),
            _replay_regression,
        ),
        AuditKind(
            "capture_health",
            "Recorder lag, spool and drops, ClickHouse reachable, retention applied",
            _object(
                {
                    "runtime_url": {"type": "string", "minLength": 1},
                    "max_buffered_rows": {"type": "integer", "minimum": 0, "default": 10_000},
                    "max_spooled_rows": _COUNT,
                    "max_dropped_rows": _COUNT,
                    "retention_days": {"type": "integer", "minimum": 0},
                }
            ),
            _capture_health,
        ),
    )
}


def kind_of(name: str) -> AuditKind:
    """The kind called ``name``, or :class:`UnknownKind` listing the kinds there are."""
    try:
        return KINDS[name]
    except KeyError:
        raise UnknownKind(
            f"unknown audit kind {name!r}; the kinds are {', '.join(sorted(KINDS))}"
        ) from None


def validate_parameters(kind: str, parameters: object) -> dict[str, Any]:
    """``parameters`` checked against ``kind``'s JSON Schema, with the defaults filled in.

    Raises :class:`InvalidParameters` naming the field, the offending value and the rule
    (the admin form shows it as is), or :class:`UnknownKind`.
    """
    audit_kind = kind_of(kind)
    error = best_match(Draft202012Validator(audit_kind.schema).iter_errors(parameters))
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "(top level)"
        raise InvalidParameters(
            f"{kind} parameters at {where}: {error.message}. Allowed fields: "
            f"{', '.join(sorted(audit_kind.schema['properties']))}"
        )
    assert isinstance(parameters, dict)
    if kind == "schema_conformance":
        try:
            Draft202012Validator.check_schema(parameters["schema"])
        except SchemaError as e:
            raise InvalidParameters(
                f"schema_conformance parameters at schema: not a valid JSON Schema: {e.message}"
            ) from e
    for pattern in parameters.get("topics", ()):
        try:
            compile_pattern(pattern)
        except InvalidTopic as e:
            raise InvalidParameters(f"{kind} parameters at topics: {e}") from e
    if kind == "replay_regression":
        from auditing._regression import check_window

        check_window(parameters)
    return {**audit_kind.defaults(), **parameters}


def run_audit(kind: str, parameters: Mapping[str, Any], ctx: AuditContext) -> AuditResult:
    """Run one audit. A failing check is a ``fail`` result; the store being unreachable is
    :class:`AuditUnavailable` (retry later), bad parameters :class:`InvalidParameters`."""
    checked = validate_parameters(kind, dict(parameters))
    try:
        return KINDS[kind].check(ctx, checked)
    except ClickhouseUnavailable as e:
        raise AuditUnavailable(f"{kind}: ClickHouse is unavailable: {e}") from e
