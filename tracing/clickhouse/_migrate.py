"""The migration runner: which numbered migrations are pending, and applying them.

Migrations are the modules ``tracing/migrations/mNNNN_<name>.py`` (see that package's
docstring). Applied state is a ClickHouse table, ``meshtap.schema_migrations`` (id, name,
applied_at), so it lives and dies with the data it describes. Re-running is safe: applied
migrations are skipped, and every operation is idempotent, so a migration interrupted half-way
simply runs again. Two runners racing each other do the same work twice, harmlessly (the
table is a ReplacingMergeTree and reads are DISTINCT).
"""

from __future__ import annotations

import functools
import importlib
import logging
import pkgutil
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from tracing.clickhouse._backends import Purpose
from tracing.clickhouse._client import ClickHouse
from tracing.clickhouse._errors import SchemaNotMigrated
from tracing.clickhouse._schema import DATABASE

__all__ = ["Migration", "Operation", "all_migrations", "check", "migrate", "plan"]

log = logging.getLogger(__name__)

MIGRATIONS_PACKAGE = "tracing.migrations"
COMMAND = "python manage.py migrate_clickhouse"

_CREATE_DATABASE = f"CREATE DATABASE IF NOT EXISTS {DATABASE}"

_CREATE_SCHEMA_MIGRATIONS = """
CREATE TABLE IF NOT EXISTS meshtap.schema_migrations
(
    id UInt32,
    name String,
    applied_at DateTime('UTC')
)
ENGINE = ReplacingMergeTree
-- "Which migrations are applied": a handful of rows, read whole; the key dedupes reruns.
ORDER BY id
"""

_SCHEMA_MIGRATIONS_EXISTS = """
SELECT count()
FROM system.tables
WHERE database = %(database)s AND name = 'schema_migrations'
"""

_APPLIED_IDS = "SELECT DISTINCT id FROM meshtap.schema_migrations"

_SERVER_VERSION = "SELECT version()"

_MODULE_NAME = re.compile(r"^m(\d{4})_([a-z0-9_]+)$")


@dataclass(frozen=True, slots=True)
class Operation:
    """One statement of a migration; ``min_version`` gates an additive extra to servers at
    least that new (``(22, 8)``), skipped -- and logged -- on older ones."""

    sql: str
    min_version: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class Migration:
    id: int
    name: str
    """The module's name after the number: ``initial`` for ``m0001_initial``."""
    summary: str
    """The first line of the module's docstring."""
    operations: tuple[Operation, ...] = field(repr=False)

    @property
    def label(self) -> str:
        """``m0001_initial``: how commands and messages name it."""
        return f"m{self.id:04d}_{self.name}"


@functools.cache
def all_migrations() -> tuple[Migration, ...]:
    """Every migration in ``tracing/migrations``, in order. Checks the numbering is 1..N."""
    package = importlib.import_module(MIGRATIONS_PACKAGE)
    found: list[Migration] = []
    for info in pkgutil.iter_modules(package.__path__):
        match = _MODULE_NAME.match(info.name)
        if match is None:
            continue
        module = importlib.import_module(f"{MIGRATIONS_PACKAGE}.{info.name}")
        operations = getattr(module, "OPERATIONS", None)
        if not isinstance(operations, list) or not operations:
            raise TypeError(f"migration {info.name} has no OPERATIONS list")
        ops = []
        for op in operations:
            if isinstance(op, str):
                ops.append(Operation(op))
            elif isinstance(op, Operation):
                ops.append(op)
            else:
                raise TypeError(f"migration {info.name}: operation {op!r} is not SQL")
        doc = (module.__doc__ or "").strip()
        if not doc:
            raise TypeError(f"migration {info.name} has no docstring saying what it does")
        found.append(
            Migration(int(match.group(1)), match.group(2), doc.splitlines()[0], tuple(ops))
        )
    found.sort(key=lambda m: m.id)
    numbers = [m.id for m in found]
    if numbers != list(range(1, len(found) + 1)):
        raise TypeError(f"migrations must be numbered 1..N without gaps or twins: {numbers}")
    return tuple(found)


def _applied_ids(client: ClickHouse) -> set[int]:
    exists = client.execute(
        _SCHEMA_MIGRATIONS_EXISTS, {"database": DATABASE}, purpose=Purpose.MIGRATE
    )
    if not exists or not exists[0][0]:
        return set()
    return {int(row[0]) for row in client.execute(_APPLIED_IDS, purpose=Purpose.MIGRATE)}


def plan(client: ClickHouse) -> list[Migration]:
    """The migrations not yet applied to ``client``'s store, in the order they would run.

    Reads only: neither the database nor the bookkeeping table is created.
    """
    applied = _applied_ids(client)
    return [m for m in all_migrations() if m.id not in applied]


def check(client: ClickHouse) -> None:
    """Raise :class:`SchemaNotMigrated`, naming what is pending and the command that applies
    it, unless the store is fully migrated."""
    pending = plan(client)
    if pending:
        labels = [m.label for m in pending]
        raise SchemaNotMigrated(
            f"the ClickHouse schema at {client.url} is not migrated: pending "
            f"{', '.join(labels)}. Run `{COMMAND} --url {client.url}` (or `{COMMAND}` for "
            f"the configured MESHTAP_CLICKHOUSE_URL)",
            pending=labels,
        )


def migrate(client: ClickHouse) -> list[Migration]:
    """Create the database if missing and apply every pending migration, in order.

    Returns what it applied (empty when there was nothing to do).
    """
    client.execute(_CREATE_DATABASE, purpose=Purpose.MIGRATE)
    client.execute(_CREATE_SCHEMA_MIGRATIONS, purpose=Purpose.MIGRATE)
    pending = plan(client)
    if not pending:
        return []
    version = _server_version(client)
    applied: list[Migration] = []
    for migration in pending:
        for op in migration.operations:
            if op.min_version and version < op.min_version:
                log.info(
                    "%s: skipping an operation that needs ClickHouse %s (this is %s)",
                    migration.label,
                    ".".join(map(str, op.min_version)),
                    ".".join(map(str, version)),
                )
                continue
            client.execute(op.sql, purpose=Purpose.MIGRATE)
        client.insert(
            "schema_migrations",
            ["id", "name", "applied_at"],
            [[migration.id], [migration.name], [datetime.now(UTC)]],
        )
        log.info("applied ClickHouse migration %s", migration.label)
        applied.append(migration)
    return applied


def _server_version(client: ClickHouse) -> tuple[int, ...]:
    rows = client.execute(_SERVER_VERSION, purpose=Purpose.MIGRATE)
    return parse_version(str(rows[0][0]))


def parse_version(text: str) -> tuple[int, ...]:
    """``"18.16.1"`` → ``(18, 16, 1)``; the leading numeric fields only."""
    parts: Sequence[str] = re.findall(r"\d+", text.split("-")[0])
    return tuple(int(p) for p in parts)
