"""The Django admin: replay jobs, read-mostly (they are created and run by the CLI or tasks)."""

from __future__ import annotations

from django.contrib import admin

from meshadmin.models import ReplayAuditEntry, ReplayJob


@admin.register(ReplayJob)
class ReplayJobAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    list_display = ("replay_id", "status", "sent", "total", "target_url", "created_at")
    list_filter = ("status",)
    search_fields = ("replay_id", "target_url", "requested_by")
    readonly_fields = (
        "replay_id", "total", "sent", "skipped", "failed", "progress", "checkpoint",
        "dry_run", "result", "diff_report", "error", "started_at", "finished_at",
    )  # fmt: skip


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
