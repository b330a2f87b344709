"""Admin pages: audits with their last status (run now, enable, disable) and the run history
with findings. Parameters are JSON checked against the kind's JSON Schema when saved."""

from __future__ import annotations

import json
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html, format_html_join

from auditing import KINDS
from meshadmin.audits.models import Audit, AuditRun


def _schemas_help() -> str:
    return "Parameters per kind (JSON Schema properties, defaults filled in): " + "; ".join(
        f"{name} ({kind.title}): {', '.join(sorted(kind.schema['properties']))}"
        for name, kind in KINDS.items()
    )


class AuditForm(forms.ModelForm):  # type: ignore[type-arg]
    class Meta:
        model = Audit
        fields = "__all__"
        widgets = {"parameters": forms.Textarea(attrs={"rows": 8, "cols": 80})}
        help_texts = {"parameters": _schemas_help()}


def _status(status: str | None) -> str:
    colours = {"pass": "#2e7d32", "fail": "#c62828", "error": "#ef6c00", "running": "#1565c0"}
    if status is None:
        return "-"
    return format_html('<b style="color:{}">{}</b>', colours.get(status, "#000"), status)


@admin.register(Audit)
class AuditAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    form = AuditForm
    list_display = ("name", "kind", "enabled", "schedule", "last_status", "last_run_at")
    list_filter = ("kind", "enabled")
    search_fields = ("name",)
    actions = ["run_now", "enable", "disable"]
    readonly_fields = ("recent_runs",)
    fieldsets = (
        (None, {"fields": ("name", "kind", "parameters", "enabled")}),
        ("Schedule", {"fields": ("every_seconds", "crontab")}),
        (
            "Notifications",
            {"fields": ("notify_mesh", "notify_webhooks", "notify_emails", "notify_on_recovery")},
        ),
        ("History", {"fields": ("recent_runs",)}),
    )

    @admin.display(description="schedule")
    def schedule(self, audit: Audit) -> str:
        return f"every {audit.every_seconds} s" if audit.every_seconds else audit.crontab

    @admin.display(description="last status")
    def last_status(self, audit: Audit) -> str:
        run = audit.last_run()
        return _status(run.status if run else None)

    @admin.display(description="last run")
    def last_run_at(self, audit: Audit) -> Any:
        run = audit.last_run()
        return run.finished_at if run else None

    @admin.display(description="recent runs")
    def recent_runs(self, audit: Audit) -> str:
        runs = audit.runs.all()[:20] if audit.pk else []
        return format_html(
            "<table><tr><th>run</th><th>started</th><th>status</th><th>summary</th></tr>{}</table>",
            format_html_join(
                "",
                '<tr><td><a href="{}">{}</a></td><td>{}</td><td>{}</td><td>{}</td></tr>',
                (
                    (
                        reverse("admin:audits_auditrun_change", args=[r.pk]),
                        r.pk,
                        r.started_at,
                        _status(r.status),
                        r.summary or r.error,
                    )
                    for r in runs
                ),
            ),
        )

    @admin.action(description="Run selected audits now")
    def run_now(self, request: HttpRequest, queryset: QuerySet[Audit]) -> None:
        from meshadmin.tasks import run_audit

        for audit in queryset:
            run_audit.delay(audit.pk)
        self.message_user(request, f"queued {queryset.count()} audit run(s)", messages.SUCCESS)

    @admin.action(description="Enable selected audits")
    def enable(self, request: HttpRequest, queryset: QuerySet[Audit]) -> None:
        self._set_enabled(request, queryset, True)

    @admin.action(description="Disable selected audits")
    def disable(self, request: HttpRequest, queryset: QuerySet[Audit]) -> None:
        self._set_enabled(request, queryset, False)

    def _set_enabled(self, request: HttpRequest, queryset: QuerySet[Audit], on: bool) -> None:
        for audit in queryset:
            audit.enabled = on
            audit.save(update_fields=["enabled", "updated_at"])  # the schedule follows
        word = "enabled" if on else "disabled"
        self.message_user(request, f"{word} {queryset.count()} audit(s)", messages.SUCCESS)


@admin.register(AuditRun)
class AuditRunAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    list_display = ("pk", "audit", "status_", "summary", "started_at", "finished_at")
    list_filter = ("status", "audit")
    search_fields = ("audit__name", "summary")
    readonly_fields = (
        "audit", "task_id", "status", "summary", "error", "started_at", "finished_at",
        "findings_table", "figures_json", "notifications",
    )  # fmt: skip
    exclude = ("findings", "figures")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    @admin.display(description="status", ordering="status")
    def status_(self, run: AuditRun) -> str:
        return _status(run.status)

    @admin.display(description="findings")
    def findings_table(self, run: AuditRun) -> str:
        rows = run.findings
        if not rows:
            return "none"
        return format_html(
            "<ol>{}</ol>",
            format_html_join(
                "", "<li><code>{}</code></li>", ((json.dumps(f),) for f in run.findings)
            ),
        )

    @admin.display(description="figures")
    def figures_json(self, run: AuditRun) -> str:
        return format_html("<pre>{}</pre>", json.dumps(run.figures, indent=2, sort_keys=True))
