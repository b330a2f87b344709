"""Demo traffic for standalone mode (``--demo``): a small shop on the mesh.

An order service publishes ``shop.orders.created``; a payment service consumes it and publishes
``shop.payments.captured``; a shipping service consumes that and publishes
``shop.shipments.booked``. A few percent of charges and bookings fail once (the runtime
redelivers them), and about one order in fifty can never be paid (it is nacked until the
subscription's last attempt, then dead-lettered), so the admin has retries and dead letters to show.

Each service is a real client of the runtime through the Python SDK (``runtime.client``, gRPC
streams) with its own OpenTelemetry ``TracerProvider`` exporting to the runtime's OTLP receiver:
its spans join the mesh's, and one trace runs order service -> mesh -> payment -> mesh ->
shipping. They also serve the replay sandbox (``replay.shop.*``), so a replayed window of
orders gets payments and shipments to compare with the originals.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections import Counter
from typing import TextIO

from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from runtime.client import AsyncMeshClient, Delivery, Subscription, new_event
from runtime.server import Runtime

log = logging.getLogger("meshtap.demo")

ORDERS = "shop.orders.created"
PAYMENTS = "shop.payments.captured"
SHIPMENTS = "shop.shipments.booked"
TRANSIENT_FAILURE = 0.05
"""Share of charges and bookings that fail on their first attempt (then succeed)."""
POISON = 0.02
"""Share of orders whose card is always declined: retried, then dead-lettered."""
REPORT_EVERY_S = 10.0
REPLAY = "replay."
"""The services also consume replayed traffic (the sandbox prefix) and answer under it, so a
replay of the demo's orders has an outcome to diff."""


class _Service:
    """One demo service: its own tracer provider (service.name) and SDK client."""

    def __init__(self, name: str, runtime: Runtime) -> None:
        self.name = name
        self.provider = TracerProvider(resource=Resource.create({"service.name": name}))
        otlp = runtime.otlp
        if otlp is not None and otlp.http_port:
            endpoint = f"http://{runtime.config.host}:{otlp.http_port}/v1/traces"
            self.provider.add_span_processor(
                BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint), schedule_delay_millis=1000)
            )
        self.tracer = self.provider.get_tracer("meshtap.demo")
        self.client = AsyncMeshClient(runtime.grpc_target, tracer=self.tracer)

    async def close(self) -> None:
        await self.client.close()
        # The exporter posts to the receiver on this event loop: flush from another thread.
        await asyncio.to_thread(self.provider.shutdown)


class Demo:
    """The three services; ``start`` subscribes and starts the order flow, ``stop`` ends it."""

    def __init__(self, runtime: Runtime, *, rate_per_s: float, out: TextIO) -> None:
        if runtime.grpc is None:
            raise ValueError("the demo needs the runtime's gRPC API (--grpc-port must not be 0)")
        self._runtime = runtime
        self._interval = 1.0 / max(rate_per_s, 0.01)
        self._out = out
        self._random = random.Random()
        self.orders = _Service("order-service", runtime)
        self.payments = _Service("payment-service", runtime)
        self.shipping = _Service("shipping-service", runtime)
        self.counts: Counter[str] = Counter()
        self._subscriptions: list[Subscription] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._failed_once: set[str] = set()

    async def start(self) -> None:
        self._subscriptions.append(
            await self.payments.client.subscribe(
                [ORDERS, REPLAY + ORDERS], group="payment", handler=self._charge
            )
        )
        self._subscriptions.append(
            await self.shipping.client.subscribe(
                [PAYMENTS, REPLAY + PAYMENTS], group="shipping", handler=self._ship
            )
        )
        self._tasks.append(asyncio.create_task(self._place_orders()))
        self._tasks.append(asyncio.create_task(self._report()))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for subscription in self._subscriptions:
            await subscription.close()
        for service in (self.orders, self.payments, self.shipping):
            await service.close()
        self._print_counts()

    def _fails_once(self, key: str) -> bool:
        if key in self._failed_once or self._random.random() >= TRANSIENT_FAILURE:
            return False
        self._failed_once.add(key)
        return True

    async def _place_orders(self) -> None:
        number = 0
        while True:
            number += 1
            customer = f"customer-{self._random.randint(1, 40)}"
            order = {
                "order": number,
                "customer": customer,
                "total": round(self._random.uniform(5, 250), 2),
                "card": "declined" if self._random.random() < POISON else "ok",
            }
            with self.orders.tracer.start_as_current_span(
                "place order", kind=trace.SpanKind.PRODUCER, attributes={"shop.order": number}
            ):
                try:
                    await self.orders.client.publish(
                        ORDERS,
                        new_event(
                            "order.created",
                            order,
                            source="/demo/order-service",
                            partitionkey=customer,
                        ),
                    )
                    self.counts["ordered"] += 1
                except Exception as e:  # the demo keeps going through a hiccup
                    log.warning("demo order %d not published: %s", number, e)
            await asyncio.sleep(self._interval)

    async def _charge(self, delivery: Delivery) -> None:
        order = _json(delivery)
        with self.payments.tracer.start_as_current_span(
            "charge card", attributes={"shop.order": order["order"]}
        ) as span:
            await asyncio.sleep(self._random.uniform(0.005, 0.03))
            if order.get("card") == "declined":
                if delivery.attempt == 1:
                    self.counts["declined"] += 1
                span.set_status(trace.StatusCode.ERROR, "card declined")
                await delivery.nack(f"card declined for order {order['order']}")
                return
            if self._fails_once(f"pay-{delivery.event.id}"):
                self.counts["payment retries"] += 1
                span.set_status(trace.StatusCode.ERROR, "payment provider timed out")
                await delivery.nack("payment provider timed out")
                return
            await self.payments.client.publish(
                _same_prefix(delivery, PAYMENTS),
                new_event(
                    "payment.captured",
                    {"order": order["order"], "amount": order["total"]},
                    source="/demo/payment-service",
                    partitionkey=order["customer"],
                ),
            )
            self.counts["paid"] += 1

    async def _ship(self, delivery: Delivery) -> None:
        payment = _json(delivery)
        with self.shipping.tracer.start_as_current_span(
            "book courier", attributes={"shop.order": payment["order"]}
        ) as span:
            await asyncio.sleep(self._random.uniform(0.005, 0.03))
            if self._fails_once(f"ship-{delivery.event.id}"):
                self.counts["shipping retries"] += 1
                span.set_status(trace.StatusCode.ERROR, "courier API unavailable")
                await delivery.nack("courier API unavailable")
                return
            await self.shipping.client.publish(
                _same_prefix(delivery, SHIPMENTS),
                new_event(
                    "shipment.booked",
                    {"order": payment["order"], "courier": self._random.choice(["DHL", "UPS"])},
                    source="/demo/shipping-service",
                ),
            )
            self.counts["shipped"] += 1

    async def _report(self) -> None:
        while True:
            await asyncio.sleep(REPORT_EVERY_S)
            self._print_counts()

    def _print_counts(self) -> None:
        parts = ", ".join(f"{key} {value}" for key, value in sorted(self.counts.items()))
        print(f"demo: {parts}", file=self._out, flush=True)


def _same_prefix(delivery: Delivery, topic: str) -> str:
    """Answer a replayed event under the replay prefix, an original under the real topic."""
    return REPLAY + topic if delivery.topic.startswith(REPLAY) else topic


def _json(delivery: Delivery) -> dict[str, object]:
    import json

    value = json.loads(delivery.event.data or b"{}")
    if not isinstance(value, dict):
        raise ValueError(f"demo event {delivery.event.id} is not a JSON object")
    return value
