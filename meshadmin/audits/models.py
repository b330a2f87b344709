"""Audits and their runs."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError
from django.db import models
from django_celery_beat.models import PeriodicTask

from auditing import KINDS, AuditError, validate_parameters


def _lines(text: str) -> list[str]:
    return [part.strip() for part in text.replace(",", "\n").splitlines() if part.strip()]


class Audit(models.Model):
    """A check an SRE schedules: ``kind`` (one of ``auditing.KINDS``) with ``parameters``
    validated against the kind's JSON Schema; run every ``every_seconds`` or on ``crontab``
    by Celery beat (``periodic_task``, kept in sync on save), notifying on failure."""

    name = models.CharField(max_length=200, unique=True)
    kind = models.CharField(max_length=40, choices=[(k, k.replace("_", " ")) for k in KINDS])
    parameters = models.JSONField(
        default=dict, blank=True, help_text="JSON, checked against the kind's JSON Schema"
    )
    enabled = models.BooleanField(default=True)
    every_seconds = models.PositiveIntegerField(
        null=True, blank=True, help_text="run every N seconds (e.g. 300), or give a crontab"
    )
    crontab = models.CharField(
        max_length=100, blank=True, help_text="minute hour day-of-month month day-of-week (UTC)"
    )
    notify_mesh = models.BooleanField(
        default=True, help_text="publish a CloudEvent to the mesh topic meshtap.audit.result"
    )
    notify_webhooks = models.TextField(blank=True, help_text="URLs to POST results to, one a line")
    notify_emails = models.TextField(blank=True, help_text="addresses, one a line or commas")
    notify_on_recovery = models.BooleanField(
        default=False, help_text="also notify when a failing audit passes again"
    )
    periodic_task = models.OneToOneField(
        PeriodicTask, null=True, blank=True, editable=False, on_delete=models.SET_NULL
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        errors: dict[str, Any] = {}
        try:
            self.parameters = validate_parameters(self.kind, self.parameters)
        except AuditError as e:
            errors["parameters"] = str(e)
        if self.every_seconds is None and not self.crontab.strip():
            errors["every_seconds"] = "give a schedule: every N seconds, or a crontab"
        if self.every_seconds is not None and self.crontab.strip():
            errors["crontab"] = "give one schedule: every N seconds or a crontab, not both"
        if self.crontab.strip() and len(self.crontab.split()) != 5:
            errors["crontab"] = (
                f"crontab {self.crontab!r} needs 5 fields: minute hour day-of-month month "
                f"day-of-week, e.g. '*/5 * * * *'"
            )
        if errors:
            raise ValidationError(errors)

    @property
    def webhooks(self) -> list[str]:
        return _lines(self.notify_webhooks)

    @property
    def emails(self) -> list[str]:
        return _lines(self.notify_emails)

    def last_run(self) -> AuditRun | None:
        return self.runs.exclude(status=AuditRun.Status.RUNNING).first()


class AuditRun(models.Model):
    """One run of an audit. ``task_id`` is the Celery task's id, so a task redelivered after
    its worker died (``acks_late``) finishes the same run rather than starting another."""

    class Status(models.TextChoices):
        RUNNING = "running"
        PASS = "pass"
        FAIL = "fail"
        ERROR = "error"

    audit = models.ForeignKey(Audit, on_delete=models.CASCADE, related_name="runs")
    task_id = models.CharField(max_length=64, unique=True, null=True, blank=True)
    started_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    status = models.CharField(max_length=8, choices=Status.choices, default=Status.RUNNING)
    summary = models.TextField(blank=True)
    findings = models.JSONField(default=list, blank=True)
    figures = models.JSONField(default=dict, blank=True)
    error = models.TextField(blank=True)
    notifications = models.JSONField(default=list, blank=True)

    class Meta:
        ordering = ["-started_at", "-pk"]

    def __str__(self) -> str:
        return f"{self.audit} run {self.pk} ({self.status})"
