"""Capture: what the runtime tells a recorder about every event flow, and how it finds one.

The runtime never imports `tracing`. A capture plugin is found by URL scheme in the
`meshtap.capture` entry points (`clickhouse://`, `chdb://` are provided by `tracing`), built from
a `CaptureConfig`, and handed plain frozen records:

* `PublishRecord`  - an event accepted on a topic (one per event, also for replayed events)
* `DeliveryRecord` - one delivery attempt of one event and its outcome (handed over together
  for all the events of one push attempt: one call per push, not per event)
* `SpanRecord`     - an OpenTelemetry span received from an application (OTLP receiver)

The contract a plugin keeps: `record_*` never blocks and never raises (buffer, spool, and count
drops if a hard bound is hit); `start` refuses with `CaptureNotReady` and a message saying what
to run when the store is not usable (e.g. not migrated); `close` flushes what it can.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable
from urllib.parse import urlsplit

from runtime._errors import MeshtapError
from runtime._events import CloudEvent
from runtime._plugins import load_plugin, plugin_names


class CaptureNotReady(MeshtapError):
    """The capture store cannot be used yet; the message says what to do."""

    code = "capture_not_ready"


@dataclass(frozen=True, slots=True)
class CaptureConfig:
    url: str = "none"
    spool_dir: str = "var/spool"
    """Where batches wait while the capture store is unreachable."""
    max_buffered: int = 1_000_000
    """Hard bound on records held in memory and in the spool; beyond it records are dropped
    (counted and logged)."""
    redact_fields: tuple[str, ...] = ()
    """Data field paths (`card.number`, `items.*.price`) masked before anything is written."""
    redact_extensions: tuple[str, ...] = ()
    """Extension (header) names masked before anything is written."""
    redaction_key: str = ""
    """Key of the hash that replaces masked values (equal values stay joinable)."""
    span_sample_ratio: float = 1.0
    """Head sampling of the runtime's own spans; events and deliveries are always captured."""
    otlp_export: str = ""
    """Also send the runtime's spans to this OTLP endpoint (Jaeger, Tempo ...)."""
    service_name: str = "meshtap-runtime"
    instance: str = ""
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class PublishRecord:
    event: CloudEvent
    topic: str
    offset: str
    """Where the store put it (`<ms>-<seq>`)."""
    published_ns: int
    producer: str
    """Who published: the authenticated client, else the peer address."""
    protocol: str
    """`http`, `eventmesh`, `webhook`, `grpc` or `replay`."""
    instance: str


@dataclass(frozen=True, slots=True)
class DeliveryRecord:
    event_id: str
    topic: str
    group: str
    subscription_id: str
    subscriber: str
    attempt: int
    outcome: str
    """`acked`, `retry` (failed, will be retried) or `dead_lettered` (failed, given up)."""
    status_code: int
    error: str
    duration_ns: int
    """How long the push took."""
    latency_ns: int
    """From publish to this outcome."""
    attempted_ns: int
    instance: str
    trace_id: str = ""
    span_id: str = ""


@dataclass(frozen=True, slots=True)
class SpanEventRecord:
    name: str
    time_ns: int
    attributes: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class SpanLinkRecord:
    trace_id: str
    span_id: str
    attributes: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class SpanRecord:
    """A span as received over OTLP; ids are lower-case hex, attribute values strings."""

    trace_id: str
    span_id: str
    parent_span_id: str
    name: str
    kind: str
    """`internal`, `server`, `client`, `producer` or `consumer`."""
    service_name: str
    scope_name: str
    start_ns: int
    end_ns: int
    status_code: str
    """`unset`, `ok` or `error`."""
    status_message: str = ""
    attributes: tuple[tuple[str, str], ...] = ()
    resource: tuple[tuple[str, str], ...] = ()
    events: tuple[SpanEventRecord, ...] = ()
    links: tuple[SpanLinkRecord, ...] = ()


@runtime_checkable
class CaptureSink(Protocol):
    async def start(self) -> None: ...

    async def close(self) -> None: ...

    def record_publish(self, records: Sequence[PublishRecord]) -> None: ...

    def record_deliveries(self, records: Sequence[DeliveryRecord]) -> None: ...

    def record_spans(self, spans: Sequence[SpanRecord]) -> None: ...

    def tracer_provider(self) -> Any | None:
        """An OpenTelemetry TracerProvider exporting to the capture store, if the plugin has one."""
        ...

    def collector(self) -> Any | None:
        """A prometheus_client collector of the plugin's own metrics (rows written, spooled,
        dropped ...), registered into the runtime's /metrics; None if it has none."""
        ...


class NullCapture:
    """`--capture none`: record nothing."""

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    def record_publish(self, records: Sequence[PublishRecord]) -> None:
        return None

    def record_deliveries(self, records: Sequence[DeliveryRecord]) -> None:
        return None

    def record_spans(self, spans: Sequence[SpanRecord]) -> None:
        return None

    def tracer_provider(self) -> Any | None:
        return None

    def collector(self) -> Any | None:
        return None


def capture_schemes() -> list[str]:
    return sorted({"none", *plugin_names("meshtap.capture")})


def open_capture(config: CaptureConfig) -> CaptureSink:
    """The capture plugin for `config.url` (not yet started)."""
    if config.url in ("", "none"):
        return NullCapture()
    factory = load_plugin("meshtap.capture", urlsplit(config.url).scheme)
    if factory is None:
        raise ValueError(
            f"unknown capture URL {config.url!r}: use one of "
            f"{', '.join(s if s == 'none' else s + '://' for s in capture_schemes())} "
            "(e.g. chdb:///var/lib/meshtap/chdb or clickhouse://127.0.0.1:9000/meshtap)"
        )
    sink: CaptureSink = factory(config)
    return sink
