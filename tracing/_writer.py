"""The batch writer: records in, columnar ClickHouse inserts out, a local spool in between when
ClickHouse is away. Generic over tables (a :class:`~tracing._rows.TableSpec` each).

Why one background thread: clickhouse-driver and chDB are synchronous, and the recorder is
called on the runtime's event loop, where nothing may wait for ClickHouse. So
:meth:`BatchWriter.submit` only appends records to a per-table buffer under a lock (a
microsecond per call, never I/O, never raises), and one thread does every conversion, insert,
query and file write:

* **Conversion on the writer thread.** ``submit`` takes records together with the pure
  function that turns one into a row (``_rows``); the thread converts a batch just before
  writing it. So the caller pays an append per call, not a conversion per record -- redacting
  a large JSON payload never runs on the event loop -- and a record that cannot be converted
  is counted and logged (reason ``unconvertible``), never raised to the caller.
* **Batches.** A table's buffer is written when it holds ``batch_rows`` rows (20,000), when its
  oldest row is ``max_age_s`` old (250 ms), on :meth:`~BatchWriter.flush` and on
  :meth:`~BatchWriter.close`; each batch is one columnar ``ClickHouse.insert``.
* **Spool.** When an insert raises :class:`ClickhouseUnavailable` (or the schema has gone
  missing), the batch is written to a file in the spool directory (format below) and retried
  later, oldest file first, with exponential backoff and jitter (0.2 s doubling to 5 s).
  While the backoff runs, new batches go straight to the spool; the next attempt -- a spooled
  batch or a fresh one -- is the probe. Close interrupts the backoff for one last attempt.
* **Exactly once.** A spooled batch may already be in ClickHouse, wholly or partly: the insert
  that "failed" may have timed out on the client after the server committed it, a batch that
  spans two days is two parts, and a crash between insert and unlink leaves the file behind.
  So before inserting a spooled batch the writer asks ClickHouse which of its keys exist
  (``TableSpec.lookup_sql``: events by topic + event_id + store_offset, deliveries by event_id +
  group_name + attempt + attempted_ns, spans by trace_id + span_id, each within the batch's
  time range and on a primary-key prefix), inserts only the missing rows, and only then
  deletes the file. The lookup and the insert are one thread's sequential calls and a file is
  replayed under an exclusive ``flock``, so two writers sharing a spool directory (a
  restarted process beside a slow old one) never replay the same file at once.
* **Hard bound.** Records in memory plus rows in the spool (rows a previous run left there
  included) never exceed ``max_buffered``;
  beyond it rows are dropped, counted in ``meshtap_capture_dropped_rows_total{table,reason}``
  and logged (at most every 10 s). Nothing accepted is lost otherwise: a batch ClickHouse
  refuses for good (a value it will not take) goes to ``<spool>/rejected/`` instead of being
  retried forever, counted as dropped with reason ``rejected``.

Spool file format, version 1. One file per batch, named
``<created_ns:020d>-<pid>-<seq:06d>.<table>.spool`` so that names sort oldest first; written to
a ``.tmp-`` file in the same directory, fsynced, renamed into place, and the directory fsynced,
so a file either exists whole or not at all. All integers little-endian::

    magic    8 bytes   89 4d 53 50 4f 4f 4c 0a  ("\\x89MSPOOL\\n")
    version  u16       1
    hlen     u32       length of the header
    header   hlen      UTF-8 JSON: {"table", "rows", "columns": [[name, kind], ...],
                       "lo_ns", "hi_ns", "created_ns", "writer"}
    columns  in header order, each by its kind:
             u   rows x u64
             s,b rows x u64 byte lengths, then the bytes, concatenated (s: UTF-8 text,
                 b: raw bytes -- event data survives byte for byte)
             as  rows x u64 element counts, then the elements as an s column
             au  rows x u64 element counts, then the elements as a u column
    crc32    u32       zlib.crc32 of every byte before it

A reader maps columns by name, so a file written before a column was added still replays
(the new column gets its default). A file with another version is left where it is (a newer
Meshtap wrote it); a file that fails its checksum moves to ``rejected/``.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import json
import logging
import math
import os
import random
import socket
import struct
import sys
import threading
import time
import zlib
from array import array
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from tracing._rows import Columns, Row, TableSpec, columns_of, rows_of
from tracing.clickhouse import (
    ClickHouse,
    ClickhouseError,
    ClickhouseQueryError,
    ClickhouseUnavailable,
    ClickhouseUsageError,
    Purpose,
    SchemaNotMigrated,
    suppress_tracing,
)

__all__ = [
    "SPOOL_VERSION",
    "BatchWriter",
    "CaptureMetrics",
    "SpoolBatch",
    "SpoolFormatError",
    "decode_spool",
    "encode_spool",
    "encode_spool_columns",
    "read_spool_header",
    "spooled_rows",
]

log = logging.getLogger("meshtap.capture")

SPOOL_MAGIC: Final = b"\x89MSPOOL\n"
SPOOL_VERSION: Final = 1
SPOOL_SUFFIX: Final = ".spool"
TEMP_PREFIX: Final = ".tmp-"
REJECTED_DIR: Final = "rejected"
_PREAMBLE = struct.Struct("<8sHI")
_CRC = struct.Struct("<I")
_U32_SECONDS: Final = (1 << 32) - 1
_NS: Final = 1_000_000_000

_BACKOFF_BASE_S: Final = 0.2
_BACKOFF_MAX_S: Final = 5.0
_REPLAY_SLICE_S: Final = 2.0
"""How long one go at the spool may run before fresh batches get their turn."""
_MAX_ATTEMPTS_REFUSED: Final = 3
"""A spooled batch ClickHouse refuses (not: cannot take now) this often goes to rejected/."""
_STALE_TEMP_S: Final = 600.0
_LOOKUP_CHARS: Final = 40_000
"""Budget of one key lookup's IN list: escaping may quadruple it, and ClickHouse reads at most
256 KiB of query text by default."""
_LOOKUP_VALUES: Final = 2_000
_MISSING_SCHEMA_CODES: Final = frozenset({60, 81})  # UNKNOWN_TABLE, UNKNOWN_DATABASE
_DROP_LOG_INTERVAL_S: Final = 10.0
_OUTAGE_LOG_INTERVAL_S: Final = 60.0

_INSERT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

_DROP_HINTS: Final = {
    "overflow": "memory and spool already hold max_buffered rows while ClickHouse is "
    "unreachable or slow; bring ClickHouse back or raise CaptureConfig.max_buffered",
    "rejected": "ClickHouse refused the batch for good; it was kept in the spool's rejected/ "
    "directory, see the error logged with it",
    "closed": "recorded after the capture was closed",
    "unconvertible": "the record could not be turned into a row (a bug: please report it with "
    "the logged traceback)",
    "spool_failed": "the spool directory could not be written while closing; check its "
    "permissions and free space",
}


# --- the spool format -------------------------------------------------------------------------


class SpoolFormatError(Exception):
    """A spool file that cannot be read: wrong magic, unknown version, bad checksum, truncated."""

    def __init__(self, message: str, *, version: int | None = None) -> None:
        super().__init__(message)
        self.version = version


@dataclass(frozen=True, slots=True)
class SpoolBatch:
    table: str
    rows: list[Row]
    created_ns: int


def _u64s(values: Iterable[int]) -> bytes:
    packed = array("Q", values)
    if sys.byteorder == "big":
        packed.byteswap()
    return packed.tobytes()


def _encode_blobs(values: Iterable[str | bytes], out: list[bytes]) -> None:
    raw = [v.encode("utf-8", "replace") if isinstance(v, str) else bytes(v) for v in values]
    out.append(_u64s([len(r) for r in raw]))
    out.append(b"".join(raw))


def _encode_column(kind: str, values: Sequence[Any], out: list[bytes]) -> None:
    if kind == "u":
        out.append(_u64s(values))
    elif kind in ("s", "b"):
        _encode_blobs(values, out)
    elif kind == "as":
        out.append(_u64s([len(v) for v in values]))
        _encode_blobs([x for v in values for x in v], out)
    elif kind == "au":
        out.append(_u64s([len(v) for v in values]))
        out.append(_u64s([x for v in values for x in v]))
    else:
        raise ValueError(f"unknown spool column kind {kind!r}")


def encode_spool(spec: TableSpec, rows: Sequence[Row], *, created_ns: int, writer: str) -> bytes:
    """One spool file's bytes for ``rows`` of ``spec``'s table (format in the module docstring)."""
    return encode_spool_columns(
        spec, columns_of(rows, len(spec.columns)), created_ns=created_ns, writer=writer
    )


def encode_spool_columns(
    spec: TableSpec, columns: Sequence[Sequence[Any]], *, created_ns: int, writer: str
) -> bytes:
    """:func:`encode_spool` for a batch given column by column."""
    times = columns[spec.time_index]
    header = {
        "table": spec.table,
        "rows": len(times),
        "columns": [[name, kind] for name, kind in zip(spec.columns, spec.kinds, strict=True)],
        "lo_ns": min(times) if times else 0,
        "hi_ns": max(times) if times else 0,
        "created_ns": created_ns,
        "writer": writer,
    }
    header_bytes = json.dumps(header, separators=(",", ":")).encode()
    out = [_PREAMBLE.pack(SPOOL_MAGIC, SPOOL_VERSION, len(header_bytes)), header_bytes]
    for kind, values in zip(spec.kinds, columns, strict=True):
        _encode_column(kind, values, out)
    body = b"".join(out)
    return body + _CRC.pack(zlib.crc32(body))


class _Reader:
    def __init__(self, data: memoryview) -> None:
        self._data = data
        self._pos = 0

    def take(self, size: int) -> memoryview:
        end = self._pos + size
        if size < 0 or end > len(self._data):
            raise SpoolFormatError("spool file is truncated")
        chunk = self._data[self._pos : end]
        self._pos = end
        return chunk

    def u64s(self, count: int) -> list[int]:
        packed = array("Q")
        packed.frombytes(self.take(8 * count))
        if sys.byteorder == "big":
            packed.byteswap()
        return packed.tolist()

    def blobs(self, count: int) -> list[bytes]:
        lengths = self.u64s(count)
        blob = bytes(self.take(sum(lengths)))
        out = []
        start = 0
        for length in lengths:
            out.append(blob[start : start + length])
            start += length
        return out

    @property
    def at_end(self) -> bool:
        return self._pos == len(self._data)


def _decode_column(kind: str, rows: int, reader: _Reader) -> list[Any]:
    if kind == "u":
        return reader.u64s(rows)
    if kind == "b":
        return reader.blobs(rows)
    if kind == "s":
        return [b.decode("utf-8", "replace") for b in reader.blobs(rows)]
    if kind in ("as", "au"):
        counts = reader.u64s(rows)
        flat = _decode_column(kind[1], sum(counts), reader)
        out = []
        start = 0
        for count in counts:
            out.append(flat[start : start + count])
            start += count
        return out
    raise SpoolFormatError(f"spool file has a column of unknown kind {kind!r}")


_DEFAULTS: Final[dict[str, Callable[[], Any]]] = {
    "u": int,
    "s": str,
    "b": bytes,
    "as": list,
    "au": list,
}


def _parse_preamble(data: bytes | memoryview) -> tuple[int, int]:
    if len(data) < _PREAMBLE.size:
        raise SpoolFormatError("spool file is truncated")
    magic, version, header_len = _PREAMBLE.unpack_from(data)
    if magic != SPOOL_MAGIC:
        raise SpoolFormatError("not a Meshtap spool file (wrong magic bytes)")
    if version != SPOOL_VERSION:
        raise SpoolFormatError(
            f"spool file has format version {version}; this Meshtap reads version "
            f"{SPOOL_VERSION} (was it written by a newer Meshtap?)",
            version=version,
        )
    return version, header_len


def _parse_header(raw: bytes | memoryview) -> dict[str, Any]:
    try:
        header = json.loads(bytes(raw))
    except ValueError as e:
        raise SpoolFormatError(f"spool file header is not JSON: {e}") from e
    if not isinstance(header, dict) or not isinstance(header.get("table"), str):
        raise SpoolFormatError("spool file header names no table")
    return header


def decode_spool(data: bytes, specs: Mapping[str, TableSpec]) -> SpoolBatch:
    """The batch in a spool file's bytes, its rows in the column order of ``specs[table]``."""
    _, header_len = _parse_preamble(data)
    if len(data) < _PREAMBLE.size + header_len + _CRC.size:
        raise SpoolFormatError("spool file is truncated")
    body = memoryview(data)[: -_CRC.size]
    (crc,) = _CRC.unpack_from(data, len(data) - _CRC.size)
    if zlib.crc32(body) != crc:
        raise SpoolFormatError("spool file fails its checksum (damaged on disk?)")
    reader = _Reader(body)
    reader.take(_PREAMBLE.size)
    header = _parse_header(reader.take(header_len))
    spec = specs.get(header["table"])
    if spec is None:
        raise SpoolFormatError(f"spool file is for unknown table {header['table']!r}")
    rows = int(header["rows"])
    columns: dict[str, list[Any]] = {}
    for name, kind in header["columns"]:
        columns[name] = _decode_column(kind, rows, reader)
    if not reader.at_end:
        raise SpoolFormatError("spool file has bytes after its last column")
    ordered = []
    for name, kind in zip(spec.columns, spec.kinds, strict=True):
        values = columns.get(name)
        ordered.append(values if values is not None else [_DEFAULTS[kind]() for _ in range(rows)])
    return SpoolBatch(spec.table, list(zip(*ordered, strict=True)), int(header["created_ns"]))


def read_spool_header(path: Path) -> dict[str, Any]:
    """A spool file's header (table, rows, ...), reading only its first bytes."""
    with path.open("rb") as f:
        preamble = f.read(_PREAMBLE.size)
        _, header_len = _parse_preamble(preamble)
        return _parse_header(f.read(header_len))


def spooled_rows(spool_dir: str | os.PathLike[str]) -> dict[str, int]:
    """Rows waiting in ``spool_dir``, per table (for operators and tests)."""
    counts: dict[str, int] = {}
    directory = Path(spool_dir)
    if not directory.is_dir():
        return counts
    for path in directory.glob(f"*{SPOOL_SUFFIX}"):
        try:
            header = read_spool_header(path)
        except (OSError, SpoolFormatError):
            continue
        counts[header["table"]] = counts.get(header["table"], 0) + int(header["rows"])
    return counts


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomically(directory: Path, name: str, data: bytes) -> Path:
    final = directory / name
    temp = directory / f"{TEMP_PREFIX}{name}"
    try:
        with temp.open("wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.rename(temp, final)
    except BaseException:
        with contextlib.suppress(OSError):
            temp.unlink()
        raise
    _fsync_dir(directory)
    return final


# --- metrics ----------------------------------------------------------------------------------


class CaptureMetrics:
    """Prometheus metrics of one capture, in a registry of their own.

    The object is a prometheus_client collector (``collect()`` and ``describe()``), so the
    runtime adds it to its own registry with ``registry.register(capture.collector())`` and
    its ``/metrics`` shows::

        meshtap_capture_rows_written_total{table}          rows inserted into ClickHouse
        meshtap_capture_rows_spooled_total{table}          rows that went through the spool
        meshtap_capture_deduplicated_rows_total{table}     spooled rows found already stored
        meshtap_capture_dropped_rows_total{table,reason}   rows lost: overflow (the hard
                                                           bound), rejected, closed,
                                                           unconvertible, spool_failed
        meshtap_capture_insert_duration_seconds{table}     one batch insert (histogram)
        meshtap_capture_buffered_rows{table}               rows in memory now
        meshtap_capture_spooled_rows{table}                rows waiting in the spool now
        meshtap_capture_clickhouse_up                      1 while the last call succeeded
    """

    def __init__(
        self,
        tables: Sequence[str],
        state: Callable[[], tuple[Mapping[str, int], Mapping[str, int], bool]],
    ) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.written = Counter(
            "meshtap_capture_rows_written",
            "Capture rows inserted into ClickHouse.",
            ["table"],
            registry=r,
        )
        self.spooled = Counter(
            "meshtap_capture_rows_spooled",
            "Capture rows written to the local spool while ClickHouse was unreachable.",
            ["table"],
            registry=r,
        )
        self.deduplicated = Counter(
            "meshtap_capture_deduplicated_rows",
            "Spooled capture rows that ClickHouse already had when their batch was replayed.",
            ["table"],
            registry=r,
        )
        self.dropped = Counter(
            "meshtap_capture_dropped_rows",
            "Capture rows dropped, by reason (overflow: the max_buffered hard bound).",
            ["table", "reason"],
            registry=r,
        )
        self.insert_seconds = Histogram(
            "meshtap_capture_insert_duration_seconds",
            "Duration of one capture batch insert.",
            ["table"],
            buckets=_INSERT_BUCKETS,
            registry=r,
        )
        self._state = state
        self._tables = tuple(tables)
        for table in self._tables:
            self.written.labels(table)
            self.spooled.labels(table)
            self.deduplicated.labels(table)
            self.dropped.labels(table, "overflow")
        r.register(_StateCollector(self._tables, state))

    def collect(self) -> Iterable[Metric]:
        return self.registry.collect()

    def describe(self) -> Iterable[Metric]:
        return self.registry.collect()


class _StateCollector:
    """Gauges read from the writer's state at scrape time (nothing to update on the hot path)."""

    def __init__(
        self,
        tables: Sequence[str],
        state: Callable[[], tuple[Mapping[str, int], Mapping[str, int], bool]],
    ) -> None:
        self._tables = tables
        self._state = state

    def collect(self) -> Iterator[Metric]:
        buffered, spooled, up = self._state()
        memory = GaugeMetricFamily(
            "meshtap_capture_buffered_rows",
            "Capture rows held in memory, waiting for their batch.",
            labels=["table"],
        )
        spool = GaugeMetricFamily(
            "meshtap_capture_spooled_rows",
            "Capture rows waiting in the local spool for ClickHouse.",
            labels=["table"],
        )
        for table in self._tables:
            memory.add_metric([table], buffered.get(table, 0))
            spool.add_metric([table], spooled.get(table, 0))
        yield memory
        yield spool
        yield GaugeMetricFamily(
            "meshtap_capture_clickhouse_up",
            "1 while the capture's last ClickHouse call succeeded, 0 while it spools.",
            value=1 if up else 0,
        )


class _Throttle:
    """Logs a recurring problem at most every ``interval`` seconds per kind."""

    def __init__(self, interval: float = _DROP_LOG_INTERVAL_S) -> None:
        self._interval = interval
        self._last: dict[str, float] = {}
        self._lock = threading.Lock()

    def error(self, kind: str, message: str, *args: object) -> None:
        self.log(logging.ERROR, kind, message, *args)

    def log(self, level: int, kind: str, message: str, *args: object) -> None:
        now = time.monotonic()
        with self._lock:
            if now - self._last.get(kind, -math.inf) < self._interval:
                return
            self._last[kind] = now
        log.log(level, message, *args)

    def mark(self, kind: str) -> None:
        """Count now as the last time ``kind`` was logged (it was, by other means)."""
        with self._lock:
            self._last[kind] = time.monotonic()


class _DropLog:
    """Logs drops at most every ``interval`` seconds, with what was dropped since."""

    def __init__(self, interval: float = _DROP_LOG_INTERVAL_S) -> None:
        self._interval = interval
        self._lock = threading.Lock()
        self._pending: dict[tuple[str, str], int] = {}
        self._last = -math.inf

    def add(self, table: str, count: int, reason: str) -> None:
        with self._lock:
            key = (table, reason)
            self._pending[key] = self._pending.get(key, 0) + count
        self.tick()

    def tick(self, *, force: bool = False) -> None:
        with self._lock:
            now = time.monotonic()
            if not self._pending or (not force and now - self._last < self._interval):
                return
            pending, self._pending = self._pending, {}
            self._last = now
        by_reason: dict[str, list[str]] = {}
        for (table, reason), count in sorted(pending.items()):
            by_reason.setdefault(reason, []).append(f"{count} {table}")
        for reason, parts in by_reason.items():
            log.warning(
                "capture dropped rows (%s): %s -- %s (meshtap_capture_dropped_rows_total)",
                reason,
                ", ".join(parts),
                _DROP_HINTS.get(reason, ""),
            )


# --- the writer ---------------------------------------------------------------------------------


Convert = Callable[[list[Any]], Columns]
"""Turns a batch of submitted items into its table's columns (a pure function)."""


def _as_row(items: list[Any]) -> Columns:
    """The converter of items that are rows already (marker: the writer transposes them)."""
    raise AssertionError("the writer handles row items itself")


def _as_columns(items: list[Any]) -> Columns:
    """The converter of a ``_ColumnBatch`` (marker: converted before it was submitted)."""
    raise AssertionError("the writer handles column batches itself")


class _ColumnBatch:
    """Rows converted already, column by column; sliced by rows like a list of records."""

    __slots__ = ("columns",)

    def __init__(self, columns: Columns) -> None:
        self.columns = columns

    def __len__(self) -> int:
        return len(self.columns[0])

    def __getitem__(self, index: slice) -> _ColumnBatch:
        return _ColumnBatch([values[index] for values in self.columns])


@dataclass(slots=True)
class _Buffer:
    """One table's pending records, as the chunks they were submitted in."""

    chunks: deque[tuple[Convert, list[Any]]]
    count: int = 0
    oldest: float = 0.0

    def take(self, limit: int) -> tuple[list[tuple[Convert, list[Any]]], int]:
        taken: list[tuple[Convert, list[Any]]] = []
        size = 0
        while self.chunks and size < limit:
            convert, items = self.chunks[0]
            room = limit - size
            if len(items) <= room:
                self.chunks.popleft()
                taken.append((convert, items))
                size += len(items)
            else:
                taken.append((convert, items[:room]))
                self.chunks[0] = (convert, items[room:])
                size += room
        self.count -= size
        return taken, size

    def take_all(self) -> tuple[list[tuple[Convert, list[Any]]], int]:
        taken, size = list(self.chunks), self.count
        self.chunks.clear()
        self.count = 0
        return taken, size


@dataclass(slots=True)
class _SpoolEntry:
    path: Path
    table: str
    rows: int
    refused: int = 0


_RETRYABLE: Final = (ClickhouseUnavailable, SchemaNotMigrated)


class BatchWriter:
    """Buffers rows per table and writes them from one thread (see the module docstring).

    Lifecycle: ``submit`` any time (rows wait in memory until ``start``); ``start(client)``
    starts the thread; ``flush`` waits for what is in memory to be written (or spooled);
    ``close`` flushes within a deadline, stops the thread and closes the client.
    """

    def __init__(
        self,
        specs: Mapping[str, TableSpec],
        spool_dir: str | os.PathLike[str],
        *,
        max_buffered: int,
        batch_rows: int = 20_000,
        max_age_s: float = 0.25,
    ) -> None:
        self._specs = dict(specs)
        self._spool_dir = Path(spool_dir)
        self._max_buffered = max(0, int(max_buffered))
        self._batch_rows = max(1, int(batch_rows))
        self._max_age = max(0.001, float(max_age_s))
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._flushed = threading.Condition(self._lock)
        self._buffers = {table: _Buffer(deque()) for table in self._specs}
        self._memory = 0
        self._inflight: tuple[str, list[tuple[Convert, list[Any]]], int] | None = None
        self._spool: deque[_SpoolEntry] = deque()
        self._spooled: dict[str, int] = dict.fromkeys(self._specs, 0)
        self._spooled_total = 0
        self._client: ClickHouse | None = None
        self._verify: Callable[[ClickHouse], object] | None = None
        self._verified = True
        self._up = True
        self._failures = 0
        self._retry_at = 0.0
        self._stall_until = 0.0
        self._flush_asked = 0
        self._flush_done = 0
        self._accepting = True
        self._closing = False
        self._closed = False
        self._deadline = math.inf
        self._thread: threading.Thread | None = None
        self._seq = itertools.count()
        self._writer_id = f"{socket.gethostname()}/{os.getpid()}"
        self._drops = _DropLog()
        self._problems = _Throttle()
        self._outage = _Throttle(_OUTAGE_LOG_INTERVAL_S)
        self._down_since = 0.0
        self.metrics = CaptureMetrics(tuple(self._specs), self._state)

    # -- the calling side (any thread; never blocks on I/O, never raises) ----------------------

    @property
    def spool_dir(self) -> Path:
        return self._spool_dir

    def submit(self, table: str, items: Sequence[Any], convert: Convert = _as_row) -> int:
        """Take ``items`` for ``table``, each to become one row: ``convert`` (a pure function,
        called later on the writer thread) turns a batch of them into the table's columns; the
        default takes items that are rows already.
        Returns how many were accepted; the rest are dropped, counted and logged (the hard
        bound, or the writer is closed)."""
        return self._append(table, len(items), lambda n: (convert, list(items[:n])))

    def submit_columns(self, table: str, columns: Columns) -> int:
        """``submit`` for rows converted already (``convert``), e.g. by the thread that
        received them, so that converting the next batch overlaps this one's insert."""
        batch = _ColumnBatch(columns)
        return self._append(table, len(batch), lambda n: (_as_columns, batch[:n]))

    def _append(self, table: str, count: int, chunk: Callable[[int], tuple[Convert, Any]]) -> int:
        if not count:
            return 0
        with self._lock:
            if not self._accepting:
                accepted, reason = 0, "closed"
            else:
                room = self._max_buffered - self._memory - self._spooled_total
                accepted, reason = (count if count <= room else max(0, room)), "overflow"
                if accepted:
                    buffer = self._buffers[table]
                    if not buffer.count:
                        buffer.oldest = time.monotonic()
                        self._wake.notify()
                    buffer.chunks.append(chunk(accepted))
                    buffer.count += accepted
                    self._memory += accepted
                    if buffer.count >= self._batch_rows:
                        self._wake.notify()
        if accepted < count:
            self.drop(table, count - accepted, reason)
        return accepted

    def drop(self, table: str, count: int, reason: str) -> None:
        """Count and log ``count`` rows of ``table`` as lost for ``reason``."""
        self.metrics.dropped.labels(table, reason).inc(count)
        self._drops.add(table, count, reason)

    def flush(self, timeout: float) -> bool:
        """Wait until every row submitted before the call is inserted or spooled."""
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                return not self._memory
            self._flush_asked += 1
            target = self._flush_asked
            self._wake.notify()
            end = time.monotonic() + timeout
            while self._flush_done < target:
                remaining = end - time.monotonic()
                if remaining <= 0:
                    return False
                self._flushed.wait(remaining)
            return True

    # -- lifecycle ---------------------------------------------------------------------------

    def start(
        self,
        client: ClickHouse,
        *,
        available: bool = True,
        verify: Callable[[ClickHouse], object] | None = None,
    ) -> None:
        """Start writing through ``client`` (blocking: reads the spool directory).

        ``available=False`` (ClickHouse did not answer at start) spools from the first batch
        until a probe succeeds; ``verify`` (e.g. the migration check) then runs before the
        first write, and again whenever a table has gone missing. Raises ``OSError`` when the
        spool directory cannot be created.
        """
        if self._thread is not None:
            return
        self._spool_dir.mkdir(parents=True, exist_ok=True)
        self._load_spool()
        self._client = client
        self._verify = verify
        self._verified = available or verify is None
        if not available:
            self._up = False
            self._down_since = time.monotonic()
            self._failures = 1
            self._retry_at = time.monotonic() + _BACKOFF_BASE_S
        self._thread = threading.Thread(
            target=self._run, name="meshtap-capture-writer", daemon=True
        )
        self._thread.start()

    def close(self, timeout: float) -> bool:
        """Write what is in memory and replay the spool, for at most ``timeout`` seconds, then
        stop. What is not in ClickHouse by then is in the spool, for the next start. Returns
        True when nothing was left in memory. Idempotent."""
        with self._lock:
            if self._closed:
                return not self._memory
            self._closed = True
            self._accepting = False
            self._closing = True
            self._deadline = time.monotonic() + max(0.0, timeout)
            self._retry_at = min(self._retry_at, time.monotonic())  # one more try, now
            self._wake.notify_all()
        thread = self._thread
        if thread is not None:
            thread.join(max(0.0, timeout) + 1.0)
        finished = thread is None or not thread.is_alive()
        if not finished:
            log.warning(
                "capture writer still busy %.1f s after close began (a ClickHouse call hangs); "
                "spooling the rows it holds to %s",
                timeout,
                self._spool_dir,
            )
        self._spool_leftovers(include_inflight=not finished)
        self._drops.tick(force=True)
        if finished and self._client is not None:
            self._client.close()
        with self._lock:
            left = self._spooled_total
        if left:
            log.info(
                "capture closed with %d rows in the spool (%s); they are written at the next start",
                left,
                self._spool_dir,
            )
        return finished

    # -- the writer thread ---------------------------------------------------------------------

    def held(self) -> tuple[dict[str, int], int]:
        """``(records in memory by table, rows in the spool)``: what counts against
        ``max_buffered``."""
        with self._lock:
            return self._state()[0], self._spooled_total

    def _state(self) -> tuple[dict[str, int], dict[str, int], bool]:
        buffered = {table: buffer.count for table, buffer in self._buffers.items()}
        inflight = self._inflight
        if inflight is not None:
            buffered[inflight[0]] += inflight[2]
        return buffered, dict(self._spooled), self._up

    def _run(self) -> None:
        with suppress_tracing():  # this thread's ClickHouse calls make no spans about themselves
            while True:
                try:
                    if not self._step():
                        return
                except Exception:
                    log.exception("capture writer: unexpected error; carrying on in 1 s")
                    with self._lock:
                        if self._closing:
                            return
                        self._wake.wait(1.0)

    def _step(self) -> bool:
        """Do one piece of work; False when it is time to stop."""
        self._drops.tick()
        with self._lock:
            while True:
                now = time.monotonic()
                work = self._next_work(now)
                if work is not None:
                    break
                self._wake.wait(self._wait_time(now))
            if work == "exit":
                return False
            if work != "replay":
                chunks, count = self._buffers[work].take(self._batch_rows)
                self._inflight = (work, chunks, count)
        if work == "replay":
            self._replay()
        else:
            self._write(work, self._convert(work, chunks), count)
        return True

    def convert(self, table: str, convert: Convert, items: list[Any]) -> Columns:
        """``convert(items)``; when that fails, record by record: a record that will not
        convert is dropped, counted (reason ``unconvertible``) and logged."""
        try:
            return convert(items)
        except Exception:  # find the culprit(s)
            pass
        out: Columns = [[] for _ in self._specs[table].columns]
        for item in items:
            try:
                columns = convert([item])
            except Exception:
                log.exception("capture: cannot convert a %s record; dropped", table)
                self.drop(table, 1, "unconvertible")
                continue
            for into, values in zip(out, columns, strict=True):
                into += values
        return out

    def _convert(self, table: str, chunks: list[tuple[Convert, Any]]) -> Columns:
        """Columns of the chunks' records (see ``convert``)."""
        width = len(self._specs[table].columns)
        out: Columns = [[] for _ in range(width)]
        for convert, items in chunks:
            columns: Columns
            if convert is _as_columns:
                columns = items.columns
            elif convert is _as_row:
                columns = columns_of(items, width)
            else:
                columns = self.convert(table, convert, items)
            if len(chunks) == 1:
                return columns
            for into, values in zip(out, columns, strict=True):
                into += values
        return out

    def _next_work(self, now: float) -> str | None:
        """Under the lock: a table whose batch is due, ``replay``, ``exit`` or None (wait)."""
        closing = self._closing
        flushing = self._flush_asked > self._flush_done
        if closing or now >= self._stall_until:
            for table, buffer in self._buffers.items():
                if buffer.count and (
                    closing
                    or flushing
                    or buffer.count >= self._batch_rows
                    or now - buffer.oldest >= self._max_age
                ):
                    return table
        if flushing and not any(buffer.count for buffer in self._buffers.values()):
            self._flush_done = self._flush_asked
            self._flushed.notify_all()
        if self._spool and now >= self._retry_at and (not closing or now < self._deadline):
            return "replay"
        if closing:
            return "exit"
        return None

    def _wait_time(self, now: float) -> float:
        deadlines = [b.oldest + self._max_age for b in self._buffers.values() if b.count]
        if self._spool:
            deadlines.append(self._retry_at)
        if now < self._stall_until:
            deadlines = [max(d, self._stall_until) for d in deadlines]
        return min(max(min(deadlines, default=now + 1.0) - now, 0.001), 1.0)

    # -- writing a batch

    def _may_call(self) -> bool:
        now = time.monotonic()
        if self._closing and now >= self._deadline:
            return False
        return now >= self._retry_at

    def _write(self, table: str, rows: Columns, count: int) -> None:
        """Insert one batch (``count`` records taken, ``rows`` their columns), else spool it."""
        if not rows[0]:
            self._finish_inflight(count)
            return
        if self._may_call():
            try:
                self._ensure_verified()
                self._insert(table, rows)
            except _RETRYABLE as e:
                self._failed(e)
            except (ClickhouseQueryError, ClickhouseUsageError) as e:
                if not self._schema_missing(e):
                    self._reject(table, rows, count, e)
                    return
                self._failed(e)
            except Exception as e:  # not ClickHouse's word on the batch: keep it, retry later
                log.exception("capture: inserting a %s batch failed unexpectedly", table)
                self._failed(e)
            else:
                self._succeeded()
                self._finish_inflight(count)
                return
        self._spool_batch(table, rows, count)

    def _insert(self, table: str, columns: Columns) -> None:
        assert self._client is not None
        spec = self._specs[table]
        started = time.perf_counter()
        self._client.insert(table, spec.columns, columns)
        self.metrics.insert_seconds.labels(table).observe(time.perf_counter() - started)
        self.metrics.written.labels(table).inc(len(columns[0]))

    def _ensure_verified(self) -> None:
        if not self._verified and self._verify is not None and self._client is not None:
            self._verify(self._client)
            self._verified = True

    def _schema_missing(self, error: ClickhouseError) -> bool:
        """A table or the database is gone (dropped, or not yet migrated): keep the rows."""
        if isinstance(error, ClickhouseQueryError) and error.code in _MISSING_SCHEMA_CODES:
            self._verified = self._verify is None
            return True
        return False

    def _finish_inflight(self, count: int) -> None:
        with self._lock:
            self._inflight = None
            self._memory -= count

    def _succeeded(self) -> None:
        if not self._up:
            log.info(
                "capture: ClickHouse answers again; writing the spool (%d rows left in %s)",
                self._spooled_total,
                self._spool_dir,
            )
        self._up = True
        self._failures = 0
        self._retry_at = 0.0

    def _failed(self, error: BaseException) -> None:
        self._failures += 1
        delay = min(_BACKOFF_MAX_S, _BACKOFF_BASE_S * 2 ** min(self._failures - 1, 16))
        delay = delay / 2 + random.uniform(0, delay / 2)
        with self._lock:
            self._retry_at = time.monotonic() + delay
        if self._up:
            log.warning(
                "capture: cannot write to ClickHouse (%s); spooling batches to %s and retrying "
                "with backoff",
                error,
                self._spool_dir,
            )
            self._down_since = time.monotonic()
            self._outage.mark("down")
        elif isinstance(error, SchemaNotMigrated):
            self._problems.error("schema", "capture: still spooling: %s", error)
        else:  # one line a minute while it lasts, instead of one per retry
            self._outage.log(
                logging.WARNING,
                "down",
                "capture: ClickHouse still unreachable after %.0f s and %d attempts (%s); "
                "%d rows wait in the spool %s",
                time.monotonic() - self._down_since,
                self._failures,
                error,
                self._spooled_total,
                self._spool_dir,
            )
        self._up = False

    # -- the spool

    def _spool_name(self, table: str) -> str:
        return f"{time.time_ns():020d}-{os.getpid()}-{next(self._seq) % 1_000_000:06d}.{table}"

    def _spool_batch(self, table: str, columns: Columns, count: int) -> None:
        spec = self._specs[table]
        try:
            data = encode_spool_columns(
                spec, columns, created_ns=time.time_ns(), writer=self._writer_id
            )
            path = _write_atomically(self._spool_dir, self._spool_name(table) + SPOOL_SUFFIX, data)
        except OSError as e:
            self._problems.error(
                "spool",
                "capture: cannot write to the spool %s (%s); rows wait in memory",
                self._spool_dir,
                e,
            )
            with self._lock:
                self._inflight = None
                if self._closing:
                    self._memory -= count
                else:  # keep them in memory (still inside the bound) and try again in a while
                    kept = rows_of(columns)
                    buffer = self._buffers[table]
                    buffer.chunks.appendleft((_as_row, kept))
                    buffer.count += len(kept)
                    buffer.oldest = time.monotonic()
                    self._memory -= count - len(kept)
                    self._stall_until = time.monotonic() + _BACKOFF_MAX_S
            if self._closing:
                self.drop(table, len(columns[0]), "spool_failed")
            return
        rows = len(columns[0])
        with self._lock:
            self._inflight = None
            self._memory -= count
            self._spool.append(_SpoolEntry(path, table, rows))
            self._spooled[table] += rows
            self._spooled_total += rows
        self.metrics.spooled.labels(table).inc(rows)

    def _spool_leftovers(self, *, include_inflight: bool) -> None:
        """At close: rows still in memory go to the spool, written from the calling thread."""
        with self._lock:
            taken = []
            for table, buffer in self._buffers.items():
                chunks, count = buffer.take_all()
                self._memory -= count
                if count:
                    taken.append((table, chunks))
            if include_inflight and self._inflight is not None:
                # The thread may still finish this insert: then the replay finds it stored.
                taken.append((self._inflight[0], list(self._inflight[1])))
        batches = [(table, self._convert(table, chunks)) for table, chunks in taken]
        if batches:
            with contextlib.suppress(OSError):
                self._spool_dir.mkdir(parents=True, exist_ok=True)
        for table, columns in batches:
            spec = self._specs[table]
            for start in range(0, len(columns[0]), self._batch_rows):
                chunk = [values[start : start + self._batch_rows] for values in columns]
                rows = len(chunk[0])
                try:
                    data = encode_spool_columns(
                        spec, chunk, created_ns=time.time_ns(), writer=self._writer_id
                    )
                    _write_atomically(self._spool_dir, self._spool_name(table) + SPOOL_SUFFIX, data)
                except OSError as e:
                    log.error("capture: cannot spool %d %s rows at close: %s", rows, table, e)
                    self.drop(table, rows, "spool_failed")
                    continue
                with self._lock:
                    self._spooled[table] += rows
                    self._spooled_total += rows
                self.metrics.spooled.labels(table).inc(rows)

    def _load_spool(self) -> None:
        """Find the batches a previous run (or a crashed process) left in the spool."""
        now = time.time()
        for path in sorted(self._spool_dir.iterdir()):
            name = path.name
            if name.startswith(TEMP_PREFIX):
                # A crash mid-write: its rows were only ever in that process's memory.
                with contextlib.suppress(OSError):
                    if now - path.stat().st_mtime > _STALE_TEMP_S:
                        path.unlink()
                continue
            if not name.endswith(SPOOL_SUFFIX):
                continue
            try:
                header = read_spool_header(path)
            except SpoolFormatError as e:
                if e.version is not None:
                    log.warning("capture: leaving spool file %s alone: %s", path, e)
                else:
                    self._quarantine(path, "?", 0, e)
                continue
            except OSError as e:
                log.warning("capture: cannot read spool file %s: %s", path, e)
                continue
            table = header["table"]
            if table not in self._specs:
                log.warning("capture: leaving spool file %s alone: unknown table %r", path, table)
                continue
            rows = int(header["rows"])
            self._spool.append(_SpoolEntry(path, table, rows))
            self._spooled[table] += rows
            self._spooled_total += rows
        if self._spool:
            log.info(
                "capture: %d rows wait in %d spool files in %s; replaying them once ClickHouse "
                "answers",
                self._spooled_total,
                len(self._spool),
                self._spool_dir,
            )

    def _forget(self, entry: _SpoolEntry) -> None:
        with self._lock, contextlib.suppress(ValueError):
            self._spool.remove(entry)
            self._spooled[entry.table] -= entry.rows
            self._spooled_total -= entry.rows

    def _quarantine(self, path: Path, table: str, rows: int, error: BaseException) -> None:
        rejected = self._spool_dir / REJECTED_DIR
        try:
            rejected.mkdir(exist_ok=True)
            os.replace(path, rejected / path.name)
            where = f"moved to {rejected / path.name}"
        except OSError as e:
            where = f"could not move it aside ({e})"
        log.error("capture: spool file %s cannot be written (%s); %s", path, error, where)
        if rows:
            self.drop(table, rows, "rejected")

    def _reject(self, table: str, columns: Columns, count: int, error: BaseException) -> None:
        """ClickHouse refused a fresh batch for good: keep it aside, count it dropped."""
        rejected = self._spool_dir / REJECTED_DIR
        rows = len(columns[0])
        try:
            rejected.mkdir(parents=True, exist_ok=True)
            data = encode_spool_columns(
                self._specs[table], columns, created_ns=time.time_ns(), writer=self._writer_id
            )
            path = _write_atomically(rejected, self._spool_name(table) + SPOOL_SUFFIX, data)
            where = f"kept in {path}"
        except OSError as e:
            where = f"could not be kept ({e})"
        log.error(
            "capture: ClickHouse refused a batch of %d %s rows: %s; %s",
            rows,
            table,
            error,
            where,
        )
        self._finish_inflight(count)
        self.drop(table, rows, "rejected")

    def _replay(self) -> None:
        """Write spooled batches, oldest first, until the spool is empty, ClickHouse fails,
        this slice of time is used up, or close's deadline passes."""
        slice_end = time.monotonic() + _REPLAY_SLICE_S
        while True:
            with self._lock:
                if not self._spool:
                    return
                entry = self._spool[0]
                now = time.monotonic()
                if now < self._retry_at:
                    return
                if self._closing:
                    if now >= self._deadline:
                        return
                elif now >= slice_end:
                    return
            if not self._replay_one(entry):
                return

    def _replay_one(self, entry: _SpoolEntry) -> bool:
        """Write one spooled batch exactly once; False to stop replaying for now."""
        try:
            fd = os.open(entry.path, os.O_RDONLY)
        except FileNotFoundError:
            self._forget(entry)
            return True
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                self._forget(entry)  # another process is replaying it; it is theirs now
                return True
            try:
                if os.stat(entry.path).st_ino != os.fstat(fd).st_ino:
                    self._forget(entry)
                    return True
            except FileNotFoundError:
                self._forget(entry)  # replayed and removed by another process meanwhile
                return True
            with os.fdopen(os.dup(fd), "rb") as f:
                data = f.read()
            try:
                batch = decode_spool(data, self._specs)
            except SpoolFormatError as e:
                self._forget(entry)
                self._quarantine(entry.path, entry.table, entry.rows, e)
                return True
            try:
                self._ensure_verified()
                missing = self._missing_rows(self._specs[batch.table], batch.rows)
                if missing:
                    spec = self._specs[batch.table]
                    self._insert(batch.table, columns_of(missing, len(spec.columns)))
            except _RETRYABLE as e:
                self._failed(e)
                return False
            except Exception as e:
                if isinstance(e, ClickhouseError) and self._schema_missing(e):
                    self._failed(e)
                    return False
                if not isinstance(e, ClickhouseError):
                    log.exception("capture: replaying %s failed unexpectedly", entry.path)
                entry.refused += 1
                if entry.refused >= _MAX_ATTEMPTS_REFUSED:
                    self._forget(entry)
                    self._quarantine(entry.path, entry.table, entry.rows, e)
                    return True
                self._failed(e)
                return False
            skipped = len(batch.rows) - len(missing)
            if skipped:
                self.metrics.deduplicated.labels(batch.table).inc(skipped)
            self._forget(entry)
            self._succeeded()
            try:
                os.unlink(entry.path)
            except FileNotFoundError:
                pass
            except OSError as e:  # stored all the same; a later start dedupes it again
                self._problems.error(
                    "unlink", "capture: cannot remove replayed spool file %s: %s", entry.path, e
                )
            return True
        finally:
            os.close(fd)

    def _missing_rows(self, spec: TableSpec, rows: list[Row]) -> list[Row]:
        """The rows of a spooled batch that ClickHouse does not have yet (by key)."""
        assert self._client is not None
        if not rows:
            return rows
        times = [row[spec.time_index] for row in rows]
        lo, hi = min(times), max(times)
        bounds = {
            "lo_ns": lo,
            "hi_ns": hi,
            "lo_at": _datetime(lo),
            "hi_at": _datetime(hi),
        }
        values = sorted({row[spec.lookup_index] for row in rows})
        existing: set[tuple[Any, ...]] = set()
        for chunk in _chunks(values):
            found = self._client.execute(
                spec.lookup_sql, {**bounds, "values": tuple(chunk)}, purpose=Purpose.QUERY
            )
            existing.update(tuple(row) for row in found)
        if not existing:
            return rows
        key = spec.key_indexes
        return [row for row in rows if tuple(row[i] for i in key) not in existing]


def _datetime(ns: int) -> datetime:
    return datetime.fromtimestamp(min(ns // _NS, _U32_SECONDS), UTC)


def _chunks(values: Sequence[Any]) -> Iterator[list[Any]]:
    chunk: list[Any] = []
    size = 0
    for value in values:
        cost = len(value) + 4 if isinstance(value, str | bytes) else 24
        if chunk and (size + cost > _LOOKUP_CHARS or len(chunk) >= _LOOKUP_VALUES):
            yield chunk
            chunk, size = [], 0
        chunk.append(value)
        size += cost
    if chunk:
        yield chunk
