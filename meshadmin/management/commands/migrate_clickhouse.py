"""``python manage.py migrate_clickhouse``: apply Meshtap's numbered ClickHouse migrations.

The migrations live in ``tracing/migrations``; the runner in ``tracing.clickhouse``. This
command only picks the URL (``--url``, else the ``MESHTAP_CLICKHOUSE_URL`` setting) and reports.
"""

from __future__ import annotations

import logging
from argparse import ArgumentParser
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from tracing.clickhouse import (
    ClickHouse,
    ClickhouseError,
    check,
    migrate,
    plan,
)


def default_url() -> str:
    return str(getattr(settings, "MESHTAP_CLICKHOUSE_URL", f"chdb://{settings.BASE_DIR}/var/chdb"))


class Command(BaseCommand):
    help = (
        "Apply pending ClickHouse migrations (tracing/migrations) to the capture store. "
        "--plan lists them without applying; --check exits 1 if any are pending."
    )

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument(
            "--url",
            help="clickhouse://host:9000/meshtap or chdb:///absolute/dir "
            "(default: the MESHTAP_CLICKHOUSE_URL setting)",
        )
        mode = parser.add_mutually_exclusive_group()
        mode.add_argument(
            "--plan", action="store_true", help="list pending migrations, apply nothing"
        )
        mode.add_argument(
            "--check",
            action="store_true",
            help="exit 1 with a message if migrations are pending, apply nothing",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        url = options["url"] or default_url()
        # The driver logs a traceback for every failed connect; the error below says it all.
        logging.getLogger("clickhouse_driver").setLevel(logging.CRITICAL)
        try:
            with ClickHouse.open(url) as client:
                if options["plan"]:
                    self._plan(client)
                elif options["check"]:
                    check(client)
                    self.stdout.write(f"ClickHouse schema at {client.url} is up to date.")
                else:
                    self._migrate(client)
        except ClickhouseError as e:  # SchemaNotMigrated included: its message says what to run
            raise CommandError(str(e)) from e

    def _plan(self, client: ClickHouse) -> None:
        pending = plan(client)
        if not pending:
            self.stdout.write(f"No pending ClickHouse migrations: {client.url} is up to date.")
            return
        self.stdout.write(f"Pending ClickHouse migrations for {client.url}:")
        for migration in pending:
            self.stdout.write(f"  {migration.label}  {migration.summary}")
        self.stdout.write("Run `python manage.py migrate_clickhouse` to apply them.")

    def _migrate(self, client: ClickHouse) -> None:
        pending = plan(client)
        if not pending:
            self.stdout.write(f"No ClickHouse migrations to apply: {client.url} is up to date.")
            return
        self.stdout.write(f"Applying {len(pending)} ClickHouse migration(s) to {client.url}:")
        for migration in migrate(client):
            self.stdout.write(
                self.style.SUCCESS(f"  applied {migration.label}") + "  " + migration.summary
            )
