"""Running replay jobs from Django: the ``ReplayJob`` row as the job's checkpoint store, and one
function both the Celery task and ``manage.py replay`` call.

This is the composition root for replay: settings pick the capture store (``MESHTAP_CLICKHOUSE_
URL``), the replay's own spans go into it through the capture plugin (so each replayed event's
``replay`` span and its link to the original are stored beside the mesh's spans), and the target
is the job's ``target_url``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path

from django.conf import settings
from django.db import close_old_connections
from django.utils import timezone

from meshadmin.models import ReplayAuditEntry, ReplayJob
from replay import (
    Checkpoint,
    Command,
    DiffReport,
    DiffRules,
    Progress,
    ReplayError,
    ReplayJobStore,
    ReplayResult,
    ReplaySpec,
    Selection,
    dry_run,
    open_target,
    outcome_diff,
    run_replay,
)
from runtime import CaptureConfig
from tracing import ClickHouseCapture
from tracing.clickhouse import ClickHouse

log = logging.getLogger("meshtap.replay")


def clickhouse_url() -> str:
    return str(settings.MESHTAP_CLICKHOUSE_URL)


class DjangoJobStore(ReplayJobStore):
    """The job's row: each save writes progress and checkpoint and reads back ``command``.
    Called from the replay's worker thread (the ORM is synchronous)."""

    def __init__(self, job_id: int, on_progress: Callable[[Progress], None] | None = None) -> None:
        self.job_id = job_id
        self.on_progress = on_progress

    def load(self) -> Checkpoint | None:
        job = ReplayJob.objects.get(pk=self.job_id)
        return Checkpoint.from_json(job.checkpoint) if job.checkpoint else None

    def save(self, checkpoint: Checkpoint, progress: Progress) -> Command:
        close_old_connections()
        ReplayJob.objects.filter(pk=self.job_id).update(
            checkpoint=checkpoint.to_json(),
            progress=progress.to_json(),
            total=progress.total,
            sent=progress.sent,
            skipped=progress.skipped,
            failed=progress.failed,
            status=progress.status,
            updated_at=timezone.now(),
        )
        if self.on_progress is not None:
            self.on_progress(progress)
        command = ReplayJob.objects.values_list("command", flat=True).get(pk=self.job_id)
        return Command(command)


async def _run(
    job: ReplayJob, spec: ReplaySpec, store: DjangoJobStore, selection: Selection | None
) -> ReplayResult:
    url = clickhouse_url()
    client = ClickHouse.open(url)
    capture = ClickHouseCapture(
        CaptureConfig(
            url=url,
            spool_dir=str(Path(settings.MESHTAP_REPLAY_SPOOL_DIR)),
            service_name="meshtap-replay",
        )
    )
    target = open_target(job.target_url, token=settings.MESHTAP_REPLAY_TOKEN)
    try:
        await capture.start()
        tracer = capture.tracer_provider().get_tracer("meshtap.replay")
        return await run_replay(
            client,
            spec,
            target,
            replay_id=job.replay_id,
            job=store,
            reconcile=client,
            tracer=tracer,
            selection=selection,
        )
    finally:
        await target.close()
        await capture.close()
        client.close()


def plan_job(job: ReplayJob) -> Selection:
    """The dry run of the job's spec, stored on the row (raises the replay errors)."""
    spec = ReplaySpec.from_json(job.spec)
    with ClickHouse.open(clickhouse_url()) as client:
        selection = dry_run(client, spec)
    job.dry_run = selection.report.to_json()
    job.total = selection.report.events
    job.save(update_fields=["dry_run", "total", "updated_at"])
    return selection


def audit(job: ReplayJob, spec: ReplaySpec) -> ReplayAuditEntry:
    """Record who replays what where, before anything is sent."""
    actor = job.created_by.get_username() if job.created_by else (job.requested_by or "unknown")
    return ReplayAuditEntry.objects.create(
        actor=actor,
        action=ReplayAuditEntry.Action.RESUME if job.started_at else ReplayAuditEntry.Action.START,
        job=job,
        replay_id=job.replay_id,
        target_url=job.target_url,
        topics=list(spec.topics),
        since=spec.since.isoformat(),
        until=spec.until.isoformat(),
        spec=job.spec,
    )


def execute_job(
    job_id: int,
    *,
    on_progress: Callable[[Progress], None] | None = None,
    selection: Selection | None = None,
) -> ReplayResult:
    """Run (or resume) job ``job_id`` to its end, pause or failure; the row holds the outcome.

    Planning errors (bad spec, nothing matched, the guard) mark the job failed and are raised.
    """
    job = ReplayJob.objects.get(pk=job_id)
    spec = ReplaySpec.from_json(job.spec)
    audit(job, spec)
    ReplayJob.objects.filter(pk=job_id).update(
        status=ReplayJob.Status.RUNNING,
        command=ReplayJob.Command.RUN,
        started_at=job.started_at or timezone.now(),
        error="",
    )
    store = DjangoJobStore(job_id, on_progress)
    try:
        result = asyncio.run(_run(job, spec, store, selection))
    except Exception as e:
        ReplayJob.objects.filter(pk=job_id).update(
            status=ReplayJob.Status.FAILED, error=str(e), finished_at=timezone.now()
        )
        raise
    ReplayJob.objects.filter(pk=job_id).update(
        status=result.status,
        result=result.to_json(),
        dry_run=result.dry_run.to_json(),
        error=result.error,
        finished_at=timezone.now() if result.status != "paused" else None,
    )
    log.info("replay %s: %s", job.replay_id, result.to_json())
    return result


def diff_job(job_id: int, rules: DiffRules) -> DiffReport:
    """The outcome diff of a finished job, stored on its row (``diff_report``)."""
    job = ReplayJob.objects.get(pk=job_id)
    if job.started_at is None:
        raise ReplayError(f"replay {job.replay_id} never ran; run it before diffing")
    spec = ReplaySpec.from_json(job.spec)
    since_ns = int(job.started_at.timestamp() * 1e9) - 60 * 1_000_000_000
    with ClickHouse.open(clickhouse_url()) as client:
        selection = dry_run(client, spec)
        report = outcome_diff(client, selection, job.replay_id, since_ns=since_ns, rules=rules)
    job.diff_report = report.to_json()
    job.save(update_fields=["diff_report", "updated_at"])
    return report
