from __future__ import annotations

from django.apps import AppConfig


class WebConfig(AppConfig):
    name = "meshadmin.web"
    label = "web"
    verbose_name = "Meshtap web admin"
    default_auto_field = "django.db.models.BigAutoField"
