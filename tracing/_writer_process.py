"""The capture's batch writer in a process of its own (``clickhouse://``).

Why a process: turning records into columns and serialising a columnar insert are pure Python
work. On a thread of the runtime's process they hold the same interpreter lock as the
runtime's event loop, so every event is paid for twice on the loop's core. In a child process
they run on another core; what stays with the runtime is an append under a lock (``submit``)
and, on one feeder thread, packing each record into plain values (``_rows.Feed.pack``: a dict,
bytes, strings, ints) and serialising a batch of them onto a socket (``marshal``) -- about a
microsecond per event, a tenth of the conversion and insert it replaces.

Why not for ``chdb://``: chDB allows one process per data directory, and the embedded
deployment reads that directory from the runtime's own process (web admin, replay). There
the writer stays a thread (``BatchWriter``).

The child (``main`` of this module, given its end of a socket pair) runs the same
:class:`BatchWriter`, so batching, the spool, exactly-once replay, rejection and its metrics
are the ones documented in ``_writer``. What this module adds:

* **Bounded, never blocking.** ``submit`` only appends; the feeder thread sends. The hard
  bound ``max_buffered`` covers records waiting here, records sent but not yet acknowledged
  and what the child reports holding (memory and spool); beyond it records are dropped,
  counted (``reason="overflow"``) and logged, as with the thread.
* **Metrics.** The child sends its registry (the Prometheus text format) with each status
  (every 0.5 s and on close); :meth:`WriterProcess.collector` merges it with this side's
  counters (drops here, records waiting here), so the runtime's ``/metrics`` shows one set.
  ``meshtap_capture_writer_restarts_total`` counts child restarts and
  ``meshtap_capture_unsent_rows{table}`` the records not yet taken by the child.
* **Logs.** The child's log records come back over the socket and are logged here, under
  the same logger names, with the runtime's logging configuration.
* **Shutdown.** ``flush`` and ``close`` travel in order behind the records. The child ignores
  SIGINT/SIGTERM (the runtime decides when capture stops) and treats end-of-file on its
  socket -- its parent exited or was SIGKILLed -- as close: it writes or spools what it
  holds and exits. It also exits if it is re-parented while blocked elsewhere.
* **A child that dies** is restarted (its spool is picked up); records it held only in memory
  are counted dropped with ``reason="writer_died"``. Records that could not be sent at close
  are spooled from this process.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import logging
import marshal
import os
import pickle
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any, Final

from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from tracing._redaction import Redactor
from tracing._rows import FEEDS, TABLES, RowConverter
from tracing._writer import BatchWriter, CaptureMetrics, _DropLog
from tracing.clickhouse import ClickHouse, ClickhouseError, check, migrate

__all__ = ["WriterProcess", "WriterSettings"]

log = logging.getLogger("meshtap.capture")

_STATUS_INTERVAL_S: Final = 0.5
_START_TIMEOUT_S: Final = 60.0  # a cold interpreter importing the driver on a busy 2-core box
_RESTART_BACKOFF_S: Final = (0.5, 5.0)
_FRAME_ITEMS: Final = 256
"""Records per frame to the child. Small on purpose: packing and serialising a frame holds the
interpreter lock (a fraction of a millisecond for 256 events); the send that follows releases it, so
the runtime's event loop never waits long for the lock. With large frames it would wait up to
the interpreter's switch interval (5 ms) every time it came back from I/O."""
_LINGER_S: Final = 0.005
_CHILD_SWITCH_INTERVAL_S: Final = 0.0005
"""In the child, the thread that inserts spends most of an insert waiting for ClickHouse and
must get the lock back quickly from the thread converting the next batch."""
_UP_GAUGE: Final = "meshtap_capture_clickhouse_up"
_CHILD_MAIN: Final = (
    "import sys; from tracing._writer_process import main; sys.exit(main(sys.argv))"
)
"""The child's program: imports this module by its name (``-m`` would run a second copy as
``__main__``, whose classes pickle under another name); ``-P`` keeps the working directory off
``sys.path``."""


@dataclass(frozen=True, slots=True)
class WriterSettings:
    """Everything the child needs; sent over the socket (never on the command line: the
    redaction key is a secret)."""

    url: str
    spool_dir: str
    max_buffered: int
    batch_rows: int
    max_age_s: float
    connect_timeout_s: float
    close_timeout_s: float
    redact_fields: tuple[str, ...] = ()
    redact_extensions: tuple[str, ...] = ()
    redaction_key: str = ""
    log_level: int = logging.INFO


class WriterStartError(Exception):
    """The child could not start; the message is its reason."""


class _Marker:
    """A flush or close request, queued behind the records it must follow."""

    def __init__(self, kind: str, timeout: float) -> None:
        self.kind = kind
        self.timeout = timeout
        self.done = threading.Event()
        self.ok = False


# --- the runtime's side -----------------------------------------------------------------------


class WriterProcess:
    """The parent's end: ``submit``/``flush``/``close`` like :class:`BatchWriter`, records
    named by feed (``_rows.FEEDS``) instead of a converter."""

    def __init__(self, settings: WriterSettings) -> None:
        self._settings = settings
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._pending: deque[tuple[str, list[Any]] | _Marker] = deque()
        self._pending_rows: dict[str, int] = dict.fromkeys(TABLES, 0)
        self._pending_total = 0
        self._unacked: dict[int, dict[str, int]] = {}
        self._unacked_total = 0
        self._sending: int | None = None
        """The frame the feeder is writing to the socket: whether the child got it is known only
        when the write returns, so the listener leaves it to the feeder when the child dies."""
        self._child_memory: dict[str, int] = {}
        self._child_spooled = 0
        self._child_held = 0
        self._idle = False
        self._tables = {name: feed.table for name, feed in FEEDS.items()}
        self._child_text = ""
        self._seq = 0
        self._accepting = True
        self._closed = False
        self._stopping = False
        self._process: subprocess.Popen[bytes] | None = None
        self._conn: Connection | None = None
        self._send_lock = threading.Lock()
        self._alive = threading.Event()
        self._ready: tuple[threading.Event, list[str | None]] | None = None
        self._closed_reply = threading.Event()
        self._flushes: dict[int, _Marker] = {}
        self._feeder: threading.Thread | None = None
        self._drops = _DropLog()
        self.metrics = CaptureMetrics(tuple(TABLES), self._state)
        self._restarts = Counter(
            "meshtap_capture_writer_restarts",
            "Times the capture's writer process died and was started again.",
            registry=self.metrics.registry,
        )
        self.metrics.registry.register(_Unsent(self._unsent))
        self._collector = _MergedCollector(self.metrics.registry, lambda: self._child_text)

    @property
    def spool_dir(self) -> str:
        return self._settings.spool_dir

    def collector(self) -> _MergedCollector:
        return self._collector

    # -- calling side (any thread; never blocks, never raises)

    def submit(self, feed: str, items: Sequence[Any]) -> int:
        # On the runtime's event loop for every publish and delivery: keep it short.
        count = len(items)
        if not count:
            return 0
        table = self._tables[feed]
        with self._lock:
            if not self._accepting:
                accepted, reason = 0, "closed"
            else:
                held = self._pending_total + self._unacked_total + self._child_held
                room = self._settings.max_buffered - held
                accepted, reason = (count if count <= room else max(0, room)), "overflow"
                if accepted:
                    self._pending.append((feed, list(items[:accepted])))
                    self._pending_rows[table] += accepted
                    self._pending_total += accepted
                    if self._idle:
                        self._idle = False
                        self._wake.notify()
        if accepted < count:
            self.drop(table, count - accepted, reason)
        return accepted

    def drop(self, table: str, count: int, reason: str) -> None:
        self.metrics.dropped.labels(table, reason).inc(count)
        self._drops.add(table, count, reason)

    def flush(self, timeout: float) -> bool:
        """Wait until what was submitted before the call is written or spooled by the child."""
        marker = _Marker("flush", timeout)
        with self._lock:
            if self._closed or self._feeder is None:
                return not self._pending_total
            self._pending.append(marker)
            self._wake.notify()
        return marker.done.wait(timeout) and marker.ok

    def _set_child(self, memory: dict[str, int], spooled: int) -> None:
        """Under the lock: what the child last said it holds."""
        self._child_memory, self._child_spooled = memory, spooled
        self._child_held = sum(memory.values()) + spooled

    # -- lifecycle

    def start(self, *, available: bool, verify: str) -> None:
        """Start the child (blocking, up to a minute for a cold interpreter) and the feeder.

        ``verify`` is ``check`` or ``migrate`` (run before the first write when ClickHouse was
        not ``available``). Raises ``WriterStartError`` with the child's reason.
        """
        self._spawn(available=available, verify=verify)
        self._feeder = threading.Thread(
            target=self._feed, args=(verify,), name="meshtap-capture-feeder", daemon=True
        )
        self._feeder.start()

    def close(self, timeout: float) -> bool:
        """Send what is waiting, have the child write it (or spool it) within ``timeout``, and
        wait for the child to exit. Records the child never got are spooled from here."""
        marker = _Marker("close", timeout)
        with self._lock:
            if self._closed:
                return True
            self._closed = True
            self._accepting = False
            self._pending.append(marker)
            self._wake.notify()
        finished = self._feeder is not None and marker.done.wait(timeout + 5.0) and marker.ok
        with self._lock:
            self._stopping = True
            self._wake.notify_all()
        if self._feeder is not None:
            self._feeder.join(5.0)
        self._reap(5.0)
        self._spool_unsent()
        self._drops.tick(force=True)
        return finished

    # -- the child

    def _spawn(self, *, available: bool, verify: str) -> None:
        ours, theirs = socket.socketpair()
        try:
            process = subprocess.Popen(
                [sys.executable, "-P", "-c", _CHILD_MAIN, str(theirs.fileno())],
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
            )
        finally:
            theirs.close()
        conn = Connection(ours.detach())
        ready: tuple[threading.Event, list[str | None]] = (threading.Event(), [None, ""])
        with self._lock:
            self._process, self._conn, self._ready = process, conn, ready
            self._set_child({}, 0)
        self._alive.set()
        self._closed_reply.clear()
        threading.Thread(
            target=self._listen, args=(conn, process), name="meshtap-capture-listener", daemon=True
        ).start()
        self._send(("config", self._settings, available, verify))
        if not ready[0].wait(_START_TIMEOUT_S):
            self._reap(0.0)
            raise WriterStartError(
                f"the capture writer process did not start within {_START_TIMEOUT_S:.0f} s"
            )
        if ready[1][0] is not None:
            self._reap(5.0)
            if ready[1][1] == "spool":
                raise OSError(ready[1][0])  # what the thread writer raises: the caller's hint
            raise WriterStartError(ready[1][0])

    def _reap(self, timeout: float) -> None:
        process = self._process
        if process is None:
            return
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            log.warning("capture writer process %d does not exit; killing it", process.pid)
            process.kill()
            process.wait()
        if self._conn is not None:
            self._conn.close()

    def _send(self, message: Any) -> None:
        data = _encode(message)
        with self._send_lock:
            assert self._conn is not None
            self._conn.send_bytes(data)

    def _listen(self, conn: Connection, process: subprocess.Popen[bytes]) -> None:
        """Messages from the child, until it exits."""
        while True:
            try:
                message = _decode(conn.recv_bytes())
            except (EOFError, OSError):
                break
            self._on_message(message)
        process.wait()
        with self._lock:
            lost = dict(self._child_memory)
            sending = self._sending
            in_flight = self._unacked.pop(sending, None) if sending is not None else None
            for by_table in self._unacked.values():
                for table, count in by_table.items():
                    lost[table] = lost.get(table, 0) + count
            self._unacked.clear()
            self._unacked_total = 0
            if sending is not None and in_flight is not None:
                # The feeder requeues it or counts it lost (``_send_some``).
                self._unacked[sending] = in_flight
                self._unacked_total = sum(in_flight.values())
            self._set_child({}, self._child_spooled)
            ready = self._ready
            expected = self._closed_reply.is_set() or self._stopping
            flushes = list(self._flushes.values())
            self._flushes.clear()
            self._alive.clear()
            self._wake.notify_all()  # the feeder starts another child
        if ready is not None and not ready[0].is_set():
            ready[1][0] = f"the capture writer process exited at start (code {process.returncode})"
            ready[0].set()
        for marker in flushes:
            marker.done.set()
        if not expected and ready is not None and ready[0].is_set() and ready[1][0] is None:
            log.error(
                "capture writer process %d exited unexpectedly (code %s); starting another "
                "(the spool is kept)",
                process.pid,
                process.returncode,
            )
            for table, count in lost.items():
                if count:
                    self.drop(table, count, "writer_died")

    def _on_message(self, message: tuple[Any, ...]) -> None:
        kind = message[0]
        if kind == "ack":
            _, seq, memory, spooled = message
            with self._lock:
                self._unacked_total -= sum(self._unacked.pop(seq, {}).values())
                self._set_child(memory, spooled)
        elif kind == "status":
            _, memory, spooled, text = message
            with self._lock:
                self._set_child(memory, spooled)
                self._child_text = text
        elif kind == "log":
            _, level, name, text = message
            logging.getLogger(name).log(level, "%s", text)
        elif kind == "flushed":
            _, seq, ok, memory, spooled = message
            with self._lock:
                self._set_child(memory, spooled)
                marker = self._flushes.pop(seq, None)
            if marker is not None:
                marker.ok = ok
                marker.done.set()
        elif kind == "closed":
            _, ok, text = message
            with self._lock:
                self._child_text = text
                self._set_child({}, self._child_spooled)
                marker = self._flushes.pop(-1, None)
            self._closed_reply.set()
            if marker is not None:
                marker.ok = ok
                marker.done.set()
        elif kind == "ready":
            ready = self._ready
            if ready is not None:
                ready[1][:] = message[1:]
                ready[0].set()

    # -- the feeder thread

    def _feed(self, verify: str) -> None:
        backoff = _RESTART_BACKOFF_S[0]
        while True:
            with self._lock:
                while not self._pending and not self._stopping and self._alive.is_set():
                    self._idle = True
                    self._wake.wait(1.0)
                self._idle = False
                if self._stopping:
                    return
                if (
                    self._pending
                    and self._pending_total < _FRAME_ITEMS
                    and not isinstance(self._pending[-1], _Marker)
                ):
                    self._wake.wait(_LINGER_S)  # gather a frame's worth: fewer, fuller frames
                    if self._stopped():
                        return
            if not self._alive.is_set():
                if not self._restart(verify, backoff):
                    backoff = min(backoff * 2, _RESTART_BACKOFF_S[1])
                    continue
                backoff = _RESTART_BACKOFF_S[0]
            self._send_some()

    def _stopped(self) -> bool:
        return self._stopping

    def _restart(self, verify: str, backoff: float) -> bool:
        time.sleep(backoff)
        with self._lock:
            if self._stopping:
                return False
        self._restarts.inc()
        try:
            self._spawn(available=False, verify=verify)  # the child probes before writing
        except (WriterStartError, OSError) as e:
            log.error("capture: cannot start the writer process again: %s", e)
            return False
        return True

    def _send_some(self) -> None:
        """Send the records waiting (up to a frame) or the next flush/close request."""
        with self._lock:
            if not self._pending:
                return
            head = self._pending[0]
            if isinstance(head, _Marker):
                self._pending.popleft()
                taken: list[tuple[str, list[Any]]] = []
                marker: _Marker | None = head
            else:
                marker = None
                taken, size = [], 0
                while self._pending and size < _FRAME_ITEMS:
                    item = self._pending[0]
                    if isinstance(item, _Marker):
                        break
                    self._pending.popleft()
                    taken.append(item)
                    size += len(item[1])
        if marker is not None:
            self._send_marker(marker)
            return
        by_feed: dict[str, list[Any]] = {}
        for feed, items in taken:
            pack = FEEDS[feed].pack
            by_feed.setdefault(feed, []).extend([pack(i) for i in items])
        sent: dict[str, int] = {}
        for feed, items in taken:
            table = FEEDS[feed].table
            sent[table] = sent.get(table, 0) + len(items)
        with self._lock:
            self._seq += 1
            seq = self._seq
            for table, count in sent.items():
                self._pending_rows[table] -= count
                self._pending_total -= count
            self._unacked[seq] = sent
            self._unacked_total += size
            self._sending = seq
        try:
            self._send(("records", seq, list(by_feed.items())))
        except OSError:
            # The child is gone and never got these (the listener counts only what it held and
            # leaves this frame to us): they go back to the front for the next child.
            with self._lock:
                self._sending = None
                entry = self._unacked.pop(seq, None)
                if entry is None:
                    return  # the listener counted them lost already (writer_died)
                self._unacked_total -= sum(entry.values())
                for feed, items in reversed(taken):
                    self._pending.appendleft((feed, items))
                    self._pending_rows[FEEDS[feed].table] += len(items)
                    self._pending_total += len(items)
            time.sleep(0.1)  # the listener notices the exit; the feeder then restarts it
            return
        with self._lock:
            self._sending = None
            # Written, but the child died before the listener could count this frame with
            # the rest of what it held: counted here (it may have been read, so not resent).
            dead = None if self._alive.is_set() else self._unacked.pop(seq, None)
            if dead is not None:
                self._unacked_total -= sum(dead.values())
        for table, count in (dead or {}).items():
            self.drop(table, count, "writer_died")

    def _send_marker(self, marker: _Marker) -> None:
        with self._lock:
            if marker.kind == "close":
                self._flushes[-1] = marker
            else:
                self._seq += 1
                self._flushes[self._seq] = marker
            seq = -1 if marker.kind == "close" else self._seq
        try:
            self._send((marker.kind, seq, marker.timeout))
        except OSError:
            with self._lock:
                self._flushes.pop(seq, None)
            marker.done.set()  # ok stays False: the child is gone
            if marker.kind == "close":
                with self._lock:
                    self._stopping = True

    def _spool_unsent(self) -> None:
        """At close: records the child never got are converted and spooled here."""
        with self._lock:
            left = [item for item in self._pending if not isinstance(item, _Marker)]
            self._pending.clear()
            self._pending_total = 0
            self._pending_rows = dict.fromkeys(TABLES, 0)
        if not left:
            return
        settings = self._settings
        writer = BatchWriter(
            TABLES,
            settings.spool_dir,
            max_buffered=sys.maxsize,
            batch_rows=settings.batch_rows,
            max_age_s=settings.max_age_s,
        )
        converters = _converters(_converter(settings))
        for feed, items in left:
            spec = FEEDS[feed]
            writer.submit(spec.table, [spec.pack(i) for i in items], converters[feed])
        writer.close(0.0)  # never started: everything goes to the spool
        log.warning(
            "capture: the writer process was gone at close; %d records spooled to %s",
            sum(len(items) for _, items in left),
            settings.spool_dir,
        )

    def _state(self) -> tuple[dict[str, int], dict[str, int], bool]:
        return {}, {}, True  # what the writer holds comes from the child's report

    def _unsent(self) -> dict[str, int]:
        with self._lock:
            unsent = dict(self._pending_rows)
            for by_table in self._unacked.values():
                for table, count in by_table.items():
                    unsent[table] += count
        return unsent


class _Unsent:
    """``meshtap_capture_unsent_rows{table}``: records in the runtime, not yet taken by the
    writer process (waiting to be sent, or sent and not yet acknowledged)."""

    def __init__(self, unsent: Any) -> None:
        self._unsent = unsent

    def collect(self) -> Iterator[Metric]:
        gauge = GaugeMetricFamily(
            "meshtap_capture_unsent_rows",
            "Capture records in the runtime waiting for the writer process to take them.",
            labels=["table"],
        )
        for table, count in self._unsent().items():
            gauge.add_metric([table], count)
        yield gauge


def _encode(message: Any) -> bytes:
    """A message as bytes: ``marshal`` when it holds only built-in values (records packed by
    the feeds: four times faster to read back than a pickle, which is what the writer pays for
    every record), else ``pickle`` (settings, ``SpanRecord``s). Both ends are the same
    interpreter, and the data never leaves the machine, so marshal's format is safe here."""
    try:
        return b"M" + marshal.dumps(message, 4)
    except ValueError:  # something marshal does not know (a dataclass)
        return b"P" + pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)


def _decode(data: bytes) -> Any:
    body = memoryview(data)[1:]
    return marshal.loads(body) if data[:1] == b"M" else pickle.loads(body)


class _MergedCollector:
    """This side's registry plus the child's last report, summed sample by sample."""

    def __init__(self, registry: CollectorRegistry, child_text: Any) -> None:
        self._registry = registry
        self._child_text = child_text

    def describe(self) -> Iterator[Metric]:
        return iter(self._registry.collect())

    def collect(self) -> Iterator[Metric]:
        child = {m.name: m for m in text_string_to_metric_families(self._child_text())}
        for family in self._registry.collect():
            other = child.pop(family.name, None)
            if other is None:
                yield family
                continue
            values: dict[tuple[str, tuple[tuple[str, str], ...]], Sample] = {}
            for sample in family.samples:
                values[(sample.name, tuple(sorted(sample.labels.items())))] = sample
            for sample in other.samples:
                key = (sample.name, tuple(sorted(sample.labels.items())))
                mine = values.get(key)
                if mine is None or family.name == _UP_GAUGE:
                    values[key] = sample
                elif not sample.name.endswith("_created"):
                    values[key] = mine._replace(value=mine.value + sample.value)
            merged = Metric(family.name, family.documentation, family.type, family.unit)
            merged.samples = list(values.values())
            yield merged
        yield from child.values()


def _converter(settings: WriterSettings) -> RowConverter:
    return RowConverter(
        Redactor.build(settings.redact_fields, settings.redact_extensions, settings.redaction_key)
    )


def _converters(converter: RowConverter) -> dict[str, Any]:
    return {name: functools.partial(feed.columns, converter) for name, feed in FEEDS.items()}


# --- the child --------------------------------------------------------------------------------


class _Forward(logging.Handler):
    """Sends the child's log records to the parent, which logs them."""

    def __init__(self, send: Any) -> None:
        super().__init__()
        self._send = send

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = record.getMessage()
            if record.exc_info:
                text += "\n" + logging.Formatter().formatException(record.exc_info)
            self._send(("log", record.levelno, record.name, text))
        except Exception:  # the parent is gone: nobody to tell
            pass


class _Child:
    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._send_lock = threading.Lock()
        self._parent = os.getppid()
        self._stop = threading.Event()

    def send(self, message: Any) -> None:
        """Send to the parent; if it is gone, the next receive says so (end of file)."""
        data = _encode(message)
        with self._send_lock, contextlib.suppress(OSError):
            self._conn.send_bytes(data)

    def run(self) -> int:
        kind, settings, available, verify = _decode(self._conn.recv_bytes())
        assert kind == "config"
        assert isinstance(settings, WriterSettings)
        root = logging.getLogger()
        root.handlers[:] = [_Forward(self.send)]
        root.setLevel(settings.log_level)
        converters = _converters(_converter(settings))
        writer = BatchWriter(
            TABLES,
            settings.spool_dir,
            max_buffered=settings.max_buffered,
            batch_rows=settings.batch_rows,
            max_age_s=settings.max_age_s,
        )
        try:
            client = ClickHouse.open(settings.url, connect_timeout=settings.connect_timeout_s)
            if available:  # load the driver and connect now, not on the first batch
                with contextlib.suppress(ClickhouseError):
                    client.ping()
            try:
                writer.start(
                    client, available=available, verify=migrate if verify == "migrate" else check
                )
            except BaseException:
                client.close()
                raise
        except OSError as e:  # the spool directory (the client opens no files or sockets yet)
            self.send(("ready", str(e), "spool"))
            return 1
        except Exception as e:
            self.send(("ready", f"{type(e).__name__}: {e}", "other"))
            return 1
        # Batches are short-lived lists and tuples with no cycles: collecting them generation
        # by generation costs more than the conversion itself.
        gc.freeze()
        gc.set_threshold(100_000, 50, 50)
        sys.setswitchinterval(_CHILD_SWITCH_INTERVAL_S)
        self.send(("ready", None, ""))
        threading.Thread(target=self._report, args=(writer,), daemon=True).start()
        try:
            return self._serve(writer, converters, settings)
        finally:
            self._stop.set()

    def _serve(self, writer: BatchWriter, converters: dict[str, Any], settings: Any) -> int:
        while True:
            try:
                message = _decode(self._conn.recv_bytes())
            except (EOFError, OSError):
                # The runtime exited without closing us (SIGKILL, crash): keep what we hold.
                writer.close(settings.close_timeout_s)
                return 0
            kind = message[0]
            if kind == "records":
                _, seq, batches = message
                for feed, packed in batches:
                    # Converted here, on the thread that receives: the writer thread is then
                    # free to insert the previous batch meanwhile (waiting for ClickHouse
                    # releases the interpreter lock).
                    table = FEEDS[feed].table
                    writer.submit_columns(table, writer.convert(table, converters[feed], packed))
                self.send(("ack", seq, *writer.held()))
            elif kind == "flush":
                _, seq, timeout = message
                ok = writer.flush(timeout)
                self.send(("flushed", seq, ok, *writer.held()))
            elif kind == "close":
                _, _, timeout = message
                ok = writer.close(timeout)
                self._stop.set()
                self.send(("closed", ok, generate_latest(writer.metrics.registry).decode()))
                return 0

    def _report(self, writer: BatchWriter) -> None:
        while not self._stop.wait(_STATUS_INTERVAL_S):
            if os.getppid() != self._parent:  # re-parented: the runtime is gone
                writer.close(1.0)
                os._exit(0)
            text = generate_latest(writer.metrics.registry).decode()
            self.send(("status", *writer.held(), text))


def main(argv: Sequence[str]) -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole process group
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the runtime closes us when it is done
    conn = Connection(int(argv[1]))
    return _Child(conn).run()
