"""``python manage.py replay`` and the Celery task, against a real runtime and clickhouse-server.

The command runs as a child process (as a user runs it); the runtime it replays into runs in the
test's event loop, capturing into clickhouse-server.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.meshes import ROOT, free_port
from tests.test_replay_run import N, Recorded, recorded

pytestmark = pytest.mark.clickhouse
__all__ = ["recorded"]  # the fixture, shared with tests/test_replay_run.py


async def manage(tmp_path: Path, recorded: Recorded, *args: str) -> tuple[int, str]:
    env = {
        **os.environ,
        "MESHTAP_VAR_DIR": str(tmp_path),
        "MESHTAP_CLICKHOUSE_URL": recorded.url,
        "MESHTAP_RUNTIME_URL": recorded.runtime.http_url,
        "COLUMNS": "120",
    }
    env.pop("DJANGO_SETTINGS_MODULE", None)
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "manage.py",
        *args,
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(process.communicate(), timeout=120)
    assert process.returncode is not None
    return process.returncode, output.decode()


def window(recorded: Recorded) -> list[str]:
    return [
        "--topic",
        "orders.#",
        "--since",
        recorded.since.isoformat(),
        "--until",
        recorded.until.isoformat(),
    ]


@pytest.fixture
async def migrated(tmp_path: Path, recorded: Recorded) -> Recorded:
    code, output = await manage(tmp_path, recorded, "migrate", "--noinput")
    assert code == 0, output
    return recorded


async def test_dry_run_then_replay_with_summary(migrated: Recorded, tmp_path: Path) -> None:
    code, output = await manage(tmp_path, migrated, "replay", *window(migrated), "--dry-run")
    assert code == 0, output
    assert f"{N} events, 6 partition keys" in output
    assert "orders.eu -> replay.orders.eu: 60" in output
    await asyncio.sleep(0.5)
    assert migrated.sink.pushes == []  # a dry run sends nothing

    code, output = await manage(
        tmp_path, migrated, "replay", *window(migrated), "--speed", "max", "--no-progress"
    )
    assert code == 0, output
    assert f"completed  sent {N}/{N}  skipped 0  failed 0" in output
    assert "events/s  timing error p50" in output
    assert len(await migrated.sink.wait_for(N)) == N

    code, output = await manage(
        tmp_path, migrated, "replay", *window(migrated), "--speed", "200/s", "--limit", "30",
        "--filter", "type=order.paid",
    )  # fmt: skip
    assert code == 0, output
    assert "sent 30/30" in output
    assert "replaying" in output  # the progress bar

    # Nothing consumes orders here, so nothing responded either time: a perfect score, stored.
    job = output.split("replay ")[1].split()[0]
    code, output = await manage(tmp_path, migrated, "replay_diff", job, "--ignore", "data.x")
    assert code == 0, output
    assert "30 triggers, matched 0, differing 0, missing 0, extra 0, score 1.000" in output
    code, output = await manage(tmp_path, migrated, "replay_diff", "r-nope")
    assert code == 1
    assert "no replay job 'r-nope'" in output


@pytest.mark.parametrize(
    ("extra", "complaint"),
    [
        (["--since", "2026-11-26T10:00:00"], "has no time zone"),
        (["--speed", "fast"], "speed 'fast' is not one of"),
        (["--filter", "data.x~=("], "not a valid regular expression"),
        (["--topic", "orders.#x"], "orders.#x"),
        (["--to-prefix", "", "--speed", "max"], "not under a sandbox prefix"),
        (["--max-events", "10"], "more than max_events=10"),
        (["--filter", "type=nothing"], "no events matched the replay spec"),
    ],
)
async def test_bad_input_exits_non_zero_with_the_reason(
    migrated: Recorded, tmp_path: Path, extra: list[str], complaint: str
) -> None:
    code, output = await manage(tmp_path, migrated, "replay", *window(migrated), *extra)
    assert code == 1, output
    assert complaint in output
    assert migrated.sink.pushes == []


async def test_unreachable_target_fails_and_the_job_resumes(
    migrated: Recorded, tmp_path: Path
) -> None:
    down = f"http://127.0.0.1:{free_port()}"
    code, output = await manage(
        tmp_path, migrated, "replay", *window(migrated), "--speed", "max", "--target", down
    )
    assert code == 1, output
    assert f"target {down} is unreachable" in output
    resume = output.split("--resume ")[1].split()[0]
    code, output = await manage(
        tmp_path, migrated, "replay", "--resume", resume, "--target", migrated.runtime.http_url
    )
    assert code == 0, output
    assert f"completed  sent {N}/{N}" in output
    assert len(await migrated.sink.wait_for(N)) == N


async def test_the_celery_task_runs_a_job(migrated: Recorded, tmp_path: Path) -> None:
    spec: dict[str, Any] = {
        "topics": ["orders.#"],
        "since": migrated.since.isoformat(),
        "until": migrated.until.isoformat(),
        "speed": "max",
    }
    script = (
        "from meshadmin.models import ReplayJob\n"
        "from meshadmin.tasks import run_replay_job\n"
        f"job = ReplayJob.objects.create(spec={spec!r}, target_url={migrated.runtime.http_url!r})\n"
        "outcome = run_replay_job.apply(args=[job.pk])\n"
        "job.refresh_from_db()\n"
        "print('STATE', outcome.state, job.status, job.sent, job.total, job.progress['status'])\n"
    )
    code, output = await manage(tmp_path, migrated, "shell", "-c", script)
    assert code == 0, output
    assert f"STATE SUCCESS completed {N} {N} completed" in output
    assert len(await migrated.sink.wait_for(N)) == N


async def test_a_killed_replay_command_resumes_without_duplicates(
    migrated: Recorded, tmp_path: Path
) -> None:
    env = {
        **os.environ,
        "MESHTAP_VAR_DIR": str(tmp_path),
        "MESHTAP_CLICKHOUSE_URL": migrated.url,
        "MESHTAP_RUNTIME_URL": migrated.runtime.http_url,
    }
    env.pop("DJANGO_SETTINGS_MODULE", None)
    process = await asyncio.create_subprocess_exec(
        sys.executable, "manage.py", "replay", *window(migrated), "--speed", "60/s",
        "--no-progress", cwd=ROOT, env=env, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    assert process.stdout is not None
    first = (await asyncio.wait_for(process.stdout.readline(), timeout=60)).decode()
    job = first.split("replay ")[1].split()[0]
    deadline = asyncio.get_running_loop().time() + 30
    while len(migrated.sink.pushes) < N // 3:
        assert asyncio.get_running_loop().time() < deadline, first
        await asyncio.sleep(0.05)
    process.kill()  # SIGKILL, mid-replay
    await process.wait()
    assert len(migrated.sink.pushes) < N

    code, output = await manage(tmp_path, migrated, "replay", "--resume", job, "--no-progress")
    assert code == 0, output
    assert f"completed  sent {N}/{N}" in output
    await migrated.sink.wait_for(N)
    await asyncio.sleep(1.0)
    originals = sorted(p.attributes["replayoriginalid"] for p in migrated.sink.pushes)
    assert originals == sorted(f"o-{n:03d}" for n in range(N))  # each exactly once
