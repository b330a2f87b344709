"""Records -> rows of the capture tables; pure conversion, no I/O (CONVENTIONS 6).

One function per source turns a record into one row of ``meshtap.events``, ``deliveries`` or
``spans`` -- a tuple in the column order of :data:`EVENTS`, :data:`DELIVERIES` or :data:`SPANS`
(the columns of migration m0001). The batch writer (``_writer``) buffers these tuples and
inserts them column by column; the :class:`TableSpec` of each table also tells it how to spool
the rows and how to find which of them ClickHouse already has.

Value rules, the same for every row, so a row is valid for both engines by construction and an
insert can never fail on a value:

* strings are valid UTF-8 (anything that would not encode is replaced); ``data`` is bytes,
  byte-exact;
* integers fit their column: nanosecond times and durations are clamped to ``UInt64`` (a time
  before 1970 becomes 0), ``attempt``/``status_code`` to ``UInt16``, ``data_size`` to
  ``UInt32``; the ``DateTime`` partition columns are whole epoch seconds of their ns column;
* attribute values become strings: strings as they are, booleans ``true``/``false``, numbers as
  Python writes them, sequences as compact JSON (the OTLP receiver's rule too); span events
  and links keep their attributes as one JSON object of such strings each.

Redaction (``Redactor``) happens here, as part of the conversion, so before anything is
written anywhere -- spool file, rejected batch or ClickHouse (records wait for their batch in
the writer's memory only):

* events: the configured extensions and data fields (``Redactor.redact``); ``partition_key``,
  ``ext_values``, ``trace_id``... are derived from the redacted event, so a masked
  ``partitionkey`` is masked everywhere;
* span attributes (runtime spans, applications' spans, their events' and links' attributes,
  resource attributes): an attribute is masked when its key, lower-cased, *is* a redacted
  extension name, or ends in ``.<name>`` (``http.request.header.authorization`` for
  ``authorization``). Keys under ``messaging.`` are exempt from the suffix rule: there the
  runtime writes ids and names it assigns itself (message id, consumer group, subscription,
  sink, producer address), which are what joins a trace to its events and deliveries -- and
  event ids are not redacted in ``events`` either. A ``messaging.*`` key that names a redacted
  extension in full is still masked. The token is the same keyed hash as for events, so an
  equal secret gets an equal token in every table.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from datetime import UTC, datetime, timedelta
from itertools import chain
from operator import attrgetter
from typing import Any, Final

from opentelemetry.sdk.trace import ReadableSpan

from runtime import CloudEvent, DeliveryRecord, PublishRecord, SpanRecord
from tracing._redaction import Redactor

__all__ = [
    "CORE_ATTRIBUTES",
    "DELIVERIES",
    "EVENTS",
    "FEEDS",
    "SPANS",
    "TABLES",
    "Columns",
    "Feed",
    "Row",
    "RowConverter",
    "TableSpec",
    "attribute_text",
    "delivery_row",
    "event_row",
    "readable_span_row",
    "span_record_row",
]

Row = tuple[Any, ...]
"""One row, values in the column order of its table's :class:`TableSpec`."""

Columns = list[list[Any]]
"""A batch column by column, in the column order of its table's :class:`TableSpec` -- what a
columnar insert takes."""

_U64: Final = (1 << 64) - 1
_U32: Final = (1 << 32) - 1
_U16: Final = (1 << 16) - 1
_NS: Final = 1_000_000_000

CORE_ATTRIBUTES: Final = frozenset(
    {"id", "source", "type", "specversion", "datacontenttype", "dataschema", "subject", "time"}
)
"""CloudEvents context attributes with a column of their own; every other attribute is an
extension and goes to ``ext_keys``/``ext_values``."""


@dataclass(frozen=True, slots=True)
class TableSpec:
    """What the batch writer needs to know about one capture table.

    ``kinds`` says how each column is spooled (``s`` str, ``b`` bytes, ``u`` UInt, ``as``
    Array(String), ``au`` Array(UInt64)). ``key`` are the columns that identify a row: before
    a spooled batch is inserted, ``lookup_sql`` fetches the keys ClickHouse already holds
    among the batch's ``lookup`` column values (a chunk, ``%(values)s``) and within its time
    range (``%(lo_ns)s``..``%(hi_ns)s`` on the ``time`` column, ``%(lo_at)s``..``%(hi_at)s`` on
    the partition column), so only the missing rows are written.
    """

    table: str
    columns: tuple[str, ...]
    kinds: tuple[str, ...]
    key: tuple[str, ...]
    time: str
    lookup: str
    lookup_sql: str

    @property
    def key_indexes(self) -> tuple[int, ...]:
        return tuple(self.columns.index(c) for c in self.key)

    @property
    def time_index(self) -> int:
        return self.columns.index(self.time)

    @property
    def lookup_index(self) -> int:
        return self.columns.index(self.lookup)


# The lookups read a key prefix of each table (see the ORDER BY comments in m0001): events by
# (topic, published_ns), deliveries by event_id, spans by (service_name, start_ns); the
# partition column bounds them to the days of the batch.
_EVENT_KEYS_IN_RANGE = """
SELECT topic, event_id, store_offset
FROM meshtap.events
WHERE topic IN %(values)s
  AND published_ns >= %(lo_ns)s AND published_ns <= %(hi_ns)s
  AND published_at >= %(lo_at)s AND published_at <= %(hi_at)s
"""

_DELIVERY_KEYS_IN_RANGE = """
SELECT event_id, group_name, attempt, attempted_ns
FROM meshtap.deliveries
WHERE event_id IN %(values)s
  AND attempted_ns >= %(lo_ns)s AND attempted_ns <= %(hi_ns)s
  AND attempted_at >= %(lo_at)s AND attempted_at <= %(hi_at)s
"""

_SPAN_KEYS_IN_RANGE = """
SELECT trace_id, span_id
FROM meshtap.spans
WHERE service_name IN %(values)s
  AND start_ns >= %(lo_ns)s AND start_ns <= %(hi_ns)s
  AND start_at >= %(lo_at)s AND start_at <= %(hi_at)s
"""

EVENTS: Final = TableSpec(
    table="events",
    columns=(
        "event_id",
        "topic",
        "source",
        "type",
        "subject",
        "spec_version",
        "data_content_type",
        "data_schema",
        "event_time_ns",
        "published_ns",
        "published_at",
        "partition_key",
        "ext_keys",
        "ext_values",
        "data",
        "data_size",
        "producer",
        "protocol",
        "instance",
        "store_offset",
        "trace_id",
        "span_id",
        "replay_id",
    ),
    kinds=("s",) * 8 + ("u", "u", "u", "s", "as", "as", "b", "u") + ("s",) * 7,
    # An offset is unique within its topic's stream only, and one event id may be published to
    # several topics (fan-out, bridges): the topic is part of the key.
    key=("topic", "event_id", "store_offset"),
    time="published_ns",
    lookup="topic",
    lookup_sql=_EVENT_KEYS_IN_RANGE,
)

DELIVERIES: Final = TableSpec(
    table="deliveries",
    columns=(
        "event_id",
        "topic",
        "group_name",
        "subscription_id",
        "subscriber",
        "attempt",
        "outcome",
        "status_code",
        "error",
        "duration_ns",
        "latency_ns",
        "attempted_ns",
        "attempted_at",
        "instance",
        "trace_id",
        "span_id",
    ),
    kinds=("s",) * 5 + ("u", "s", "u", "s", "u", "u", "u", "u", "s", "s", "s"),
    key=("event_id", "group_name", "attempt", "attempted_ns"),
    time="attempted_ns",
    lookup="event_id",
    lookup_sql=_DELIVERY_KEYS_IN_RANGE,
)

SPANS: Final = TableSpec(
    table="spans",
    columns=(
        "trace_id",
        "span_id",
        "parent_span_id",
        "name",
        "kind",
        "service_name",
        "scope_name",
        "start_ns",
        "end_ns",
        "duration_ns",
        "start_at",
        "status_code",
        "status_message",
        "attr_keys",
        "attr_values",
        "resource_keys",
        "resource_values",
        "event_names",
        "event_times_ns",
        "event_attrs",
        "link_trace_ids",
        "link_span_ids",
        "link_attrs",
    ),
    kinds=("s",) * 7
    + ("u", "u", "u", "u", "s", "s")
    + ("as", "as", "as", "as", "as", "au", "as", "as", "as", "as"),
    key=("trace_id", "span_id"),
    time="start_ns",
    lookup="service_name",
    lookup_sql=_SPAN_KEYS_IN_RANGE,
)

TABLES: Final = {spec.table: spec for spec in (EVENTS, DELIVERIES, SPANS)}


# --- values ---------------------------------------------------------------------------------


def _text(value: str) -> str:
    """``value``, made encodable as UTF-8 (lone surrogates replaced)."""
    if value.isascii():
        return value
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return value.encode("utf-8", "replace").decode("utf-8")
    return value


def _clamp(value: int, top: int) -> int:
    return 0 if value < 0 else (top if value > top else value)


def _seconds(ns: int) -> int:
    """Whole seconds for a ``DateTime`` column (UInt32: up to 2106)."""
    return min(ns // _NS, _U32)


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def attribute_text(value: Any) -> str:
    """An attribute value as stored: strings as they are, ``true``/``false``, numbers as
    written, sequences (OTel array attributes) as compact JSON."""
    if type(value) is str and value.isascii():  # the common case, first and cheap
        return value
    if isinstance(value, str):
        return _text(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, bytes):
        return _text(value.decode("utf-8", "replace"))
    if isinstance(value, Sequence):
        return _text(_json([_json_value(v) for v in value]))
    return _text(str(value))


def _json_value(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, str | bool | int | float) or value is None:
        return value
    return str(value)


_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?([Zz]|[+-]\d{2}:\d{2})\Z"
)


_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_SECOND: Final = timedelta(seconds=1)
_SECONDS: dict[str, int] = {}


def rfc3339_ns(value: object) -> int:
    """Nanoseconds since the epoch of an RFC 3339 timestamp (all nine digits kept); 0 when
    absent, unparsable or before 1970."""
    if not isinstance(value, str):
        return 0
    if len(value) == 27 and value[19] == "." and value[26] == "Z" and value[10] == "T":
        # The runtime's own stamp (microseconds, UTC): whole seconds from a small cache (events
        # of one second share them), the fraction by hand; exact integer arithmetic.
        whole = value[:19]
        seconds = _SECONDS.get(whole)
        if seconds is None:
            try:
                seconds = (datetime.fromisoformat(whole + "+00:00") - _EPOCH) // _SECOND
            except ValueError:
                return 0
            if len(_SECONDS) >= 4096:
                _SECONDS.clear()
            _SECONDS[whole] = seconds
        fraction = value[20:26]
        if seconds < 0 or not fraction.isdigit():
            return 0
        return seconds * _NS + int(fraction) * 1000
    match = _RFC3339.match(value)
    if match is None:
        return 0
    year, month, day, hour, minute, second, fraction, offset = match.groups()
    try:
        moment = datetime(
            int(year), int(month), int(day), int(hour), int(minute), min(int(second), 59), 0, UTC
        )
    except ValueError:
        return 0
    seconds = (moment - _EPOCH) // _SECOND + (1 if second == "60" else 0)
    if offset not in ("Z", "z"):
        sign = -1 if offset[0] == "+" else 1  # 12:00+02:00 is 10:00Z
        seconds += sign * (int(offset[1:3]) * 3600 + int(offset[4:6]) * 60)
    nanos = int((fraction or "")[:9].ljust(9, "0"))
    return _clamp(seconds * _NS + nanos, _U64)


_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}(-.*)?\Z", re.S)
_ZERO_TRACE: Final = "0" * 32
_ZERO_SPAN: Final = "0" * 16


def traceparent_ids(value: object) -> tuple[str, str]:
    """``(trace_id, span_id)`` of a valid W3C ``traceparent``, else ``("", "")``."""
    if not isinstance(value, str):
        return "", ""
    match = _TRACEPARENT.match(value)
    if match is None:
        return "", ""
    version, trace_id, span_id, rest = match.groups()
    if version == "ff" or (version == "00" and rest) or trace_id == _ZERO_TRACE:
        return "", ""
    if span_id == _ZERO_SPAN:
        return "", ""
    return trace_id, span_id


# --- rows -----------------------------------------------------------------------------------


def event_row(record: PublishRecord, event: CloudEvent | None = None) -> Row:
    """The ``events`` row of a publish record; ``event`` replaces ``record.event`` (the
    redacted copy).

    Runs for every published event (on the writer thread, which shares the interpreter with
    the runtime's event loop), hence written for speed: one pass over the attributes, ASCII
    strings (nearly all values) taken as they are inline.
    """
    event = record.event if event is None else event
    attributes = event.attributes
    text = {
        k: (v if type(v) is str and v.isascii() else attribute_text(v))
        for k, v in attributes.items()
    }
    get = text.get
    ext_keys = [k for k in text if k not in CORE_ATTRIBUTES]
    ext_keys.sort()
    trace_id, span_id = traceparent_ids(attributes.get("traceparent"))
    data = event.data or b""
    published_ns = record.published_ns
    if not 0 <= published_ns <= _U64:
        published_ns = _clamp(published_ns, _U64)
    topic, producer, protocol = record.topic, record.producer, record.protocol
    instance, offset = record.instance, record.offset
    return (
        get("id", ""),
        topic if topic.isascii() else _text(topic),
        get("source", ""),
        get("type", ""),
        get("subject", ""),
        get("specversion", ""),
        get("datacontenttype", ""),
        get("dataschema", ""),
        rfc3339_ns(attributes.get("time")),
        published_ns,
        _seconds(published_ns),
        get("partitionkey", ""),
        [k if k.isascii() else _text(k) for k in ext_keys],
        [text[k] for k in ext_keys],
        data if type(data) is bytes else bytes(data),
        _clamp(len(data), _U32),
        producer if producer.isascii() else _text(producer),
        protocol if protocol.isascii() else _text(protocol),
        instance if instance.isascii() else _text(instance),
        offset if offset.isascii() else _text(offset),
        trace_id,
        span_id,
        get("replayid", ""),
    )


def delivery_row(record: DeliveryRecord) -> Row:
    """The ``deliveries`` row of one delivery attempt."""
    attempted_ns = _clamp(record.attempted_ns, _U64)
    return (
        _text(record.event_id),
        _text(record.topic),
        _text(record.group),
        _text(record.subscription_id),
        _text(record.subscriber),
        _clamp(record.attempt, _U16),
        _text(record.outcome),
        _clamp(record.status_code, _U16),
        _text(record.error),
        _clamp(record.duration_ns, _U64),
        _clamp(record.latency_ns, _U64),
        attempted_ns,
        _seconds(attempted_ns),
        _text(record.instance),
        _text(record.trace_id),
        _text(record.span_id),
    )


Pairs = Iterable[tuple[str, Any]]
Mask = Callable[[str, str], str]
"""``(key, text) -> text`` to store: the redaction of one attribute."""


def _no_mask(key: str, text: str) -> str:
    return text


def _split(pairs: Pairs, mask: Mask) -> tuple[list[str], list[str]]:
    keys: list[str] = []
    values: list[str] = []
    for key, value in pairs:
        key = _text(str(key))
        keys.append(key)
        values.append(mask(key, attribute_text(value)))
    return keys, values


def _attrs_json(pairs: Pairs, mask: Mask) -> str:
    if not pairs:  # most span events and links (a batched push's span has one per event)
        return "{}"
    keys, values = _split(pairs, mask)
    return _text(_json(dict(zip(keys, values, strict=True))))


def _span_row(
    *,
    trace_id: str,
    span_id: str,
    parent_span_id: str,
    name: str,
    kind: str,
    service_name: str,
    scope_name: str,
    start_ns: int,
    end_ns: int,
    status_code: str,
    status_message: str,
    attributes: Pairs,
    resource: Pairs,
    events: Iterable[tuple[str, int, Pairs]],
    links: Iterable[tuple[str, str, Pairs]],
    mask: Mask,
) -> Row:
    start_ns = _clamp(start_ns, _U64)
    end_ns = _clamp(end_ns, _U64)
    attr_keys, attr_values = _split(attributes, mask)
    resource_keys, resource_values = _split(resource, mask)
    event_names: list[str] = []
    event_times: list[int] = []
    event_attrs: list[str] = []
    for event_name, time_ns, event_attributes in events:
        event_names.append(_text(event_name))
        event_times.append(_clamp(time_ns, _U64))
        event_attrs.append(_attrs_json(event_attributes, mask))
    link_trace_ids: list[str] = []
    link_span_ids: list[str] = []
    link_attrs: list[str] = []
    for link_trace, link_span, link_attributes in links:
        link_trace_ids.append(link_trace)
        link_span_ids.append(link_span)
        link_attrs.append(_attrs_json(link_attributes, mask))
    return (
        _text(trace_id),
        _text(span_id),
        _text(parent_span_id),
        _text(name),
        _text(kind),
        _text(service_name),
        _text(scope_name),
        start_ns,
        end_ns,
        max(0, end_ns - start_ns),
        _seconds(start_ns),
        _text(status_code),
        _text(status_message),
        attr_keys,
        attr_values,
        resource_keys,
        resource_values,
        event_names,
        event_times,
        event_attrs,
        link_trace_ids,
        link_span_ids,
        link_attrs,
    )


def span_record_row(record: SpanRecord, mask: Mask = _no_mask) -> Row:
    """The ``spans`` row of a span received over OTLP (ids already hex, values strings)."""
    return _span_row(
        trace_id=record.trace_id,
        span_id=record.span_id,
        parent_span_id=record.parent_span_id,
        name=record.name,
        kind=record.kind,
        service_name=record.service_name,
        scope_name=record.scope_name,
        start_ns=record.start_ns,
        end_ns=record.end_ns,
        status_code=record.status_code,
        status_message=record.status_message,
        attributes=record.attributes,
        resource=record.resource,
        events=((e.name, e.time_ns, e.attributes) for e in record.events),
        links=((link.trace_id, link.span_id, link.attributes) for link in record.links),
        mask=mask,
    )


def _items(attributes: Mapping[str, Any] | None) -> Pairs:
    return attributes.items() if attributes else ()


SpanParts = tuple[Any, ...]
"""An SDK span's fields as plain values (ints, strings, tuples): what :func:`sdk_span_parts`
takes out of a ``ReadableSpan`` so that the row can be made elsewhere (another thread or the
writer process -- a ``ReadableSpan`` itself holds locks and does not pickle)."""

_RESOURCES: dict[int, tuple[Any, tuple[tuple[str, Any], ...], str]] = {}


def _resource_parts(resource: Any) -> tuple[tuple[tuple[str, Any], ...], str]:
    """A resource's attribute pairs and service name; a provider's spans share one resource,
    so the pairs are made once (and pickle once per frame, as one shared object)."""
    cached = _RESOURCES.get(id(resource))
    if cached is not None and cached[0] is resource:
        return cached[1], cached[2]
    attributes = resource.attributes if resource is not None else {}
    items = tuple(attributes.items()) if attributes else ()
    service = str(attributes.get("service.name", "")) if attributes else ""
    if len(_RESOURCES) >= 64:
        _RESOURCES.clear()
    _RESOURCES[id(resource)] = (resource, items, service)
    return items, service


def _pairs(attributes: Mapping[str, Any] | None) -> tuple[tuple[str, Any], ...]:
    return tuple(attributes.items()) if attributes else ()


def sdk_span_parts(span: ReadableSpan) -> SpanParts:
    """The plain values of a span made by the OpenTelemetry SDK (see :data:`SpanParts`)."""
    context = span.context
    parent = span.parent
    scope = span.instrumentation_scope
    resource, service = _resource_parts(span.resource)
    return (
        context.trace_id if context is not None else None,
        context.span_id if context is not None else None,
        parent.span_id if parent is not None else None,
        span.name,
        span.kind.name.lower(),
        service,
        scope.name if scope is not None else "",
        span.start_time or 0,
        span.end_time or 0,
        span.status.status_code.name.lower(),
        span.status.description or "",
        _pairs(span.attributes),
        resource,
        tuple((e.name, e.timestamp, _pairs(e.attributes)) for e in span.events),
        tuple(
            (link.context.trace_id, link.context.span_id, _pairs(link.attributes))
            for link in span.links
        ),
    )


def sdk_span_row(parts: SpanParts, mask: Mask = _no_mask) -> Row:
    """The ``spans`` row of an SDK span's :func:`sdk_span_parts`."""
    (
        trace_id,
        span_id,
        parent_id,
        name,
        kind,
        service,
        scope,
        start_ns,
        end_ns,
        status_code,
        status_message,
        attributes,
        resource,
        events,
        links,
    ) = parts
    return _span_row(
        trace_id=f"{trace_id:032x}" if trace_id is not None else "",
        span_id=f"{span_id:016x}" if span_id is not None else "",
        parent_span_id=f"{parent_id:016x}" if parent_id is not None else "",
        name=name,
        kind=kind,
        service_name=service,
        scope_name=scope,
        start_ns=start_ns,
        end_ns=end_ns,
        status_code=status_code,
        status_message=status_message,
        attributes=attributes,
        resource=resource,
        events=events,
        links=((f"{t:032x}", f"{s:016x}", a) for t, s, a in links),
        mask=mask,
    )


def readable_span_row(span: ReadableSpan, mask: Mask = _no_mask) -> Row:
    """The ``spans`` row of a span made by the OpenTelemetry SDK (the runtime's own)."""
    return sdk_span_row(sdk_span_parts(span), mask)


# --- column by column -------------------------------------------------------------------------

# The writer converts whole batches: one list comprehension per column does the work of
# ``event_row`` for every record at a fraction of the cost (no per-row tuple, no per-value
# call), and checks that strings are plain ASCII once per column -- ``"".join(column)`` fails
# on anything that is not a string, and ``isascii()`` of the result is one C loop -- falling
# back to the per-value rules above only for a column that needs them.


def _texts(column: list[Any]) -> list[Any]:
    """``column`` with every value made storable text (``attribute_text``); the same list
    when every value already is an ASCII string (nearly always)."""
    try:
        if "".join(column).isascii():
            return column
    except TypeError:
        pass
    return [v if type(v) is str and v.isascii() else attribute_text(v) for v in column]


def _strict_texts(column: list[Any]) -> list[Any]:
    """Like ``_texts`` for fields typed ``str`` (``_text``: a non-string is an error)."""
    try:
        if "".join(column).isascii():
            return column
    except TypeError:
        pass
    return [_text(v) for v in column]


def _nested_texts(column: list[list[Any]], convert: Callable[[list[Any]], list[Any]]) -> None:
    """Make the values of a column of lists storable text, in place."""
    try:
        if "".join(chain.from_iterable(column)).isascii():
            return
    except TypeError:
        pass
    for i, values in enumerate(column):
        column[i] = convert(values)


def _clamped(column: list[int], top: int) -> list[int]:
    if not column or (min(column) >= 0 and max(column) <= top):
        return column
    return [_clamp(v, top) for v in column]


def _seconds_of(column: list[int]) -> list[int]:
    seconds = [ns // _NS for ns in column]
    if seconds and max(seconds) > _U32:
        return [min(s, _U32) for s in seconds]
    return seconds


PublishParts = tuple[Any, ...]
"""A ``PublishRecord`` as plain values: ``(attributes, data, topic, offset, published_ns,
producer, protocol, instance)`` -- a tuple of a dict, bytes, strings and an int pickles in
a couple of microseconds, the record itself in twenty."""


def publish_parts(record: PublishRecord) -> PublishParts:
    event = record.event
    attributes = event.attributes
    return (
        attributes if type(attributes) is dict else dict(attributes),
        event.data,
        record.topic,
        record.offset,
        record.published_ns,
        record.producer,
        record.protocol,
        record.instance,
    )


def event_columns(parts: Sequence[PublishParts], redactor: Redactor | None = None) -> Columns:
    """The ``events`` columns of a batch of :func:`publish_parts`, redacted first; equal to
    the rows of :func:`event_row`, column by column."""
    if redactor is not None and redactor.active:
        parts = [_redacted(p, redactor) for p in parts]
    attributes = [p[0] for p in parts]

    def attribute(name: str) -> list[Any]:
        return _texts([a.get(name, "") for a in attributes])

    ext_keys = _extension_keys(attributes)
    ext_values = [[a[k] for k in keys] for a, keys in zip(attributes, ext_keys, strict=True)]
    _nested_texts(ext_keys, lambda keys: [k if k.isascii() else _text(k) for k in keys])
    _nested_texts(ext_values, _texts)
    traces = [_trace_ids(a.get("traceparent")) for a in attributes]
    data = [
        d if type(d) is bytes else (bytes(d) if d is not None else b"")
        for d in (p[1] for p in parts)
    ]
    published = _clamped([p[4] for p in parts], _U64)
    return [
        attribute("id"),
        _strict_texts([p[2] for p in parts]),
        attribute("source"),
        attribute("type"),
        attribute("subject"),
        attribute("specversion"),
        attribute("datacontenttype"),
        attribute("dataschema"),
        [rfc3339_ns(a.get("time")) for a in attributes],
        published,
        _seconds_of(published),
        attribute("partitionkey"),
        ext_keys,
        ext_values,
        data,
        _clamped([len(d) for d in data], _U32),
        _strict_texts([p[5] for p in parts]),
        _strict_texts([p[6] for p in parts]),
        _strict_texts([p[7] for p in parts]),
        _strict_texts([p[3] for p in parts]),
        [t for t, _ in traces],
        [s for _, s in traces],
        attribute("replayid"),
    ]


def _extension_keys(attributes: list[Mapping[str, Any]]) -> list[list[str]]:
    """The sorted extension names of each event. Events of one batch nearly always carry the
    same attribute names in the same order, so the answer is worked out once per distinct
    order (the lists are shared between rows: nothing downstream changes them in place)."""
    known: dict[tuple[str, ...], list[str]] = {}
    out = []
    for a in attributes:
        names = tuple(a)
        keys = known.get(names)
        if keys is None:
            keys = known[names] = sorted(a.keys() - CORE_ATTRIBUTES)
        out.append(keys)
    return out


_HEX: Final = "0123456789abcdef"


def _trace_ids(value: object) -> tuple[str, str]:
    """``traceparent_ids`` with a fast path for the usual version-00 value (what the runtime
    stamps); anything unusual goes the long way."""
    if (
        type(value) is str
        and len(value) == 55
        and value.startswith("00-")
        and value[35] == "-"
        and value[52] == "-"
        and value.count("-") == 3
    ):
        trace_id, span_id = value[3:35], value[36:52]
        if (
            not value[3:].replace("-", "").strip(_HEX)
            and trace_id != _ZERO_TRACE
            and span_id != _ZERO_SPAN
        ):
            return trace_id, span_id
    return traceparent_ids(value)


def _redacted(parts: PublishParts, redactor: Redactor) -> PublishParts:
    event = CloudEvent(parts[0], parts[1])
    redacted = redactor.redact(event)
    if redacted is event:
        return parts
    return (redacted.attributes, redacted.data, *parts[2:])


_DELIVERY_FIELDS = attrgetter(*(f.name for f in fields(DeliveryRecord)))


def delivery_parts(record: DeliveryRecord) -> tuple[Any, ...]:
    """A ``DeliveryRecord`` as a tuple of its fields, in declaration order."""
    parts: tuple[Any, ...] = _DELIVERY_FIELDS(record)
    return parts


def delivery_columns(parts: Sequence[tuple[Any, ...]]) -> Columns:
    """The ``deliveries`` columns of a batch of :func:`delivery_parts` (as :func:`delivery_row`)."""
    (
        event_id,
        topic,
        group,
        subscription_id,
        subscriber,
        attempt,
        outcome,
        status_code,
        error,
        duration_ns,
        latency_ns,
        attempted_ns,
        instance,
        trace_id,
        span_id,
    ) = (list(c) for c in zip(*parts, strict=True))
    attempted = _clamped(attempted_ns, _U64)
    return [
        _strict_texts(event_id),
        _strict_texts(topic),
        _strict_texts(group),
        _strict_texts(subscription_id),
        _strict_texts(subscriber),
        _clamped(attempt, _U16),
        _strict_texts(outcome),
        _clamped(status_code, _U16),
        _strict_texts(error),
        _clamped(duration_ns, _U64),
        _clamped(latency_ns, _U64),
        attempted,
        _seconds_of(attempted),
        _strict_texts(instance),
        _strict_texts(trace_id),
        _strict_texts(span_id),
    ]


def columns_of(rows: Sequence[Row], width: int) -> Columns:
    """Rows turned column by column (``width`` columns, also for no rows)."""
    if not rows:
        return [[] for _ in range(width)]
    return [list(c) for c in zip(*rows, strict=True)]


def rows_of(columns: Columns) -> list[Row]:
    return list(zip(*columns, strict=True))


@dataclass(frozen=True, slots=True)
class Feed:
    """One kind of record the capture takes, and how it becomes columns of ``table``.

    ``pack`` runs where the record was made (the runtime's process, off its event loop) and
    returns plain values that pickle cheaply; ``columns`` runs in the writer -- a thread of
    the runtime's process, or the writer process -- on a batch of packed values.
    """

    name: str
    table: str
    pack: Callable[[Any], Any]
    columns: Callable[[RowConverter, list[Any]], Columns]


def _same(record: Any) -> Any:
    return record


# --- with redaction ---------------------------------------------------------------------------


class RowConverter:
    """Rows of one deployment: its redaction applied first (see the module docstring)."""

    def __init__(self, redactor: Redactor) -> None:
        self._redactor = redactor
        self._names = redactor.extensions
        self._mask: Mask = self._mask_attribute if redactor.extensions else _no_mask
        self._decisions: dict[str, bool] = {}

    def event_row(self, record: PublishRecord) -> Row:
        return event_row(record, self._redactor.redact(record.event))

    def delivery_row(self, record: DeliveryRecord) -> Row:
        return delivery_row(record)

    def span_record_row(self, record: SpanRecord) -> Row:
        return span_record_row(record, self._mask)

    def readable_span_row(self, span: ReadableSpan) -> Row:
        return readable_span_row(span, self._mask)

    def sdk_span_row(self, parts: SpanParts) -> Row:
        return sdk_span_row(parts, self._mask)

    @property
    def redactor(self) -> Redactor:
        return self._redactor

    def masks(self, key: str) -> bool:
        """Whether an attribute with this key is redacted (see the module docstring)."""
        decided = self._decisions.get(key)
        if decided is None:
            lowered = key.lower()
            if lowered in self._names:
                decided = True
            elif lowered.startswith("messaging."):
                decided = False
            else:
                decided = lowered.rsplit(".", 1)[-1] in self._names
            # Keys repeat; a flood of distinct ones must not grow the cache without bound.
            if len(self._decisions) < 10_000:
                self._decisions[key] = decided
        return decided

    def _mask_attribute(self, key: str, text: str) -> str:
        return self._redactor.token(text) if self.masks(key) else text


FEEDS: Final = {
    feed.name: feed
    for feed in (
        Feed(
            "publish",
            EVENTS.table,
            publish_parts,
            lambda c, parts: event_columns(parts, c.redactor),
        ),
        Feed(
            "delivery",
            DELIVERIES.table,
            delivery_parts,
            lambda c, parts: delivery_columns(parts),
        ),
        Feed(
            "sdk_span",
            SPANS.table,
            sdk_span_parts,
            lambda c, parts: columns_of([c.sdk_span_row(p) for p in parts], len(SPANS.columns)),
        ),
        Feed(
            "otlp_span",
            SPANS.table,
            _same,  # a SpanRecord: frozen, slotted, plain values -- pickles as it is
            lambda c, spans: columns_of([c.span_record_row(s) for s in spans], len(SPANS.columns)),
        ),
    )
}
"""The feeds by name: ``publish`` (``PublishRecord``), ``delivery`` (``DeliveryRecord``),
``sdk_span`` (the runtime's own ``ReadableSpan``), ``otlp_span`` (``SpanRecord`` from
applications)."""
