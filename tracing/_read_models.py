"""What the read side takes and returns: frozen dataclasses that cross into replay and the admin.

Inputs (:class:`TraceSearch`, :class:`EventWindow`) check themselves when they are built, so a
bad form field or replay spec fails where it was written, with a message naming the offending
value, and the query functions in ``_queries`` only ever see valid inputs. Results are plain
values: times as ``int`` nanoseconds since the epoch (the store's own unit; properties give
``datetime``/``timedelta`` for display), attributes as ``(key, value)`` tuples in stored order.

Errors::

    InvalidQuery (also a ValueError)   a search, window, cursor or id the read side cannot run;
                                       nothing was sent to ClickHouse. Failures of ClickHouse
                                       itself are ``tracing.clickhouse.ClickhouseError``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final, Generic, TypeVar

from runtime import InvalidTopic, validate_pattern

__all__ = [
    "DEFAULT_PAGE_SIZE",
    "DEFAULT_SEARCH_WINDOW",
    "MAX_PAGE_SIZE",
    "DeliveryAttempt",
    "EventRow",
    "EventWindow",
    "InvalidQuery",
    "Page",
    "ProducerTopic",
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
    "parse_attribute_filter",
    "time_range_ns",
    "to_datetime",
    "to_ns",
]

T = TypeVar("T")

DEFAULT_PAGE_SIZE: Final = 50
MAX_PAGE_SIZE: Final = 1000
"""A page is one bounded query; the admin pages through more."""
DEFAULT_SEARCH_WINDOW: Final = timedelta(hours=1)
"""The time range of a trace search that names none (ending now, or at ``until``)."""

STATUSES: Final = ("ok", "error")

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_US: Final = timedelta(microseconds=1)
_MAX_U64: Final = (1 << 64) - 1
_ATTRIBUTE_NAME: Final = re.compile(r"[a-z0-9]{1,20}")
_MAX_TEXT: Final = 1000
_SHOW: Final = 60


class InvalidQuery(ValueError):
    """A search, window, cursor or id the read side cannot run; nothing was sent.

    The message names the offending value and says what to write instead (the web admin shows
    it as is).
    """


# --- times ------------------------------------------------------------------------------------


def to_ns(value: datetime, *, name: str = "time") -> int:
    """``value`` (timezone-aware) as nanoseconds since the epoch; microsecond precision."""
    if not isinstance(value, datetime):
        raise InvalidQuery(
            f"{name} must be a datetime, got {type(value).__name__} {_show(value)}; pass e.g. "
            f"datetime.now(UTC)"
        )
    if value.tzinfo is None or value.utcoffset() is None:
        raise InvalidQuery(
            f"{name} {value.isoformat()} has no time zone, which is ambiguous; pass a "
            f"timezone-aware datetime, e.g. datetime(2025, 1, 31, 12, 0, tzinfo=UTC)"
        )
    ns = (value - _EPOCH) // _ONE_US * 1000
    if ns < 0:
        raise InvalidQuery(f"{name} {value.isoformat()} is before 1970; nothing is recorded there")
    return ns


def to_datetime(ns: int) -> datetime:
    """Nanoseconds since the epoch as an aware UTC ``datetime`` (to the microsecond)."""
    return _EPOCH + timedelta(microseconds=ns // 1000)


def time_range_ns(since: datetime, until: datetime, what: str) -> tuple[int, int]:
    """``[since, until)`` in nanoseconds; :class:`InvalidQuery` (naming ``what``) unless both
    are aware datetimes and ``since`` is the earlier."""
    since_ns = to_ns(since, name="since")
    until_ns = to_ns(until, name="until")
    if since_ns >= until_ns:
        raise InvalidQuery(
            f"the time range of {what} is empty or inverted: since {since.isoformat()} is not "
            f"before until {until.isoformat()}; the range is [since, until), so since must be "
            f"the earlier time"
        )
    return since_ns, until_ns


# --- validation helpers -----------------------------------------------------------------------


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= _SHOW else text[:_SHOW] + "..."


def _optional_text(value: object, name: str) -> str | None:
    """``None`` for an absent or blank filter (a blank form field), else the string."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidQuery(f"{name} must be a string, got {type(value).__name__} {_show(value)}")
    if len(value) > _MAX_TEXT:
        raise InvalidQuery(f"{name} is longer than {_MAX_TEXT} characters: {_show(value)}")
    return value if value.strip() else None


def _pattern(value: str, name: str) -> str:
    try:
        return validate_pattern(value)
    except InvalidTopic as e:
        raise InvalidQuery(f"{name}: {e}") from e


def parse_attribute_filter(text: str) -> tuple[str, str]:
    """``"key=value"`` (as typed in a search box) as a ``(key, value)`` filter pair.

    The key ends at the first ``=``; the value may contain more of them.
    """
    if not isinstance(text, str) or "=" not in text:
        raise InvalidQuery(
            f"attribute filter {_show(text)} is not key=value; write e.g. "
            f"messaging.consumer.group.name=billing"
        )
    key, value = text.split("=", 1)
    return _attribute_pair((key.strip(), value), "attribute filter")


def _attribute_pair(pair: object, name: str) -> tuple[str, str]:
    if (
        not isinstance(pair, tuple | list)
        or len(pair) != 2
        or not all(isinstance(p, str) for p in pair)
    ):
        raise InvalidQuery(
            f"{name} {_show(pair)} is not a (key, value) pair of strings; write e.g. "
            f"('http.route', '/orders')"
        )
    key, value = pair
    if not key or "\0" in key or "\0" in value:
        raise InvalidQuery(
            f"{name} {_show(pair)} needs a non-empty key, and neither key nor value may "
            f"contain NUL characters"
        )
    if len(key) > _MAX_TEXT or len(value) > _MAX_TEXT:
        raise InvalidQuery(f"{name} {_show(pair)} is longer than {_MAX_TEXT} characters")
    return key, value


def _attribute_pairs(value: object, name: str) -> tuple[tuple[str, str], ...]:
    """``value`` -- (key, value) pairs or a mapping -- as a tuple of checked pairs."""
    if isinstance(value, str | bytes):
        raise InvalidQuery(
            f"{name} must be (key, value) pairs, not a string {_show(value)}; use "
            f"parse_attribute_filter('key=value') for text"
        )
    items = value.items() if isinstance(value, Mapping) else value
    if not isinstance(items, Iterable):
        raise InvalidQuery(f"{name} must be (key, value) pairs, got {_show(value)}")
    try:
        return tuple(_attribute_pair(p, name) for p in items)
    except TypeError as e:
        raise InvalidQuery(f"{name} must be (key, value) pairs, got {_show(value)}") from e


def _duration_ns(value: timedelta | None, name: str) -> int | None:
    if value is None:
        return None
    if not isinstance(value, timedelta):
        raise InvalidQuery(
            f"{name} must be a timedelta, got {type(value).__name__} {_show(value)}; pass "
            f"e.g. timedelta(milliseconds=500)"
        )
    if value < timedelta(0):
        raise InvalidQuery(f"{name} {value} is negative; durations are 0 or more")
    return min(value // _ONE_US * 1000, _MAX_U64)


# --- inputs -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TraceSearch:
    """A trace search: which traces, in which time range, one page of them.

    A trace matches when, among its spans that start in ``[since, until)``, at least one
    *matching span* passes every span filter at once -- ``service``, ``min_duration`` /
    ``max_duration`` (that span's duration), ``attributes`` (span attributes, every
    ``(key, value)`` pair) and ``resource_attributes`` (the span's resource: ``host.name``,
    ``deployment.environment`` ...) -- and:

    * ``status="error"``: a matching span failed; ``status="ok"``: none of them did;
    * ``topic`` (a topic or a pattern with ``*``/``#``) and ``event_type``: the trace carries
      an event published in the range on such a topic / of that type.

    Without ``since``/``until`` the range is the last hour (:data:`DEFAULT_SEARCH_WINDOW`);
    with only ``until``, the hour before it; with only ``since``, from it to now (at least an
    hour). Traces come newest first (by their first matching span), ``limit`` per page; pass
    a page's ``next_cursor`` as ``cursor`` to get the next one (the cursor keeps the page's
    time range, so "the last hour" does not move while paging). Blank strings count as "no
    filter".
    """

    since: datetime | None = None
    until: datetime | None = None
    service: str | None = None
    topic: str | None = None
    event_type: str | None = None
    status: str | None = None
    min_duration: timedelta | None = None
    max_duration: timedelta | None = None
    attributes: tuple[tuple[str, str], ...] = ()
    resource_attributes: tuple[tuple[str, str], ...] = ()
    limit: int = DEFAULT_PAGE_SIZE
    cursor: str | None = None

    def __post_init__(self) -> None:
        def put(name: str, value: object) -> None:
            object.__setattr__(self, name, value)

        for name in ("since", "until"):
            value = getattr(self, name)
            if value is not None:
                to_ns(value, name=name)
        if self.since is not None and self.until is not None:
            time_range_ns(self.since, self.until, "the trace search")
        put("service", _optional_text(self.service, "service"))
        put("event_type", _optional_text(self.event_type, "event_type"))
        topic = _optional_text(self.topic, "topic")
        put("topic", None if topic is None else _pattern(topic.strip(), "topic"))
        status = _optional_text(self.status, "status")
        if status is not None and status not in STATUSES:
            raise InvalidQuery(f"status {_show(self.status)} is not one of {', '.join(STATUSES)}")
        put("status", status)
        low = _duration_ns(self.min_duration, "min_duration")
        high = _duration_ns(self.max_duration, "max_duration")
        if low is not None and high is not None and low > high:
            raise InvalidQuery(
                f"min_duration {self.min_duration} is above max_duration {self.max_duration}; "
                f"swap them"
            )
        put("attributes", _attribute_pairs(self.attributes, "attribute filter"))
        put(
            "resource_attributes",
            _attribute_pairs(self.resource_attributes, "resource attribute filter"),
        )
        if (
            not isinstance(self.limit, int)
            or isinstance(self.limit, bool)
            or not 1 <= self.limit <= MAX_PAGE_SIZE
        ):
            raise InvalidQuery(
                f"limit {_show(self.limit)} is not a page size from 1 to {MAX_PAGE_SIZE}"
            )
        cursor = _optional_text(self.cursor, "cursor")
        put("cursor", cursor)

    @property
    def min_duration_ns(self) -> int:
        return _duration_ns(self.min_duration, "min_duration") or 0

    @property
    def max_duration_ns(self) -> int:
        high = _duration_ns(self.max_duration, "max_duration")
        return _MAX_U64 if high is None else high

    def window_ns(self, now: datetime) -> tuple[int, int]:
        """``[since, until)`` in nanoseconds, the defaults filled in relative to ``now``."""
        since, until = self.since, self.until
        if until is None:
            until = now if since is None else max(now, since + DEFAULT_SEARCH_WINDOW)
        if since is None:
            since = until - DEFAULT_SEARCH_WINDOW
        return time_range_ns(since, until, "the trace search")


@dataclass(frozen=True, slots=True)
class EventWindow:
    """Recorded events to read back (for replay, or an event list): which topics, when, which.

    ``topics`` are topic names or subscription patterns with the runtime's semantics (``*`` one
    segment, ``#`` zero or more; a pattern whose first segment is a wildcard does not match
    internal ``_`` topics such as dead letters -- name them: ``_dlq.#``). A single string is
    taken as one pattern. ``attributes`` are CloudEvents attribute filters, ``name -> value``
    exact matches that all must hold: ``type``, ``source``, ``subject``, ``id``,
    ``specversion``, ``datacontenttype``, ``dataschema`` by their own column, any other name
    as an extension (``partitionkey``, ``replayid``, ...). The range is ``[since, until)`` on
    the time the mesh accepted each event.
    """

    topics: tuple[str, ...]
    since: datetime
    until: datetime
    attributes: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        topics: object = self.topics
        if isinstance(topics, str):
            topics = (topics,)
        if not isinstance(topics, tuple | list) or not topics:
            raise InvalidQuery(
                f"an event window needs at least one topic or pattern, got {_show(self.topics)}; "
                f"write e.g. ('orders.#',)"
            )
        checked = []
        for i, pattern in enumerate(topics):
            if not isinstance(pattern, str):
                raise InvalidQuery(f"topics[{i}] {_show(pattern)} is not a string")
            checked.append(_pattern(pattern, f"topics[{i}]"))
        object.__setattr__(self, "topics", tuple(dict.fromkeys(checked)))
        time_range_ns(self.since, self.until, "the event window")
        pairs = _attribute_pairs(self.attributes, "attribute filter")
        for name, value in pairs:
            if not _ATTRIBUTE_NAME.fullmatch(name):
                raise InvalidQuery(
                    f"attribute filter {_show(name)} is not a CloudEvents attribute name "
                    f"(1-20 lower-case letters and digits), e.g. type, source, partitionkey"
                )
            if name == "time":
                raise InvalidQuery(
                    "attribute filter 'time' is not supported: the window's since/until "
                    "select by time"
                )
            if not value:
                raise InvalidQuery(
                    f"attribute filter {name!r} has an empty value; an absent attribute never "
                    f"matches, so leave the filter out instead"
                )
        object.__setattr__(self, "attributes", pairs)

    @property
    def since_ns(self) -> int:
        return to_ns(self.since, name="since")

    @property
    def until_ns(self) -> int:
        return to_ns(self.until, name="until")


# --- results ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    """One page of results, newest first; ``next_cursor`` is ``None`` on the last page."""

    items: tuple[T, ...]
    next_cursor: str | None
    since_ns: int
    """The time range the page was drawn from, ``[since_ns, until_ns)`` (defaults filled in)."""
    until_ns: int


@dataclass(frozen=True, slots=True)
class TraceSummary:
    """One row of the trace list: the whole trace summed up (all its spans, not only matches)."""

    trace_id: str
    root_service: str
    """Service of the root span (no parent); of the earliest span if the root is missing."""
    root_name: str
    start_ns: int
    duration_ns: int
    span_count: int
    error_count: int
    """Spans with status ``error``."""
    services: tuple[str, ...]
    topics: tuple[str, ...]
    """Topics of the events the trace carries."""

    @property
    def start(self) -> datetime:
        return to_datetime(self.start_ns)

    @property
    def duration(self) -> timedelta:
        return timedelta(microseconds=self.duration_ns // 1000)


@dataclass(frozen=True, slots=True)
class SpanEvent:
    name: str
    time_ns: int
    attributes: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class SpanLink:
    trace_id: str
    span_id: str
    attributes: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class TraceSpan:
    """A span as recorded (the OpenTelemetry data model, ids in lower-case hex)."""

    trace_id: str
    span_id: str
    parent_span_id: str
    """``''`` for a root span."""
    name: str
    kind: str
    """``internal``, ``server``, ``client``, ``producer`` or ``consumer``."""
    service_name: str
    scope_name: str
    start_ns: int
    end_ns: int
    duration_ns: int
    status_code: str
    """``unset``, ``ok`` or ``error``."""
    status_message: str
    attributes: tuple[tuple[str, str], ...] = ()
    resource: tuple[tuple[str, str], ...] = ()
    events: tuple[SpanEvent, ...] = ()
    links: tuple[SpanLink, ...] = ()

    @property
    def is_error(self) -> bool:
        return self.status_code == "error"

    def attribute(self, key: str) -> str | None:
        """The span attribute ``key`` (the last one, if recorded twice), else ``None``."""
        found = None
        for k, v in self.attributes:
            if k == key:
                found = v
        return found


@dataclass(frozen=True, slots=True)
class EventRow:
    """A recorded event: the CloudEvent as the mesh accepted it, plus where and when.

    ``data`` is byte-exact; ``extensions`` are every attribute that is not a core CloudEvents
    attribute, by name, as strings.
    """

    event_id: str
    topic: str
    source: str
    type: str
    subject: str
    spec_version: str
    data_content_type: str
    data_schema: str
    time_ns: int
    """The CloudEvent's ``time``; 0 if it had none."""
    published_ns: int
    """When the mesh accepted it."""
    partition_key: str
    extensions: tuple[tuple[str, str], ...]
    data: bytes
    producer: str
    protocol: str
    instance: str
    store_offset: str
    trace_id: str
    span_id: str
    replay_id: str
    """``''`` for an original; the replay's id for a replayed event."""

    @property
    def published(self) -> datetime:
        return to_datetime(self.published_ns)

    def attributes(self) -> dict[str, str]:
        """The CloudEvents context attributes, extensions included, empty optional ones left
        out; ``time`` as RFC 3339 UTC with the recorded precision."""
        result = {
            "id": self.event_id,
            "source": self.source,
            "type": self.type,
            "specversion": self.spec_version,
        }
        optional = {
            "subject": self.subject,
            "datacontenttype": self.data_content_type,
            "dataschema": self.data_schema,
        }
        result.update({k: v for k, v in optional.items() if v})
        if self.time_ns:
            seconds, fraction = divmod(self.time_ns, 1_000_000_000)
            stamp = datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S")
            digits = f".{fraction:09d}".rstrip("0") if fraction else ""
            result["time"] = f"{stamp}{digits.rstrip('.')}Z"
        result.update(dict(self.extensions))
        return result


@dataclass(frozen=True, slots=True)
class DeliveryAttempt:
    """One push of an event to a consumer group's subscriber, and how it ended."""

    event_id: str
    topic: str
    group: str
    subscription_id: str
    subscriber: str
    attempt: int
    outcome: str
    """``acked``, ``retry`` (failed, retried later), ``dead_lettered`` or ``rejected``."""
    status_code: int
    """HTTP status; 0 if there was no answer."""
    error: str
    duration_ns: int
    latency_ns: int
    """From publish to this outcome."""
    attempted_ns: int
    instance: str
    trace_id: str
    span_id: str

    @property
    def failed(self) -> bool:
        return self.outcome != "acked"

    @property
    def dead_lettered(self) -> bool:
        return self.outcome == "dead_lettered"


@dataclass(frozen=True, slots=True)
class TraceEvent:
    """An event of a trace with every delivery attempt of it, oldest first."""

    event: EventRow
    deliveries: tuple[DeliveryAttempt, ...]


@dataclass(frozen=True, slots=True)
class TraceView:
    """A whole trace: the waterfall's spans (start order) and the events it carried (publish
    order), each with its delivery attempts.

    ``truncated`` is true when the trace was larger than what one view loads (see the caps in
    ``_queries``); the view then holds the earliest spans/events.
    """

    trace_id: str
    spans: tuple[TraceSpan, ...]
    events: tuple[TraceEvent, ...]
    truncated: bool = False

    @property
    def start_ns(self) -> int:
        times = [s.start_ns for s in self.spans] + [e.event.published_ns for e in self.events]
        return min(times, default=0)

    @property
    def end_ns(self) -> int:
        times = [s.end_ns for s in self.spans] + [e.event.published_ns for e in self.events]
        return max(times, default=0)

    @property
    def duration_ns(self) -> int:
        return self.end_ns - self.start_ns

    @property
    def services(self) -> tuple[str, ...]:
        return tuple(sorted({s.service_name for s in self.spans}))

    @property
    def error_count(self) -> int:
        return sum(1 for s in self.spans if s.is_error)

    @property
    def roots(self) -> tuple[TraceSpan, ...]:
        """Spans whose parent is not in the trace (normally the one root span)."""
        ids = {s.span_id for s in self.spans}
        return tuple(s for s in self.spans if s.parent_span_id not in ids)

    def children(self, span_id: str) -> tuple[TraceSpan, ...]:
        return tuple(s for s in self.spans if s.parent_span_id == span_id)


@dataclass(frozen=True, slots=True)
class ProducerTopic:
    """Producer -> topic: how many events it published there in the range."""

    producer: str
    topic: str
    events: int
    rate_per_s: float


@dataclass(frozen=True, slots=True)
class TopicGroup:
    """Topic -> consumer group: delivery attempts in the range and how they ended."""

    topic: str
    group: str
    attempts: int
    acked: int
    failed: int
    """Attempts that did not end ``acked`` (retried, rejected or dead-lettered)."""
    dead_letters: int
    rate_per_s: float
    """Acknowledged deliveries per second."""


@dataclass(frozen=True, slots=True)
class TopicStats:
    topic: str
    events: int
    rate_per_s: float
    producers: tuple[str, ...]
    groups: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class TopicMap:
    """Who publishes where and who consumes what, over ``[since_ns, until_ns)``.

    ``truncated`` is true when there were more producer/topic or topic/group pairs than one map
    holds; the busiest are kept.
    """

    since_ns: int
    until_ns: int
    topics: tuple[TopicStats, ...]
    producers: tuple[ProducerTopic, ...]
    groups: tuple[TopicGroup, ...]
    truncated: bool = False

    @property
    def dead_letters(self) -> int:
        return sum(g.dead_letters for g in self.groups)

    def topic(self, name: str) -> TopicStats | None:
        return next((t for t in self.topics if t.topic == name), None)
