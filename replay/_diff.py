"""Outcome diff: what the system under test emitted in response to each replayed event, against
what it emitted in response to the original.

**Responses.** A response is an event recorded in the trigger's trace -- a system under test that
propagates trace context (publishes with the ``traceparent`` it was pushed with, which any
OpenTelemetry-instrumented service does) puts its events there. Each replayed event starts a
trace of its own, so its responses are the other events of that trace. An original may share its
trace with other originals (a batch publish); then a response is attributed through the spans:
its ``traceparent`` names the mesh's delivery span, whose parent is the trigger's creation
context. A system that does not propagate trace context can name its trigger in a correlation
extension instead (``DiffRules.correlation``, e.g. ``correlationid`` = the trigger's id).

**Comparison.** Per trigger, responses are paired by (topic without the replay prefix, type) in
publish order; unpaired ones are *missing* (only the original run emitted them) or *extra*
(only the replay did). A pair is *matched* when every compared field is equal, else *differing*
with the field-level differences. Fields are the CloudEvents attributes and extensions and the
JSON data flattened to dotted paths (``data.items.0.sku``); non-JSON data compares as bytes.
``id``, ``time``, trace context and the replay provenance extensions are always ignored;
``DiffRules.ignore`` adds paths (``*`` matches any characters: ``data.*.updated_at``), and
``DiffRules.unordered`` names arrays compared as multisets (``data.items``; ``*`` for all).
The score is matched / (matched + differing + missing + extra), 1.0 when nothing was emitted
either time.
"""

from __future__ import annotations

import fnmatch
import json
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from replay._errors import InvalidSpec
from replay._select import Selection
from tracing import EventRow, EventWindow, events_of_replay, events_of_traces, trace_by_id
from tracing.clickhouse import ClickHouse

__all__ = ["DiffReport", "DiffRules", "FieldDiff", "ResponseDiff", "outcome_diff"]

ALWAYS_IGNORED: Final = (
    "id",
    "time",
    "traceparent",
    "tracestate",
    "replayid",
    "replayoriginalid",
    "replayoriginaltopic",
    "replayoriginaltime",
)
MAX_TRIGGERS: Final = 10_000
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_RESPONSE_SLACK: Final = timedelta(minutes=10)
_TRACE_CHUNK: Final = 1_000
_MAX_ITEMS: Final = 1_000


@dataclass(frozen=True, slots=True)
class DiffRules:
    """Ignore rules: field ``ignore`` paths and ``unordered`` arrays; ``correlation`` names an
    extension carrying the trigger's id (else responses are found by trace context)."""

    ignore: tuple[str, ...] = ()
    unordered: tuple[str, ...] = ()
    correlation: str = ""

    def __post_init__(self) -> None:
        for name in ("ignore", "unordered"):
            value = getattr(self, name)
            if isinstance(value, str) or not all(isinstance(p, str) and p for p in value):
                raise InvalidSpec(
                    f"{name} {value!r} must be a list of field paths, e.g. "
                    f"['data.processed_at', 'data.items']"
                )
            object.__setattr__(self, name, tuple(value))

    def ignored(self, path: str) -> bool:
        return path in ALWAYS_IGNORED or any(fnmatch.fnmatchcase(path, p) for p in self.ignore)

    def is_unordered(self, path: str) -> bool:
        return any(fnmatch.fnmatchcase(path, p) for p in self.unordered)


@dataclass(frozen=True, slots=True)
class FieldDiff:
    path: str
    original: Any
    replayed: Any


@dataclass(frozen=True, slots=True)
class ResponseDiff:
    trigger: str
    """The original event (``topic/id``) the response answers."""
    outcome: str
    """``matched``, ``differing``, ``missing`` or ``extra``."""
    topic: str
    type: str
    differences: tuple[FieldDiff, ...] = ()


@dataclass(frozen=True, slots=True)
class DiffReport:
    replay_id: str
    triggers: int
    matched: int
    differing: int
    missing: int
    extra: int
    items: tuple[ResponseDiff, ...]
    """Every response that was not matched (the first :data:`_MAX_ITEMS`)."""

    @property
    def score(self) -> float:
        total = self.matched + self.differing + self.missing + self.extra
        return 1.0 if total == 0 else self.matched / total

    def to_json(self) -> dict[str, Any]:
        return {
            "replay_id": self.replay_id,
            "triggers": self.triggers,
            "matched": self.matched,
            "differing": self.differing,
            "missing": self.missing,
            "extra": self.extra,
            "score": round(self.score, 4),
            "items": [
                {
                    "trigger": i.trigger,
                    "outcome": i.outcome,
                    "topic": i.topic,
                    "type": i.type,
                    "differences": [
                        {"path": d.path, "original": d.original, "replayed": d.replayed}
                        for d in i.differences
                    ],
                }
                for i in self.items
            ],
        }


def _flatten(value: Any, path: str, rules: DiffRules, out: dict[str, Any]) -> None:
    if rules.ignored(path):
        return
    if isinstance(value, dict):
        for k, v in value.items():
            _flatten(v, f"{path}.{k}", rules, out)
    elif isinstance(value, list):
        if rules.is_unordered(path):
            out[path] = sorted(json.dumps(v, sort_keys=True) for v in value)
        else:
            for i, v in enumerate(value):
                _flatten(v, f"{path}.{i}", rules, out)
            if not value:
                out[path] = []
    else:
        out[path] = value


def _fields(row: EventRow, rules: DiffRules) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in row.attributes().items():
        if not rules.ignored(name):
            out[name] = value
    try:
        data = json.loads(row.data) if row.data else None
    except (ValueError, UnicodeDecodeError):
        if not rules.ignored("data"):
            out["data"] = row.data.hex()
        return out
    _flatten(data, "data", rules, out)
    return out


def _compare(original: EventRow, replayed: EventRow, rules: DiffRules) -> tuple[FieldDiff, ...]:
    a, b = _fields(original, rules), _fields(replayed, rules)
    return tuple(
        FieldDiff(path, a.get(path), b.get(path))
        for path in sorted(set(a) | set(b))
        if a.get(path) != b.get(path)
    )


def _strip(topic: str, prefix: str) -> str:
    return topic[len(prefix) :] if prefix and topic.startswith(prefix) else topic


def _chunks(values: Sequence[str], size: int) -> Iterable[Sequence[str]]:
    for i in range(0, len(values), size):
        yield values[i : i + size]


def _traceparent_span(row: EventRow) -> str:
    parts = dict(row.extensions).get("traceparent", "").split("-")
    return parts[2] if len(parts) >= 4 else ""


def _responses(
    client: ClickHouse,
    triggers: Sequence[EventRow],
    window: EventWindow,
    rules: DiffRules,
) -> dict[tuple[str, str], list[EventRow]]:
    """Responses per trigger (keyed by the trigger's topic and id)."""
    by_trace: dict[str, list[EventRow]] = defaultdict(list)
    for t in triggers:
        if t.trace_id:
            by_trace[t.trace_id].append(t)
    keys = {(t.topic, t.event_id) for t in triggers}
    found: dict[tuple[str, str], list[EventRow]] = defaultdict(list)
    trace_ids = sorted(by_trace)
    for chunk in _chunks(trace_ids, _TRACE_CHUNK):
        for row in events_of_traces(client, window, chunk):
            if (row.topic, row.event_id) in keys or "replayoriginalid" in dict(row.extensions):
                continue  # a trigger (or another replay's), not a response
            candidates = by_trace[row.trace_id]
            if rules.correlation:
                wanted = dict(row.extensions).get(rules.correlation)
                candidates = [t for t in candidates if t.event_id == wanted] or candidates
            if len(candidates) > 1:
                candidates = _by_delivery_span(client, row, candidates)
            if len(candidates) == 1:
                trigger = candidates[0]
                if row.published_ns >= trigger.published_ns:
                    found[(trigger.topic, trigger.event_id)].append(row)
    return found


def _by_delivery_span(
    client: ClickHouse, response: EventRow, candidates: Sequence[EventRow]
) -> list[EventRow]:
    span_id = _traceparent_span(response)
    view = trace_by_id(client, response.trace_id)
    if view is None or not span_id:
        return list(candidates)
    parents = {s.parent_span_id for s in view.spans if s.span_id == span_id}
    return [t for t in candidates if t.span_id in parents]


def outcome_diff(
    client: ClickHouse,
    selection: Selection,
    replay_id: str,
    *,
    since_ns: int,
    rules: DiffRules | None = None,
) -> DiffReport:
    """Compare the responses to the replay ``replay_id`` of ``selection`` (sent from
    ``since_ns`` on) with the responses to the originals; see the module docstring."""
    rules = rules or DiffRules()
    spec = selection.spec
    originals = list(selection.rows())
    if len(originals) > MAX_TRIGGERS:
        raise InvalidSpec(
            f"the outcome diff compares at most {MAX_TRIGGERS} triggers, the replay has "
            f"{len(originals)}; diff a narrower replay (limit, sample)"
        )
    window = EventWindow(("#",), spec.since, spec.until + _RESPONSE_SLACK)
    original_responses = _responses(client, originals, window, rules)

    replayed = events_of_replay(client, replay_id, selection.target_topics, since_ns)
    trigger_of: dict[tuple[str, str], EventRow] = {}
    for row in replayed:
        ext = dict(row.extensions)
        trigger_of[(ext.get("replayoriginaltopic", ""), ext.get("replayoriginalid", ""))] = row
    replay_since = min((r.published_ns for r in replayed), default=since_ns)
    start = _EPOCH + timedelta(microseconds=replay_since // 1000)
    replay_window = EventWindow(("#",), start, start + timedelta(days=1))
    replay_responses = _responses(client, list(trigger_of.values()), replay_window, rules)

    counts = {"matched": 0, "differing": 0, "missing": 0, "extra": 0}
    items: list[ResponseDiff] = []
    for trigger in originals:
        name = f"{trigger.topic}/{trigger.event_id}"
        before = original_responses.get((trigger.topic, trigger.event_id), [])
        replay_trigger = trigger_of.get((trigger.topic, trigger.event_id))
        after = (
            replay_responses.get((replay_trigger.topic, replay_trigger.event_id), [])
            if replay_trigger is not None
            else []
        )
        pending: dict[tuple[str, str], list[EventRow]] = defaultdict(list)
        for row in after:
            pending[(_strip(row.topic, spec.to_prefix), row.type)].append(row)
        for row in before:
            key = (row.topic, row.type)
            if pending[key]:
                differences = _compare(row, pending[key].pop(0), rules)
                outcome = "differing" if differences else "matched"
            else:
                differences, outcome = (), "missing"
            counts[outcome] += 1
            if outcome != "matched":
                items.append(ResponseDiff(name, outcome, row.topic, row.type, differences))
        for (topic, type_), rows in pending.items():
            for _ in rows:
                counts["extra"] += 1
                items.append(ResponseDiff(name, "extra", topic, type_))
    return DiffReport(
        replay_id=replay_id,
        triggers=len(originals),
        items=tuple(items[:_MAX_ITEMS]),
        **counts,
    )
