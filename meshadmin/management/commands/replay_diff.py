"""``python manage.py replay_diff JOB``: the outcome diff of a replay job, stored with the job.

Compares what the system under test emitted in response to each replayed event with what it
emitted for the original (see ``replay._diff``); prints the summary and the differences.
"""

from __future__ import annotations

import json
import logging
from argparse import ArgumentParser
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from meshadmin.models import ReplayJob
from meshadmin.replays import diff_job
from replay import DiffRules, ReplayError
from tracing.clickhouse import ClickhouseError


class Command(BaseCommand):
    help = "Compare the responses to a replay with the responses to the originals."

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("job", help="the job's replay id (r-...) or number")
        parser.add_argument(
            "--ignore", action="append", default=[], help="field path to ignore (repeatable)"
        )
        parser.add_argument(
            "--unordered", action="append", default=[], help="array compared ignoring order"
        )
        parser.add_argument(
            "--correlation", default="", help="extension naming the trigger's id, if any"
        )
        parser.add_argument("--json", action="store_true", help="print the whole report as JSON")

    def handle(self, *args: Any, **options: Any) -> None:
        logging.getLogger("clickhouse_driver").setLevel(logging.CRITICAL)
        key = options["job"]
        job = ReplayJob.objects.filter(replay_id=key).first()
        if job is None and key.isdigit():
            job = ReplayJob.objects.filter(pk=int(key)).first()
        if job is None:
            raise CommandError(f"no replay job {key!r}; give its replay id (r-...) or number")
        try:
            rules = DiffRules(
                tuple(options["ignore"]), tuple(options["unordered"]), options["correlation"]
            )
            report = diff_job(job.pk, rules)
        except (ReplayError, ClickhouseError) as e:
            raise CommandError(str(e)) from None
        if options["json"]:
            self.stdout.write(json.dumps(report.to_json(), indent=2))
            return
        self.stdout.write(
            f"replay {job.replay_id}: {report.triggers} triggers, matched {report.matched}, "
            f"differing {report.differing}, missing {report.missing}, extra {report.extra}, "
            f"score {report.score:.3f}"
        )
        for item in report.items[:50]:
            self.stdout.write(f"  {item.outcome:9} {item.trigger} -> {item.topic} ({item.type})")
            for d in item.differences:
                self.stdout.write(f"      {d.path}: {d.original!r} -> {d.replayed!r}")
