"""Meshtap's ClickHouse store: one client for every statement, the schema's migrations, and
retention.

* :class:`ClickHouse` -- the one entry point (``ClickHouse.open(url)``), over a ClickHouse
  server (``clickhouse://host:9000/meshtap``) or chDB in this process (``chdb:///dir``);
  :class:`Purpose` picks per-call settings and timeouts; :func:`suppress_tracing` keeps a
  block's calls out of the traces.
* :func:`plan`, :func:`migrate`, :func:`check` -- the numbered migrations in
  ``tracing/migrations`` (``python manage.py migrate_clickhouse``).
* :func:`drop_partitions_older_than` -- retention by daily partitions (and
  :func:`partitions_older_than`, what it would drop).

Errors (see ``_errors``)::

    ClickhouseError
    ├── ClickhouseUnavailable     retry later (the recorder spools)
    ├── ClickhouseQueryError      the statement was refused; .code
    ├── ClickhouseUsageError      the call is wrong; nothing was sent (also a ValueError)
    └── SchemaNotMigrated         run `python manage.py migrate_clickhouse`
"""

from __future__ import annotations

from tracing.clickhouse._backends import Purpose
from tracing.clickhouse._client import ClickHouse, suppress_tracing
from tracing.clickhouse._errors import (
    ClickhouseError,
    ClickhouseQueryError,
    ClickhouseUnavailable,
    ClickhouseUsageError,
    SchemaNotMigrated,
)
from tracing.clickhouse._migrate import Migration, Operation, all_migrations, check, migrate, plan
from tracing.clickhouse._retention import drop_partitions_older_than, partitions_older_than
from tracing.clickhouse._schema import DATABASE, INSERT_TABLES, TABLES

__all__ = [
    "DATABASE",
    "INSERT_TABLES",
    "TABLES",
    "ClickHouse",
    "ClickhouseError",
    "ClickhouseQueryError",
    "ClickhouseUnavailable",
    "ClickhouseUsageError",
    "Migration",
    "Operation",
    "Purpose",
    "SchemaNotMigrated",
    "all_migrations",
    "check",
    "drop_partitions_older_than",
    "migrate",
    "partitions_older_than",
    "plan",
    "suppress_tracing",
]
