"""The replay console: a pre-filled spec form with its dry-run estimate, the job list, and the
job page (live progress, pause/resume/cancel, summary, outcome diff).

Starting a job enqueues ``meshadmin.tasks.run_replay_job`` (Celery, see ``_jobs``); the job
page polls ``progress.json``. QA may replay into sandbox topics only; a spec that writes
anything else (``to_prefix`` outside the sandbox prefixes, or ``allow_production``) needs
``web.replay_production`` (the admin group).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from django.conf import settings
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone
from django.views.decorators.http import require_POST

from meshadmin.models import ReplayJob
from meshadmin.replays import clickhouse_url, diff_job
from meshadmin.web import _store
from meshadmin.web._access import requires
from meshadmin.web._format import duration, when
from meshadmin.web._jobs import enqueue
from meshadmin.web._params import BadParameter, parse_instant
from meshadmin.web._roles import BROWSE, REPLAY, REPLAY_PRODUCTION
from replay import DiffRules, ReplayError, ReplaySpec, dry_run
from tracing import InvalidQuery, trace_by_id
from tracing.clickhouse import ClickHouse, ClickhouseError

SPEEDS = ("max", "1x", "2x", "10x", "10/s", "100/s", "1000/s")


def _lines(text: str) -> tuple[str, ...]:
    return tuple(t.strip() for t in text.replace(",", "\n").splitlines() if t.strip())


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def initial_form(request: HttpRequest) -> dict[str, str]:
    """The form's fields, pre-filled from what "Replay…" links pass: ``trace`` (a trace id),
    or ``topic``/``since``/``until`` and optional ``event`` ids (the event browser)."""
    q = request.GET
    form = {
        "topics": q.get("topic", ""),
        "since": q.get("since", ""),
        "until": q.get("until", ""),
        "event_ids": "\n".join(q.getlist("event")),
        "trace_ids": "",
        "filters": "",
        "speed": q.get("speed", "max"),
        "to_prefix": "replay.",
        "limit": "",
        "sample_percent": "100",
        "target_url": str(settings.MESHTAP_RUNTIME_URL),
        "allow_production": "",
    }
    trace_id = q.get("trace", "").strip()
    if trace_id:
        view = trace_by_id(_store.client(), trace_id)
        if view is not None:
            form["trace_ids"] = view.trace_id
            form["topics"] = ", ".join(sorted({e.event.topic for e in view.events})) or "#"
            form["since"] = _iso(
                datetime.fromtimestamp(view.start_ns / 1e9, UTC) - timedelta(seconds=1)
            )
            form["until"] = _iso(
                datetime.fromtimestamp(view.end_ns / 1e9, UTC) + timedelta(seconds=1)
            )
    if form["topics"] and not form["since"]:
        now = datetime.now(UTC)
        form["since"], form["until"] = _iso(now - timedelta(hours=1)), _iso(now)
    return form


def spec_from(form: dict[str, str]) -> ReplaySpec:
    """The spec of the form's fields; ``ReplayError``/``BadParameter`` name what is wrong."""
    limit = form.get("limit", "").strip()
    try:
        sample = float(form.get("sample_percent") or 100)
    except ValueError:
        raise BadParameter(f"sample % {form.get('sample_percent')!r} is not a number") from None
    if limit and not limit.isdigit():
        raise BadParameter(f"limit {limit!r} is not a whole number; leave it empty for no limit")
    return ReplaySpec(
        topics=_lines(form.get("topics", "")),
        since=parse_instant(form.get("since", ""), "since"),
        until=parse_instant(form.get("until", ""), "until"),
        filters=tuple(f.strip() for f in form.get("filters", "").splitlines() if f.strip()),
        sample_percent=sample,
        event_ids=_lines(form.get("event_ids", "")),
        trace_ids=_lines(form.get("trace_ids", "")),
        limit=int(limit) if limit else None,
        speed=form.get("speed", "max").strip() or "max",
        to_prefix=form.get("to_prefix", "").strip(),
        allow_production=bool(form.get("allow_production")),
    )


def targets_production(spec: ReplaySpec) -> bool:
    return spec.allow_production or not spec.is_sandbox(spec.to_prefix)


@requires(REPLAY)
def replay_new(request: HttpRequest) -> HttpResponse:
    if request.method == "POST":
        form = {k: request.POST.get(k, "") for k in initial_form_keys()}
    else:
        form = initial_form(request)
    context: dict[str, Any] = {"form": form, "speeds": SPEEDS}
    spec = None
    if form["topics"]:
        try:
            spec = spec_from(form)
        except (ReplayError, BadParameter) as e:
            context["error"] = str(e)
    production = spec is not None and targets_production(spec)
    context["production"] = production
    if spec is not None and production and not request.user.has_perm(REPLAY_PRODUCTION):
        context["error"] = (
            f"this replay writes production topics (prefix {spec.to_prefix!r}"
            f"{', allow production' if spec.allow_production else ''}); your role may replay "
            f"into sandbox topics only: use the prefix replay. or sandbox. -- or ask an admin"
        )
        return render(request, "web/replay_new.html", context, status=403)
    if spec is not None:
        try:
            with ClickHouse.open(clickhouse_url()) as client:
                context["dry"] = dry_run(client, spec).report
        except (ReplayError, InvalidQuery, ClickhouseError) as e:
            context["error"] = str(e)
    if (
        request.method == "POST"
        and spec is not None
        and "error" not in context
        and "start" in request.POST
    ):
        job = ReplayJob.objects.create(
            spec=spec.to_json(),
            target_url=form["target_url"].strip() or str(settings.MESHTAP_RUNTIME_URL),
            created_by=request.user,  # type: ignore[misc]
            requested_by=request.user.get_username(),
            dry_run=context["dry"].to_json(),
            total=context["dry"].events,
        )
        enqueue(job.pk)
        return redirect("web:replay", pk=job.pk)
    return render(
        request, "web/replay_new.html", context, status=400 if "error" in context else 200
    )


def initial_form_keys() -> tuple[str, ...]:
    return (
        "topics", "since", "until", "event_ids", "trace_ids", "filters", "speed", "to_prefix",
        "limit", "sample_percent", "target_url", "allow_production",
    )  # fmt: skip


@requires(BROWSE)
def replays(request: HttpRequest) -> HttpResponse:
    jobs = ReplayJob.objects.select_related("created_by").order_by("-created_at")
    status = request.GET.get("status", "")
    if status:
        jobs = jobs.filter(status=status)
    page = Paginator(jobs, 50).get_page(request.GET.get("page"))
    return render(
        request,
        "web/replays.html",
        {"page": page, "status": status, "statuses": ReplayJob.Status.values},
    )


def progress_of(job: ReplayJob) -> dict[str, Any]:
    done = job.sent + job.skipped + job.failed
    percent = (
        100.0 if job.status == "completed" else (100.0 * done / job.total if job.total else 0.0)
    )
    return {
        "replay_id": job.replay_id,
        "status": job.status,
        "command": job.command,
        "total": job.total,
        "sent": job.sent,
        "skipped": job.skipped,
        "failed": job.failed,
        "percent": round(min(percent, 100.0), 1),
        "error": job.error,
        "finished": job.status in ("completed", "failed", "cancelled"),
        "rate": (job.progress or {}).get("rate"),
    }


@requires(BROWSE)
def replay(request: HttpRequest, pk: int) -> HttpResponse:
    job = get_object_or_404(ReplayJob, pk=pk)
    spec = job.spec or {}
    runtime = None
    if job.started_at and job.finished_at:
        runtime = duration(int((job.finished_at - job.started_at).total_seconds() * 1e9))
    dry = job.dry_run or {}
    return render(
        request,
        "web/replay.html",
        {
            "job": job,
            "spec": spec,
            "p": progress_of(job),
            "dry": dry,
            "dry_first": when(int(dry.get("first_ns") or 0)),
            "dry_last": when(int(dry.get("last_ns") or 0)),
            "runtime": runtime,
            "can_control": request.user.has_perm(REPLAY),
            "diff": job.diff_report,
        },
    )


@requires(BROWSE)
def replay_progress(request: HttpRequest, pk: int) -> JsonResponse:
    return JsonResponse(progress_of(get_object_or_404(ReplayJob, pk=pk)))


@require_POST
@requires(REPLAY)
def replay_command(request: HttpRequest, pk: int, action: str) -> HttpResponse:
    job = get_object_or_404(ReplayJob, pk=pk)
    spec = ReplaySpec.from_json(job.spec)
    if targets_production(spec) and not request.user.has_perm(REPLAY_PRODUCTION):
        return HttpResponse(
            "this job targets production topics; only admins control it", status=403
        )
    finished = job.status in ("completed", "failed", "cancelled")
    if action == "pause" and not finished:
        ReplayJob.objects.filter(pk=pk).update(command=ReplayJob.Command.PAUSE)
    elif action == "cancel" and not finished:
        if job.status in ("paused", "pending"):
            ReplayJob.objects.filter(pk=pk).update(
                command=ReplayJob.Command.CANCEL,
                status=ReplayJob.Status.CANCELLED,
                finished_at=timezone.now(),
            )
        else:
            ReplayJob.objects.filter(pk=pk).update(command=ReplayJob.Command.CANCEL)
    elif action in ("resume", "retry") and job.status in ("paused", "failed"):
        ReplayJob.objects.filter(pk=pk).update(command=ReplayJob.Command.RUN)
        enqueue(job.pk)
    elif action == "diff" and job.started_at is not None:
        try:
            diff_job(job.pk, DiffRules())
        except (ReplayError, ClickhouseError) as e:
            ReplayJob.objects.filter(pk=pk).update(error=f"diff: {e}")
    else:
        return HttpResponse(f"cannot {action} a job that is {job.status}", status=409)
    if request.headers.get("accept", "").startswith("application/json"):
        job.refresh_from_db()
        return JsonResponse(progress_of(job))
    return redirect("web:replay", pk=pk)
