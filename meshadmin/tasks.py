"""Celery tasks: thin, ids in, the work in the domain packages (CONVENTIONS 12)."""

from __future__ import annotations

import enum
from typing import Any

from celery import shared_task

from meshadmin.replays import execute_job


class Queue(enum.StrEnum):
    REPLAY = "replay"


class RetryableReplayFailure(Exception):
    """The target was unavailable; the job resumes from its checkpoint on retry."""


@shared_task(
    bind=True,
    acks_late=True,
    reject_on_worker_lost=True,
    queue=Queue.REPLAY.value,
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
