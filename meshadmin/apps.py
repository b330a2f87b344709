from __future__ import annotations

from django.apps import AppConfig


class MeshadminConfig(AppConfig):
    name = "meshadmin"
    verbose_name = "Meshtap"
    default_auto_field = "django.db.models.BigAutoField"
