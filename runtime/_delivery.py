"""Delivery: from the store to subscribers' sinks, at least once, in order per partition key.

One `Dispatcher` per runtime instance keeps one `GroupWorker` per *group key* (a clustering group,
or one broadcast subscriber). A worker reads events for its group from the store, pushes each to a
subscription of the group whose topic pattern and filters match, retries with exponential backoff
and full jitter, dead-letters to `_dlq.{group}` after the last attempt, and acknowledges.

Why it is built this way:

* Many runtime instances share one store. The store's consumer groups spread events over them;
  nothing is assigned by this process, so instances are stateless and can come and go.
* Partition-key order holds across instances without partition ownership: every keyed event knows
  its predecessor (`StoredEvent.previous`), and a worker pushes it only once the predecessor is
  settled for this group - locally known (fast path) or confirmed by the store.
* An event is acknowledged only after it is delivered or safely dead-lettered. Anything else
  (a crash, a drain that gives up on a long backoff) leaves it pending, and `reclaim` hands it to
  another consumer after `claim_idle_ms`. Workers `touch` what they hold so that slow deliveries
  are not stolen.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import zlib
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass

from runtime._bridges import hop_refusal
from runtime._capture import CaptureSink, DeliveryRecord, NullCapture
from runtime._errors import StoreUnavailable
from runtime._events import CloudEvent
from runtime._metrics import RuntimeMetrics
from runtime._push import Outcome, Pusher, PushResult, SubscriberGone
from runtime._streams import served_here
from runtime._subscriptions import Subscription
from runtime._topics import dlq_topic, is_internal
from runtime._tracing import MeshTracing, attempt_ids, end_span, trace_headers
from runtime.stores import EventRef, GroupBacklog, Store, StoredEvent
from runtime.stores._base import offset_key

log = logging.getLogger("meshtap.runtime.delivery")


@dataclass(frozen=True, slots=True)
class DeliverySettings:
    claim_idle_ms: int = 30_000
    """Pending this long without a touch means the holder died; another consumer takes over."""
    max_in_flight: int = 256
    """Concurrent pushes per group key on this instance."""
    max_handouts: int = 20
    """An event handed out this often without settling is poison: it is dead-lettered."""
    refresh_interval_s: float = 1.0
    """How often subscriptions and topics are re-read from the store."""
    read_block_ms: int = 100
    """A blocked read only sees the topics it started with: this bounds how long events on a
    brand-new topic wait for the group to start reading it."""
    backlog_interval_s: float = 5.0
    retention_ms: int = 3_600_000
    """Settled events stay in the store this long (the capture store keeps them for good)."""
    trim_interval_s: float = 60.0


async def _cancel(task: asyncio.Task[None] | None, timeout_s: float = 2.0) -> None:
    """Cancel `task` and wait a bounded time: a store client may swallow the cancellation."""
    if task is None or task.done():
        return
    task.cancel()
    await asyncio.wait({task}, timeout=timeout_s)


class _Abandoned(Exception):
    """The event is left pending in the store (draining); reclaim will deliver it later."""


def pattern_covers(subscription: Subscription, topic: str) -> bool:
    """Internal topics (`_dlq.*`) are only matched by patterns that name them explicitly.

    Without this, a `#` subscriber whose sink fails would receive its own dead letters forever.
    """
    if is_internal(topic) and not subscription.topic.startswith("_"):
        return False
    return subscription.pattern.matches(topic)


class _AckBatcher:
    """Acknowledges settled events in batches: one store round trip for many events.

    Stopped by a flag, never by cancellation: a cancel landing inside a store call can be
    swallowed by the client library, which would leave shutdown waiting forever.
    """

    def __init__(self, store: Store, group_key: str) -> None:
        self._store = store
        self._group_key = group_key
        self._pending: list[EventRef] = []
        self._wake = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"ack:{self._group_key}")

    def add(self, ref: EventRef) -> None:
        self._pending.append(ref)
        self._wake.set()

    async def _run(self) -> None:
        while not (self._closing and not self._pending):
            await self._wake.wait()
            self._wake.clear()
            await asyncio.sleep(0)  # let a burst of settles join this batch
            batch, self._pending = self._pending, []
            if not batch:
                continue
            try:
                await self._store.ack(self._group_key, batch)
            except StoreUnavailable as e:
                self._pending = batch + self._pending
                if self._closing:
                    return
                log.warning("ack of %d events for %s deferred: %s", len(batch), self._group_key, e)
                await asyncio.sleep(0.5)
                self._wake.set()

    async def close(self, timeout_s: float) -> None:
        """Flush what is settled (within `timeout_s`) and stop."""
        self._closing = True
        self._wake.set()
        if self._task is not None:
            done, _ = await asyncio.wait({self._task}, timeout=timeout_s)
            if not done:
                self._task.cancel()
        if self._pending:
            log.warning(
                "%d settled events of %s could not be acknowledged before shutdown; they will be "
                "delivered again (at-least-once)",
                len(self._pending),
                self._group_key,
            )


class _Batcher:
    """Collects a batched subscription's ready events and pushes them together.

    An event joins the open batch only once its partition-key predecessor is settled, so a
    batch never holds two events of one key out of order, and a batch is pushed when it is full
    or `max_wait_ms` after its first event, whichever comes first.
    """

    def __init__(self, worker: GroupWorker, subscription: Subscription) -> None:
        self._worker = worker
        self._subscription = subscription
        self._open: list[tuple[StoredEvent, asyncio.Future[None]]] = []
        self._timer: asyncio.TimerHandle | None = None

    async def submit(self, stored: StoredEvent) -> None:
        """Returns once the batch holding `stored` is settled (raises _Abandoned if not)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        self._open.append((stored, future))
        policy = self._subscription.batch
        if len(self._open) >= policy.max_events:
            self._flush()
        elif self._timer is None:
            self._timer = loop.call_later(policy.max_wait_ms / 1000, self._flush)
        await future

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        batch, self._open = self._open, []
        if batch:
            task = asyncio.create_task(self._send(batch))
            self._worker.track(task)

    async def _send(self, batch: list[tuple[StoredEvent, asyncio.Future[None]]]) -> None:
        error: BaseException | None = None
        try:
            await self._worker.push_until_settled(self._subscription, [s for s, _ in batch])
        except (_Abandoned, SubscriberGone) as e:
            error = e
        except Exception as e:
            log.exception("batch push to %s failed unexpectedly", self._subscription.sink)
            error = e
        for _, future in batch:
            if not future.done():
                if error is None:
                    future.set_result(None)
                else:
                    future.set_exception(
                        type(error)() if isinstance(error, _Abandoned | SubscriberGone) else error
                    )


class GroupWorker:
    """Delivers the events of one group key on this instance."""

    def __init__(self, dispatcher: Dispatcher, group_key: str) -> None:
        self.group_key = group_key
        self._d = dispatcher
        self._store = dispatcher.store
        self.subscriptions: list[Subscription] = []
        self.topics: list[str] = []
        self._tracked: dict[EventRef, asyncio.Future[bool]] = {}
        self._settled: OrderedDict[EventRef, None] = OrderedDict()
        self._slots = asyncio.Semaphore(dispatcher.settings.max_in_flight)
        self._changed = asyncio.Event()
        self._room = asyncio.Event()
        self._stopping = False
        self._round_robin = 0
        self._acks = _AckBatcher(self._store, group_key)
        self._tasks: set[asyncio.Task[None]] = set()
        self._batchers: dict[str, _Batcher] = {}
        self._loop_task: asyncio.Task[None] | None = None
        self._keepalive_task: asyncio.Task[None] | None = None

    @property
    def group(self) -> str:
        return self.subscriptions[0].group if self.subscriptions else self.group_key

    def update(self, subscriptions: list[Subscription], topics: list[str]) -> None:
        self.subscriptions = sorted(subscriptions, key=lambda s: s.id)
        self.topics = topics
        self._changed.set()

    def start(self) -> None:
        self._acks.start()
        self._loop_task = asyncio.create_task(self._read_loop(), name=f"read:{self.group_key}")
        self._keepalive_task = asyncio.create_task(
            self._keepalive(), name=f"touch:{self.group_key}"
        )

    # -- reading --------------------------------------------------------------------------
    def _capacity(self) -> int:
        cap = self._d.settings.max_in_flight * 4  # waiting (ordered) events hold no slot
        return min(self._d.settings.max_in_flight, cap - len(self._tracked))

    async def _read_loop(self) -> None:
        settings = self._d.settings
        next_reclaim = 0.0
        backoff = 0.1
        while not self._stopping:
            if not self.topics or not self.subscriptions:
                self._changed.clear()
                await self._changed.wait()
                continue
            room = self._capacity()
            if room <= 0:
                self._room.clear()
                await self._room.wait()
                continue
            try:
                batch: list[StoredEvent] = []
                if time.monotonic() >= next_reclaim:
                    next_reclaim = time.monotonic() + settings.claim_idle_ms / 2000
                    batch = await self._store.reclaim(
                        self.group_key, self._d.consumer, self.topics, settings.claim_idle_ms, room
                    )
                if len(batch) < room:
                    batch += await self._store.read(
                        self.group_key,
                        self._d.consumer,
                        self.topics,
                        room - len(batch),
                        0 if batch else settings.read_block_ms,
                    )
                # Already being handled here: a store that redelivers on its own (JetStream)
                # may hand an event out again while this instance still holds it.
                batch = [s for s in batch if s.ref not in self._tracked]
                backoff = 0.1
            except StoreUnavailable as e:
                log.warning("reading for %s paused: %s", self.group_key, e)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            except Exception:  # a store bug must not end delivery for the group for good
                log.exception("reading for %s failed; trying again", self.group_key)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            if self.stopping():
                break  # read but not handled: stays pending, reclaimed later
            # Register the whole batch first, so an event whose predecessor is later in the
            # same batch waits for it locally instead of asking the store.
            batch.sort(key=lambda s: offset_key(s.ref.offset))
            for stored in batch:
                self._tracked[stored.ref] = asyncio.get_running_loop().create_future()
            for stored in batch:
                self.track(asyncio.create_task(self._handle(stored)))

    def track(self, task: asyncio.Task[None]) -> None:
        """Keep a reference to `task` until it ends; drain waits for tracked tasks."""
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _keepalive(self) -> None:
        interval = self._d.settings.claim_idle_ms / 3000
        while True:
            await asyncio.sleep(interval)
            if self._tracked:
                with contextlib.suppress(StoreUnavailable):
                    await self._store.touch(self.group_key, self._d.consumer, list(self._tracked))

    # -- handling one event -----------------------------------------------------------------
    async def _handle(self, stored: StoredEvent) -> None:
        settled = False
        try:
            if stored.previous is not None:
                await self._await_predecessor(stored.previous)
            async with self._slots:
                self._d.metrics.in_flight.inc()
                try:
                    await self._deliver(stored)
                finally:
                    self._d.metrics.in_flight.dec()
            settled = True
        except (_Abandoned, SubscriberGone):
            pass
        except Exception:
            log.exception("delivery of %s to %s failed unexpectedly", stored.ref, self.group_key)
        finally:
            future = self._tracked.pop(stored.ref)
            future.set_result(settled)
            self._room.set()

    async def _await_predecessor(self, previous: EventRef) -> None:
        delay = 0.002
        while True:
            future = self._tracked.get(previous)
            if future is not None:
                if not await asyncio.shield(future):
                    raise _Abandoned
                return
            if previous in self._settled:
                return
            if self._d.draining:
                raise _Abandoned
            try:
                if await self._store.is_settled(self.group_key, previous):
                    return
            except StoreUnavailable:
                pass
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.2)

    def _choose(self, topic: str, event: CloudEvent) -> Subscription | None:
        candidates = [
            s for s in self.subscriptions if pattern_covers(s, topic) and s.filters.matches(event)
        ]
        if not candidates:
            return None
        if len(candidates) == 1:
            return candidates[0]
        key = event.partition_key
        if key is not None:  # same key, same subscriber: keeps their state local
            return candidates[zlib.crc32(key.encode()) % len(candidates)]
        self._round_robin += 1
        return candidates[self._round_robin % len(candidates)]

    async def _deliver(self, stored: StoredEvent) -> None:
        topic, event = stored.ref.topic, stored.event
        subscription = self._choose(topic, event)
        metrics = self._d.metrics
        if subscription is None:
            metrics.filtered.labels(topic, self.group).inc()
            self._settle(stored.ref)
            return
        if stored.deliveries > self._d.settings.max_handouts:
            await self._dead_letter(
                stored,
                subscription,
                f"handed out {stored.deliveries} times without being settled (the runtime "
                "handling it may be crashing on it)",
                0,
            )
            return
        if subscription.bridge is not None:
            refusal = hop_refusal(subscription.bridge, event)
            if refusal is not None:
                await self._dead_letter(stored, subscription, refusal, 0)
                return
        if subscription.batch.max_events > 1 and subscription.protocol != "eventmesh":
            batcher = self._batchers.get(subscription.id)
            if batcher is None:
                batcher = self._batchers[subscription.id] = _Batcher(self, subscription)
            await batcher.submit(stored)
        else:
            await self.push_until_settled(subscription, [stored])

    async def push_until_settled(
        self, subscription: Subscription, batch: list[StoredEvent]
    ) -> None:
        """Push (retrying with backoff) until acknowledged, else dead-letter every event.

        Every attempt is a `process` span (`runtime._tracing`), current while the push runs and
        sent along as the push's W3C `traceparent` header.
        """
        metrics = self._d.metrics
        tracing = self._d.tracing
        group = subscription.group
        items = [(stored.ref.topic, stored.event) for stored in batch]
        retry = subscription.retry
        reason = ""
        attempt = 0
        for attempt in range(1, retry.max_attempts + 1):
            span = tracing.start_process(
                group=group,
                subscription_id=subscription.id,
                subscription_topic=subscription.topic,
                sink=subscription.sink,
                items=items,
                attempt=attempt,
            )
            try:
                with tracing.activate(span):
                    result = await self._d.pusher.push(
                        subscription, items, attempt, trace_headers=trace_headers(span)
                    )
            except BaseException:
                tracing.abandon_process(span)
                raise
            metrics.attempt_duration.labels(group).observe(result.duration_s)
            if result.outcome is Outcome.ACKED:
                outcome = "acked"
            elif result.outcome is Outcome.REJECTED or attempt == retry.max_attempts:
                outcome = "dead_lettered"
            else:
                outcome = "retry"
            tracing.end_process(span, outcome, result.status, result.error, result.error_type)
            self._record_attempt(
                subscription, batch, attempt, result, outcome, attempt_ids(span, items)
            )
            if result.outcome is Outcome.ACKED:
                now = time.time()
                for stored in batch:
                    metrics.delivered.labels(stored.ref.topic, group).inc()
                    published_ms = offset_key(stored.ref.offset)[0]
                    metrics.delivery_latency.labels(group).observe(
                        max(0.0, now - published_ms / 1000)
                    )
                    self._settle(stored.ref)
                return
            for stored in batch:
                metrics.delivery_failures.labels(stored.ref.topic, group).inc()
            reason = result.error
            if result.outcome is Outcome.REJECTED:
                break
            if attempt < retry.max_attempts:
                await self._backoff(retry.backoff_ms(attempt))
        for stored in batch:
            await self._dead_letter(stored, subscription, reason, attempt)

    def _record_attempt(
        self,
        subscription: Subscription,
        batch: list[StoredEvent],
        attempt: int,
        result: PushResult,
        outcome: str,
        ids: tuple[str, str],
    ) -> None:
        now_ns = time.time_ns()
        trace_id, span_id = ids
        records = []
        for stored in batch:
            published_ns = offset_key(stored.ref.offset)[0] * 1_000_000
            records.append(
                DeliveryRecord(
                    event_id=stored.event.id,
                    topic=stored.ref.topic,
                    group=subscription.group,
                    subscription_id=subscription.id,
                    subscriber=subscription.sink,
                    attempt=attempt,
                    outcome=outcome,
                    status_code=result.status or 0,
                    error=result.error,
                    duration_ns=int(result.duration_s * 1e9),
                    latency_ns=max(0, now_ns - published_ns),
                    attempted_ns=now_ns,
                    instance=self._d.instance,
                    trace_id=trace_id,
                    span_id=span_id,
                )
            )
        self._d.capture.record_deliveries(records)  # one hand-off per attempt, not per event

    async def _backoff(self, ceiling_ms: int) -> None:
        delay = random.uniform(ceiling_ms / 2, ceiling_ms) / 1000
        try:
            await asyncio.wait_for(self._d.drain_started.wait(), delay)
        except TimeoutError:
            return
        raise _Abandoned

    async def _dead_letter(
        self, stored: StoredEvent, subscription: Subscription, reason: str, attempts: int
    ) -> None:
        letter = stored.event.with_attributes(
            deadletterreason=reason[:1000] or "unknown",
            deadlettergroup=subscription.group,
            deadlettertopic=stored.ref.topic,
            deadletterattempts=attempts,
        )
        target = dlq_topic(subscription.group)
        span = self._d.tracing.start_dead_letter(
            topic=stored.ref.topic,
            event=stored.event,
            group=subscription.group,
            subscription_id=subscription.id,
            dead_letter_topic=target,
            reason=reason[:1000] or "unknown",
            attempts=attempts,
        )
        delay = 0.1
        try:
            while True:
                try:
                    await self._store.append(target, [letter])
                    break
                except StoreUnavailable as e:
                    if self._d.draining:
                        raise _Abandoned from e
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 5.0)
        except BaseException as e:
            end_span(span, e)
            raise
        end_span(span)
        log.info(
            "event %s on %s dead-lettered to %s after %d attempt(s): %s",
            stored.event.id,
            stored.ref.topic,
            target,
            attempts,
            reason,
        )
        self._d.metrics.dead_lettered.labels(stored.ref.topic, subscription.group).inc()
        self._settle(stored.ref)

    def _settle(self, ref: EventRef) -> None:
        self._settled[ref] = None
        if len(self._settled) > 10_000:
            self._settled.popitem(last=False)
        self._acks.add(ref)

    # -- stopping ---------------------------------------------------------------------------
    def stopping(self) -> bool:
        return self._stopping

    def stop_reading(self) -> None:
        self._stopping = True
        self._changed.set()
        self._room.set()

    async def finish(self, timeout_s: float) -> None:
        """Wait for in-flight deliveries, then acknowledge what settled."""
        await _cancel(self._loop_task)
        if self._tasks:
            _, still_running = await asyncio.wait(set(self._tasks), timeout=timeout_s)
            for task in still_running:
                await _cancel(task)
        await _cancel(self._keepalive_task)
        await self._acks.close(timeout_s=5.0)

    async def backlog(self) -> dict[str, GroupBacklog]:
        """This group key's backlog per topic."""
        return {topic: await self._store.backlog(self.group_key, [topic]) for topic in self.topics}


class Dispatcher:
    """Keeps the set of group workers in line with the subscriptions and topics in the store."""

    def __init__(
        self,
        store: Store,
        pusher: Pusher,
        metrics: RuntimeMetrics,
        *,
        consumer: str,
        instance: str = "",
        settings: DeliverySettings | None = None,
        capture: CaptureSink | None = None,
        tracing: MeshTracing | None = None,
    ) -> None:
        self.store = store
        self.instance = instance or consumer
        self.capture = capture or NullCapture()
        self.tracing = tracing or MeshTracing()
        self.pusher = pusher
        self.metrics = metrics
        self.consumer = consumer
        self.settings = settings or DeliverySettings()
        self.workers: dict[str, GroupWorker] = {}
        self.drain_started = asyncio.Event()
        self.healthy = False
        self.last_error = "not started"
        self._nudge = asyncio.Event()
        self._version: int | None = None
        self._topics: list[str] = []
        self._known_topics: frozenset[str] = frozenset()
        self._joined: set[tuple[str, str]] = set()
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def draining(self) -> bool:
        return self.drain_started.is_set()

    async def start(self) -> None:
        await self._refresh_safely()
        self._tasks = [
            asyncio.create_task(self._refresh_loop(), name="dispatcher-refresh"),
            asyncio.create_task(self._backlog_loop(), name="dispatcher-backlog"),
            asyncio.create_task(self._retention_loop(), name="dispatcher-retention"),
        ]

    def knows_topic(self, topic: str) -> bool:
        return topic in self._known_topics

    def nudge(self) -> None:
        """Re-read subscriptions and topics now (called after local API changes)."""
        self._nudge.set()

    async def _refresh_loop(self) -> None:
        while not self.draining:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._nudge.wait(), self.settings.refresh_interval_s)
            self._nudge.clear()
            if not self.draining:
                await self._refresh_safely()

    async def _refresh_safely(self) -> None:
        try:
            await self.refresh()
            self.healthy, self.last_error = True, ""
        except StoreUnavailable as e:
            self.healthy, self.last_error = False, str(e)
            log.warning("cannot refresh subscriptions: %s", e)

    async def refresh(self) -> None:
        version = await self.store.subscriptions_version()
        topics = await self.store.topics()
        if version == self._version and topics == self._topics:
            return
        documents = await self.store.subscriptions()
        by_key: dict[str, list[Subscription]] = {}
        for document in documents.values():
            subscription = Subscription.from_document(document)
            if not served_here(subscription, self.consumer):
                continue  # a gRPC stream of another instance: that instance delivers to it
            by_key.setdefault(subscription.group_key, []).append(subscription)
        for group_key, subscriptions in by_key.items():
            matched = [t for t in topics if any(pattern_covers(s, t) for s in subscriptions)]
            start_ms = min(s.created_ms for s in subscriptions)
            for topic in matched:
                if (group_key, topic) not in self._joined:
                    await self.store.join(group_key, topic, start_ms)
                    self._joined.add((group_key, topic))
            worker = self.workers.get(group_key)
            if worker is None:
                worker = self.workers[group_key] = GroupWorker(self, group_key)
                worker.update(subscriptions, matched)
                worker.start()
            else:
                worker.update(subscriptions, matched)
        for group_key in set(self.workers) - set(by_key):
            worker = self.workers.pop(group_key)
            worker.stop_reading()
            asyncio.create_task(worker.finish(timeout_s=30.0))  # noqa: RUF006
            self._joined = {j for j in self._joined if j[0] != group_key}
        # A deleted topic's consumer groups went with it: join again if it comes back.
        self._joined = {j for j in self._joined if j[1] in topics}
        self._version, self._topics = version, topics
        self._known_topics = frozenset(topics)

    async def _backlog_loop(self) -> None:
        while not self.draining:
            await asyncio.sleep(self.settings.backlog_interval_s)
            with contextlib.suppress(StoreUnavailable):
                await self.measure_backlog()

    async def measure_backlog(self) -> None:
        """Set the backlog gauges from the store (what every instance sees alike).

        Broadcast subscribers of one group have a group key each: their backlogs add up and
        the oldest unacknowledged event is the oldest of theirs.
        """
        totals: dict[str, int] = {}
        per_topic: dict[tuple[str, str], int] = {}
        oldest: dict[tuple[str, str], int | None] = {}
        for worker in list(self.workers.values()):
            for topic, backlog in (await worker.backlog()).items():
                key = (topic, worker.group)
                totals[worker.group] = totals.get(worker.group, 0) + backlog.total
                per_topic[key] = per_topic.get(key, 0) + backlog.total
                known = oldest.get(key)
                if backlog.oldest_ms is not None and (known is None or backlog.oldest_ms < known):
                    oldest[key] = backlog.oldest_ms
                else:
                    oldest.setdefault(key, None)
        now_ms = time.time_ns() // 1_000_000
        for group, total in totals.items():
            self.metrics.backlog.labels(group).set(total)
        for (topic, group), total in per_topic.items():
            self.metrics.consumer_backlog.labels(topic, group).set(total)
            ms = oldest[(topic, group)]
            age = 0.0 if ms is None else max(0.0, (now_ms - ms) / 1000)
            self.metrics.oldest_unacked_age.labels(topic, group).set(age)

    async def _retention_loop(self) -> None:
        """Trim settled events past the retention window. Every instance may do it: trimming
        is idempotent, and the store never trims what a group still needs."""
        while not self.draining:
            await asyncio.sleep(self.settings.trim_interval_s)
            await self.trim_now()

    async def trim_now(self) -> None:
        cutoff_ms = time.time_ns() // 1_000_000 - self.settings.retention_ms
        for topic in list(self._topics):
            try:
                await self.store.trim(topic, cutoff_ms)
            except StoreUnavailable as e:
                log.warning("retention trimming paused: %s", e)
                return

    async def drain(self, timeout_s: float) -> None:
        """Stop taking new events, let in-flight pushes finish, acknowledge what settled."""
        self.drain_started.set()
        for task in self._tasks:
            await _cancel(task)
        workers: Iterable[GroupWorker] = list(self.workers.values())
        for worker in workers:
            worker.stop_reading()
        await asyncio.gather(*(w.finish(timeout_s) for w in workers))
