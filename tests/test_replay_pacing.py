"""The pacing engine on its own: timing, scaling, rate, idle gaps, per-key order, stop, errors.

Margins are generous (the machine is shared); the tight figures come from
bench/replay_throughput.py.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

import pytest

from replay import Pacer, Pacing

MS = 1_000_000


@dataclass(frozen=True)
class Item:
    key: str
    seq: int
    published_ns: int


async def chunks(items: Sequence[Item], size: int = 100) -> AsyncIterator[Sequence[Item]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


class Recorder:
    def __init__(self, delay_s: float = 0.0, slow_key: str | None = None) -> None:
        self.sent: list[tuple[float, Item]] = []
        self.delay_s = delay_s
        self.slow_key = slow_key
        self.in_flight: set[str] = set()
        self.overlaps = 0

    async def send(self, lane: int, batch: Sequence[Item]) -> None:
        keys = {i.key for i in batch}
        if keys & self.in_flight:
            self.overlaps += 1  # a key sent while its previous batch is still in flight
        self.in_flight |= keys
        now = time.monotonic()
        self.sent.extend((now, i) for i in batch)
        if self.slow_key in keys:
            await asyncio.sleep(0.3)
        elif self.delay_s:
            await asyncio.sleep(self.delay_s)
        self.in_flight -= keys


def pacer(pacing: Pacing, recorder: Recorder, **kwargs: int) -> Pacer[Item]:
    return Pacer(
        pacing,
        recorder.send,
        key=lambda i: i.key,
        published_ns=lambda i: i.published_ns,
        **kwargs,
    )


async def test_max_speed_keeps_every_keys_order_and_runs_keys_in_parallel() -> None:
    rng = random.Random(7)
    items = [Item(f"k{rng.randrange(200)}", n, n) for n in range(20_000)]
    recorder = Recorder(delay_s=0.0005)
    report = await pacer(Pacing(), recorder, lanes=8).run(chunks(items))
    assert report.sent == len(items)
    assert report.error is None
    last: dict[str, int] = {}
    for _, item in recorder.sent:
        assert item.seq > last.get(item.key, -1), item
        last[item.key] = item.seq
    assert recorder.overlaps == 0
    assert report.timing_errors_s == ()


async def test_a_slow_key_delays_only_its_own_lane() -> None:
    items = [Item("slow" if n == 0 else f"k{n}", n, n * 10 * MS) for n in range(30)]
    recorder = Recorder(slow_key="slow")
    await pacer(Pacing(factor=1.0), recorder, lanes=16).run(chunks(items))
    started = recorder.sent[0][0]
    sent_at = {i.seq: t - started for t, i in recorder.sent}
    # Others keep their 10 ms schedule while the slow key's lane is busy for 300 ms.
    on_time = [n for n in range(1, 30) if abs(sent_at[n] - n * 0.010) < 0.15]
    assert len(on_time) >= 20, sent_at


async def test_original_timing_is_kept() -> None:
    items = [Item(f"k{n % 5}", n, n * 20 * MS) for n in range(50)]
    recorder = Recorder()
    report = await pacer(Pacing(factor=1.0), recorder).run(chunks(items))
    first = recorder.sent[0][0]
    for at, item in recorder.sent:
        assert abs((at - first) - item.seq * 0.020) < 0.25, (item, at - first)
    assert 0.9 < report.duration_s < 2.5
    assert report.timing_ms(50) < 20
    assert len(report.timing_errors_s) == 50


async def test_scaled_rate_and_idle_gap() -> None:
    items = [Item(f"k{n % 3}", n, n * 100 * MS) for n in range(21)]  # 2 s of traffic
    fast = await pacer(Pacing(factor=10.0), Recorder()).run(chunks(items))
    assert 0.15 < fast.duration_s < 0.8
    slow_half = await pacer(Pacing(factor=4.0), Recorder()).run(chunks(items))
    assert 0.45 < slow_half.duration_s < 1.2
    rate = await pacer(Pacing(rate=50.0), Recorder()).run(chunks(items))
    assert 0.35 < rate.duration_s < 1.0  # 20 intervals at 50/s
    gap = [Item("k", n, (0 if n < 5 else 3600_000) * MS + n) for n in range(10)]
    compressed = await pacer(Pacing(factor=1.0, max_idle_gap_s=0.2), Recorder()).run(chunks(gap))
    assert compressed.duration_s < 1.5  # an hour of silence became 0.2 s


async def test_stop_sends_nothing_more() -> None:
    items = [Item(f"k{n % 4}", n, n * 10 * MS) for n in range(200)]
    recorder = Recorder()
    engine = pacer(Pacing(factor=1.0), recorder)
    task = asyncio.create_task(engine.run(chunks(items)))
    await asyncio.sleep(0.3)
    engine.stop()
    report = await task
    assert report.stopped
    assert 5 < report.sent < 150
    assert len(recorder.sent) == report.sent
    await asyncio.sleep(0.2)
    assert len(recorder.sent) == report.sent


async def test_a_failing_send_ends_the_run_with_its_error() -> None:
    calls = 0

    async def send(lane: int, batch: Sequence[Item]) -> None:
        nonlocal calls
        calls += 1
        if calls == 3:
            raise ConnectionError("gone")

    items = [Item("k", n, n) for n in range(50)]
    engine: Pacer[Item] = Pacer(
        Pacing(rate=200.0), send, key=lambda i: i.key, published_ns=lambda i: i.published_ns
    )
    report = await engine.run(chunks(items))
    assert isinstance(report.error, ConnectionError)
    assert report.sent == 2
    assert not report.stopped


def test_bad_lane_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="lanes"):
        pacer(Pacing(), Recorder(), lanes=0)
