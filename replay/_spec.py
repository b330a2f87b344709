"""What to replay and how: :class:`ReplaySpec`, its :class:`Filter` s and :class:`Pacing`.

A spec checks itself when it is built (frozen dataclass ``__post_init__``), so a bad CLI flag,
form field or API call fails where it was written, with the offending value and what to write
instead, before anything is read or sent.

Filters (``Filter.parse``) are one line of text each, ``FIELD OP VALUE``:

* ``OP`` is ``=`` (equal), ``^=`` (starts with) or ``~=`` (Python regular expression, searched);
* ``FIELD`` is a CloudEvents attribute (``type``, ``source``, ``subject``, ``id``,
  ``datacontenttype``, ``dataschema``), an extension by name (``partitionkey``, ``region``),
  or ``data.`` and a dotted path into JSON data (``data.customer.tier``,
  ``data.items.0.sku``: a number indexes an array). Data values compare as text: strings as
  they are, numbers as JSON writes them, ``true``/``false``/``null``.

Speeds (``ReplaySpec.speed``): ``1x`` original timing, ``10x`` / ``0.5x`` scaled, ``200/s`` a
fixed rate in events per second, ``max`` as fast as possible.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Final

from replay._errors import InvalidSpec
from tracing import EventWindow, InvalidQuery

__all__ = [
    "DEFAULT_MAX_EVENTS",
    "DEFAULT_PREFIX",
    "SANDBOX_PREFIXES",
    "Filter",
    "Pacing",
    "ReplaySpec",
    "parse_time",
]

DEFAULT_PREFIX: Final = "replay."
SANDBOX_PREFIXES: Final = ("replay.", "sandbox.")
"""Target topics under these prefixes are safe to write; others need ``allow_production``."""
DEFAULT_MAX_EVENTS: Final = 100_000
_CORE: Final = ("id", "type", "source", "subject", "datacontenttype", "dataschema", "specversion")
_ATTRIBUTE: Final = re.compile(r"[a-z0-9]{1,20}")
_OPERATORS: Final = ("^=", "~=", "=")
_SPEED: Final = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([x/])\s*(s?)\s*", re.I)
_MAX_LIST: Final = 100_000
_PREFIX: Final = re.compile(r"([A-Za-z0-9-][A-Za-z0-9_-]*\.)+")
_SHOW: Final = 60


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= _SHOW else text[:_SHOW] + "..."


@dataclass(frozen=True, slots=True)
class Filter:
    """One selection filter: ``field`` ``op`` ``value`` (see the module docstring)."""

    field: str
    op: str
    """``eq``, ``prefix`` or ``regex``."""
    value: str
    pattern: re.Pattern[str] | None = dataclasses.field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.op not in ("eq", "prefix", "regex"):
            raise InvalidSpec(
                f"filter {self.field!r}: operator {self.op!r} is not one of eq, prefix, regex"
            )
        if not isinstance(self.field, str) or not self.field:
            raise InvalidSpec(f"filter field {_show(self.field)} is empty; write e.g. type=a.b")
        if self.field.startswith("data."):
            path = self.field[5:].split(".")
            if not all(path):
                raise InvalidSpec(
                    f"filter field {self.field!r} has an empty path segment; write a dotted "
                    f"path into the JSON data, e.g. data.customer.tier"
                )
        elif not _ATTRIBUTE.fullmatch(self.field):
            raise InvalidSpec(
                f"filter field {self.field!r} is neither a CloudEvents attribute or extension "
                f"name (1-20 lower-case letters and digits: type, source, subject, "
                f"partitionkey ...) nor a data path (data.customer.tier)"
            )
        elif self.field == "time":
            raise InvalidSpec("filter on 'time' is not supported: since/until select by time")
        if not isinstance(self.value, str):
            raise InvalidSpec(f"filter {self.field!r}: value {_show(self.value)} is not text")
        if self.op == "regex":
            try:
                compiled = re.compile(self.value)
            except re.error as e:
                raise InvalidSpec(
                    f"filter {self.field}~={self.value!r}: not a valid regular expression "
                    f"({e}); escape special characters, e.g. \\. for a dot"
                ) from None
            object.__setattr__(self, "pattern", compiled)

    @classmethod
    def parse(cls, text: str) -> Filter:
        """``"type=order.created"``, ``"source^=/shop"``, ``"data.total~=^9"``."""
        if not isinstance(text, str):
            raise InvalidSpec(f"filter {_show(text)} is not text; write e.g. type=order.created")
        best: tuple[int, str] | None = None
        for op in _OPERATORS:
            at = text.find(op)
            if at > 0 and (best is None or at < best[0]):
                best = (at, op)
        if best is None:
            raise InvalidSpec(
                f"filter {text!r} has no operator; write FIELD=VALUE (equal), FIELD^=VALUE "
                f"(prefix) or FIELD~=REGEX, e.g. type=order.created or data.tier^=gold"
            )
        at, op = best
        name = text[:at].strip()
        value = text[at + len(op) :]
        return cls(name, {"=": "eq", "^=": "prefix", "~=": "regex"}[op], value)

    @property
    def is_data(self) -> bool:
        return self.field.startswith("data.")

    @property
    def path(self) -> tuple[str, ...]:
        return tuple(self.field[5:].split(".")) if self.is_data else ()

    def matches_text(self, text: str | None) -> bool:
        if text is None:
            return False
        if self.op == "eq":
            return text == self.value
        if self.op == "prefix":
            return text.startswith(self.value)
        assert self.pattern is not None
        return self.pattern.search(text) is not None

    def __str__(self) -> str:
        return f"{self.field}{ {'eq': '=', 'prefix': '^=', 'regex': '~='}[self.op] }{self.value}"


@dataclass(frozen=True, slots=True)
class Pacing:
    """How fast: ``factor`` times original timing, a fixed ``rate`` (events/s), or neither (as fast
    as possible). ``max_idle_gap_s`` compresses longer silences (original timing only)."""

    factor: float | None = None
    rate: float | None = None
    max_idle_gap_s: float | None = None

    @property
    def as_fast_as_possible(self) -> bool:
        return self.factor is None and self.rate is None

    @classmethod
    def parse(cls, speed: str, max_idle_gap_s: float | None = None) -> Pacing:
        text = speed.strip().lower() if isinstance(speed, str) else ""
        if text in ("max", "asap"):
            return cls(max_idle_gap_s=max_idle_gap_s)
        found = _SPEED.fullmatch(text)
        if found is None or (found.group(2) == "x" and found.group(3)):
            raise InvalidSpec(
                f"speed {_show(speed)} is not one of: 1x (original timing), 10x or 0.5x "
                f"(scaled), 500/s (fixed events per second), max (as fast as possible)"
            )
        number = float(found.group(1))
        if number <= 0:
            raise InvalidSpec(f"speed {speed!r} must be above zero; use e.g. 1x or 100/s")
        if found.group(2) == "x":
            return cls(factor=number, max_idle_gap_s=max_idle_gap_s)
        return cls(rate=number, max_idle_gap_s=max_idle_gap_s)


@dataclass(frozen=True, slots=True)
class ReplaySpec:
    """A window of recorded traffic to replay, and how.

    Selection, all of which must hold: ``topics`` (names or patterns, ``*`` one segment, ``#``
    any) recorded in ``[since, until)``; every filter; ``sample_percent`` of the partition keys
    (consistent: a key is in or out for every event, by a hash of the key; events without a
    key by their id); ``keys`` (an allow-list of partition keys); ``event_ids`` or
    ``trace_ids`` (only those, still within the window); originals only unless
    ``include_replayed``; the first ``limit`` in time order.

    Sending: ``speed`` (see :class:`Pacing`), ``max_idle_gap_s``, target topic = ``to_prefix``
    + the original topic. The guard: a target topic not under :data:`SANDBOX_PREFIXES` needs
    ``allow_production=True``; more than ``max_events`` selected events is refused before
    anything is sent.
    """

    topics: tuple[str, ...]
    since: datetime
    until: datetime
    filters: tuple[Filter, ...] = ()
    sample_percent: float = 100.0
    keys: tuple[str, ...] = ()
    event_ids: tuple[str, ...] = ()
    trace_ids: tuple[str, ...] = ()
    include_replayed: bool = False
    limit: int | None = None
    speed: str = "1x"
    max_idle_gap_s: float | None = None
    to_prefix: str = DEFAULT_PREFIX
    allow_production: bool = False
    max_events: int = DEFAULT_MAX_EVENTS

    def __post_init__(self) -> None:
        def put(name: str, value: object) -> None:
            object.__setattr__(self, name, value)

        topics: object = self.topics
        if isinstance(topics, str):
            topics = (topics,)
        if not isinstance(topics, tuple | list) or not topics:
            raise InvalidSpec(
                f"topics {_show(self.topics)}: name at least one topic or pattern, e.g. orders.#"
            )
        try:
            window = EventWindow(tuple(topics), self.since, self.until)
        except InvalidQuery as e:
            raise InvalidSpec(str(e).replace("event window", "replay window")) from None
        put("topics", window.topics)
        filters: list[Filter] = []
        for f in self.filters:
            item: object = f
            if isinstance(item, str):
                item = Filter.parse(item)
            if not isinstance(item, Filter):
                raise InvalidSpec(f"filter {_show(f)} is neither text nor a Filter")
            filters.append(item)
        put("filters", tuple(filters))
        if (
            isinstance(self.sample_percent, bool)
            or not isinstance(self.sample_percent, int | float)
            or not 0 < self.sample_percent <= 100
        ):
            raise InvalidSpec(
                f"sample_percent {_show(self.sample_percent)} is not above 0 and at most 100; "
                f"100 keeps every key, 10 one key in ten"
            )
        for name in ("keys", "event_ids", "trace_ids"):
            values = getattr(self, name)
            if isinstance(values, str):
                values = (values,)
            if not all(isinstance(v, str) and v for v in values) or len(values) > _MAX_LIST:
                raise InvalidSpec(
                    f"{name} {_show(values)} must be up to {_MAX_LIST} non-empty strings"
                )
            put(name, tuple(dict.fromkeys(values)))
        for i, trace_id in enumerate(self.trace_ids):
            if not re.fullmatch(r"[0-9a-fA-F]{32}", trace_id):
                raise InvalidSpec(
                    f"trace_ids[{i}] {trace_id!r} is not a trace id (32 hexadecimal digits)"
                )
        if self.event_ids and self.trace_ids:
            raise InvalidSpec("give event_ids or trace_ids, not both")
        if self.limit is not None and (
            isinstance(self.limit, bool) or not isinstance(self.limit, int) or self.limit < 1
        ):
            raise InvalidSpec(f"limit {_show(self.limit)} must be a whole number from 1 (or None)")
        if self.max_idle_gap_s is not None and (
            isinstance(self.max_idle_gap_s, bool)
            or not isinstance(self.max_idle_gap_s, int | float)
            or self.max_idle_gap_s < 0
        ):
            raise InvalidSpec(
                f"max_idle_gap_s {_show(self.max_idle_gap_s)} must be seconds, 0 or more"
            )
        Pacing.parse(self.speed, self.max_idle_gap_s)  # raises for an unknown speed
        prefix = self.to_prefix
        if not isinstance(prefix, str) or (prefix and not prefix.endswith(".")):
            raise InvalidSpec(
                f"to_prefix {_show(prefix)} must be empty or end with a dot, e.g. replay."
            )
        if prefix and not _PREFIX.fullmatch(prefix):
            raise InvalidSpec(
                f"to_prefix {prefix!r} is not dot-separated segments of letters, digits, _ and "
                f"- ending with a dot, e.g. replay. or sandbox.qa."
            )
        if (
            isinstance(self.max_events, bool)
            or not isinstance(self.max_events, int)
            or self.max_events < 1
        ):
            raise InvalidSpec(f"max_events {_show(self.max_events)} must be a whole number from 1")

    @property
    def pacing(self) -> Pacing:
        return Pacing.parse(self.speed, self.max_idle_gap_s)

    @property
    def window(self) -> EventWindow:
        return EventWindow(self.topics, self.since, self.until)

    def target_topic(self, topic: str) -> str:
        return self.to_prefix + topic

    def is_sandbox(self, topic: str) -> bool:
        """Whether ``topic`` (a target topic) is under a sandbox prefix."""
        return topic.startswith(SANDBOX_PREFIXES)

    def describe(self) -> str:
        """The spec in one line, for messages (``no events matched ...``)."""
        parts = [
            f"topics={','.join(self.topics)}",
            f"since={self.since.isoformat()}",
            f"until={self.until.isoformat()}",
        ]
        parts += [f"filter={f}" for f in self.filters]
        if self.sample_percent < 100:
            parts.append(f"sample={self.sample_percent:g}%")
        if self.keys:
            parts.append(f"keys={','.join(self.keys[:5])}{'...' if len(self.keys) > 5 else ''}")
        if self.event_ids:
            parts.append(f"event_ids={len(self.event_ids)}")
        if self.trace_ids:
            parts.append(f"trace_ids={len(self.trace_ids)}")
        if self.include_replayed:
            parts.append("include_replayed")
        if self.limit is not None:
            parts.append(f"limit={self.limit}")
        return " ".join(parts)

    def to_json(self) -> dict[str, object]:
        """A JSON-able form (the job stores it); :meth:`from_json` reads it back."""
        return {
            "topics": list(self.topics),
            "since": self.since.isoformat(),
            "until": self.until.isoformat(),
            "filters": [str(f) for f in self.filters],
            "sample_percent": self.sample_percent,
            "keys": list(self.keys),
            "event_ids": list(self.event_ids),
            "trace_ids": list(self.trace_ids),
            "include_replayed": self.include_replayed,
            "limit": self.limit,
            "speed": self.speed,
            "max_idle_gap_s": self.max_idle_gap_s,
            "to_prefix": self.to_prefix,
            "allow_production": self.allow_production,
            "max_events": self.max_events,
        }

    @classmethod
    def from_json(cls, document: dict[str, object]) -> ReplaySpec:
        values = dict(document)
        try:
            for name in ("since", "until"):
                values[name] = datetime.fromisoformat(str(values[name]))
            for name in ("topics", "filters", "keys", "event_ids", "trace_ids"):
                raw = values.get(name, ())
                if not isinstance(raw, list | tuple):
                    raise InvalidSpec(f"{name} must be a list, got {_show(raw)}")
                values[name] = tuple(raw)
            return cls(**values)  # type: ignore[arg-type]
        except (KeyError, TypeError, ValueError) as e:
            if isinstance(e, InvalidSpec):
                raise
            raise InvalidSpec(f"not a replay spec document: {e}") from None


def parse_time(text: str, name: str) -> datetime:
    """An ISO 8601 time with a zone (``2026-11-26T10:00:00Z``), for CLIs and forms."""
    try:
        value = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except (ValueError, AttributeError):
        raise InvalidSpec(
            f"{name} {_show(text)} is not an ISO 8601 time; write e.g. 2026-11-26T10:00:00Z"
        ) from None
    if value.tzinfo is None:
        raise InvalidSpec(
            f"{name} {text!r} has no time zone; add one, e.g. {text.strip()}Z for UTC"
        )
    return value
