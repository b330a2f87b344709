"""Numbered ClickHouse migrations: their rules, the runner on both engines, and the command.

The runner is exercised against clickhouse-server 18.16 and chDB alike (the schema must run
unchanged on both); ``python manage.py migrate_clickhouse`` runs as a real child process.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.servers import ClickHouseServer
from tracing.clickhouse import (
    ClickHouse,
    Migration,
    Operation,
    Purpose,
    SchemaNotMigrated,
    all_migrations,
    check,
    migrate,
    plan,
)
from tracing.clickhouse import _migrate as runner

ROOT = Path(__file__).resolve().parent.parent

# What 18.16 lacks (or what the design keeps out of the core schema).
FORBIDDEN_IN_CORE = [
    "DateTime64",
    "Map(",
    "LowCardinality",
    "TTL",
    "CODEC",
    "JSONExtract",
    "Nullable",
]

EXPECTED_TABLES = {
    "events",
    "deliveries",
    "spans",
    "spans_by_trace",
    "spans_by_trace_mv",
    "events_by_trace",
    "events_by_trace_mv",
    "schema_migrations",
}

_TABLES_IN_DATABASE = """
SELECT name, engine FROM system.tables WHERE database = 'meshtap' ORDER BY name
"""

_SCHEMA_MIGRATIONS_EXISTS = """
SELECT count() FROM system.tables WHERE database = 'meshtap' AND name = 'schema_migrations'
"""


@pytest.fixture(params=[pytest.param("server", marks=pytest.mark.clickhouse), "chdb"])
def client(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ClickHouse]:
    if request.param == "server":
        server: ClickHouseServer = request.getfixturevalue("clickhouse_server")
        url = server.url
    else:
        url = f"chdb://{tmp_path / 'chdb'}"
    with ClickHouse.open(url, traced=False) as opened:
        yield opened


# --- the migrations themselves ------------------------------------------------------------------


def test_migrations_are_numbered_and_described() -> None:
    migrations = all_migrations()
    assert [m.id for m in migrations] == list(range(1, len(migrations) + 1))
    assert migrations[0].label == "m0001_initial"
    for migration in migrations:
        assert migration.summary
        assert migration.operations


def test_every_order_by_and_partition_by_names_the_queries_it_serves() -> None:
    for migration in all_migrations():
        for op in migration.operations:
            lines = [line.strip() for line in op.sql.strip().splitlines()]
            for i, line in enumerate(lines):
                if re.match(r"(ORDER|PARTITION) BY\b", line):
                    assert lines[i - 1].startswith("--") if i else False, (
                        f"{migration.label}: `{line}` needs a comment above it naming the "
                        f"queries it serves"
                    )


def test_core_schema_uses_only_what_clickhouse_18_16_has() -> None:
    for migration in all_migrations():
        for op in migration.operations:
            if op.min_version:
                continue  # a version-gated extra may use newer features
            code = "\n".join(line.split("--", 1)[0] for line in op.sql.splitlines())
            for word in FORBIDDEN_IN_CORE:
                assert word not in code, f"{migration.label} uses {word}"
            assert "IF NOT EXISTS" in code, f"{migration.label}: every statement is idempotent"


def test_parse_version() -> None:
    assert runner.parse_version("18.16.1") == (18, 16, 1)
    assert runner.parse_version("26.9.2.1") == (26, 9, 2, 1)
    assert runner.parse_version("24.3.1.2672-lts") == (24, 3, 1, 2672)


# --- the runner, on both engines ----------------------------------------------------------------


def test_plan_and_check_on_an_empty_store(client: ClickHouse) -> None:
    pending = plan(client)
    assert [m.label for m in pending] == [m.label for m in all_migrations()]
    with pytest.raises(SchemaNotMigrated) as error:
        check(client)
    message = str(error.value)
    assert "m0001_initial" in message
    assert "python manage.py migrate_clickhouse" in message
    assert client.url in message
    assert error.value.pending == tuple(m.label for m in all_migrations())
    # plan and check only read.
    if client.backend == "server":
        assert client.execute(_SCHEMA_MIGRATIONS_EXISTS, purpose=Purpose.QUERY) == [(0,)]


def test_migrate_applies_everything_once_and_is_idempotent(client: ClickHouse) -> None:
    applied = migrate(client)
    assert [m.label for m in applied] == [m.label for m in all_migrations()]
    check(client)
    assert plan(client) == []
    assert migrate(client) == []  # again: nothing to do

    tables = dict(client.execute(_TABLES_IN_DATABASE, purpose=Purpose.QUERY))
    assert set(tables) == EXPECTED_TABLES
    assert tables["spans_by_trace_mv"] == "MaterializedView"
    assert tables["events"] == "MergeTree"
    rows = client.execute(
        "SELECT id, name FROM meshtap.schema_migrations ORDER BY id", purpose=Purpose.QUERY
    )
    assert rows == [(m.id, m.name) for m in all_migrations()]

    # Every operation is safe to run again, as after a crash half-way through a migration.
    [(version,)] = client.execute("SELECT version()", purpose=Purpose.QUERY)
    for migration in all_migrations():
        for op in migration.operations:
            if runner.parse_version(version) >= op.min_version:
                client.execute(op.sql, purpose=Purpose.MIGRATE)


def test_an_interrupted_migration_completes_on_the_next_run(client: ClickHouse) -> None:
    client.execute("CREATE DATABASE IF NOT EXISTS meshtap", purpose=Purpose.MIGRATE)
    first = all_migrations()[0]
    for op in first.operations[:2]:  # "crashed" after two statements, nothing recorded
        client.execute(op.sql, purpose=Purpose.MIGRATE)
    assert first in plan(client)
    assert first in migrate(client)
    check(client)


def test_the_schema_as_created(client: ClickHouse) -> None:
    migrate(client)
    [(events,)] = client.execute("SHOW CREATE TABLE meshtap.events", purpose=Purpose.QUERY)
    assert "PARTITION BY toYYYYMMDD(published_at)" in events
    assert "ORDER BY (topic, published_ns, event_id)" in events
    [(spans,)] = client.execute("SHOW CREATE TABLE meshtap.spans_by_trace", purpose=Purpose.QUERY)
    assert "ORDER BY (trace_id, start_ns)" in spans
    assert "index_granularity = 1024" in spans


def test_skip_indexes_exist_only_where_the_engine_has_them(client: ClickHouse) -> None:
    migrate(client)
    [(version,)] = client.execute("SELECT version()", purpose=Purpose.QUERY)
    [(spans,)] = client.execute("SHOW CREATE TABLE meshtap.spans", purpose=Purpose.QUERY)
    if runner.parse_version(version) >= (21, 8):
        indexes = client.execute(
            "SELECT name FROM system.data_skipping_indices WHERE database = 'meshtap' "
            "ORDER BY name",
            purpose=Purpose.QUERY,
        )
        assert indexes == [
            ("deliveries_outcome",),
            ("events_event_id",),
            ("spans_duration",),
            ("spans_status_code",),
        ]
        assert "INDEX spans_status_code status_code TYPE set(8) GRANULARITY 4" in spans
    else:
        assert "INDEX" not in spans
    # Recorded as applied either way, so `--check` passes on every engine.
    check(client)


def test_version_gated_operations_are_skipped_on_older_servers(
    client: ClickHouse, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = all_migrations()
    extra = Migration(
        id=len(real) + 1,
        name="future_extra",
        summary="an additive extra for servers that do not exist yet",
        operations=(
            Operation("THIS IS NOT SQL, SO RUNNING IT WOULD FAIL", min_version=(999,)),
            Operation("CREATE TABLE IF NOT EXISTS meshtap.extra (x UInt8) ENGINE = Memory"),
        ),
    )
    monkeypatch.setattr(runner, "all_migrations", lambda: (*real, extra))
    assert [m.label for m in migrate(client)][-1] == f"m{extra.id:04d}_future_extra"
    check(client)
    assert client.execute("SELECT count() FROM meshtap.extra", purpose=Purpose.QUERY) == [(0,)]


# --- python manage.py migrate_clickhouse --------------------------------------------------------


def _manage(*args: str, tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {**os.environ, "MESHTAP_VAR_DIR": str(tmp_path), **env}
    environ.pop("DJANGO_SETTINGS_MODULE", None)
    if "MESHTAP_CLICKHOUSE_URL" not in env:
        environ.pop("MESHTAP_CLICKHOUSE_URL", None)
    return subprocess.run(
        [sys.executable, "manage.py", "migrate_clickhouse", *args],
        cwd=ROOT,
        env=environ,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _command_lifecycle(url: str, tmp_path: Path) -> None:
    planned = _manage("--url", url, "--plan", tmp_path=tmp_path)
    assert planned.returncode == 0, planned.stderr
    assert "m0001_initial" in planned.stdout

    checked = _manage("--url", url, "--check", tmp_path=tmp_path)
    assert checked.returncode == 1
    assert "pending m0001_initial" in checked.stderr
    assert "python manage.py migrate_clickhouse" in checked.stderr

    applied = _manage("--url", url, tmp_path=tmp_path)
    assert applied.returncode == 0, applied.stderr
    assert "applied m0001_initial" in applied.stdout

    again = _manage("--url", url, tmp_path=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "No ClickHouse migrations to apply" in again.stdout

    checked = _manage("--url", url, "--check", tmp_path=tmp_path)
    assert checked.returncode == 0, checked.stderr
    assert "up to date" in checked.stdout

    planned = _manage("--url", url, "--plan", tmp_path=tmp_path)
    assert planned.returncode == 0
    assert "No pending ClickHouse migrations" in planned.stdout


def test_command_on_chdb(tmp_path: Path) -> None:
    _command_lifecycle(f"chdb://{tmp_path / 'chdb'}", tmp_path)


@pytest.mark.clickhouse
def test_command_on_the_server(clickhouse_server: ClickHouseServer, tmp_path: Path) -> None:
    _command_lifecycle(clickhouse_server.url, tmp_path)


def test_command_url_comes_from_settings(tmp_path: Path) -> None:
    result = _manage("--plan", tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"chdb://{tmp_path.resolve() / 'chdb'}" in result.stdout

    url = f"chdb://{tmp_path / 'elsewhere'}"
    result = _manage("--plan", tmp_path=tmp_path, MESHTAP_CLICKHOUSE_URL=url)
    assert result.returncode == 0, result.stderr
    assert url in result.stdout


def test_command_reports_errors_without_a_traceback(tmp_path: Path) -> None:
    result = _manage("--url", "mysql://x/meshtap", "--check", tmp_path=tmp_path)
    assert result.returncode == 1
    assert "unsupported ClickHouse URL" in result.stderr
    assert "Traceback" not in result.stderr

    # Nothing listens on port 1: unavailable, said plainly, quickly.
    result = _manage("--url", "clickhouse://127.0.0.1:1/meshtap", "--check", tmp_path=tmp_path)
    assert result.returncode == 1
    assert "clickhouse-server at 127.0.0.1:1 is unavailable" in result.stderr
    assert "Traceback" not in result.stderr

    result = _manage("--plan", "--check", tmp_path=tmp_path)
    assert result.returncode == 2
    assert "not allowed with argument" in result.stderr


def test_command_refuses_a_chdb_directory_this_process_holds(tmp_path: Path) -> None:
    url = f"chdb://{tmp_path / 'chdb'}"
    with ClickHouse.open(url, traced=False) as client:
        client.ping()
        result = _manage("--url", url, "--plan", tmp_path=tmp_path)
    assert result.returncode == 1
    assert f"in use by another process (pid {os.getpid()})" in result.stderr
    assert "Traceback" not in result.stderr
