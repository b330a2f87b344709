"""The `tracing` package's public surface is small and pinned (CONVENTIONS 2).

Adding a name is a decision, so this test has to be edited with it. ``tracing.clickhouse``'s
names are pinned in tests/test_clickhouse_store.py.
"""

from __future__ import annotations

import inspect
import re
from importlib.metadata import entry_points
from pathlib import Path

from opentelemetry.sdk.trace.export import SpanExporter

import runtime
import tracing
from runtime import CaptureConfig, CaptureSink


def test_exported_names_are_pinned() -> None:
    assert tracing.__all__ == [
        "ClickHouseCapture",
        "ClickHouseSpanExporter",
        "CutDelivery",
        "DeadLetterGroup",
        "DeliveryAttempt",
        "EventHistogram",
        "EventRow",
        "EventWindow",
        "GroupLatency",
        "GroupOutcome",
        "IntegrityReport",
        "InvalidQuery",
        "OrphanSpan",
        "Page",
        "ProducerTopic",
        "PublishedEvent",
        "RedactionConfigError",
        "Redactor",
        "SpanEvent",
        "SpanLink",
        "TopicGroup",
        "TopicMap",
        "TopicStats",
        "TraceEvent",
        "TraceSearch",
        "TraceSpan",
        "TraceSummary",
        "TraceView",
        "count_events_in_window",
        "dead_letters_by_reason",
        "delivery_history",
        "delivery_outcomes",
        "event_histogram",
        "events_by_id",
        "events_in_window",
        "events_of_replay",
        "events_of_traces",
        "group_latencies",
        "parse_attribute_filter",
        "published_events",
        "replayed_event_ids",
        "replays_of_trace",
        "search_events",
        "search_traces",
        "topic_groups",
        "topic_map",
        "topics_in_window",
        "trace_by_id",
        "trace_integrity",
    ]


def test_every_export_is_documented_and_lives_in_a_private_module() -> None:
    for name in tracing.__all__:
        member = getattr(tracing, name)
        assert inspect.getdoc(member), f"tracing.{name} has no docstring"
        assert member.__module__.startswith("tracing._"), (name, member.__module__)


def test_the_capture_is_the_runtimes_plugin_for_both_schemes() -> None:
    plugins = {ep.name: ep.value for ep in entry_points(group="meshtap.capture")}
    assert plugins == {
        "clickhouse": "tracing:ClickHouseCapture",
        "chdb": "tracing:ClickHouseCapture",
    }
    capture = tracing.ClickHouseCapture(CaptureConfig(url="clickhouse://127.0.0.1:9000/meshtap"))
    assert isinstance(capture, CaptureSink)
    assert issubclass(tracing.ClickHouseSpanExporter, SpanExporter)
    assert issubclass(tracing.RedactionConfigError, ValueError)


def test_the_layers_above_use_only_the_runtimes_public_names() -> None:
    """The runtime's private modules may change under it; what tracing, replay, auditing and
    meshadmin need is exported (``runtime``, ``runtime.server``, ``runtime.client``)."""
    offending = []
    root = Path(tracing.__file__).parent.parent
    packages = ("tracing", "replay", "auditing", "meshadmin")
    for path in sorted(p for package in packages for p in (root / package).rglob("*.py")):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if re.match(r"\s*(from|import) runtime\._", line):
                offending.append(f"{path.name}:{number}: {line.strip()}")
    assert offending == []
    for name in ("TopicPattern", "compile_pattern", "validate_pattern"):
        assert name in runtime.__all__
