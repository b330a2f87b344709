"""Celery tasks: thin, ids in, the work in the domain packages (CONVENTIONS 12).

Every task is ``acks_late`` (a worker killed mid-task leaves the message for another worker),
retries only on errors that may pass (a target or ClickHouse unavailable), and has time limits.
Scheduled work also expires (``meshadmin.scheduled`` and each audit's periodic task).
"""

from __future__ import annotations

import logging
from typing import Any

from celery import shared_task
from django.conf import settings
from django.utils import timezone

from auditing import AuditContext, AuditUnavailable
from auditing import run_audit as run_check
from meshadmin.queues import Queue
from meshadmin.replays import execute_job
from tracing.clickhouse import ClickHouse, ClickhouseUnavailable, drop_partitions_older_than

__all__ = ["Queue", "apply_retention", "check_capture_health", "run_audit", "run_replay_job"]

log = logging.getLogger("meshtap.tasks")


class RetryableReplayFailure(Exception):
    """The target was unavailable; the job resumes from its checkpoint on retry."""


@shared_task(
    bind=True,
    acks_late=True,
    reject_on_worker_lost=True,
    max_retries=5,
    retry_backoff=True,
)
def run_replay_job(self: Any, job_id: int) -> dict[str, Any]:
    """Run (or resume) replay job ``job_id``. Retried, from its checkpoint, only when the
    target was unavailable; a refused spec or a rejected batch is final. ``acks_late``: a
    worker killed mid-replay leaves the message for another worker, which resumes the job
    without duplicates (see ``replay._job``)."""
    result = execute_job(job_id)
    if result.status == "failed" and result.retryable:
        raise self.retry(exc=RetryableReplayFailure(result.error), countdown=5)
    return result.to_json()


@shared_task(
    bind=True,
    acks_late=True,
    reject_on_worker_lost=True,
    max_retries=3,
    soft_time_limit=1800,
    time_limit=1860,
)
def run_audit(self: Any, audit_id: int) -> dict[str, Any]:
    """Run audit ``audit_id`` once; the run is stored under this task's id, so a redelivery
    (worker killed) or a retry (ClickHouse unavailable) finishes the same run."""
    from meshadmin.audits.runner import execute_audit

    final = self.request.retries >= self.max_retries
    try:
        run = execute_audit(audit_id, task_id=self.request.id, final=final)
    except AuditUnavailable as e:
        raise self.retry(exc=e, countdown=15) from e
    return {"run_id": run.pk, "status": run.status, "summary": run.summary or run.error}


@shared_task(
    bind=True,
    acks_late=True,
    reject_on_worker_lost=True,
    max_retries=3,
    soft_time_limit=600,
    time_limit=660,
)
def apply_retention(self: Any, days: int | None = None) -> dict[str, Any]:
    """Drop capture partitions older than ``days`` (default ``MESHTAP_RETENTION_DAYS``)."""
    keep = int(settings.MESHTAP_RETENTION_DAYS if days is None else days)
    try:
        with ClickHouse.open(str(settings.MESHTAP_CLICKHOUSE_URL)) as client:
            dropped = drop_partitions_older_than(client, keep)
    except ClickhouseUnavailable as e:
        raise self.retry(exc=e, countdown=60) from e
    log.info("retention %d days: dropped %d partitions", keep, len(dropped))
    return {"days": keep, "dropped": [f"{t}/{p}" for t, p in dropped]}


@shared_task(
    acks_late=True,
    reject_on_worker_lost=True,
    soft_time_limit=120,
    time_limit=150,
)
def check_capture_health() -> dict[str, Any]:
    """The capture-health check (recorder buffer, spool, drops, ClickHouse, retention) as
    housekeeping: logged as a warning when unhealthy, its figures kept in the result backend.
    Not retried: the next tick is minutes away and is the retry."""
    with ClickHouse.open(str(settings.MESHTAP_CLICKHOUSE_URL)) as client:
        context = AuditContext(
            clickhouse=client,
            now=timezone.now(),
            runtime_url=str(settings.MESHTAP_RUNTIME_URL),
            retention_days=int(settings.MESHTAP_RETENTION_DAYS),
        )
        result = run_check("capture_health", {}, context)
    if result.status != "pass":
        log.warning("capture health: %s %s", result.summary, list(result.findings))
    return result.to_json()
