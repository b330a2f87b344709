"""The two engines behind :class:`tracing.clickhouse.ClickHouse`: a server and chDB.

Both take SQL that is already rendered (``_sql.render``) and return raw results (strings as
``bytes``); both turn their own exceptions into the store's (``_errors``). Everything else --
spans, parameter rendering, result normalisation, insert checks -- is the client's, so it is
written once.

* :class:`ServerBackend`: clickhouse-server over the native protocol (clickhouse-driver). One
  driver ``Client`` (one TCP connection) per :class:`Purpose`, each with its own timeouts and
  settings and its own lock (a driver client is not thread-safe).
* :class:`ChdbBackend`: chDB, ClickHouse as a library in this process. One chDB connection per
  purpose, its settings in the connection string. chDB runs one data directory per process,
  and one process per data directory: see :class:`_ChdbEngine`.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import struct
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from tracing.clickhouse._codec import (
    UnsupportedType,
    decode_rowbinary,
    encode_native_block,
)
from tracing.clickhouse._errors import (
    ClickhouseError,
    ClickhouseQueryError,
    ClickhouseUnavailable,
    ClickhouseUsageError,
)
from tracing.clickhouse._schema import DATABASE

__all__ = ["Backend", "ChdbBackend", "Purpose", "RawResult", "ServerBackend"]


class Purpose(Enum):
    """Why a statement runs; decides its settings and timeouts (see ``_PURPOSE_SETTINGS``)."""

    INSERT = "insert"
    """Batched writes of the recorder and the span exporter."""
    QUERY = "query"
    """Reads: trace and event search, replay window selection, audits."""
    MIGRATE = "migrate"
    """Schema changes and housekeeping (migrations, retention)."""


@dataclass(frozen=True, slots=True)
class PurposeSettings:
    max_execution_time: int
    """Server-side limit per statement, seconds (0: none). Applies to reads and DDL."""
    socket_timeout: float
    """How long the driver waits for the server to answer, seconds. Above max_execution_time,
    so a slow query ends with ClickHouse's own 'timeout exceeded' rather than a dead socket."""


_PURPOSE_SETTINGS: dict[Purpose, PurposeSettings] = {
    # A batch insert is a fast write; a server that does not take it in 30 s is as good as down
    # for the recorder, which then spools.
    Purpose.INSERT: PurposeSettings(max_execution_time=30, socket_timeout=30.0),
    # Interactive reads: long enough for a day of traffic, short enough for a web request.
    Purpose.QUERY: PurposeSettings(max_execution_time=30, socket_timeout=45.0),
    # ALTERs and partition drops may wait on merges; they run from a command, not a request.
    Purpose.MIGRATE: PurposeSettings(max_execution_time=0, socket_timeout=600.0),
}

# ClickHouse error codes that say "not now" rather than "not this statement": retry later.
_TRANSIENT_CODES = frozenset(
    {
        202,  # TOO_MANY_SIMULTANEOUS_QUERIES
        209,  # SOCKET_TIMEOUT
        210,  # NETWORK_ERROR
        242,  # TABLE_IS_READ_ONLY
        252,  # TOO_MANY_PARTS
        319,  # UNKNOWN_STATUS_OF_INSERT
    }
)

# What to do about common errors, by ClickHouse error code.
_HINTS = {
    60: "the schema is missing a table: run `python manage.py migrate_clickhouse`",
    81: "the database is missing: run `python manage.py migrate_clickhouse`",
    62: "fix the SQL constant (syntax error)",
    47: "fix the SQL constant (unknown column or alias)",
    16: "the table has no such column: check the column list against the migrations",
    159: "the statement ran longer than max_execution_time allows for its purpose "
    "(tracing/clickhouse/_backends.py); narrow the time window or filters",
}


@dataclass(slots=True)
class RawResult:
    names: list[str] = field(default_factory=list)
    types: list[str] = field(default_factory=list)
    rows: list[tuple[Any, ...]] = field(default_factory=list)
    read_rows: int = 0
    server_timezone: str = "UTC"


class Backend:
    """What the client needs from an engine."""

    kind: str
    """``server`` or ``chdb`` (span attribute ``meshtap.clickhouse.backend``)."""
    description: str
    """Where it is, for messages: ``clickhouse-server at host:port``, ``chDB in /path``."""
    address: tuple[str, int] | None = None

    def query(self, sql: str, purpose: Purpose) -> RawResult:
        raise NotImplementedError

    def insert(
        self, table: str, columns: Sequence[tuple[str, str, Sequence[Any]]], purpose: Purpose
    ) -> int:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


def query_error(message: str, code: int, template: str) -> ClickhouseQueryError:
    hint = _HINTS.get(code, "fix the statement; retrying it unchanged will fail again")
    excerpt = " ".join(template.split())
    if len(excerpt) > 200:
        excerpt = excerpt[:200] + "..."
    return ClickhouseQueryError(
        f"ClickHouse refused the statement (code {code}): {message} -- {hint}. "
        f"Statement: {excerpt}",
        code=code,
    )


def _clean_server_message(message: str) -> str:
    """ClickHouse's message without the stack trace and the ``Code: N. DB::Exception:`` prefix."""
    message = message.split("Stack trace", 1)[0]
    message = re.sub(r"^\s*Code: \d+\.\s*", "", message)
    message = re.sub(r"^\s*DB::Exception:\s*", "", message)
    return " ".join(message.split()).rstrip(". ")


# --- clickhouse-server over the native protocol ---------------------------------------------


class _QuietReconnects(logging.Filter):
    """Drops clickhouse-driver's own warnings about a server it cannot reach -- a traceback per
    failed connect, a line per failed ping or lost connection -- which repeat on every retry
    while ClickHouse is down. The same failure reaches the caller as ``ClickhouseUnavailable``
    (which says what to check), and the capture logs it once when it starts spooling and then
    every minute."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(_DRIVER_NOISE)


_DRIVER_NOISE = ("Failed to connect", "Error on ", "Connection was closed")
_QUIET = _QuietReconnects()


def _quiet_driver_logs() -> None:
    logger = logging.getLogger("clickhouse_driver.connection")
    if _QUIET not in logger.filters:
        logger.addFilter(_QUIET)


class ServerBackend(Backend):
    kind = "server"

    def __init__(
        self,
        host: str,
        port: int,
        *,
        user: str,
        password: str,
        connect_timeout: float,
    ) -> None:
        self._host = host
        self._port = port
        self._user = user
        self._password = password
        self._connect_timeout = connect_timeout
        self._clients: dict[Purpose, Any] = {}
        self._locks = {purpose: threading.Lock() for purpose in Purpose}
        self.description = f"clickhouse-server at {host}:{port}"
        self.address = (host, port)
        _quiet_driver_logs()

    def _client(self, purpose: Purpose) -> Any:
        client = self._clients.get(purpose)
        if client is None:
            from clickhouse_driver import Client

            settings = _PURPOSE_SETTINGS[purpose]
            client = Client(
                self._host,
                port=self._port,
                database="default",  # `meshtap` may not exist yet; SQL names it in full
                user=self._user,
                password=self._password,
                client_name="meshtap",
                connect_timeout=self._connect_timeout,
                send_receive_timeout=settings.socket_timeout,
                sync_request_timeout=self._connect_timeout,
                settings={
                    # Strings come back as bytes, decoded (or not) in one place by the client;
                    # inserts take both str and bytes only with this off.
                    "strings_as_bytes": purpose is not Purpose.INSERT,
                    "max_execution_time": settings.max_execution_time,
                },
            )
            self._clients[purpose] = client
        return client

    def query(self, sql: str, purpose: Purpose) -> RawResult:
        with self._locks[purpose]:
            client = self._client(purpose)
            try:
                rows, columns = client.execute(sql, with_column_types=True)
            except Exception as e:
                wrapped = self._wrap(e, sql)
                if wrapped is None:
                    raise
                raise wrapped from e
            result = RawResult(
                names=[c[0] for c in columns],
                types=[c[1] for c in columns],
                rows=rows,
            )
            last = client.last_query
            if last is not None and last.progress is not None:
                result.read_rows = int(last.progress.rows)
            server_info = getattr(client.connection, "server_info", None)
            if server_info is not None:
                result.server_timezone = server_info.get_timezone() or "UTC"
            return result

    def insert(
        self, table: str, columns: Sequence[tuple[str, str, Sequence[Any]]], purpose: Purpose
    ) -> int:
        names = ", ".join(name for name, _, _ in columns)
        statement = f"INSERT INTO {DATABASE}.{table} ({names}) VALUES"
        data = [values for _, _, values in columns]
        from clickhouse_driver.errors import TypeMismatchError

        with self._locks[purpose]:
            client = self._client(purpose)
            try:
                written = client.execute(statement, data, columnar=True)
            except (
                TypeMismatchError,
                TypeError,
                ValueError,
                AttributeError,
                OverflowError,
                struct.error,
            ) as e:
                # Raised by the driver while serialising, before anything was committed.
                client.disconnect()
                raise ClickhouseUsageError(
                    f"rows for {DATABASE}.{table} do not fit its column types: "
                    f"{_clean_server_message(str(e))}; check the values given for columns "
                    f"{[n for n, _, _ in columns]}"
                ) from e
            except Exception as e:
                wrapped = self._wrap(e, statement)
                if wrapped is None:
                    raise
                raise wrapped from e
        return int(written)

    def _wrap(self, error: Exception, sql: str) -> ClickhouseError | None:
        """The store's error for a driver error; None for anything else (a bug: re-raise)."""
        from clickhouse_driver import errors

        if isinstance(error, errors.ServerException):
            code = int(error.code or 0)
            message = _clean_server_message(str(error.message))
            if code in _TRANSIENT_CODES:
                return ClickhouseUnavailable(
                    f"{self.description} cannot take the statement now (code {code}): "
                    f"{message}; retry later"
                )
            return query_error(message, code, sql)
        if isinstance(
            error,
            errors.NetworkError
            | errors.SocketTimeoutError
            | errors.UnexpectedPacketFromServerError
            | EOFError
            | OSError,
        ):
            return ClickhouseUnavailable(
                f"{self.description} is unavailable ({type(error).__name__}: "
                f"{_clean_server_message(str(error))}); check that the server runs and is "
                f"reachable, then retry"
            )
        if isinstance(error, errors.Error):
            code = int(getattr(error, "code", 0) or 0)
            return query_error(_clean_server_message(str(error)), code, sql)
        return None

    def close(self) -> None:
        for purpose in Purpose:
            with self._locks[purpose]:
                client = self._clients.pop(purpose, None)
                if client is not None:
                    client.disconnect()


# --- chDB -------------------------------------------------------------------------------------


class _ChdbEngine:
    """The process's one chDB engine, and the rules around it.

    chDB hosts one embedded ClickHouse per process, bound to one data directory, and ClickHouse
    locks that directory (its ``status`` file) so no second process can open it. chDB's own
    errors for both cases are terse ("Error initializing EmbeddedServer"), so this checks first
    and says what to do. Connections are counted: the engine shuts down, releasing the
    directory, when the last one closes.
    """

    _lock = threading.Lock()
    _path: Path | None = None
    _connections = 0

    @classmethod
    def connect(cls, path: Path, settings: PurposeSettings) -> Any:
        with cls._lock:
            if cls._path is not None and cls._path != path:
                raise ClickhouseUsageError(
                    f"this process already has chDB open on {cls._path}, so it cannot open "
                    f"{path}: chDB runs one data directory per process. Close every client of "
                    f"{cls._path} first, or point everything at one directory"
                )
            if cls._path is None:
                _claim_directory(path)
            import chdb

            connect: Any = chdb.connect  # untyped
            url = f"{path}?max_execution_time={settings.max_execution_time}"
            try:
                connection = connect(url)
            except Exception as e:
                raise ClickhouseUnavailable(
                    f"could not open chDB in {path}: {e}. chDB allows one process per data "
                    f"directory -- is another process using it? Check that the directory is "
                    f"writable"
                ) from e
            cls._path = path
            cls._connections += 1
            return connection

    @classmethod
    def release(cls, connection: Any) -> None:
        with cls._lock:
            try:
                connection.close()
            finally:
                cls._connections -= 1
                if cls._connections <= 0:
                    cls._connections = 0
                    cls._path = None


def _claim_directory(path: Path) -> None:
    """Fail with a clear message if another process holds chDB's lock on ``path``."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ClickhouseUnavailable(
            f"cannot create the chDB data directory {path}: {e}; fix its permissions or "
            f"choose another chdb:// path"
        ) from e
    status = path / "status"
    if not status.exists():
        return
    try:
        fd = os.open(status, os.O_RDONLY)
    except OSError:
        return  # let chDB report it
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _status_pid(status)
        if holder == os.getpid():
            return  # this process's engine (opened outside this module): chDB will share it
        raise ClickhouseUnavailable(
            f"the chDB data directory {path} is in use by another process"
            f"{f' (pid {holder})' if holder else ''}: chDB allows one process per data "
            f"directory. Stop that process, run everything in one process "
            f"(`python manage.py standalone`), or use a ClickHouse server "
            f"(clickhouse://host:9000/meshtap)"
        ) from None
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _status_pid(status: Path) -> int | None:
    try:
        match = re.search(r"PID:\s*(\d+)", status.read_text(errors="replace"))
    except OSError:
        return None
    return int(match.group(1)) if match else None


_CHDB_ERROR = re.compile(r"Code:\s*(\d+)\.")


def _chdb_errors() -> tuple[type[Exception], ...]:
    """What chDB raises: RuntimeError from the engine, ChdbError from its Python wrapper."""
    import chdb

    return (RuntimeError, chdb.ChdbError)


class ChdbBackend(Backend):
    kind = "chdb"

    def __init__(self, path: Path) -> None:
        if "?" in str(path):
            raise ClickhouseUsageError(
                f"chDB data directory {str(path)!r} contains '?', which chDB would read as "
                f"connection options; choose a path without it"
            )
        # Imported now, not at the first query: importing chdb briefly changes the process's
        # working directory, harmless while a program starts, surprising once it serves.
        import chdb  # noqa: F401

        self._path = path
        self._connections: dict[Purpose, Any] = {}
        self._locks = {purpose: threading.Lock() for purpose in Purpose}
        self._closed = False
        self.description = f"chDB in {path}"

    def _connection(self, purpose: Purpose) -> Any:
        if self._closed:  # a closed chDB connection must never be touched (it can crash)
            raise ClickhouseUsageError(f"the ClickHouse client of {self.description} is closed")
        connection = self._connections.get(purpose)
        if connection is None:
            connection = _ChdbEngine.connect(self._path, _PURPOSE_SETTINGS[purpose])
            self._connections[purpose] = connection
        return connection

    def query(self, sql: str, purpose: Purpose) -> RawResult:
        with self._locks[purpose]:
            connection = self._connection(purpose)
            try:
                result = connection.query(sql, "RowBinaryWithNamesAndTypes")
                names, types, rows = decode_rowbinary(result.bytes())
            except UnsupportedType as e:
                raise ClickhouseUsageError(
                    f"{e}; cast the column in the query (e.g. toString(x))"
                ) from e
            except _chdb_errors() as e:
                self._replace(purpose)
                raise self._wrap(e, sql) from e
            except (struct.error, IndexError, UnicodeDecodeError) as e:
                self._replace(purpose)
                raise ClickhouseQueryError(
                    f"{self.description} returned a result that does not decode ({e}); the "
                    f"connection was replaced, retry the statement"
                ) from e
            # storage_rows_read: rows read from tables (rows_read counts result rows).
            return RawResult(names, types, rows, read_rows=int(result.storage_rows_read()))

    def insert(
        self, table: str, columns: Sequence[tuple[str, str, Sequence[Any]]], purpose: Purpose
    ) -> int:
        try:
            block = encode_native_block(columns)
        except UnsupportedType as e:
            raise ClickhouseUsageError(f"cannot write {DATABASE}.{table}: {e}") from e
        except (TypeError, ValueError, OverflowError, struct.error) as e:
            raise ClickhouseUsageError(
                f"rows for {DATABASE}.{table} do not fit its column types: {e}"
            ) from e
        names = ", ".join(name for name, _, _ in columns)
        statement = f"INSERT INTO {DATABASE}.{table} ({names})"
        with self._locks[purpose]:
            connection = self._connection(purpose)
            try:
                inserter = connection.send_insert(statement, "Native")
            except _chdb_errors() as e:
                self._replace(purpose)
                raise self._wrap(e, statement) from e
            try:
                inserter.append(block)
                inserter.finish()
            except _chdb_errors() as e:
                with contextlib.suppress(*_chdb_errors()):  # the first error is the one to report
                    inserter.cancel()
                self._replace(purpose)
                raise self._wrap(e, statement) from e
        return len(columns[0][2]) if columns else 0

    def _replace(self, purpose: Purpose) -> None:
        """Swap the purpose's connection for a new one after an error.

        chDB (4.x) leaves the part of a failed query's output already written -- e.g. the
        RowBinary header of a query that timed out -- in the connection's buffer, and hands it
        out in front of the next query's result. A new connection starts clean; it is opened
        before the old one closes so the engine (and the directory lock) stays up.
        """
        old = self._connections.pop(purpose, None)
        try:
            self._connection(purpose)
        except ClickhouseError:
            pass  # the next call tries again and reports it
        finally:
            if old is not None:
                _ChdbEngine.release(old)

    def _wrap(self, error: Exception, sql: str) -> ClickhouseError:
        text = str(error)
        match = _CHDB_ERROR.search(text)
        code = int(match.group(1)) if match else 0
        message = _clean_server_message(text[match.start() :] if match else text)
        if code in _TRANSIENT_CODES:
            return ClickhouseUnavailable(
                f"{self.description} cannot take the statement now: {text}"
            )
        return query_error(message, code, sql)

    def close(self) -> None:
        self._closed = True
        for purpose in Purpose:
            with self._locks[purpose]:
                connection = self._connections.pop(purpose, None)
                if connection is not None:
                    _ChdbEngine.release(connection)
