"""Meshtap's Django models: replay jobs and the audit log of who replayed what where."""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models


def _replay_id() -> str:
    return f"r-{uuid.uuid4().hex[:16]}"


class ReplayJob(models.Model):
    """One replay of a window of recorded traffic: what (``spec``, a ``ReplaySpec`` as JSON),
    where (``target_url``), who asked, and where it stands -- status, progress counts (updated
    at least every second while it runs), the checkpoint a resume starts from, the result, the
    dry-run report and the outcome diff.

    ``command`` is how the web admin or CLI talks to a running job: the worker reads it with
    every progress update and pauses or cancels at once.
    """

    class Status(models.TextChoices):
        PENDING = "pending"
        RUNNING = "running"
        PAUSED = "paused"
        COMPLETED = "completed"
        FAILED = "failed"
        CANCELLED = "cancelled"

    class Command(models.TextChoices):
        RUN = "run"
        PAUSE = "pause"
        CANCEL = "cancel"

    replay_id = models.CharField(max_length=64, unique=True, default=_replay_id)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    requested_by = models.CharField(
        max_length=150, blank=True, help_text="who asked, when not a user (e.g. the OS user)"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    spec = models.JSONField(help_text="the ReplaySpec as JSON (replay.ReplaySpec.to_json)")
    target_url = models.CharField(max_length=500, help_text="the mesh's HTTP API")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    command = models.CharField(max_length=16, choices=Command.choices, default=Command.RUN)
    total = models.PositiveIntegerField(default=0)
    sent = models.PositiveIntegerField(default=0)
    skipped = models.PositiveIntegerField(default=0)
    failed = models.PositiveIntegerField(default=0)
    progress = models.JSONField(default=dict, blank=True)
    checkpoint = models.JSONField(null=True, blank=True)
    dry_run = models.JSONField(null=True, blank=True)
    result = models.JSONField(null=True, blank=True)
    diff_report = models.JSONField(null=True, blank=True)
    error = models.TextField(blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"replay {self.replay_id} ({self.status}, {self.sent}/{self.total})"


class ReplayAuditEntry(models.Model):
    """Who replayed what where: one row each time a replay job starts or resumes.

    Kept apart from ``ReplayJob`` (and never deleted with it) so the trail survives job
    clean-up; the fields copy what was asked rather than pointing at the job's mutable spec.
    """

    class Action(models.TextChoices):
        START = "start"
        RESUME = "resume"

    at = models.DateTimeField(auto_now_add=True, db_index=True)
    actor = models.CharField(max_length=150, help_text="user name, or who asked (e.g. OS user)")
    action = models.CharField(max_length=16, choices=Action.choices)
    job = models.ForeignKey(ReplayJob, null=True, on_delete=models.SET_NULL, related_name="+")
    replay_id = models.CharField(max_length=64, db_index=True)
    target_url = models.CharField(max_length=500)
    topics = models.JSONField(default=list)
    since = models.CharField(max_length=64, blank=True)
    until = models.CharField(max_length=64, blank=True)
    spec = models.JSONField(help_text="the ReplaySpec as asked, at that moment")

    class Meta:
        ordering = ["-at"]

    def __str__(self) -> str:
        return f"{self.at:%Y-%m-%d %H:%M:%S} {self.actor} {self.action} {self.replay_id}"
