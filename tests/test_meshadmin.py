"""The Django project boots: settings import, system checks pass, migrations apply."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.meshes import ROOT


def _manage(*args: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MESHTAP_VAR_DIR": str(tmp_path), "DJANGO_SETTINGS_MODULE": ""}
    env.pop("DJANGO_SETTINGS_MODULE")
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_system_checks_pass(tmp_path: Path) -> None:
    result = _manage("check", tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "no issues" in result.stdout


def test_migrations_apply_to_a_fresh_database(tmp_path: Path) -> None:
    result = _manage("migrate", "--noinput", tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "meshadmin.sqlite3").exists()
