"""Meshtap's numbered ClickHouse migrations.

Each migration is a module ``mNNNN_<name>.py`` here: a docstring saying what it does and why,
and ``OPERATIONS``, a list of SQL constants run in order. An operation may instead be a
``tracing.clickhouse.Operation(sql, min_version=(22, 8))``, an *additive* extra (a skip index,
a compatibility view) that only runs on servers at least that new and is skipped elsewhere.

Rules, so that a migration can be re-run after a crash half-way and runs unchanged on
ClickHouse 18.16 and on chDB: every statement is idempotent (``CREATE ... IF NOT EXISTS``,
``ADD COLUMN IF NOT EXISTS``), names tables in full (``meshtap.events``), uses nothing 18.16
lacks, and carries a comment by every ``ORDER BY`` / ``PARTITION BY`` naming the queries it
serves. Numbers are contiguous from 0001; a shipped migration is never edited -- add the next.

Applied state lives in ``meshtap.schema_migrations``; ``python manage.py migrate_clickhouse``
applies what is pending (``--plan`` lists it, ``--check`` fails if anything is).
"""
