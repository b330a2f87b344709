"""Query-string parameters to read-side inputs: the URL holds every query (shareable links).

Each parser returns the input and the cleaned values to put back in the form, or raises
``BadParameter`` whose message names the field, the offending value and what to write.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final

from django.http import QueryDict

from tracing import InvalidQuery, TraceSearch, parse_attribute_filter

PRESETS: Final = {
    "5m": timedelta(minutes=5),
    "15m": timedelta(minutes=15),
    "1h": timedelta(hours=1),
    "6h": timedelta(hours=6),
    "24h": timedelta(hours=24),
    "7d": timedelta(days=7),
}
DEFAULT_PRESET: Final = "1h"


class BadParameter(ValueError):
    """A query parameter the page cannot use; the message is shown above the form."""


@dataclass(frozen=True)
class TimeRange:
    since: datetime
    until: datetime
    preset: str
    """``''`` when absolute."""


def parse_instant(text: str, name: str) -> datetime:
    """``2026-12-01T13:00``, ``2026-12-01 13:00:05``, or ISO 8601 with ``Z``/offset; no zone
    means UTC (the whole admin shows UTC)."""
    try:
        value = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise BadParameter(
            f"{name} {text!r} is not a time; write e.g. 2026-12-01T13:00 (UTC) or "
            f"2026-12-01T13:00:00+01:00"
        ) from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def time_range(query: QueryDict, now: datetime | None = None) -> TimeRange:
    now = now or datetime.now(UTC)
    since_text = query.get("since", "").strip()
    until_text = query.get("until", "").strip()
    if since_text or until_text:
        until = parse_instant(until_text, "until") if until_text else now
        since = parse_instant(since_text, "since") if since_text else until - timedelta(hours=1)
        if since >= until:
            raise BadParameter(
                f"since {since:%Y-%m-%d %H:%M:%S} is not before until {until:%Y-%m-%d %H:%M:%S}; "
                f"swap them"
            )
        return TimeRange(since, until, "")
    preset = query.get("range", DEFAULT_PRESET) or DEFAULT_PRESET
    if preset not in PRESETS:
        raise BadParameter(
            f"range {preset!r} is not one of {', '.join(PRESETS)}; or give since/until"
        )
    return TimeRange(now - PRESETS[preset], now, preset)


def _duration(text: str, name: str) -> timedelta | None:
    """``250ms``, ``1.5s``, ``300us`` or a bare number of milliseconds."""
    text = text.strip().lower()
    if not text:
        return None
    units = (("ms", 1e-3), ("us", 1e-6), ("µs", 1e-6), ("m", 60.0), ("s", 1.0))
    scale = 1e-3
    for suffix, factor in units:
        if text.endswith(suffix):
            text, scale = text[: -len(suffix)].strip(), factor
            break
    try:
        seconds = float(text) * scale
    except ValueError:
        raise BadParameter(
            f"{name} {text!r} is not a duration; write e.g. 250ms, 1.5s or 300us"
        ) from None
    if seconds < 0:
        raise BadParameter(f"{name} {text!r} is negative; durations are 0 or more")
    return timedelta(seconds=seconds)


def trace_search(query: QueryDict, limit: int = 25) -> tuple[TraceSearch, TimeRange]:
    """The trace search of the query string (``service``, ``topic``, ``type``, ``status``,
    ``min``, ``max``, ``attr`` (repeatable ``key=value``), ``range`` or ``since``/``until``,
    ``cursor``)."""
    window = time_range(query)
    try:
        attributes = tuple(
            parse_attribute_filter(text) for text in query.getlist("attr") if text.strip()
        )
        search = TraceSearch(
            since=window.since,
            until=window.until,
            service=query.get("service") or None,
            topic=query.get("topic") or None,
            event_type=query.get("type") or None,
            status=query.get("status") or None,
            min_duration=_duration(query.get("min", ""), "min duration"),
            max_duration=_duration(query.get("max", ""), "max duration"),
            attributes=attributes,
            limit=limit,
            cursor=None,
        )
    except InvalidQuery as e:
        raise BadParameter(str(e)) from None
    return search, window
