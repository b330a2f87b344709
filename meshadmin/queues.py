"""Celery queues by purpose, so a long replay never starves audits (CONVENTIONS 12)."""

from __future__ import annotations

import enum


class Queue(enum.StrEnum):
    REPLAY = "replay"
    AUDIT = "audit"
    HOUSEKEEPING = "housekeeping"


# Task name -> queue (Celery's task_routes); a worker started without -Q consumes all three.
ROUTES: dict[str, dict[str, str]] = {
    "meshadmin.tasks.run_replay_job": {"queue": Queue.REPLAY.value},
    "meshadmin.tasks.run_audit": {"queue": Queue.AUDIT.value},
    "meshadmin.tasks.apply_retention": {"queue": Queue.HOUSEKEEPING.value},
    "meshadmin.tasks.check_capture_health": {"queue": Queue.HOUSEKEEPING.value},
}
