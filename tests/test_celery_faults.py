"""Celery processes SIGKILLed mid-work, on a real Redis broker: a worker killed mid-replay (the
task is redelivered and the job resumes, every original delivered exactly once) and beat killed
mid-schedule (the schedule goes on after a restart, nothing fired twice, nothing lost beyond the
killed interval).

Covered elsewhere, not repeated here: a worker killed mid-audit
(tests/test_celery_audits.py::test_a_worker_killed_mid_audit_does_not_lose_it), a replay
process killed mid-replay (tests/test_replay_run.py, tests/test_replay_command.py).
"""

from __future__ import annotations

import asyncio
import re
import signal
import time
from datetime import datetime
from itertools import pairwise

import pytest

from tests.stack import DjangoStack
from tests.test_celery_audits import create_audit, runs, store_url
from tests.test_replay_run import COUNT_REPLAYED, N, Recorded, recorded, wait_until

pytestmark = [pytest.mark.redis, pytest.mark.clickhouse]
__all__ = ["recorded", "store_url"]  # the fixtures, shared with the modules they come from

JOB = "SELECT status, sent, skipped, failed, total FROM meshadmin_replayjob WHERE id = ?"


async def test_a_worker_killed_mid_replay_is_redelivered_and_sends_each_event_once(
    django_stack: DjangoStack, recorded: Recorded
) -> None:
    django_stack.env["MESHTAP_CLICKHOUSE_URL"] = recorded.url
    await django_stack.migrate()
    spec = recorded.spec(speed="30/s").to_json()  # ~4 s: the kill lands mid-replay
    django_stack.start_worker("first")
    output = await django_stack.shell(
        "from meshadmin.models import ReplayJob\n"
        "from meshadmin.tasks import run_replay_job\n"
        f"job = ReplayJob.objects.create(spec={spec!r}, target_url={recorded.runtime.http_url!r})\n"
        "run_replay_job.delay(job.pk)\n"
        "print('JOB', job.pk)\n"
    )
    job = int(output.split("JOB ")[1].split()[0])
    await django_stack.wait_for(
        "the first worker replays a third", lambda: len(recorded.sink.pushes) >= N // 3, 120, 0.05
    )
    django_stack.kill("first")  # SIGKILL mid-replay: the task's message was never acked
    assert django_stack.processes["first"].returncode == -signal.SIGKILL
    [(status, sent, _, _, total)] = django_stack.query(JOB, job)
    assert (status, total) == ("running", N)
    assert 0 < sent < N
    assert len(recorded.sink.pushes) < N

    django_stack.start_worker("second")
    await django_stack.wait_for(
        "the redelivered job completes",
        lambda: django_stack.query(JOB, job)[0][0] not in ("pending", "running"),
        timeout=120,
    )
    [(status, sent, skipped, failed, total)] = django_stack.query(JOB, job)
    assert (status, failed, total) == ("completed", 0, N), django_stack.logs()
    assert skipped > 0  # resumed from the checkpoint, not started over
    assert "run_replay_job" in django_stack.log("second")
    await recorded.sink.wait_for(N)
    [(replay_id,)] = django_stack.query(
        "SELECT replay_id FROM meshadmin_replayjob WHERE id = ?", job
    )
    await wait_until(lambda: recorded.count(COUNT_REPLAYED, replay_id=replay_id)[0] >= N, 60)
    await asyncio.sleep(1.0)
    seen = sorted(p.attributes["replayoriginalid"] for p in recorded.sink.pushes)
    assert seen == sorted(f"o-{n:03d}" for n in range(N))  # each exactly once
    assert recorded.count(COUNT_REPLAYED, replay_id=replay_id) == (N, N)  # and captured once


STAMP = r"\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}):"
SENT = re.compile(STAMP + r".*Sending due task audit:(\d+) ")
STARTING = re.compile(STAMP + r".*beat: Starting")


def instant(stamp: str) -> float:
    return datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()


def sends(stack: DjangoStack, audit: int) -> list[float]:
    """When the running beat sent ``audit``'s task (epoch seconds, from its log)."""
    return [instant(stamp) for stamp, name in SENT.findall(stack.log("beat")) if int(name) == audit]


async def test_beat_killed_mid_schedule_goes_on_without_duplicates_or_losses(
    django_stack: DjangoStack, store_url: str
) -> None:
    every = 8  # long enough for the restarted beat to be up well before the next run is due
    django_stack.env["MESHTAP_CLICKHOUSE_URL"] = store_url
    await django_stack.migrate()
    audit = await create_audit(
        django_stack, name="dead letters", kind="dead_letters", every_seconds=every,
        parameters={"max_dead_letters": 0},
    )  # fmt: skip
    django_stack.start_worker()
    django_stack.start_beat()
    await django_stack.wait_for(
        "two sends by the first beat", lambda: len(sends(django_stack, audit)) >= 2, 120, 0.05
    )
    await asyncio.sleep(0.5)
    django_stack.kill("beat")  # SIGKILL mid-interval, just after a send
    killed = time.time()
    before = sends(django_stack, audit)
    log_before = django_stack.log("beat")
    await asyncio.sleep(1.0)  # down for less than an interval
    restarted = time.time()
    django_stack.start_beat()
    await django_stack.wait_for(
        "three sends by the restarted beat", lambda: len(sends(django_stack, audit)) >= 3, 120
    )
    django_stack.kill("beat")
    after = sends(django_stack, audit)
    [up] = [instant(stamp) for stamp in STARTING.findall(django_stack.log("beat"))]
    timeline = before + after
    details = f"sends {timeline}, killed {killed}, restarted {restarted}, up {up}\n{log_before}"
    # The restarted beat was up while the interval the kill cut into was still running: the
    # window in which a beat that forgot its last send would send again.
    assert up < before[-1] + every - 3, details

    # Within each beat's life: one send per interval, none doubled, none skipped.
    for life in (before, after):
        gaps = [b - a for a, b in pairwise(life)]
        assert all(every - 2 < gap < every + 2 for gap in gaps), details
    # Across the kill: the restart neither fires early (a duplicate of the last run before the
    # kill) nor leaves more than the killed interval out.
    across = after[0] - before[-1]
    assert every - 2 < across < every + 2, details

    # Every send became exactly one stored run, each its own task.
    stored = await django_stack.wait_for(
        "a finished run per send",
        lambda: (
            len(done := runs(django_stack, "WHERE audit_id = ? AND status != 'running'", audit))
            >= len(timeline)
            and done
        ),
        timeout=120,
    )
    assert len(stored) == len(timeline), details
    assert len({r["task_id"] for r in stored}) == len(timeline)
    assert {r["status"] for r in stored} == {"pass"}
