"""Retention: drop whole daily partitions once they are older than N days.

Why partitions and not TTL: ClickHouse 18.16 has no TTL, and dropping a partition is a
metadata operation that frees a day of data at once, without rewriting anything. Every capture
table is partitioned by ``toYYYYMMDD(<DateTime('UTC') column>)``, so a partition id is the UTC
day it holds (``20240131``).
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

from tracing.clickhouse._backends import Purpose
from tracing.clickhouse._client import ClickHouse
from tracing.clickhouse._errors import ClickhouseUsageError
from tracing.clickhouse._schema import DATABASE, PARTITIONED_TABLES
from tracing.clickhouse._sql import table_sql

__all__ = ["drop_partitions_older_than", "partitions_older_than"]

_DAILY_PARTITIONS = """
SELECT DISTINCT table, partition_id
FROM system.parts
WHERE database = %(database)s AND active AND table IN %(tables)s
ORDER BY table, partition_id
"""

_DROP_PARTITION = "ALTER TABLE meshtap.{table} DROP PARTITION ID %(partition_id)s"


def drop_partitions_older_than(
    client: ClickHouse, days: int, *, today: date | None = None
) -> list[tuple[str, str]]:
    """Drop every daily partition of every capture table that ends more than ``days`` days
    before ``today`` (UTC), and return the ``(table, partition_id)`` pairs dropped.

    ``days=7`` keeps today and the 7 days before it. Partitions whose id is not a
    ``YYYYMMDD`` day are left alone.
    """
    dropped = partitions_older_than(client, days, today=today)
    for table, partition_id in dropped:
        client.execute(
            table_sql(_DROP_PARTITION, table),
            {"partition_id": partition_id},
            purpose=Purpose.MIGRATE,
        )
    return dropped


def partitions_older_than(
    client: ClickHouse, days: int, *, today: date | None = None
) -> list[tuple[str, str]]:
    """The ``(table, partition_id)`` pairs :func:`drop_partitions_older_than` would drop, left
    in place: the capture-health audit's "was retention applied" check."""
    if days < 0:
        raise ClickhouseUsageError(f"retention of {days} days: give a number of days >= 0")
    today = today or datetime.now(UTC).date()
    oldest_kept = today - timedelta(days=days)
    rows = client.execute(
        _DAILY_PARTITIONS,
        {"database": DATABASE, "tables": PARTITIONED_TABLES},
        purpose=Purpose.MIGRATE,
    )
    expired: list[tuple[str, str]] = []
    for table, partition_id in rows:
        day = _day_of(partition_id)
        if day is not None and day < oldest_kept:
            expired.append((table, partition_id))
    return expired


def _day_of(partition_id: str) -> date | None:
    if len(partition_id) != 8 or not partition_id.isdigit():
        return None
    try:
        return datetime.strptime(partition_id, "%Y%m%d").replace(tzinfo=UTC).date()
    except ValueError:
        return None
