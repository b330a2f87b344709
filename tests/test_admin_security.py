"""Web admin security: the production settings pass `check --deploy`, and every replay start
or resume leaves an audit entry of who replayed what where."""

from __future__ import annotations

import getpass
import os
import secrets
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from tests.meshes import ROOT, free_port
from tests.test_replay_command import manage, migrated, window
from tests.test_replay_run import N, Recorded, recorded

__all__ = ["migrated", "recorded"]  # fixtures


def check_deploy(tmp_path: Path, module: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={
            **{k: v for k, v in os.environ.items() if not k.startswith("DJANGO_")},
            "DJANGO_SETTINGS_MODULE": module,
            "MESHTAP_VAR_DIR": str(tmp_path),
            **env,
        },
    )


def test_production_settings_pass_check_deploy(tmp_path: Path) -> None:
    key = secrets.token_urlsafe(50)
    result = check_deploy(tmp_path, "meshadmin.settings.production", DJANGO_SECRET_KEY=key)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout
    # The development settings do not: the check is real.
    result = check_deploy(tmp_path, "meshadmin.settings")
    assert result.returncode != 0
    assert "SECURE_HSTS_SECONDS" in result.stderr + result.stdout


def test_production_settings_demand_a_real_secret_key(tmp_path: Path) -> None:
    result = check_deploy(tmp_path, "meshadmin.settings.production")
    assert result.returncode != 0
    assert "DJANGO_SECRET_KEY must be set to 50 or more random characters" in result.stderr
    weak = check_deploy(
        tmp_path, "meshadmin.settings.production", DJANGO_SECRET_KEY="meshtap-insecure" + "x" * 60
    )
    assert weak.returncode != 0


def audit_rows(tmp_path: Path) -> list[tuple[str, str, str, str, str, str]]:
    with sqlite3.connect(tmp_path / "meshadmin.sqlite3") as db:
        return db.execute(
            "SELECT actor, action, replay_id, target_url, topics, since "
            "FROM meshadmin_replayauditentry ORDER BY id"
        ).fetchall()


@pytest.mark.clickhouse
async def test_replay_start_and_resume_are_audited(migrated: Recorded, tmp_path: Path) -> None:
    down = f"http://127.0.0.1:{free_port()}"
    code, output = await manage(
        tmp_path, migrated, "replay", *window(migrated), "--speed", "max", "--target", down
    )
    assert code == 1, output
    resume = output.split("--resume ")[1].split()[0]
    target = migrated.runtime.http_url
    code, output = await manage(
        tmp_path, migrated, "replay", "--resume", resume, "--target", target
    )
    assert code == 0, output
    assert len(await migrated.sink.wait_for(N)) == N
    rows = audit_rows(tmp_path)
    user = getpass.getuser()
    assert [(r[0], r[1], r[3]) for r in rows] == [(user, "start", down), (user, "resume", target)]
    assert rows[0][2] == rows[1][2]
    assert rows[0][2].startswith("r-")
    assert rows[0][4] == '["orders.#"]'
    assert rows[0][5] == migrated.since.isoformat()
