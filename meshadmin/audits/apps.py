from __future__ import annotations

from django.apps import AppConfig


class AuditsConfig(AppConfig):
    name = "meshadmin.audits"
    label = "audits"
    verbose_name = "Audits"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from meshadmin.audits import schedule  # noqa: F401  (connects the schedule signals)
