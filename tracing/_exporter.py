"""The OpenTelemetry span exporter that stores spans in the capture store (CONVENTIONS 7).

A plain SDK ``SpanExporter``: put it behind a ``BatchSpanProcessor`` (``ClickHouseCapture.
tracer_provider()`` does) or any other processor. ``export()`` hands the finished spans to the
capture's batch writer (the ``sdk_span`` feed), which turns them into ``spans`` rows (``_rows.
sdk_span_row``, with the deployment's redaction), inserts them, spools them while ClickHouse
is away and retries with backoff and jitter -- so ``export()`` never waits for ClickHouse and
never raises. The writer's ClickHouse calls run with instrumentation suppressed, so storing
spans makes no spans about itself.

Results: ``SUCCESS`` when every span was taken (to be written, or spooled until it can be);
``FAILURE`` when some were dropped (the capture's hard bound, counted in
``meshtap_capture_dropped_rows_total{table="spans"}``) or after ``shutdown()``. A span that
cannot be converted later is counted there too (reason ``unconvertible``) and logged.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Any, Protocol

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

__all__ = ["ClickHouseSpanExporter", "Feeds"]

log = logging.getLogger("meshtap.capture")


class Feeds(Protocol):
    """Where the capture's records go: its batch writer, a thread or a process of its own."""

    def submit(self, feed: str, items: Sequence[Any]) -> int:
        """Take ``items`` of the named feed (``_rows.FEEDS``); how many were accepted."""
        ...

    def flush(self, timeout: float) -> bool:
        """Wait until what was submitted is written or spooled."""
        ...


class ClickHouseSpanExporter(SpanExporter):
    """Exports SDK spans into ``meshtap.spans``; get one from
    ``ClickHouseCapture.span_exporter()``, which owns the writer it feeds.

    ``shutdown()`` is idempotent and only stops this exporter: the writer (and its retries)
    belongs to the capture and stops with ``ClickHouseCapture.close()``, which also shuts down
    the capture's own tracer provider. ``force_flush()`` waits until the writer has written
    (or spooled) what it holds.
    """

    def __init__(self, writer: Feeds) -> None:
        self._writer = writer
        self._shutdown = threading.Event()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if self._shutdown.is_set():
            return SpanExportResult.FAILURE
        try:
            accepted = self._writer.submit("sdk_span", spans)
        except Exception:  # the contract: an exporter never raises into the SDK
            log.exception("capture: exporting %d spans failed", len(spans))
            return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS if accepted == len(spans) else SpanExportResult.FAILURE

    def shutdown(self) -> None:
        self._shutdown.set()

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        try:
            return self._writer.flush(timeout_millis / 1000)
        except Exception:
            log.exception("capture: flushing spans failed")
            return False
