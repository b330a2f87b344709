"""The names in Meshtap's ClickHouse schema: the only identifiers that ever reach SQL text.

The tables themselves are created by the numbered migrations in ``tracing/migrations``; this
module is the allow-list the client checks table names against.
"""

from __future__ import annotations

__all__ = [
    "DATABASE",
    "INSERT_TABLES",
    "PARTITIONED_TABLES",
    "TABLES",
]

DATABASE = "meshtap"
"""Every Meshtap table lives here; SQL constants name tables as ``meshtap.<table>``."""

TABLES: frozenset[str] = frozenset(
    {
        "events",
        "deliveries",
        "spans",
        "spans_by_trace",
        "events_by_trace",
        "schema_migrations",
    }
)
"""Every table a query may name through :func:`tracing.clickhouse._sql.table_sql`."""

INSERT_TABLES: frozenset[str] = frozenset({"events", "deliveries", "spans", "schema_migrations"})
"""Tables :meth:`ClickHouse.insert` writes to. ``spans_by_trace`` and ``events_by_trace`` are
filled by materialized views; writing them directly would duplicate rows."""

PARTITIONED_TABLES: tuple[str, ...] = (
    "events",
    "deliveries",
    "spans",
    "spans_by_trace",
    "events_by_trace",
)
"""Tables with daily partitions (``toYYYYMMDD`` of their ``DateTime('UTC')`` column), which
retention drops whole."""
