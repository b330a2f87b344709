"""The one way into ClickHouse: :class:`ClickHouse`, opened from a URL.

Every statement Meshtap sends -- recorder inserts, span exports, searches, migrations,
retention -- goes through :meth:`ClickHouse.execute` or :meth:`ClickHouse.insert`, so these
things are decided here once and nowhere else:

* **the engine**: ``clickhouse://[user[:password]@]host[:port]/meshtap`` is a ClickHouse server
  over the native protocol (clickhouse-driver); ``chdb:///absolute/dir`` is chDB, ClickHouse
  in this process with its data in that directory (one process per directory);
* **per-purpose settings and timeouts** (:class:`Purpose`): inserts, interactive queries and
  migrations get their own ``max_execution_time`` and socket timeout, and their own connection;
* **parameters**: queries are constants with ``%(name)s`` placeholders, rendered by one function
  for both engines (``_sql.render``); table names only from the schema's allow-list;
* **one result shape** for both engines (``list[tuple]``; strings ``str`` unless asked for as
  ``bytes``; ``DateTime`` as aware UTC ``datetime``);
* **an OpenTelemetry span** per call (``db.system=clickhouse``, operation, purpose, rows read),
  left out while instrumentation is suppressed -- which the OTel SDK does around every export, so
  the span exporter's own inserts never make spans about themselves -- or for a client opened
  with ``traced=False``;
* **errors**: driver and chDB exceptions become the store's (``_errors``), chained with ``from``.

Usage::

    with ClickHouse.open("clickhouse://127.0.0.1:9000/meshtap") as ch:
        ch.insert("events", ["event_id", "topic"], [["e-1", "e-2"], ["orders", "orders"]])
        rows = ch.execute(EVENTS_OF_TOPIC, {"topic": "orders"}, purpose=Purpose.QUERY)
"""

from __future__ import annotations

import contextlib
import re
import threading
from collections.abc import Collection, Iterator, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Self
from urllib.parse import unquote, urlsplit

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import _SUPPRESS_INSTRUMENTATION_KEY
from opentelemetry.trace import Span, SpanKind, TracerProvider

from tracing.clickhouse._backends import Backend, ChdbBackend, Purpose, ServerBackend
from tracing.clickhouse._codec import result_converter
from tracing.clickhouse._errors import (
    ClickhouseError,
    ClickhouseQueryError,
    ClickhouseUsageError,
)
from tracing.clickhouse._schema import DATABASE, INSERT_TABLES
from tracing.clickhouse._sql import render

__all__ = ["ClickHouse", "Purpose", "suppress_tracing"]

_DEFAULT_NATIVE_PORT = 9000

_COLUMNS_OF_TABLE = """
SELECT name, type
FROM system.columns
WHERE database = %(database)s AND table = %(table)s
"""

_PING = "SELECT 1"

_LEADING_NOISE = re.compile(r"^(?:\s+|--[^\n]*\n?|/\*.*?\*/|\()*", re.DOTALL)


@contextlib.contextmanager
def suppress_tracing() -> Iterator[None]:
    """Make ClickHouse calls in this block (this thread/task) without spans.

    Sets OpenTelemetry's ``suppress_instrumentation`` context key, the one the SDK's span
    processors set around ``export()``: a writer that stores spans or telemetry in ClickHouse
    wraps its writes in this so they do not make spans about themselves.
    """
    token = otel_context.attach(otel_context.set_value(_SUPPRESS_INSTRUMENTATION_KEY, True))
    try:
        yield
    finally:
        otel_context.detach(token)


class ClickHouse:
    """A connection to Meshtap's ClickHouse store (server or chDB); see the module docstring.

    Thread-safe: each purpose has its own connection and lock. Connections open lazily, so
    opening never fails because the server is down -- the first call does (with
    :class:`ClickhouseUnavailable`), and later calls reconnect by themselves.
    """

    def __init__(
        self,
        backend: Backend,
        *,
        url: str,
        tracer_provider: TracerProvider | None = None,
        traced: bool = True,
    ) -> None:
        self._backend = backend
        self.url = url
        """The URL it was opened with, password removed."""
        self.backend = backend.kind
        """``server`` or ``chdb``."""
        self._tracer = trace.get_tracer(__name__, tracer_provider=tracer_provider)
        self._traced = traced
        self._column_types: dict[str, dict[str, str]] = {}
        self._closed = False
        self._close_lock = threading.Lock()

    @classmethod
    def open(
        cls,
        url: str,
        *,
        connect_timeout: float = 2.0,
        tracer_provider: TracerProvider | None = None,
        traced: bool = True,
    ) -> ClickHouse:
        """A client for ``url``: ``clickhouse://[user[:password]@]host[:port]/meshtap`` or
        ``chdb:///absolute/dir``.

        ``connect_timeout`` bounds how long a call waits to reach a server (seconds).
        ``tracer_provider`` is where spans go (default: the global one); ``traced=False``
        makes no spans at all (for the span exporter's own client).
        Raises :class:`ClickhouseUsageError` for a URL it cannot use; does not connect.
        """
        backend, safe_url = _backend_for(url, connect_timeout=connect_timeout)
        return cls(backend, url=safe_url, tracer_provider=tracer_provider, traced=traced)

    def __repr__(self) -> str:
        return f"<ClickHouse {self.url}>"

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- the calls

    def execute(
        self,
        query: str,
        params: Mapping[str, Any] | None = None,
        *,
        purpose: Purpose,
        bytes_columns: Collection[str] = (),
    ) -> list[tuple[Any, ...]]:
        """Run one statement (a read or DDL) and return its rows.

        ``query`` is a SQL constant with ``%(name)s`` placeholders (``%%`` for a literal
        ``%``), ``params`` their values. Result values: ``String`` as ``str`` (UTF-8; bytes
        that are not are replaced by U+FFFD) except the columns named in ``bytes_columns``,
        which come back as byte-exact ``bytes``; ``DateTime`` as aware UTC ``datetime``;
        arrays as ``list``; numbers as ``int``/``float``.

        Raises :class:`ClickhouseUnavailable`, :class:`ClickhouseQueryError` or
        :class:`ClickhouseUsageError`.
        """
        self._check_open()
        sql = render(query, params)
        operation = _operation_of(query)
        attributes: dict[str, Any] = {
            "db.operation.name": operation,
            "db.query.text": query.strip(),  # the constant: placeholders, never values
        }
        with self._span(f"{operation} {DATABASE}", purpose, attributes) as span:
            result = self._backend.query(sql, purpose)
            convert = result_converter(
                result.names,
                result.types,
                bytes_columns=bytes_columns,
                server_tz=result.server_timezone,
            )
            rows = convert(result.rows)
            if span is not None:
                span.set_attribute("db.response.returned_rows", len(rows))
                span.set_attribute("meshtap.clickhouse.read_rows", result.read_rows)
        if purpose is Purpose.MIGRATE:
            self._column_types.clear()  # the schema may have changed
        return rows

    def insert(
        self,
        table: str,
        columns: Sequence[str],
        rows_by_column: Sequence[Sequence[Any]],
    ) -> int:
        """Append rows to ``table``, given column by column; returns the number of rows.

        ``rows_by_column[i]`` holds the values of ``columns[i]``, all of equal length. Values:
        ``str`` or ``bytes`` for ``String`` (bytes byte-exact), ``int`` for integers,
        ``list`` for arrays, aware ``datetime`` or epoch seconds for ``DateTime``. Columns
        left out get their defaults ('' / 0 / []).

        Only the tables recorders write (``events``, ``deliveries``, ``spans``,
        ``schema_migrations``) are accepted; the ``*_by_trace`` tables are filled by
        materialized views.
        """
        self._check_open()
        columns = list(columns)
        _check_insert_shape(table, columns, rows_by_column)
        rows = len(rows_by_column[0])
        if rows == 0:
            return 0
        attributes: dict[str, Any] = {
            "db.operation.name": "INSERT",
            "db.collection.name": table,
            "db.operation.batch.size": rows,
        }
        with self._span(f"INSERT {DATABASE}.{table}", Purpose.INSERT, attributes):
            types = self._types_of(table)
            if any(c not in types for c in columns):
                self._column_types.pop(table, None)  # migrated meanwhile by another process?
                types = self._types_of(table)
            unknown = [c for c in columns if c not in types]
            if unknown:
                raise ClickhouseUsageError(
                    f"{DATABASE}.{table} has no column(s) {unknown}; its columns are "
                    f"{sorted(types)}"
                )
            prepared = [
                (name, types[name], _prepare_column(name, types[name], values))
                for name, values in zip(columns, rows_by_column, strict=True)
            ]
            return self._backend.insert(table, prepared, Purpose.INSERT)

    def ping(self) -> None:
        """Check that ClickHouse answers; raises :class:`ClickhouseUnavailable` if not."""
        self.execute(_PING, purpose=Purpose.QUERY)

    def close(self) -> None:
        """Close the connections (for chDB: release the data directory). Idempotent."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        self._backend.close()

    # -- helpers

    def _check_open(self) -> None:
        if self._closed:
            raise ClickhouseUsageError(f"{self!r} is closed; open a new client")

    def _types_of(self, table: str) -> dict[str, str]:
        types = self._column_types.get(table)
        if types is None:
            result = self._backend.query(
                render(_COLUMNS_OF_TABLE, {"database": DATABASE, "table": table}), Purpose.QUERY
            )
            types = {_text(name): _text(type_) for name, type_ in result.rows}
            if not types:
                raise ClickhouseQueryError(
                    f"table {DATABASE}.{table} does not exist in {self._backend.description}; "
                    f"run `python manage.py migrate_clickhouse`",
                    code=60,
                )
            self._column_types[table] = types
        return types

    def _suppressed(self) -> bool:
        return not self._traced or bool(otel_context.get_value(_SUPPRESS_INSTRUMENTATION_KEY))

    @contextlib.contextmanager
    def _span(
        self, name: str, purpose: Purpose, attributes: dict[str, Any]
    ) -> Iterator[Span | None]:
        if self._suppressed():
            yield None
            return
        attributes = {
            "db.system": "clickhouse",
            "db.system.name": "clickhouse",
            "db.namespace": DATABASE,
            "meshtap.clickhouse.purpose": purpose.value,
            "meshtap.clickhouse.backend": self._backend.kind,
            **attributes,
        }
        if self._backend.address is not None:
            attributes["server.address"], attributes["server.port"] = self._backend.address
        with self._tracer.start_as_current_span(
            name, kind=SpanKind.CLIENT, attributes=attributes
        ) as span:
            try:
                yield span
            except ClickhouseError as e:
                span.set_attribute("error.type", type(e).__name__)
                raise


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _operation_of(query: str) -> str:
    """The statement's first keyword (SELECT, CREATE, ALTER ...), for span names."""
    rest = _LEADING_NOISE.sub("", query, count=1)
    match = re.match(r"[A-Za-z]+", rest)
    return match.group(0).upper() if match else "QUERY"


def _check_insert_shape(
    table: str, columns: Sequence[str], rows_by_column: Sequence[Sequence[Any]]
) -> None:
    if table not in INSERT_TABLES:
        raise ClickhouseUsageError(
            f"cannot insert into {table!r}: inserts go to {sorted(INSERT_TABLES)} "
            f"(the *_by_trace tables are filled by materialized views)"
        )
    if not columns:
        raise ClickhouseUsageError(f"insert into {table!r} names no columns")
    if len(set(columns)) != len(columns):
        raise ClickhouseUsageError(f"insert into {table!r} names a column twice: {columns}")
    if len(rows_by_column) != len(columns):
        raise ClickhouseUsageError(
            f"insert into {table!r}: {len(columns)} columns named but {len(rows_by_column)} "
            f"value lists given; pass one list of values per column"
        )
    lengths = {name: len(values) for name, values in zip(columns, rows_by_column, strict=True)}
    if len(set(lengths.values())) > 1:
        raise ClickhouseUsageError(
            f"insert into {table!r}: columns have different numbers of values {lengths}; "
            f"every column needs one value per row"
        )


def _prepare_column(name: str, type_text: str, values: Sequence[Any]) -> Sequence[Any]:
    """Values both backends write alike: DateTimes as epoch seconds, naive ones refused."""
    if not type_text.startswith("DateTime") or type_text.startswith("DateTime64"):
        return values
    prepared = []
    for value in values:
        if isinstance(value, datetime):
            if value.tzinfo is None or value.utcoffset() is None:
                raise ClickhouseUsageError(
                    f"column {name!r} got a naive datetime ({value.isoformat()}), which is "
                    f"ambiguous; pass a timezone-aware one or epoch seconds"
                )
            value = int(value.timestamp())
        prepared.append(value)
    return prepared


def _backend_for(url: str, *, connect_timeout: float) -> tuple[Backend, str]:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme == "chdb":
        if parts.netloc or not parts.path.startswith("/") or parts.query:
            raise ClickhouseUsageError(
                f"chDB URL {url!r} must name an absolute directory and nothing else: "
                f"chdb:///var/lib/meshtap/chdb (three slashes)"
            )
        path = Path(unquote(parts.path))
        return ChdbBackend(path), f"chdb://{path}"
    if scheme == "clickhouse":
        if not parts.hostname:
            raise ClickhouseUsageError(
                f"ClickHouse URL {url!r} names no host; write clickhouse://host:9000/{DATABASE}"
            )
        try:
            port = parts.port or _DEFAULT_NATIVE_PORT
        except ValueError as e:
            raise ClickhouseUsageError(
                f"ClickHouse URL {_without_password(url)!r} has a bad port: {e}"
            ) from e
        database = parts.path.strip("/")
        if database not in ("", DATABASE):
            raise ClickhouseUsageError(
                f"ClickHouse URL {_without_password(url)!r} names database {database!r}, but "
                f"Meshtap's schema lives in database {DATABASE!r}; use "
                f"clickhouse://{parts.hostname}:{port}/{DATABASE}"
            )
        if parts.query:
            raise ClickhouseUsageError(
                f"ClickHouse URL {_without_password(url)!r} has options ({parts.query!r}), "
                f"which Meshtap does not read; remove them"
            )
        backend = ServerBackend(
            parts.hostname,
            port,
            user=unquote(parts.username or "default"),
            password=unquote(parts.password or ""),
            connect_timeout=connect_timeout,
        )
        return backend, _without_password(url)
    raise ClickhouseUsageError(
        f"unsupported ClickHouse URL {_without_password(url)!r}: use "
        f"clickhouse://host:9000/{DATABASE} (a server) or chdb:///absolute/dir (embedded)"
    )


def _without_password(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return parts._replace(netloc=f"{user}:***@{netloc}").geturl()
