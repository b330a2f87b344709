"""Running a replay as a job: checkpoints, pause/resume/cancel, resume without duplicates.

:func:`run_replay` plans (the dry run and the guard), then paces the selection into the target,
and every ``tick_s`` hands a :class:`Checkpoint` and :class:`Progress` to the job's store
(:class:`ReplayJobStore`: a file here, a Django row in meshadmin), which answers with the
command to follow (run, pause, cancel).

**What a resume guarantees.** A checkpoint holds, per pacing lane, the order key of the last
event the target *acknowledged* (lanes send their keys' events in order, one batch at a time, so
everything of that lane up to the mark is in). Writing the checkpoint is not atomic with
sending, so after a crash the batches acknowledged since the last checkpoint -- at most
``tick_s`` of sending -- are unknown to it. They are recognised by their ids: a replayed event's
id is ``uuid5(replay id, original)`` (deterministic), and with ``reconcile=`` (the capture store
of the target mesh) the resume first waits ``settle_s`` (longer than the capture's flush interval,
so everything the target accepted before the crash is recorded) and then skips every event whose
id the capture store holds for this replay. So:

* same mesh with capture into the store passed as ``reconcile``: **no event is sent twice**,
  provided the target's capture recorded its accepted events within ``settle_s`` (default 2 s;
  the recorder flushes every 250 ms) and the target kept running;
* without ``reconcile`` (a mesh whose capture we cannot read): at most the batches acknowledged
  in the last ``tick_s`` before the crash are sent again -- with the same ids, so a consumer that
  de-duplicates by id sees each once (at-least-once, effectively-once for id-aware consumers).

A batch the target refused or never answered is not marked, so nothing is lost either way.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import os
import tempfile
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from opentelemetry.trace import Tracer

from replay._errors import ReplayError
from replay._pacing import Pacer, PacingReport, lane_of
from replay._select import (
    DryRun,
    OrderKey,
    Selection,
    dry_run,
    order_key,
    partition_of,
    streaming_plan,
)
from replay._spec import ReplaySpec
from replay._targets import Target, replayed_event, replayed_id
from tracing import EventRow, replayed_event_ids
from tracing.clickhouse import ClickHouse

__all__ = [
    "Checkpoint",
    "Command",
    "FileJobStore",
    "MemoryJobStore",
    "Progress",
    "ReplayJobStore",
    "ReplayResult",
    "run_replay",
]

_CHUNK: Final = 2_000
_CLOCK_SKEW_NS: Final = 300 * 1_000_000_000
DEFAULT_LANES: Final = 16


class Command(enum.StrEnum):
    RUN = "run"
    PAUSE = "pause"
    CANCEL = "cancel"


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """Where a replay stands: per lane, the order key of the last acknowledged event."""

    replay_id: str
    lanes: int
    high_water: tuple[OrderKey | None, ...]
    sent: int
    """Events in the target, over every run of the job."""
    started_ns: int
    """Wall time the job first sent (bounds the reconciliation lookup)."""

    def done(self, row: EventRow) -> bool:
        mark = self.high_water[lane_of(partition_of(row), self.lanes)]
        return mark is not None and order_key(row) <= mark

    def to_json(self) -> dict[str, Any]:
        return {
            "replay_id": self.replay_id,
            "lanes": self.lanes,
            "high_water": [list(m) if m else None for m in self.high_water],
            "sent": self.sent,
            "started_ns": self.started_ns,
        }

    @classmethod
    def from_json(cls, document: dict[str, Any]) -> Checkpoint:
        return cls(
            replay_id=str(document["replay_id"]),
            lanes=int(document["lanes"]),
            high_water=tuple(
                (int(m[0]), str(m[1]), str(m[2])) if m else None for m in document["high_water"]
            ),
            sent=int(document["sent"]),
            started_ns=int(document["started_ns"]),
        )


@dataclass(frozen=True, slots=True)
class Progress:
    total: int
    """Events selected (while a streamed selection is read: the count query's bound)."""
    sent: int
    """Events in the target, this run's and earlier runs' of the job."""
    skipped: int
    """Events this run did not send because an earlier run had."""
    failed: int
    """Events in batches the target did not take."""
    elapsed_s: float
    status: str = "running"

    @property
    def rate(self) -> float:
        return self.sent / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "sent": self.sent,
            "skipped": self.skipped,
            "failed": self.failed,
            "elapsed_s": round(self.elapsed_s, 3),
            "status": self.status,
        }


class ReplayJobStore:
    """Where a job keeps its checkpoint and learns what to do. Called from a worker thread."""

    def load(self) -> Checkpoint | None:
        raise NotImplementedError

    def save(self, checkpoint: Checkpoint, progress: Progress) -> Command:
        raise NotImplementedError


@dataclass
class MemoryJobStore(ReplayJobStore):
    """In-process: ``command`` can be set from another task (pause/cancel)."""

    checkpoint: Checkpoint | None = None
    progress: Progress | None = None
    command: Command = Command.RUN
    history: list[Progress] = field(default_factory=list)

    def load(self) -> Checkpoint | None:
        return self.checkpoint

    def save(self, checkpoint: Checkpoint, progress: Progress) -> Command:
        self.checkpoint, self.progress = checkpoint, progress
        self.history.append(progress)
        return self.command


class FileJobStore(ReplayJobStore):
    """A JSON file (written atomically: temp file + rename); the command is read from
    ``<path>.command`` (``pause`` / ``cancel``) if that file exists."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def load(self) -> Checkpoint | None:
        try:
            document = json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        return Checkpoint.from_json(document["checkpoint"])

    def save(self, checkpoint: Checkpoint, progress: Progress) -> Command:
        text = json.dumps({"checkpoint": checkpoint.to_json(), "progress": progress.to_json()})
        fd, temp = tempfile.mkstemp(dir=self.path.parent, prefix=self.path.name + ".")
        with os.fdopen(fd, "w") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temp, self.path)
        command = self.path.with_name(self.path.name + ".command")
        with contextlib.suppress(FileNotFoundError):
            return Command(command.read_text().strip())
        return Command.RUN


@dataclass(frozen=True, slots=True)
class ReplayResult:
    replay_id: str
    status: str
    """``completed``, ``paused``, ``cancelled`` or ``failed``."""
    total: int
    sent: int
    skipped: int
    failed: int
    duration_s: float
    timing_p50_ms: float
    timing_p99_ms: float
    dry_run: DryRun
    error: str = ""
    retryable: bool = False
    checkpoint: Checkpoint | None = None

    sent_this_run: int = 0

    @property
    def rate(self) -> float:
        """Events per second this run achieved."""
        return self.sent_this_run / self.duration_s if self.duration_s > 0 else 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "replay_id": self.replay_id,
            "status": self.status,
            "total": self.total,
            "sent": self.sent,
            "skipped": self.skipped,
            "failed": self.failed,
            "duration_s": round(self.duration_s, 3),
            "rate": round(self.rate, 1),
            "timing_p50_ms": round(self.timing_p50_ms, 3),
            "timing_p99_ms": round(self.timing_p99_ms, 3),
            "error": self.error,
            "retryable": self.retryable,
        }


async def _chunks(selection: Selection, skip: Any) -> AsyncIterator[list[EventRow]]:
    """The selection's rows in chunks, minus those a resume skips; a ClickHouse stream is read
    on a worker thread so the pacing loop never blocks on it."""
    rows: Iterator[EventRow] = selection.rows()

    def next_chunk() -> list[EventRow]:
        chunk = []
        for row in rows:
            if not skip(row):
                chunk.append(row)
                if len(chunk) >= _CHUNK:
                    break
        return chunk

    # As fast as possible, a chunk is read on the loop itself: the sends of the previous one are
    # in flight meanwhile, and a reader thread would only fight the loop for the interpreter
    # lock (measured: slower). Paced, a thread keeps the loop's timing free of reads.
    inline = selection.kept or selection.spec.pacing.as_fast_as_possible
    while True:
        chunk = next_chunk() if inline else await asyncio.to_thread(next_chunk)
        if not chunk:
            return
        yield chunk
        await asyncio.sleep(0)  # let the lanes take this chunk before reading the next


async def run_replay(
    client: ClickHouse,
    spec: ReplaySpec,
    target: Target,
    *,
    replay_id: str,
    job: ReplayJobStore | None = None,
    reconcile: ClickHouse | None = None,
    settle_s: float = 2.0,
    tracer: Tracer | None = None,
    lanes: int = DEFAULT_LANES,
    max_batch: int = 500,
    tick_s: float = 0.5,
    selection: Selection | None = None,
) -> ReplayResult:
    """Run (or resume) the replay ``replay_id`` of ``spec`` into ``target``; see the module
    docstring. Errors of planning (:class:`InvalidSpec`, :class:`NoEventsMatched`, the guard)
    are raised before anything is sent. A fresh run whose guard one count query settles
    (sandbox targets, the window's bound within ``max_events``) is sent while it is read;
    otherwise, and on resume, the whole selection is read (the dry run) first. A target
    failure ends the run with status ``failed``, the reason and ``retryable``, its checkpoint
    saved for a resume."""
    job = job or MemoryJobStore()
    previous = await asyncio.to_thread(job.load)
    if selection is None and previous is None:
        # A fresh run whose guard a count settles is sent while it is read.
        selection = await asyncio.to_thread(streaming_plan, client, spec)
    if selection is None:
        selection = await asyncio.to_thread(dry_run, client, spec)
    if previous is not None and previous.replay_id != replay_id:
        raise ReplayError(
            f"the job's checkpoint belongs to replay {previous.replay_id!r}, not {replay_id!r}; "
            f"resume with that replay id or start a new job"
        )
    lanes = previous.lanes if previous is not None else lanes
    high_water: list[OrderKey | None] = (
        list(previous.high_water) if previous is not None else [None] * lanes
    )
    started_ns = previous.started_ns if previous is not None else time.time_ns()

    already: set[str] = set()
    if previous is not None and reconcile is not None:
        await asyncio.sleep(settle_s)
        already = await asyncio.to_thread(
            replayed_event_ids,
            reconcile,
            replay_id,
            selection.target_topics,
            started_ns - _CLOCK_SKEW_NS,
        )
    skipped = 0

    def skip(row: EventRow) -> bool:
        nonlocal skipped
        mark = high_water[lane_of(partition_of(row), lanes)]
        if (mark is not None and order_key(row) <= mark) or (
            already and replayed_id(replay_id, row) in already
        ):
            skipped += 1
            return True
        return False

    failed = 0

    async def send(lane: int, batch: Sequence[EventRow]) -> None:
        nonlocal failed
        start = 0
        while start < len(batch):
            topic = batch[start].topic
            end = start + 1
            while end < len(batch) and batch[end].topic == topic:
                end += 1
            target_topic = spec.target_topic(topic)
            events = [replayed_event(r, replay_id, target_topic, tracer) for r in batch[start:end]]
            try:
                await target.send(target_topic, events)
            except BaseException:
                failed += len(batch) - start
                raise
            high_water[lane] = order_key(batch[end - 1])
            start = end

    pacer: Pacer[EventRow] = Pacer(
        spec.pacing,
        send,
        key=partition_of,
        published_ns=lambda r: r.published_ns,
        lanes=lanes,
        max_batch=max_batch,
    )
    loop = asyncio.get_running_loop()
    began = loop.time()

    def snapshot(status: str) -> tuple[Checkpoint, Progress]:
        checkpoint = Checkpoint(
            replay_id, lanes, tuple(high_water), skipped + pacer.sent, started_ns
        )
        progress = Progress(
            total=selection.estimate if selection.streaming else selection.report.events,
            # In the target: what this run sent, plus what it skipped as sent before (by the
            # checkpoint or found by the reconciliation).
            sent=skipped + pacer.sent,
            skipped=skipped,
            failed=failed,
            elapsed_s=loop.time() - began,
            status=status,
        )
        return checkpoint, progress

    final_command = Command.RUN

    async def ticker() -> None:
        nonlocal final_command
        while True:
            await asyncio.sleep(tick_s)
            command = await asyncio.to_thread(job.save, *snapshot("running"))
            if command is not Command.RUN:
                final_command = command
                pacer.stop()

    ticking = asyncio.create_task(ticker())
    try:
        outcome: PacingReport = await pacer.run(_chunks(selection, skip))
    finally:
        ticking.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await ticking
    error = outcome.error
    if error is not None:
        status = "failed"
    elif outcome.stopped:
        status = "cancelled" if final_command is Command.CANCEL else "paused"
    else:
        status = "completed"
    if selection.streaming and status == "completed":
        selection.estimate = selection.report.events  # the stream is read: exact now
    checkpoint, progress = snapshot(status)
    await asyncio.to_thread(job.save, checkpoint, progress)
    if error is not None and not isinstance(error, Exception):
        raise error  # cancellation of the task itself
    report = selection.report
    return ReplayResult(
        replay_id=replay_id,
        status=status,
        total=progress.total,
        sent=progress.sent,
        skipped=skipped,
        failed=failed,
        duration_s=outcome.duration_s,
        timing_p50_ms=outcome.timing_ms(50),
        timing_p99_ms=outcome.timing_ms(99),
        dry_run=report,
        error=str(error) if error is not None else "",
        retryable=bool(getattr(error, "retryable", False)),
        checkpoint=checkpoint,
        sent_this_run=outcome.sent,
    )
