"""The Django admin (configuration, for the admin group): replay jobs, read-mostly -- they are
created by the web console, the CLI or tasks and run by Celery; here they are searched,
filtered, and paused/cancelled/re-queued in bulk."""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html

from meshadmin.models import ReplayAuditEntry, ReplayJob


@admin.register(ReplayJob)
class ReplayJobAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    list_display = (
        "replay_id", "status", "progress_text", "topics", "to_prefix", "target_url",
        "created_by", "created_at", "console",
    )  # fmt: skip
    list_filter = ("status", "command", ("created_at", admin.DateFieldListFilter), "created_by")
    search_fields = ("replay_id", "target_url", "requested_by", "created_by__username", "error")
    date_hierarchy = "created_at"
    list_select_related = ("created_by",)
    list_per_page = 50
    actions = ("pause", "cancel", "requeue")
    readonly_fields = (
        "replay_id", "total", "sent", "skipped", "failed", "progress", "checkpoint",
        "dry_run", "result", "diff_report", "error", "started_at", "finished_at",
    )  # fmt: skip

    @admin.display(description="progress")
    def progress_text(self, job: ReplayJob) -> str:
        return f"{job.sent}/{job.total}" + (f" ({job.failed} failed)" if job.failed else "")

    @admin.display(description="topics")
    def topics(self, job: ReplayJob) -> str:
        return ", ".join((job.spec or {}).get("topics", []))

    @admin.display(description="prefix")
    def to_prefix(self, job: ReplayJob) -> str:
        return str((job.spec or {}).get("to_prefix", ""))

    @admin.display(description="")
    def console(self, job: ReplayJob) -> Any:
        return format_html('<a href="{}">open</a>', reverse("web:replay", args=[job.pk]))

    @admin.action(description="Pause the selected running jobs")
    def pause(self, request: HttpRequest, queryset: QuerySet[ReplayJob]) -> None:
        n = queryset.filter(status=ReplayJob.Status.RUNNING).update(command=ReplayJob.Command.PAUSE)
        self.message_user(request, f"asked {n} running job(s) to pause", messages.SUCCESS)

    @admin.action(description="Cancel the selected unfinished jobs")
    def cancel(self, request: HttpRequest, queryset: QuerySet[ReplayJob]) -> None:
        unfinished = queryset.exclude(status__in=("completed", "failed", "cancelled"))
        n = unfinished.update(command=ReplayJob.Command.CANCEL)
        unfinished.filter(status__in=("pending", "paused")).update(
            status=ReplayJob.Status.CANCELLED
        )
        self.message_user(request, f"cancelled {n} job(s)", messages.SUCCESS)

    @admin.action(description="Re-queue the selected paused or failed jobs (resume)")
    def requeue(self, request: HttpRequest, queryset: QuerySet[ReplayJob]) -> None:
        from meshadmin.web._jobs import enqueue

        jobs = list(queryset.filter(status__in=("paused", "failed")))
        for job in jobs:
            ReplayJob.objects.filter(pk=job.pk).update(command=ReplayJob.Command.RUN)
            enqueue(job.pk)
        self.message_user(request, f"re-queued {len(jobs)} job(s)", messages.SUCCESS)


@admin.register(ReplayAuditEntry)
class ReplayAuditEntryAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    """The audit trail is append-only: nobody edits or deletes it from the admin."""

    list_display = ("at", "actor", "action", "replay_id", "target_url", "since", "until")
    list_filter = ("action",)
    search_fields = ("actor", "replay_id", "target_url")

    def has_add_permission(self, request: object) -> bool:
        return False

    def has_change_permission(self, request: object, obj: object = None) -> bool:
        return False

    def has_delete_permission(self, request: object, obj: object = None) -> bool:
        return False
