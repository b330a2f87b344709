"""Starting a replay job: the Celery task ``run_replay_job``, on a worker or in this process.

With a real broker (Redis) the task is queued for ``celery -A meshadmin worker -Q replay``.
With the embedded default broker (``memory://``) no worker can see the queue, so the task runs
in a thread of the web process instead (``MESHTAP_REPLAY_IN_PROCESS``, on by default there),
and a replay started from the console runs without any other process.
"""

from __future__ import annotations

import threading

from django.conf import settings
from django.db import connections

from meshadmin.tasks import run_replay_job


def _run_here(job_id: int) -> None:
    try:
        run_replay_job.apply(args=[job_id])
    finally:
        connections.close_all()


def enqueue(job_id: int) -> None:
    if getattr(settings, "MESHTAP_REPLAY_IN_PROCESS", False):
        threading.Thread(
            target=_run_here, args=(job_id,), name=f"replay-{job_id}", daemon=True
        ).start()
    else:
        run_replay_job.delay(job_id)
