"""Meshtap tracing: the event-flow recorder, its span exporter and the ClickHouse store.

Depends on `runtime` (never the other way round); no Django here.

* :class:`ClickHouseCapture` -- the capture plugin the runtime loads for ``clickhouse://`` and
  ``chdb://`` URLs (entry points ``meshtap.capture``): records publishes, delivery attempts
  and spans into ClickHouse through a batch writer that spools while ClickHouse is away (in a
  child process of its own for ``clickhouse://``, a thread for ``chdb://``), and provides the
  runtime's OpenTelemetry ``TracerProvider`` and Prometheus collector.
* :class:`ClickHouseSpanExporter` -- an OpenTelemetry SDK span exporter into the same store
  (``ClickHouseCapture.span_exporter()``).
* :class:`Redactor` / :class:`RedactionConfigError` -- masking of configured data fields and
  extensions before anything is written.
* the read side -- :func:`trace_by_id`, :func:`search_traces`, :func:`events_in_window`,
  :func:`delivery_history`, :func:`topic_map`, and for replay :func:`events_by_id`,
  :func:`count_events_in_window`,
  :func:`events_of_traces`, :func:`events_of_replay`, :func:`replayed_event_ids`; and
  their frozen inputs and results: what the web admin and replay read.
* :mod:`tracing.clickhouse` -- the one entry point to ClickHouse, migrations and retention.

Errors (the recorder's ``record_*`` and the exporter's ``export`` never raise; these come from
construction and ``start``)::

    ValueError                      a configuration the capture cannot use: URL scheme,
    │                               options, sample ratio, OTLP endpoint -- raised when built
    └── RedactionConfigError        redaction configured without a key, or a malformed path
    runtime.CaptureNotReady         start(): the store cannot be used yet -- migrations
                                    pending (names `manage.py migrate_clickhouse --url ...`),
                                    chDB directory held by another process, spool not writable
    tracing.clickhouse.ClickhouseError   the store's own errors, drawn in tracing.clickhouse
"""

from __future__ import annotations

from tracing._exporter import ClickHouseSpanExporter
from tracing._queries import (
    count_events_in_window,
    delivery_history,
    events_by_id,
    events_in_window,
    events_of_replay,
    events_of_traces,
    replayed_event_ids,
    search_traces,
    topic_map,
    trace_by_id,
)
from tracing._read_models import (
    DeliveryAttempt,
    EventRow,
    EventWindow,
    InvalidQuery,
    Page,
    ProducerTopic,
    SpanEvent,
    SpanLink,
    TopicGroup,
    TopicMap,
    TopicStats,
    TraceEvent,
    TraceSearch,
    TraceSpan,
    TraceSummary,
    TraceView,
    parse_attribute_filter,
)
from tracing._recorder import ClickHouseCapture
from tracing._redaction import RedactionConfigError, Redactor

__all__ = [
    "ClickHouseCapture",
    "ClickHouseSpanExporter",
    "DeliveryAttempt",
    "EventRow",
    "EventWindow",
    "InvalidQuery",
    "Page",
    "ProducerTopic",
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
    "delivery_history",
    "events_by_id",
    "events_in_window",
    "events_of_replay",
    "events_of_traces",
    "parse_attribute_filter",
    "replayed_event_ids",
    "search_traces",
    "topic_map",
    "trace_by_id",
]
