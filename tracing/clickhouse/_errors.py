"""Errors of the ClickHouse store.

Every failure of a ClickHouse call is one of these, with the driver's or chDB's own exception
chained (``raise ... from e``), so callers branch on *what to do* rather than on which backend
they happen to run::

    ClickhouseError                 anything the ClickHouse store raises on purpose
    ├── ClickhouseUnavailable       cannot reach ClickHouse right now (server down, network, chDB
    │                               data directory held by another process): retry later; the
    │                               recorder spools on this one
    ├── ClickhouseQueryError        ClickHouse refused or failed the statement (syntax, unknown
    │                               column, type mismatch, timeout); ``.code`` is ClickHouse's
    │                               error code. Retrying the same statement will not help.
    ├── ClickhouseUsageError        the call itself is wrong and nothing was sent: bad URL, table
    │   (also a ValueError)         not in the allow-list, bad or missing query parameter,
    │                               client already closed
    └── SchemaNotMigrated           migrations are pending; run ``python manage.py
                                    migrate_clickhouse``
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = [
    "ClickhouseError",
    "ClickhouseQueryError",
    "ClickhouseUnavailable",
    "ClickhouseUsageError",
    "SchemaNotMigrated",
]


class ClickhouseError(Exception):
    """Base class of every error the ClickHouse store raises on purpose."""


class ClickhouseUnavailable(ClickhouseError):
    """ClickHouse cannot be reached now. Nothing is wrong with the statement: retry later."""


class ClickhouseQueryError(ClickhouseError):
    """ClickHouse refused or failed the statement; ``code`` is its error code (0 if unknown)."""

    def __init__(self, message: str, *, code: int = 0) -> None:
        super().__init__(message)
        self.code = code


class ClickhouseUsageError(ClickhouseError, ValueError):
    """The call is wrong before anything reaches ClickHouse (a programming or config error)."""


class SchemaNotMigrated(ClickhouseError):
    """The store's schema lacks migrations this code needs.

    ``pending`` names them (``m0001_initial`` ...); the message says which command applies them.
    """

    def __init__(self, message: str, *, pending: Sequence[str]) -> None:
        super().__init__(message)
        self.pending = tuple(pending)
