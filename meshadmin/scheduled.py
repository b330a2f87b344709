"""Housekeeping schedules, declared in code (CONVENTIONS 13): owned by the project, not edited
in the admin. User schedules (audits) are django_celery_beat rows the admin edits.

Each entry expires before its next tick, so a backlog after an outage runs once, not N times.
"""

from __future__ import annotations

from typing import Any

from celery.schedules import crontab

from meshadmin.queues import Queue

HOUSEKEEPING_SCHEDULE: dict[str, dict[str, Any]] = {
    # Daily, off the hour: drop capture partitions older than MESHTAP_RETENTION_DAYS.
    "housekeeping.retention": {
        "task": "meshadmin.tasks.apply_retention",
        "schedule": crontab(minute="17", hour="3"),
        "options": {"queue": Queue.HOUSEKEEPING.value, "expires": 6 * 3600},
    },
    # Every 5 minutes: recorder buffer, spool, drops, ClickHouse reachable, retention applied.
    "housekeeping.capture-health": {
        "task": "meshadmin.tasks.check_capture_health",
        "schedule": crontab(minute="*/5"),
        "options": {"queue": Queue.HOUSEKEEPING.value, "expires": 240},
    },
}
