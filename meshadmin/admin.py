"""The Django admin: replay jobs, read-mostly (they are created and run by the CLI or tasks)."""

from __future__ import annotations

from django.contrib import admin

from meshadmin.models import ReplayJob


@admin.register(ReplayJob)
class ReplayJobAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    list_display = ("replay_id", "status", "sent", "total", "target_url", "created_at")
    list_filter = ("status",)
    search_fields = ("replay_id", "target_url", "requested_by")
    readonly_fields = (
        "replay_id", "total", "sent", "skipped", "failed", "progress", "checkpoint",
        "dry_run", "result", "diff_report", "error", "started_at", "finished_at",
    )  # fmt: skip
