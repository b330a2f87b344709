"""Keep each audit's django_celery_beat ``PeriodicTask`` in step with the audit.

The audit is what an SRE edits; its periodic task (``audit:<id>``, task
``meshadmin.tasks.run_audit`` with the audit's id, on the ``audit`` queue) follows it on every
save -- schedule, enabled -- and goes with it on delete. Each fire expires after one interval
(at most an hour): a beat tick that no worker took in time is dropped, not piled up.
"""

from __future__ import annotations

import json
from typing import Any

from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver
from django_celery_beat.models import CrontabSchedule, IntervalSchedule, PeriodicTask

from meshadmin.audits.models import Audit
from meshadmin.queues import Queue

TASK = "meshadmin.tasks.run_audit"
_MAX_EXPIRY_S = 3600


def sync_periodic_task(audit: Audit) -> PeriodicTask:
    """Create or update ``audit``'s periodic task to match it."""
    schedule: dict[str, Any]
    if audit.every_seconds:
        interval, _ = IntervalSchedule.objects.get_or_create(
            every=audit.every_seconds, period=IntervalSchedule.SECONDS
        )
        schedule = {"interval": interval, "crontab": None}
        expires = min(audit.every_seconds, _MAX_EXPIRY_S)
    else:
        minute, hour, day_of_month, month, day_of_week = audit.crontab.split()
        crontab, _ = CrontabSchedule.objects.get_or_create(
            minute=minute, hour=hour, day_of_month=day_of_month, month_of_year=month,
            day_of_week=day_of_week, timezone="UTC",
        )  # fmt: skip
        schedule = {"interval": None, "crontab": crontab}
        expires = _MAX_EXPIRY_S
    fields = {
        "name": f"audit:{audit.pk}",
        "task": TASK,
        "args": json.dumps([audit.pk]),
        "queue": Queue.AUDIT.value,
        "enabled": audit.enabled,
        "expire_seconds": expires,
        "description": f"audit {audit.name!r} ({audit.kind}); edit the audit, not this task",
        **schedule,
    }
    task = audit.periodic_task
    if task is None:
        task = PeriodicTask.objects.create(**fields)
        Audit.objects.filter(pk=audit.pk).update(periodic_task=task)
        audit.periodic_task = task
    else:
        for name, value in fields.items():
            setattr(task, name, value)
        task.save()
    return task


@receiver(post_save, sender=Audit)
def _audit_saved(sender: type[Audit], instance: Audit, **kwargs: Any) -> None:
    sync_periodic_task(instance)


@receiver(post_delete, sender=Audit)
def _audit_deleted(sender: type[Audit], instance: Audit, **kwargs: Any) -> None:
    if instance.periodic_task_id is not None:
        PeriodicTask.objects.filter(pk=instance.periodic_task_id).delete()
