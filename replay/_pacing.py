"""The pacing engine: send events at their scheduled times, keys in parallel, each key in order.

* :class:`Schedule` turns publish times into send offsets: original timing scaled by a factor
  (``1x``, ``10x``, ``0.5x``) with long silences cut to ``max_idle_gap_s``; a fixed rate
  (``i / rate``); or 0 (as fast as possible).
* :class:`Pacer` runs one scheduler and ``lanes`` senders on the event loop. The scheduler
  walks the events in time order, sleeps until each one is due, and hands it to the lane of
  its partition key (``crc32(key) % lanes`` -- stable across processes, which checkpoints rely
  on). A lane sends what has queued up, in order, one batch at a time, so a key's events go
  out in their original order and never overlap, also when time is scaled, while different
  keys' lanes send in parallel. A late lane delays only its own keys.
* Timing fidelity is measured where it matters: ``|actual - scheduled|`` at the moment a lane
  starts sending the batch that holds the event.

Why lanes, not a task per key: at tens of thousands of events per second, a task and a request
per event cost more than the sending itself; a lane batches whatever is due, so as fast as
possible becomes a few large requests, and at 1x it is one small request per due event.
"""

from __future__ import annotations

import asyncio
import zlib
from array import array
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final, Generic, TypeVar

from replay._spec import Pacing

__all__ = ["Pacer", "PacingReport", "Schedule", "lane_of", "percentile"]

T = TypeVar("T")
_NS: Final = 1e9
_STOP: Final = object()


class Schedule:
    """Send offsets (seconds from the start) for events given in time order."""

    def __init__(self, pacing: Pacing) -> None:
        self.pacing = pacing
        self._previous: int | None = None
        self._elapsed = 0.0
        self._count = 0

    def offset(self, published_ns: int) -> float:
        pacing = self.pacing
        index = self._count
        self._count += 1
        if pacing.rate is not None:
            return index / pacing.rate
        if pacing.factor is None:
            return 0.0
        if self._previous is not None:
            gap = max(0, published_ns - self._previous) / _NS
            if pacing.max_idle_gap_s is not None:
                gap = min(gap, pacing.max_idle_gap_s)
            self._elapsed += gap
        self._previous = published_ns
        return self._elapsed / pacing.factor


def lane_of(key: str, lanes: int) -> int:
    return zlib.crc32(key.encode()) % lanes


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


@dataclass(frozen=True, slots=True)
class PacingReport:
    sent: int
    duration_s: float
    timing_errors_s: tuple[float, ...] = ()
    """``|actual - scheduled|`` per paced event (empty as fast as possible)."""
    error: BaseException | None = None
    stopped: bool = False
    """Stopped on request (pause or cancel) before the end."""

    @property
    def rate(self) -> float:
        return self.sent / self.duration_s if self.duration_s > 0 else 0.0

    def timing_ms(self, q: float) -> float:
        return percentile(self.timing_errors_s, q) * 1000


class Pacer(Generic[T]):
    """Paces items through ``send(lane, batch)`` (in order per lane); see the module docstring.

    ``on_sent(lane, batch)`` is called after each batch the target took, in order per lane.
    :meth:`stop` asks it to stop: nothing more is handed to ``send`` (a batch in flight
    finishes), so what was not sent stays for a resume.
    """

    def __init__(
        self,
        pacing: Pacing,
        send: Callable[[int, Sequence[T]], Awaitable[None]],
        *,
        key: Callable[[T], str],
        published_ns: Callable[[T], int],
        on_sent: Callable[[int, Sequence[T]], None] = lambda lane, batch: None,
        lanes: int = 16,
        max_batch: int = 500,
    ) -> None:
        if lanes < 1 or max_batch < 1:
            raise ValueError(f"lanes ({lanes}) and max_batch ({max_batch}) must be at least 1")
        self.pacing = pacing
        self.lanes = lanes
        self.max_batch = max_batch
        self._send = send
        self._key = key
        self._published_ns = published_ns
        self._on_sent = on_sent
        self._stop = False
        self._error: BaseException | None = None
        self._sent = 0
        self._errors = array("d")

    def stop(self) -> None:
        self._stop = True

    @property
    def sent(self) -> int:
        return self._sent

    async def run(self, chunks: AsyncIterator[Sequence[T]]) -> PacingReport:
        loop = asyncio.get_running_loop()
        queues: list[asyncio.Queue[object]] = [
            asyncio.Queue(maxsize=self.max_batch * 4) for _ in range(self.lanes)
        ]
        workers = [asyncio.create_task(self._lane(i, q)) for i, q in enumerate(queues)]
        schedule = Schedule(self.pacing)
        timed = not self.pacing.as_fast_as_possible
        start = loop.time()
        try:
            async for chunk in chunks:
                for item in chunk:
                    if self._stop:
                        break
                    due = start + schedule.offset(self._published_ns(item)) if timed else 0.0
                    if timed:
                        wait = due - loop.time()
                        if wait > 0:
                            await asyncio.sleep(wait)
                    queue = queues[lane_of(self._key(item), self.lanes)]
                    if queue.full():
                        await queue.put((item, due))
                    else:
                        queue.put_nowait((item, due))
                if self._stop:
                    break
        except BaseException as e:
            self._error = self._error or e
            self._stop = True
            raise
        finally:
            for queue in queues:
                await self._put_stop(queue)
            await asyncio.gather(*workers, return_exceptions=True)
        return PacingReport(
            sent=self._sent,
            duration_s=loop.time() - start,
            timing_errors_s=tuple(self._errors),
            error=self._error,
            stopped=self._stop and self._error is None,
        )

    async def _put_stop(self, queue: asyncio.Queue[object]) -> None:
        while True:
            try:
                queue.put_nowait(_STOP)
                return
            except asyncio.QueueFull:
                if self._stop:  # nothing more will be sent: make room
                    queue.get_nowait()
                else:
                    await asyncio.sleep(0.001)

    async def _lane(self, lane: int, queue: asyncio.Queue[object]) -> None:
        loop = asyncio.get_running_loop()
        timed = not self.pacing.as_fast_as_possible
        done = False
        while not done:
            first = await queue.get()
            if first is _STOP:
                return
            pending: list[Any] = [first]
            while len(pending) < self.max_batch and not queue.empty():
                item = queue.get_nowait()
                if item is _STOP:
                    done = True
                    break
                pending.append(item)
            if self._stop:
                continue  # drop: not sent, stays for a resume
            now = loop.time()
            batch: list[T] = []
            for entry in pending:
                event, due = entry
                batch.append(event)
                if timed:
                    self._errors.append(abs(now - due))
            try:
                await self._send(lane, batch)
            except BaseException as e:
                self._error = self._error or e
                self._stop = True
                return
            self._sent += len(batch)
            self._on_sent(lane, batch)
