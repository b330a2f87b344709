"""The capture plugin: every event flow the runtime reports, recorded into ClickHouse.

``ClickHouseCapture`` is the runtime's ``CaptureSink`` for ``clickhouse://host:9000/meshtap``
(a ClickHouse server) and ``chdb:///dir`` (ClickHouse in this process), registered as the
``meshtap.capture`` entry points ``clickhouse`` and ``chdb``. The runtime builds it from a
``CaptureConfig``, awaits ``start()``, calls ``record_*`` from its event loop, takes its
``tracer_provider()`` for its own spans, and awaits ``close()`` when it stops.

The path of a record: ``record_*`` appends it to a bounded buffer (a lock and an append, on
the runtime's event loop) -> the batch writer (``_writer``) redacts and converts each batch to
columns (``_rows``, pure) and inserts it, or spools it while ClickHouse is away. Where the
writer runs (option ``writer``):

* ``process`` (the default for ``clickhouse://``): a child process of its own
  (``_writer_process``), fed by one thread here that packs records into plain values and
  pickles them over a socket. Conversion and the insert then cost the runtime's event loop
  nothing: they run on another core.
* ``thread`` (the only choice for ``chdb://``, whose data directory one process holds -- the
  runtime's, which also serves it to the admin in the embedded deployment): a background
  thread of the runtime's process.

``record_*`` never blocks on ClickHouse and never raises; what cannot be kept is counted and
logged.

Start-up, by engine:

* ``chdb://``: opens the directory and applies pending migrations itself (the embedded default
  has nobody else to run them); a directory another process holds is ``CaptureNotReady``.
* ``clickhouse://``: checks the migrations and refuses with ``CaptureNotReady`` naming the
  command (``python manage.py migrate_clickhouse --url ...``) when some are pending. A server
  that does not answer does not stop the runtime: capture starts anyway, spools, says so in
  the log, and checks the migrations before its first write once the server is back.

``config.options`` tunes the writer: ``batch_rows`` (20000: ClickHouse pays a fixed cost per
insert -- tens of milliseconds on 18.16 with the materialized views -- so large batches carry
high rates; at low rates batches go by age anyway), ``flush_interval_ms`` (250),
``close_timeout_s`` (10), ``connect_timeout_s`` (2), ``writer`` (``process`` or ``thread``).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import socket
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import SERVICE_INSTANCE_ID, SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

from runtime import (
    CaptureConfig,
    CaptureNotReady,
    DeliveryRecord,
    PublishRecord,
    SpanRecord,
)
from tracing._exporter import ClickHouseSpanExporter
from tracing._redaction import Redactor
from tracing._rows import FEEDS, TABLES, Columns, Feed, RowConverter
from tracing._writer import BatchWriter
from tracing._writer_process import WriterProcess, WriterSettings, WriterStartError
from tracing.clickhouse import (
    ClickHouse,
    ClickhouseError,
    ClickhouseUnavailable,
    SchemaNotMigrated,
    check,
    migrate,
)

__all__ = ["ClickHouseCapture"]

log = logging.getLogger("meshtap.capture")

SCHEMES = ("clickhouse", "chdb")
_OPTIONS: dict[str, tuple[type, float]] = {
    "batch_rows": (int, 20_000),
    "flush_interval_ms": (float, 1000.0),
    "close_timeout_s": (float, 10.0),
    "connect_timeout_s": (float, 2.0),
}

_WRITERS = ("process", "thread")


def _options(config: CaptureConfig) -> dict[str, float]:
    unknown = sorted(set(config.options) - set(_OPTIONS) - {"writer"})
    if unknown:
        raise ValueError(
            f"unknown capture option(s) {unknown}; the ClickHouse capture reads "
            f"{sorted([*_OPTIONS, 'writer'])}"
        )
    values: dict[str, float] = {}
    for name, (kind, default) in _OPTIONS.items():
        raw = config.options.get(name, default)
        try:
            value = kind(raw)
        except (TypeError, ValueError):
            raise ValueError(
                f"capture option {name}={raw!r} is not a number; e.g. {name}={default:g}"
            ) from None
        if value <= 0:
            raise ValueError(f"capture option {name}={raw!r} must be positive")
        values[name] = value
    return values


def _writer_kind(config: CaptureConfig, scheme: str) -> str:
    kind = config.options.get("writer", "process" if scheme == "clickhouse" else "thread")
    if kind not in _WRITERS:
        raise ValueError(
            f"capture option writer={kind!r} is not one of {list(_WRITERS)}; process runs the "
            f"writer in a child process (clickhouse:// only), thread in the runtime's process"
        )
    if kind == "process" and scheme == "chdb":
        raise ValueError(
            "capture option writer='process' cannot be used with chdb://: chDB allows one "
            "process per data directory, and the runtime's process holds it; use writer='thread'"
        )
    return str(kind)


def _pack_and_convert(feed: Feed, converter: RowConverter, items: list[Any]) -> Columns:
    return feed.columns(converter, [feed.pack(item) for item in items])


class _ThreadFeeds:
    """The feeds onto a ``BatchWriter`` thread of this process (``writer='thread'``)."""

    def __init__(self, writer: BatchWriter, converter: RowConverter) -> None:
        self.writer = writer
        self._convert = {
            name: functools.partial(_pack_and_convert, feed, converter)
            for name, feed in FEEDS.items()
        }

    def submit(self, feed: str, items: Sequence[Any]) -> int:
        return self.writer.submit(FEEDS[feed].table, items, self._convert[feed])

    def flush(self, timeout: float) -> bool:
        return self.writer.flush(timeout)


def _otlp_traces_url(endpoint: str) -> str:
    """``http://host:4318`` -> ``http://host:4318/v1/traces``; a URL with a path stays as is."""
    parts = urlsplit(endpoint)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(
            f"OTLP export endpoint {endpoint!r} is not an http(s) URL; e.g. "
            f"http://127.0.0.1:4318 (OTLP/HTTP, /v1/traces is added)"
        )
    if parts.path in ("", "/"):
        parts = parts._replace(path="/v1/traces")
    return urlunsplit(parts)


class ClickHouseCapture:
    """The ``clickhouse://`` / ``chdb://`` capture sink (see the module docstring).

    Raises ``ValueError`` at construction for a configuration it cannot use (URL scheme,
    redaction without a key, options), so ``python -m runtime`` reports it before starting.
    """

    def __init__(self, config: CaptureConfig) -> None:
        scheme = urlsplit(config.url).scheme.lower()
        if scheme not in SCHEMES:
            raise ValueError(
                f"the ClickHouse capture cannot use {config.url!r}: use "
                f"clickhouse://host:9000/meshtap (a server) or chdb:///absolute/dir (embedded)"
            )
        if not 0.0 <= config.span_sample_ratio <= 1.0:
            raise ValueError(
                f"span sample ratio {config.span_sample_ratio!r} is not between 0 and 1; "
                f"1.0 keeps every trace, 0.1 one in ten"
            )
        options = _options(config)
        self._otlp_url = _otlp_traces_url(config.otlp_export) if config.otlp_export else ""
        self._config = config
        self._scheme = scheme
        converter = RowConverter(
            Redactor.build(config.redact_fields, config.redact_extensions, config.redaction_key)
        )
        self._thread: _ThreadFeeds | None = None
        self._process: WriterProcess | None = None
        self._feeds: _ThreadFeeds | WriterProcess
        if _writer_kind(config, scheme) == "process":
            self._process = WriterProcess(
                WriterSettings(
                    url=config.url,
                    spool_dir=config.spool_dir,
                    max_buffered=config.max_buffered,
                    batch_rows=int(options["batch_rows"]),
                    max_age_s=options["flush_interval_ms"] / 1000,
                    connect_timeout_s=options["connect_timeout_s"],
                    close_timeout_s=options["close_timeout_s"],
                    redact_fields=config.redact_fields,
                    redact_extensions=config.redact_extensions,
                    redaction_key=config.redaction_key,
                    log_level=log.getEffectiveLevel(),
                )
            )
            self._feeds = self._process
        else:
            writer = BatchWriter(
                TABLES,
                Path(config.spool_dir),
                max_buffered=config.max_buffered,
                batch_rows=int(options["batch_rows"]),
                max_age_s=options["flush_interval_ms"] / 1000,
            )
            self._thread = _ThreadFeeds(writer, converter)
            self._feeds = self._thread
        self._close_timeout = options["close_timeout_s"]
        self._connect_timeout = options["connect_timeout_s"]
        self._client: ClickHouse | None = None
        self._provider: TracerProvider | None = None
        self._exporter: ClickHouseSpanExporter | None = None
        self._started = False
        self._closed = False

    def __repr__(self) -> str:
        return f"<ClickHouseCapture {self._client.url if self._client else self._scheme}>"

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the store (migrating chDB, checking a server), then start the writer (thread
        or process; the process opens a client of its own and this one is closed).

        Raises ``CaptureNotReady`` saying what to do when the store cannot be used, and
        ``ValueError`` for a URL that names no usable store.
        """
        if self._started:
            return
        client = await asyncio.to_thread(
            ClickHouse.open, self._config.url, connect_timeout=self._connect_timeout
        )
        try:
            available, verify = await asyncio.to_thread(self._prepare, client)
            try:
                if self._process is not None:
                    await asyncio.to_thread(client.close)
                    await asyncio.to_thread(
                        self._process.start, available=available, verify=verify.__name__
                    )
                else:
                    assert self._thread is not None
                    await asyncio.to_thread(
                        self._thread.writer.start, client, available=available, verify=verify
                    )
            except OSError as e:
                raise CaptureNotReady(
                    f"cannot use the capture spool directory {self._config.spool_dir!r}: {e}; "
                    f"make it writable or choose another with --capture-spool-dir"
                ) from e
            except WriterStartError as e:
                raise CaptureNotReady(
                    f"the capture writer process for {client.url} did not start: {e}"
                ) from e
        except BaseException:
            await asyncio.to_thread(client.close)
            raise
        self._client = client
        self._started = True

    def _prepare(self, client: ClickHouse) -> tuple[bool, Callable[[ClickHouse], Any]]:
        """Blocking: make sure the store is usable. ``(available, verify)`` for the writer."""
        if self._scheme == "chdb":
            try:
                applied = migrate(client)
            except ClickhouseError as e:
                raise CaptureNotReady(f"cannot use chDB at {client.url}: {e}") from e
            if applied:
                log.info(
                    "capture: migrated chDB at %s (%s)",
                    client.url,
                    ", ".join(m.label for m in applied),
                )
            return True, migrate
        try:
            check(client)
        except SchemaNotMigrated as e:
            raise CaptureNotReady(str(e)) from e
        except ClickhouseUnavailable as e:
            log.warning(
                "capture: ClickHouse at %s does not answer (%s); starting anyway -- capture "
                "batches spool to %s and are written once it is back",
                client.url,
                e,
                self._config.spool_dir,
            )
            return False, check
        except ClickhouseError as e:
            raise CaptureNotReady(
                f"ClickHouse at {client.url} refused Meshtap's schema check: {e}"
            ) from e
        return True, check

    async def flush(self, timeout: float = 30.0) -> bool:
        """Wait until everything recorded before the call is in ClickHouse or in the spool;
        False if that took longer than ``timeout`` seconds (nothing is lost: it goes on)."""
        return await asyncio.to_thread(self._feeds.flush, timeout)

    async def close(self) -> None:
        """Flush spans and rows (bounded by ``close_timeout_s``), stop the writer (thread or
        process) and close the client. Rows not written by then stay in the spool for the next
        start."""
        if self._closed:
            return
        self._closed = True
        provider = self._provider
        if provider is not None:
            await asyncio.to_thread(provider.shutdown)  # hands the last spans to the writer
        if self._process is not None:
            await asyncio.to_thread(self._process.close, self._close_timeout)
        elif self._thread is not None:
            await asyncio.to_thread(self._thread.writer.close, self._close_timeout)

    # -- records (the runtime's event loop; never block, never raise) -------------------------

    # Each is an append to a buffer: redaction and conversion happen in the writer (its thread
    # or its process), just before the batch is written (``_writer``).

    def record_publish(self, records: Sequence[PublishRecord]) -> None:
        self._record("publish", records)

    def record_deliveries(self, records: Sequence[DeliveryRecord]) -> None:
        self._record("delivery", records)

    def record_spans(self, spans: Sequence[SpanRecord]) -> None:
        self._record("otlp_span", spans)

    def _record(self, feed: str, records: Sequence[Any]) -> None:
        try:
            self._feeds.submit(feed, records)
        except Exception:  # the contract: never raise into the runtime
            log.exception("capture: recording %d %s records failed", len(records), feed)

    # -- traces and metrics ------------------------------------------------------------------

    def span_exporter(self) -> ClickHouseSpanExporter:
        """The exporter that stores SDK spans through this capture (one per capture)."""
        if self._exporter is None:
            self._exporter = ClickHouseSpanExporter(self._feeds)
        return self._exporter

    def tracer_provider(self) -> TracerProvider:
        """The SDK provider for the runtime's own spans (made once, on first call).

        Resource ``service.name`` = ``config.service_name``, ``service.instance.id`` =
        ``config.instance`` (else host-pid); sampler ``ParentBased(TraceIdRatioBased(
        config.span_sample_ratio))``; a ``BatchSpanProcessor`` into this capture and, with
        ``config.otlp_export``, another one exporting OTLP/HTTP there. ``close()`` shuts it
        down.
        """
        if self._provider is None:
            config = self._config
            instance = config.instance or f"{socket.gethostname()}-{os.getpid()}"
            provider = TracerProvider(
                resource=Resource.create(
                    {SERVICE_NAME: config.service_name, SERVICE_INSTANCE_ID: instance}
                ),
                sampler=ParentBased(TraceIdRatioBased(config.span_sample_ratio)),
                shutdown_on_exit=False,
            )
            provider.add_span_processor(
                BatchSpanProcessor(
                    self.span_exporter(),
                    max_queue_size=65_536,
                    schedule_delay_millis=250,
                    max_export_batch_size=4_096,
                )
            )
            if self._otlp_url:
                provider.add_span_processor(
                    BatchSpanProcessor(OTLPSpanExporter(endpoint=self._otlp_url))
                )
            self._provider = provider
        return self._provider

    def collector(self) -> Any:
        """The capture's Prometheus metrics, as a collector for the runtime's registry:
        ``registry.register(capture.collector())`` (see ``_writer.CaptureMetrics``; with the
        writer process, its counters merged with this side's)."""
        if self._process is not None:
            return self._process.collector()
        assert self._thread is not None
        return self._thread.writer.metrics
