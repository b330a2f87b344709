"""The blocking client: `AsyncMeshClient` driven from a private event loop thread.

One implementation serves both styles, so the sync client has the same retries, reconnects,
heartbeats and tracing; each call hands a coroutine to the loop and waits for its result.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Iterable, Iterator, Sequence
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, Literal, TypeVar

from opentelemetry import context as otel_context
from opentelemetry.trace import Span, Tracer

from runtime._events import CloudEvent
from runtime.client._async import AsyncMeshClient, Backoff, Delivery, Handler, Mode, Subscription

T = TypeVar("T")


class _Loop:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(
            target=self.loop.run_forever, name="meshtap-client", daemon=True
        )
        self.thread.start()

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        # The caller's OpenTelemetry context travels along (publish stamps it as traceparent).
        ctx = otel_context.get_current()

        async def in_context() -> T:
            token = otel_context.attach(ctx)
            try:
                return await coroutine
            finally:
                otel_context.detach(token)

        return asyncio.run_coroutine_threadsafe(in_context(), self.loop).result(timeout)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)
        self.loop.close()


class SyncDelivery:
    """A received event (see `Delivery`), settled with blocking calls."""

    def __init__(self, delivery: Delivery, loop: _Loop) -> None:
        self._delivery = delivery
        self._loop = loop
        self.event = delivery.event
        self.topic = delivery.topic
        self.group = delivery.group
        self.attempt = delivery.attempt

    @property
    def span(self) -> Span:
        return self._delivery.span

    @property
    def is_request(self) -> bool:
        return self._delivery.is_request

    def ack(self) -> None:
        self._loop.run(self._delivery.ack())

    def nack(self, reason: str = "") -> None:
        self._loop.run(self._delivery.nack(reason))

    def reply(self, event: CloudEvent) -> None:
        self._loop.run(self._delivery.reply(event))


class SyncSubscription:
    """Iterate for deliveries (`for delivery in subscription`); `close()` ends it."""

    def __init__(self, subscription: Subscription, loop: _Loop) -> None:
        self._subscription = subscription
        self._loop = loop

    def __iter__(self) -> Iterator[SyncDelivery]:
        return self

    def __next__(self) -> SyncDelivery:
        try:
            delivery = self._loop.run(self._subscription.__anext__())
        except StopAsyncIteration:
            raise StopIteration from None
        return SyncDelivery(delivery, self._loop)

    def next(self, timeout: float | None = None) -> SyncDelivery:
        """The next delivery within `timeout` seconds (TimeoutError after)."""
        try:
            delivery = self._loop.run(self._subscription.next(timeout))
        except FutureTimeout:
            raise TimeoutError from None
        return SyncDelivery(delivery, self._loop)

    def close(self) -> None:
        self._loop.run(self._subscription.close())

    def __enter__(self) -> SyncSubscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class MeshClient:
    """Blocking client of a Meshtap runtime; the same options and methods as `AsyncMeshClient`.

    Use as `with MeshClient("127.0.0.1:10205") as client:`. Handlers passed to `subscribe` run
    on the client's own thread.
    """

    def __init__(
        self,
        target: str | None = None,
        *,
        http_url: str | None = None,
        timeout_s: float = 10.0,
        backoff: Backoff | None = None,
        heartbeat_interval_s: float = 30.0,
        tracer: Tracer | None = None,
        token: str | None = None,
        tls_ca: str | None = None,
        tls_cert: str | None = None,
        tls_key: str | None = None,
    ) -> None:
        self._loop = _Loop()

        async def make() -> AsyncMeshClient:
            return AsyncMeshClient(
                target,
                http_url=http_url,
                timeout_s=timeout_s,
                backoff=backoff,
                heartbeat_interval_s=heartbeat_interval_s,
                tracer=tracer,
                token=token,
                tls_ca=tls_ca,
                tls_cert=tls_cert,
                tls_key=tls_key,
            )

        self._client = self._loop.run(make())

    def __enter__(self) -> MeshClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def publish(
        self, topic: str, event: CloudEvent, *, via: Literal["grpc", "http"] = "grpc"
    ) -> str:
        return self._loop.run(self._client.publish(topic, event, via=via))

    def publish_batch(self, topic: str, events: Iterable[CloudEvent]) -> list[str]:
        return self._loop.run(self._client.publish_batch(topic, list(events)))

    def request(self, topic: str, event: CloudEvent, *, timeout_s: float = 5.0) -> CloudEvent:
        return self._loop.run(self._client.request(topic, event, timeout_s=timeout_s))

    def subscribe(
        self,
        topics: str | Sequence[str],
        group: str,
        *,
        mode: Mode = "clustering",
        auto_ack: bool = True,
        handler: Handler | None = None,
    ) -> SyncSubscription:
        subscription = self._loop.run(
            self._client.subscribe(topics, group, mode=mode, auto_ack=auto_ack, handler=handler)
        )
        return SyncSubscription(subscription, self._loop)

    def heartbeat(self, group: str, topics: Sequence[str]) -> bool:
        return self._loop.run(self._client.heartbeat(group, topics))

    def close(self) -> None:
        if self._loop.thread.is_alive():
            self._loop.run(self._client.close())
            self._loop.stop()
