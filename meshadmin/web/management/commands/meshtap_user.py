"""``manage.py meshtap_user NAME --role sre|qa|admin``: create (or update) a web admin user.

The password comes from ``--password`` or, when absent, is asked for (twice) on the terminal.
``admin`` users are staff too, so they reach the Django admin (configuration).
"""

from __future__ import annotations

import getpass
from argparse import ArgumentParser
from typing import Any

from django.contrib.auth.models import Group, User
from django.core.management.base import BaseCommand, CommandError

from meshadmin.web._roles import ADMIN, ROLES


class Command(BaseCommand):
    help = "Create or update a web admin user in one of the roles SRE, QA, admin."

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("username")
        parser.add_argument("--role", required=True, help="sre, qa or admin")
        parser.add_argument("--password", help="default: asked for on the terminal")

    def handle(self, *args: Any, **options: Any) -> None:
        wanted = options["role"].strip().lower()
        role = next((r for r in ROLES if r.lower() == wanted), None)
        if role is None:
            raise CommandError(f"--role {options['role']!r} is not one of sre, qa, admin")
        try:
            group = Group.objects.get(name=role)
        except Group.DoesNotExist:
            raise CommandError(
                f"group {role!r} does not exist yet; run `python manage.py migrate` first"
            ) from None
        password = options["password"]
        if password is None:
            password = getpass.getpass("Password: ")
            if password != getpass.getpass("Password (again): "):
                raise CommandError("the passwords differ; nothing was changed")
        if len(password) < 8:
            raise CommandError("the password is shorter than 8 characters; choose a longer one")
        user, created = User.objects.get_or_create(username=options["username"])
        user.set_password(password)
        user.is_staff = role == ADMIN
        user.save()
        user.groups.set([group])
        verb = "created" if created else "updated"
        self.stdout.write(f"{verb} user {user.username!r} in group {role}")
