"""``python manage.py ensure_admin``: create the admin user if missing (server mode's migrate
step; standalone does the same at start). User and password come from ``MESHTAP_ADMIN_USER`` and
``MESHTAP_ADMIN_PASSWORD``; without a password one is generated and printed once."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand

from meshadmin._standalone import ensure_admin


class Command(BaseCommand):
    help = "Create the admin user (MESHTAP_ADMIN_USER / MESHTAP_ADMIN_PASSWORD) if it is missing."

    def handle(self, *args: Any, **options: Any) -> None:
        credentials = ensure_admin(settings.MESHTAP_ADMIN_USER, settings.MESHTAP_ADMIN_PASSWORD)
        if credentials.password is None:
            self.stdout.write(f"Admin user {credentials.username!r} exists; nothing to do.")
        elif settings.MESHTAP_ADMIN_PASSWORD:
            self.stdout.write(f"Admin user {credentials.username!r} ready (password from env).")
        else:
            self.stdout.write(
                f"Created admin user {credentials.username!r} with password "
                f"{credentials.password!r} (shown once)."
            )
