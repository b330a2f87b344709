"""A small JSON API over the capture store and replay jobs: ``/api/...``.

Why it exists: with embedded chDB only the process that records can read the data, so a shell
next to ``make run`` cannot query it directly; these endpoints are how scripts (and the README's
tour) find a trace, start a replay and read its outcome diff. The admin's pages show the same.

Who may call: see :func:`_allowed` -- the web admin's roles, or anyone on loopback when
``MESHTAP_API_LOOPBACK_ANONYMOUS`` is on (the standalone default, off in production settings).

    GET  /api/traces?service=&topic=&status=&limit=   recent traces, newest first
    GET  /api/traces/<trace_id>          the trace: services, spans, events and their deliveries
    POST /api/replays                    a replay.ReplaySpec as JSON (+ "target_url"); runs on the
                                         Celery "replay" queue; 202 with the job
    GET  /api/replays/<replay_id>        the job: status, counts, result, diff report
    POST /api/replays/<replay_id>/diff   compute the outcome diff ({"ignore", "unordered"} rules)
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.middleware.csrf import CsrfViewMiddleware
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_POST

from meshadmin.models import ReplayJob
from meshadmin.web._roles import BROWSE, REPLAY, REPLAY_PRODUCTION
from meshadmin.web.views_replay import targets_production
from replay import DiffRules, ReplayError, ReplaySpec
from tracing import InvalidQuery, TraceSearch, search_traces, trace_by_id
from tracing.clickhouse import ClickHouse, ClickhouseError

_LOOPBACK = frozenset({"127.0.0.1", "::1"})

View = Callable[..., HttpResponse]


def _error(status: int, code: str, message: str) -> JsonResponse:
    return JsonResponse({"error": code, "message": message}, status=status)


def _loopback_trusted(request: HttpRequest) -> bool:
    return settings.MESHTAP_API_LOOPBACK_ANONYMOUS and (
        request.META.get("REMOTE_ADDR") in _LOOPBACK
    )


def _csrf_refusal(request: HttpRequest) -> str | None:
    """Why a session-authenticated write fails Django's CSRF check (None: it passes). The views
    are ``csrf_exempt`` so that loopback scripts need no token; a browser session must not be
    usable by another site to start replays, so the check runs here for logged-in callers."""
    refused = CsrfViewMiddleware(lambda r: HttpResponse()).process_view(request, None, (), {})
    if refused is None:
        return None
    return "CSRF check failed: send the csrftoken cookie's value in the X-CSRFToken header"


def _allowed(permission: str) -> Callable[[View], View]:
    """Who may call: anyone on loopback when ``MESHTAP_API_LOOPBACK_ANONYMOUS`` is on (the
    single-user standalone default; production settings turn it off, since behind a local
    proxy every request comes from loopback), else a logged-in user holding ``permission`` --
    the same roles as the web admin's pages (SRE browse, QA replay into sandboxes, admin
    everything)."""

    def wrap(view: View) -> View:
        @functools.wraps(view)
        def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            if _loopback_trusted(request):
                return view(request, *args, **kwargs)
            user = getattr(request, "user", None)
            if user is None or not user.is_authenticated:
                return _error(
                    403,
                    "forbidden",
                    "log in to the admin (/login/) as a user whose role grants "
                    f"{permission!r}, or call from loopback with MESHTAP_API_LOOPBACK_ANONYMOUS=1",
                )
            if not user.has_perm(permission):
                return _error(
                    403,
                    "forbidden",
                    f"user {user.get_username()!r} lacks the permission {permission!r}; "
                    "an admin can give it through the user's group (SRE, QA, admin)",
                )
            if request.method not in ("GET", "HEAD") and (reason := _csrf_refusal(request)):
                return _error(403, "csrf", reason)
            return view(request, *args, **kwargs)

        return wrapped

    return wrap


def _json_body(request: HttpRequest) -> dict[str, Any]:
    try:
        body = json.loads(request.body or b"{}")
    except json.JSONDecodeError as e:
        raise ReplayError(f"the request body is not JSON ({e}); send a JSON object") from None
    if not isinstance(body, dict):
        raise ReplayError(f"the request body must be a JSON object, got {type(body).__name__}")
    return body


def _job_json(job: ReplayJob) -> dict[str, Any]:
    return {
        "replay_id": job.replay_id,
        "status": job.status,
        "spec": job.spec,
        "target_url": job.target_url,
        "total": job.total,
        "sent": job.sent,
        "skipped": job.skipped,
        "failed": job.failed,
        "error": job.error,
        "result": job.result,
        "diff_report": job.diff_report,
    }


@require_GET
@_allowed(BROWSE)
def traces(request: HttpRequest) -> HttpResponse:
    """Recent traces (the last hour by default) matching the query's filters, newest first."""
    query = request.GET
    try:
        limit = int(query.get("limit", "20"))
        search = TraceSearch(
            service=query.get("service") or None,
            topic=query.get("topic") or None,
            status=query.get("status") or None,
            limit=limit,
        )
        with ClickHouse.open(str(settings.MESHTAP_CLICKHOUSE_URL)) as client:
            page = search_traces(client, search)
    except (InvalidQuery, ValueError) as e:
        return _error(400, "invalid_query", str(e))
    except ClickhouseError as e:
        return _error(503, "clickhouse_unavailable", str(e))
    return JsonResponse(
        {
            "traces": [
                {
                    "trace_id": item.trace_id,
                    "root": f"{item.root_service}: {item.root_name}",
                    "start": item.start.isoformat(),
                    "duration_ms": item.duration_ns / 1e6,
                    "spans": item.span_count,
                    "errors": item.error_count,
                    "services": list(item.services),
                    "topics": list(item.topics),
                }
                for item in page.items
            ]
        }
    )


@require_GET
@_allowed(BROWSE)
def trace(request: HttpRequest, trace_id: str) -> HttpResponse:
    """One trace, as the waterfall shows it (data left out: it may be large or binary)."""
    try:
        with ClickHouse.open(str(settings.MESHTAP_CLICKHOUSE_URL)) as client:
            view = trace_by_id(client, trace_id)
    except ClickhouseError as e:
        return _error(503, "clickhouse_unavailable", str(e))
    except ValueError as e:
        return _error(400, "invalid_trace_id", str(e))
    if view is None:
        return _error(404, "not_found", f"no trace {trace_id!r} in the capture store")
    return JsonResponse(
        {
            "trace_id": view.trace_id,
            "services": sorted({span.service_name for span in view.spans}),
            "spans": [
                {
                    "service": span.service_name,
                    "name": span.name,
                    "kind": span.kind,
                    "span_id": span.span_id,
                    "parent_span_id": span.parent_span_id,
                    "status": span.status_code,
                    "duration_ms": span.duration_ns / 1e6,
                }
                for span in view.spans
            ],
            "events": [
                {
                    "id": item.event.event_id,
                    "topic": item.event.topic,
                    "type": item.event.type,
                    "deliveries": [
                        {"group": d.group, "attempt": d.attempt, "outcome": d.outcome}
                        for d in item.deliveries
                    ],
                }
                for item in view.events
            ],
        }
    )


@csrf_exempt
@require_POST
@_allowed(REPLAY)
def start_replay(request: HttpRequest) -> HttpResponse:
    """Create a replay job from a spec and queue it for the Celery worker."""
    from meshadmin.tasks import run_replay_job

    try:
        body = _json_body(request)
        target_url = str(body.pop("target_url", settings.MESHTAP_RUNTIME_URL))
        spec = ReplaySpec.from_json(body)
    except ReplayError as e:
        return _error(400, "invalid_replay", str(e))
    production = targets_production(spec)
    if production and not (_loopback_trusted(request) or request.user.has_perm(REPLAY_PRODUCTION)):
        return _error(
            403,
            "forbidden",
            f"replaying into {spec.to_prefix or 'the original topics'!r} writes production "
            "topics, which needs the admin role; use a sandbox prefix such as 'replay.'",
        )
    user = request.user
    who = user.get_username() if user.is_authenticated else "api (loopback)"
    job = ReplayJob.objects.create(spec=spec.to_json(), target_url=target_url, requested_by=who)
    run_replay_job.delay(job.pk)
    return JsonResponse(_job_json(job), status=202)


@require_GET
@_allowed(BROWSE)
def replay_status(request: HttpRequest, replay_id: str) -> HttpResponse:
    job = ReplayJob.objects.filter(replay_id=replay_id).first()
    if job is None:
        return _error(404, "not_found", f"no replay job {replay_id!r}")
    return JsonResponse(_job_json(job))


@csrf_exempt
@require_POST
@_allowed(REPLAY)
def replay_diff(request: HttpRequest, replay_id: str) -> HttpResponse:
    """Compute (and store on the job) the outcome diff of a finished replay."""
    from meshadmin.replays import diff_job

    job = ReplayJob.objects.filter(replay_id=replay_id).first()
    if job is None:
        return _error(404, "not_found", f"no replay job {replay_id!r}")
    try:
        body = _json_body(request)
        rules = DiffRules(
            ignore=tuple(body.get("ignore", ())), unordered=tuple(body.get("unordered", ()))
        )
        report = diff_job(job.pk, rules)
    except ReplayError as e:
        return _error(400, "invalid_diff", str(e))
    except ClickhouseError as e:
        return _error(503, "clickhouse_unavailable", str(e))
    return JsonResponse(report.to_json())
