"""What the runtime hands a capture plugin: one record per accepted event and per attempt."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import pytest
from aiohttp import web

from runtime import (
    CaptureConfig,
    CaptureNotReady,
    DeliveryRecord,
    PublishRecord,
    SpanRecord,
)
from runtime._capture import open_capture
from tests.meshes import event, running
from tests.sinks import RecordingSink


class ListCapture:
    """A CaptureSink that keeps records in lists, to check the runtime's side of the contract."""

    def __init__(self, refuse: str = "") -> None:
        self.published: list[PublishRecord] = []
        self.deliveries: list[DeliveryRecord] = []
        self.spans: list[SpanRecord] = []
        self.refuse = refuse
        self.closed = False

    async def start(self) -> None:
        if self.refuse:
            raise CaptureNotReady(self.refuse)

    async def close(self) -> None:
        self.closed = True

    def record_publish(self, records: Sequence[PublishRecord]) -> None:
        self.published += records

    def record_deliveries(self, records: Sequence[DeliveryRecord]) -> None:
        self.deliveries += records

    def record_spans(self, spans: Sequence[SpanRecord]) -> None:
        self.spans += spans

    def tracer_provider(self) -> Any | None:
        return None


async def test_every_accepted_event_is_recorded_with_its_origin() -> None:
    capture = ListCapture()
    async with running(capture=capture) as (runtime, client):
        await client.publish("orders.created", event("e-1", partitionkey="k"), event("e-2"))
        await client.request("POST", "/webhook/github", data=b"{}")
        await client.request(
            "POST",
            "/eventmesh/publish/legacy.topic",
            data=b'{"a":1}',
            headers={"content-type": "application/json"},
        )
    assert capture.closed
    by_protocol = {r.protocol: r for r in capture.published}
    assert [r.event.id for r in capture.published[:2]] == ["e-1", "e-2"]
    assert {r.topic for r in capture.published} == {
        "orders.created",
        "webhook.github",
        "legacy.topic",
    }
    assert set(by_protocol) == {"http", "webhook", "eventmesh"}
    first = capture.published[0]
    assert first.producer == "127.0.0.1"
    assert first.instance == runtime.config.instance
    assert first.event.attributes["traceparent"]  # stamped before capture
    assert first.offset.count("-") == 1
    assert first.published_ns > 0


async def test_refused_publishes_are_not_recorded() -> None:
    capture = ListCapture()
    async with running(capture=capture) as (_, client):
        status, _ = await client.request(
            "POST",
            "/v1/topics/orders/events",
            data=b"{",
            headers={"content-type": "application/cloudevents+json"},
        )
        assert status == 400
    assert capture.published == []


async def test_each_attempt_is_recorded_with_its_outcome() -> None:
    answers = iter([503, 204])
    ok = await RecordingSink(respond=lambda p: web.Response(status=next(answers))).start()
    failing = await RecordingSink(respond=lambda p: web.Response(status=500, text="down")).start()
    capture = ListCapture()
    try:
        async with running(capture=capture) as (_, client):
            retry = {"max_attempts": 2, "initial_backoff_ms": 10, "max_backoff_ms": 10}
            good = await client.subscribe(topic="orders", group="billing", sink=ok.url, retry=retry)
            await client.subscribe(topic="orders", group="audit", sink=failing.url, retry=retry)
            await client.publish("orders", event("e-1"))
            for _ in range(200):
                if len(capture.deliveries) >= 4:
                    break
                await asyncio.sleep(0.02)
        billing = [d for d in capture.deliveries if d.group == "billing"]
        audit = [d for d in capture.deliveries if d.group == "audit"]
        assert [(d.attempt, d.outcome, d.status_code) for d in billing] == [
            (1, "retry", 503),
            (2, "acked", 204),
        ]
        assert [(d.attempt, d.outcome) for d in audit] == [(1, "retry"), (2, "dead_lettered")]
        assert audit[-1].error == "sink answered HTTP 500: down"
        assert billing[1].subscription_id == good["id"]
        assert billing[1].subscriber == ok.url
        assert billing[1].latency_ns >= billing[1].duration_ns > 0
        assert billing[1].event_id == "e-1"
    finally:
        await ok.stop()
        await failing.stop()


async def test_runtime_refuses_to_start_when_capture_is_not_ready() -> None:
    capture = ListCapture(
        refuse="ClickHouse is not migrated: run python manage.py migrate_clickhouse"
    )
    with pytest.raises(CaptureNotReady, match="migrate_clickhouse"):
        async with running(capture=capture):
            pass


def test_unknown_capture_scheme_names_the_known_ones() -> None:
    with pytest.raises(ValueError, match="unknown capture URL 'kafka://x'") as info:
        open_capture(CaptureConfig(url="kafka://x"))
    assert "none" in str(info.value)
    assert open_capture(CaptureConfig(url="none")).tracer_provider() is None
