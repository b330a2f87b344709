"""Trace search and the trace view (waterfall, span detail, events and delivery attempts)."""

from __future__ import annotations

import dataclasses
from typing import Any

from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render

from meshadmin.web import _store
from meshadmin.web._access import requires
from meshadmin.web._format import duration, payload, when
from meshadmin.web._params import PRESETS, BadParameter, trace_search
from meshadmin.web._roles import BROWSE
from tracing import (
    InvalidQuery,
    TraceView,
    replays_of_trace,
    search_traces,
    trace_by_id,
)
from tracing.clickhouse import ClickhouseError

PAGE_SIZE = 25


@requires(BROWSE)
def traces(request: HttpRequest) -> HttpResponse:
    query = request.GET
    context: dict[str, Any] = {
        "q": query,
        "attrs": [a for a in query.getlist("attr") if a.strip()] or [""],
        "presets": list(PRESETS),
        "rows": [],
        "searched": False,
    }
    trace_id = query.get("trace_id", "").strip()
    if trace_id:
        return redirect("web:trace", trace_id=trace_id.lower())
    try:
        search, window = trace_search(query, PAGE_SIZE)
        cursor = query.get("cursor") or None
        if cursor:
            search = dataclasses.replace(search, since=None, until=None, cursor=cursor)
        page = search_traces(_store.client(), search)
    except (BadParameter, InvalidQuery) as e:
        context["error"] = str(e)
        return render(request, "web/traces.html", context, status=400)
    except ClickhouseError as e:
        context["error"] = f"the capture store did not answer: {e}"
        return render(request, "web/traces.html", context, status=503)
    longest = max((t.duration_ns for t in page.items), default=1) or 1
    context.update(
        searched=True,
        window=window,
        range_text=f"{when(page.since_ns)} to {when(page.until_ns)} UTC",
        rows=[
            {
                "t": t,
                "start": when(t.start_ns),
                "duration": duration(t.duration_ns),
                "bar": max(0.5, 100 * t.duration_ns / longest),
            }
            for t in page.items
        ],
        next_query=_with(query, cursor=page.next_cursor) if page.next_cursor else None,
        first_query=_with(query, cursor=None) if query.get("cursor") else None,
    )
    return render(request, "web/traces.html", context)


def _with(query: Any, **changes: str | None) -> str:
    copy = query.copy()
    for key, value in changes.items():
        if value is None:
            copy.pop(key, None)
        else:
            copy[key] = value
    return str(copy.urlencode())


def span_rows(view: TraceView) -> list[list[Any]]:
    """The waterfall's data, compact (one array per span; the script names the columns):
    id, parent, name, service, kind, start offset ns, duration ns, error?, status message,
    attributes, resource, events [(name, offset, attrs)], links [(trace, span, attrs)]."""
    origin = view.start_ns
    return [
        [
            s.span_id,
            s.parent_span_id,
            s.name,
            s.service_name,
            s.kind,
            s.start_ns - origin,
            s.duration_ns,
            1 if s.is_error else 0,
            s.status_message,
            s.attributes,
            s.resource,
            [(e.name, e.time_ns - origin, e.attributes) for e in s.events],
            [(link.trace_id, link.span_id, link.attributes) for link in s.links],
        ]
        for s in view.spans
    ]


@requires(BROWSE)
def trace(request: HttpRequest, trace_id: str) -> HttpResponse:
    client = _store.client()
    try:
        view = trace_by_id(client, trace_id)
    except InvalidQuery as e:
        return render(request, "web/error.html", {"error": str(e)}, status=400)
    if view is None:
        raise Http404(f"trace {trace_id} is not recorded (or is past retention)")
    replays = replays_of_trace(client, view.trace_id, view.start_ns)
    replayed_from = sorted(
        {link.trace_id for s in view.spans for link in s.links if link.trace_id != view.trace_id}
    )
    events = []
    for item in view.events:
        e = item.event
        kind, text = payload(e.data, e.data_content_type)
        events.append(
            {
                "e": e,
                "published": when(e.published_ns),
                "attributes": sorted(e.attributes().items()),
                "kind": kind,
                "payload": text,
                "size": len(e.data),
                "deliveries": [
                    {
                        "d": d,
                        "at": when(d.attempted_ns),
                        "duration": duration(d.duration_ns),
                        "latency": duration(d.latency_ns),
                    }
                    for d in item.deliveries
                ],
                "failed": sum(1 for d in item.deliveries if d.failed),
            }
        )
    topics = sorted({e.event.topic for e in view.events})
    return render(
        request,
        "web/trace.html",
        {
            "view": view,
            "spans": span_rows(view),
            "start": when(view.start_ns),
            "duration": duration(view.duration_ns),
            "events": events,
            "replays": replays,
            "replayed_from": replayed_from,
            "topics": topics,
        },
    )
