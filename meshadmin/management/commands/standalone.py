"""``python manage.py standalone``: runtime, chDB, web admin, Celery worker and beat in one
process (see ``meshadmin._standalone``). Flags it does not know go to the runtime, so every
``python -m runtime`` flag works here too (``--store redis://...``, ``--capture clickhouse://...``).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from meshadmin._standalone import StandaloneError, StandaloneOptions, run


class Command(BaseCommand):
    help = (
        "Run all of Meshtap in one process: the runtime (memory store, chDB capture under "
        "./var), the web admin, a Celery worker and beat. Unknown flags go to the runtime "
        "(see `python -m runtime --help`)."
    )

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--host", default="127.0.0.1", help="interface of the web admin (default 127.0.0.1)"
        )
        parser.add_argument(
            "--port", type=int, default=8000, help="web admin port (default 8000; 0 = any)"
        )
        parser.add_argument(
            "--demo",
            action="store_true",
            help="run demo services on the mesh (orders -> payments -> shipping)",
        )
        parser.add_argument(
            "--demo-rate", type=float, default=2.0, help="demo orders per second (default 2)"
        )
        parser.add_argument(
            "--celery-broker",
            default=None,
            help="Celery broker (default: in-process memory://; e.g. redis://127.0.0.1:6379/1)",
        )

    def run_from_argv(self, argv: list[str]) -> None:
        """Like BaseCommand's, but flags this command does not know are kept for the runtime."""
        parser = self.create_parser(argv[0], argv[1])
        options, runtime_args = parser.parse_known_args(argv[2:])
        cmd_options = vars(options)
        cmd_options.pop("args", None)
        try:
            self.execute(runtime_args=tuple(runtime_args), **cmd_options)
        except CommandError as e:
            self.stderr.write(f"{type(e).__name__}: {e}")
            sys.exit(e.returncode)

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            run(
                StandaloneOptions(
                    host=options["host"],
                    port=options["port"],
                    demo=options["demo"],
                    demo_rate=options["demo_rate"],
                    celery_broker=options["celery_broker"],
                    runtime_args=tuple(options.get("runtime_args", ())),
                )
            )
        except StandaloneError as e:
            raise CommandError(str(e)) from e
