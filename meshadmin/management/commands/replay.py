"""``python manage.py replay``: replay a window of recorded traffic into topics.

Builds a ``ReplaySpec`` from flags, records a ``ReplayJob``, prints the dry run, then runs the job
in this process with a live progress bar and prints a summary. ``--dry-run`` stops after the
estimate; ``--resume JOB`` continues a paused or failed job from its checkpoint. Exit code 1 on
any failure (bad input, nothing matched, refused by the guard, target down).
"""

from __future__ import annotations

import getpass
import logging
from argparse import ArgumentParser
from datetime import UTC, datetime
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from meshadmin.models import ReplayJob
from meshadmin.replays import execute_job, plan_job
from replay import DryRun, ReplayError, ReplaySpec, parse_time
from replay import Progress as ReplayProgress
from tracing.clickhouse import ClickhouseError


def _when(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9, UTC).isoformat(timespec="milliseconds")


class Command(BaseCommand):
    help = (
        "Replay recorded events of a time window into topics (default: the same topics under "
        "replay.) at original speed, scaled, a fixed rate or as fast as possible."
    )

    def add_arguments(self, parser: ArgumentParser) -> None:
        add = parser.add_argument
        add("--topic", action="append", default=[], help="topic or pattern (repeatable)")
        add("--since", help="window start, ISO 8601 with zone, e.g. 2026-11-26T10:00:00Z")
        add("--until", help="window end (exclusive)")
        add("--to-prefix", default="replay.", help="target topic = prefix + original topic")
        add("--speed", default="1x", help="1x, 10x, 0.5x, 500/s or max")
        add("--max-idle-gap", type=float, help="compress silences longer than SECONDS")
        add(
            "--filter",
            action="append",
            default=[],
            help="FIELD=VALUE, FIELD^=PREFIX or FIELD~=REGEX; FIELD is an attribute, an "
            "extension or data.PATH (repeatable, all must hold)",
        )
        add("--sample", type=float, default=100.0, help="percent of partition keys to keep")
        add("--key", action="append", default=[], help="only this partition key (repeatable)")
        add("--event-id", action="append", default=[], help="only this event id (repeatable)")
        add("--trace-id", action="append", default=[], help="only this trace's events")
        add("--limit", type=int, help="at most this many events (the first ones)")
        add("--include-replayed", action="store_true", help="also replay replayed events")
        add("--max-events", type=int, default=100_000, help="refuse larger selections")
        add("--allow-production", action="store_true", help="allow non-sandbox target topics")
        add(
            "--target",
            help="the mesh's HTTP API (default: the MESHTAP_RUNTIME_URL setting)",
        )
        add("--dry-run", action="store_true", help="print the estimate, send nothing")
        add("--resume", type=str, help="resume this job (its replay id or number)")
        add("--no-progress", action="store_true", help="no progress bar (logs, CI)")

    def handle(self, *args: Any, **options: Any) -> None:
        logging.getLogger("clickhouse_driver").setLevel(logging.CRITICAL)
        console = Console(file=self.stdout._out, highlight=False)  # type: ignore[attr-defined]
        try:
            job = self._resume(options) if options["resume"] else self._create(options)
            selection = plan_job(job)
        except (ReplayError, ClickhouseError) as e:
            raise CommandError(str(e)) from None
        self._print_dry_run(console, job, selection.report)
        if options["dry_run"]:
            job.status = ReplayJob.Status.CANCELLED
            job.error = "dry run"
            job.save(update_fields=["status", "error"])
            return
        result = self._run(console, job, selection, options["no_progress"])
        console.print(
            f"[bold]{result.status}[/bold]  sent {result.sent}/{result.total}  "
            f"skipped {result.skipped}  failed {result.failed}  "
            f"duration {result.duration_s:.2f}s  rate {result.rate:,.0f} events/s  "
            f"timing error p50 {result.timing_p50_ms:.2f} ms p99 {result.timing_p99_ms:.2f} ms"
        )
        if result.status == "failed":
            raise CommandError(
                f"replay {job.replay_id} failed: {result.error}\n"
                f"resume it with: python manage.py replay --resume {job.replay_id}"
            )
        if result.status != "completed":
            raise CommandError(f"replay {job.replay_id} ended {result.status}")

    def _create(self, options: dict[str, Any]) -> ReplayJob:
        missing = [f"--{n}" for n in ("topic", "since", "until") if not options[n]]
        if missing:
            raise CommandError(
                f"{', '.join(missing)} required; e.g. --topic 'orders.#' --since "
                f"2026-11-26T10:00:00Z --until 2026-11-26T10:05:00Z"
            )
        spec = ReplaySpec(
            topics=tuple(options["topic"]),
            since=parse_time(options["since"], "--since"),
            until=parse_time(options["until"], "--until"),
            filters=tuple(options["filter"]),
            sample_percent=options["sample"],
            keys=tuple(options["key"]),
            event_ids=tuple(options["event_id"]),
            trace_ids=tuple(options["trace_id"]),
            include_replayed=options["include_replayed"],
            limit=options["limit"],
            speed=options["speed"],
            max_idle_gap_s=options["max_idle_gap"],
            to_prefix=options["to_prefix"],
            allow_production=options["allow_production"],
            max_events=options["max_events"],
        )
        return ReplayJob.objects.create(
            spec=spec.to_json(),
            target_url=options["target"] or settings.MESHTAP_RUNTIME_URL,
            requested_by=getpass.getuser(),
        )

    def _resume(self, options: dict[str, Any]) -> ReplayJob:
        key = options["resume"]
        found = ReplayJob.objects.filter(replay_id=key).first()
        if found is None and key.isdigit():
            found = ReplayJob.objects.filter(pk=int(key)).first()
        if found is None:
            raise CommandError(f"no replay job {key!r}; give its replay id (r-...) or number")
        if found.status == ReplayJob.Status.COMPLETED:
            raise CommandError(f"replay {found.replay_id} is already completed; nothing to do")
        if options["target"]:
            found.target_url = options["target"]
            found.save(update_fields=["target_url"])
        return found

    def _print_dry_run(self, console: Console, job: ReplayJob, report: DryRun) -> None:
        duration = report.expected_duration_s
        console.print(
            f"replay [bold]{job.replay_id}[/bold] -> {job.target_url}: {report.events} events, "
            f"{report.distinct_keys} partition keys, {_when(report.first_ns)} .. "
            f"{_when(report.last_ns)}, expected duration "
            + ("as fast as the target takes them" if duration is None else f"{duration:.1f}s")
        )
        targets = dict(report.target_topics)
        for topic, count in report.per_topic:
            console.print(f"  {topic} -> {targets[topic]}: {count}")

    def _run(self, console: Console, job: ReplayJob, selection: Any, quiet: bool) -> Any:
        bar = Progress(
            TextColumn("replaying"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]} ev/s"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=console,
            disable=quiet,
        )
        task = bar.add_task("replay", total=selection.report.events, rate="0")

        def on_progress(progress: ReplayProgress) -> None:
            bar.update(task, completed=progress.sent, rate=f"{progress.rate:,.0f}")

        with bar:
            try:
                result = execute_job(job.pk, on_progress=on_progress, selection=selection)
            except (ReplayError, ClickhouseError) as e:
                raise CommandError(str(e)) from None
            bar.update(task, completed=result.sent)
        return result
