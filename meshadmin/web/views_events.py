"""The event browser (histogram, payload search, pages of events), event detail, topology."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import render
from django.utils.safestring import mark_safe

from meshadmin.web import _store
from meshadmin.web._access import requires
from meshadmin.web._charts import histogram_svg, topology_svg
from meshadmin.web._format import duration, payload, when
from meshadmin.web._params import PRESETS, BadParameter, time_range
from meshadmin.web._roles import BROWSE
from tracing import (
    EventWindow,
    InvalidQuery,
    delivery_history,
    event_histogram,
    events_by_id,
    search_events,
    topic_map,
)
from tracing.clickhouse import ClickhouseError

PAGE_SIZE = 50
BUCKETS = 60


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S")


@requires(BROWSE)
def events(request: HttpRequest) -> HttpResponse:
    query = request.GET
    pattern = query.get("topic", "").strip() or "#"
    text = query.get("q", "")
    context: dict[str, Any] = {"q": query, "pattern": pattern, "presets": list(PRESETS)}
    try:
        window_range = time_range(query)
        window = EventWindow((pattern,), window_range.since, window_range.until)
        client = _store.client()
        histogram = event_histogram(client, window, buckets=BUCKETS, text=text or None)
        page = search_events(
            client, window, text=text or None, limit=PAGE_SIZE, cursor=query.get("cursor") or None
        )
    except (BadParameter, InvalidQuery) as e:
        context["error"] = str(e)
        return render(request, "web/events.html", context, status=400)
    except ClickhouseError as e:
        context["error"] = f"the capture store did not answer: {e}"
        return render(request, "web/events.html", context, status=503)
    next_query = None
    if page.next_cursor:
        copy = query.copy()
        copy["cursor"] = page.next_cursor
        next_query = copy.urlencode()
    context.update(
        histogram=mark_safe(histogram_svg(histogram)),
        total=histogram.total,
        step=duration(histogram.step_ns),
        rows=[
            {"e": e, "published": when(e.published_ns), "preview": _preview(e.data)}
            for e in page.items
        ],
        next_query=next_query,
        since=_iso(window_range.since),
        until=_iso(window_range.until),
        range_text=f"{when(page.since_ns)} to {when(page.until_ns)} UTC",
    )
    return render(request, "web/events.html", context)


def _preview(data: bytes) -> str:
    text = data[:160].decode(errors="replace")
    return " ".join(text.split())[:120]


@requires(BROWSE)
def event(request: HttpRequest, topic: str, published_ns: int, event_id: str) -> HttpResponse:
    since = datetime.fromtimestamp(published_ns // 1_000_000_000, UTC)
    window = EventWindow((topic,), since, since + timedelta(seconds=1))
    client = _store.client()
    try:
        found = [
            e for e in events_by_id(client, window, [event_id]) if e.published_ns == published_ns
        ]
    except InvalidQuery as e:
        return render(request, "web/error.html", {"error": str(e)}, status=400)
    if not found:
        raise Http404(f"event {event_id} on {topic} is not recorded")
    e = found[0]
    kind, text = payload(e.data, e.data_content_type)
    deliveries = [
        {
            "d": d,
            "at": when(d.attempted_ns),
            "duration": duration(d.duration_ns),
            "latency": duration(d.latency_ns),
        }
        for d in delivery_history(client, e.event_id, topic=e.topic)
    ]
    return render(
        request,
        "web/event.html",
        {
            "e": e,
            "published": when(e.published_ns),
            "attributes": sorted(e.attributes().items()),
            "kind": kind,
            "payload": text,
            "size": len(e.data),
            "deliveries": deliveries,
            "since": _iso(since),
            "until": _iso(since + timedelta(seconds=1)),
        },
    )


@requires(BROWSE)
def topology(request: HttpRequest) -> HttpResponse:
    context: dict[str, Any] = {"q": request.GET, "presets": list(PRESETS)}
    try:
        window = time_range(request.GET)
        m = topic_map(_store.client(), window.since, window.until)
    except (BadParameter, InvalidQuery) as e:
        context["error"] = str(e)
        return render(request, "web/topology.html", context, status=400)
    context.update(
        svg=mark_safe(topology_svg(m)),
        map=m,
        range_text=f"{when(m.since_ns)} to {when(m.until_ns)} UTC",
        groups=[
            {
                "g": g,
                "error_rate": 100 * g.failed / max(g.attempts, 1),
                "unacked": max(0, (t.events if (t := m.topic(g.topic)) else 0) - g.acked),
            }
            for g in m.groups[:200]
        ],
    )
    return render(request, "web/topology.html", context)
