"""A raw gRPC client for tests: plain grpc.aio calls with the runtime's protobuf messages.

Deliberately below the SDK (`runtime.client`), so API tests see exactly what goes over the wire.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import grpc  # type: ignore[import-untyped]
from google.protobuf.empty_pb2 import Empty

from runtime._grpc_codec import PbCloudEvent, PbCloudEventBatch, string_attribute

PACKAGE = "org.apache.eventmesh.cloudevents.v1"
Value = PbCloudEvent.CloudEventAttributeValue


def pb_event(event_id: str, topic: str, data: str = "", **attributes: str) -> PbCloudEvent:
    message = PbCloudEvent(id=event_id, source="/tests", spec_version="1.0", type="test.event")
    message.attributes["subject"].CopyFrom(Value(ce_string=topic))
    for name, value in attributes.items():
        message.attributes[name].CopyFrom(Value(ce_string=value))
    if data:
        message.text_data = data
    return message


def subscription(group: str, *topics: str, mode: str = "CLUSTERING", **attributes: str) -> Any:
    message = PbCloudEvent(id="sub", source="/tests", spec_version="1.0", type="subscribe")
    message.attributes["consumergroup"].CopyFrom(Value(ce_string=group))
    for name, value in attributes.items():
        message.attributes[name].CopyFrom(Value(ce_string=value))
    message.text_data = json.dumps([{"topic": t, "mode": mode, "type": "ASYNC"} for t in topics])
    return message


def control(kind: str, tag: str, **attributes: str) -> PbCloudEvent:
    """An ack/nack message on a stream."""
    message = PbCloudEvent()
    message.attributes["submessagetype"].CopyFrom(Value(ce_string=kind))
    message.attributes["deliverytag"].CopyFrom(Value(ce_string=tag))
    for name, value in attributes.items():
        message.attributes[name].CopyFrom(Value(ce_string=value))
    return message


class Api:
    """Unary and streaming calls on one channel."""

    def __init__(self, target: str) -> None:
        self.channel = grpc.aio.insecure_channel(target)

    def _unary(self, service: str, method: str, reply: Any = PbCloudEvent) -> Any:
        return self.channel.unary_unary(
            f"/{PACKAGE}.{service}/{method}",
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=reply.FromString,
        )

    async def publish(self, message: PbCloudEvent) -> PbCloudEvent:
        return await self._unary("PublisherService", "publish")(message, timeout=10)

    async def publish_one_way(self, message: PbCloudEvent) -> Empty:
        return await self._unary("PublisherService", "publishOneWay", Empty)(message, timeout=10)

    async def batch_publish(self, *messages: PbCloudEvent) -> PbCloudEvent:
        batch = PbCloudEventBatch(events=list(messages))
        return await self._unary("PublisherService", "batchPublish")(batch, timeout=10)

    async def request_reply(self, message: PbCloudEvent, timeout: float = 10) -> PbCloudEvent:
        return await self._unary("PublisherService", "requestReply")(message, timeout=timeout)

    async def subscribe(self, message: PbCloudEvent) -> PbCloudEvent:
        return await self._unary("ConsumerService", "subscribe")(message, timeout=10)

    async def unsubscribe(self, message: PbCloudEvent) -> PbCloudEvent:
        return await self._unary("ConsumerService", "unsubscribe")(message, timeout=10)

    async def heartbeat(self, message: PbCloudEvent) -> PbCloudEvent:
        return await self._unary("HeartbeatService", "heartbeat")(message, timeout=10)

    async def close(self) -> None:
        await self.channel.close()

    def stream(self) -> Stream:
        call = self.channel.stream_stream(
            f"/{PACKAGE}.ConsumerService/subscribeStream",
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=PbCloudEvent.FromString,
        )()
        return Stream(call)


class Stream:
    """One subscribeStream call: write subscriptions/acks, read what the runtime sends.

    A background task reads the call into a queue: cancelling a pending grpc.aio read would
    cancel the whole call, so timeouts wait on the queue instead.
    """

    def __init__(self, call: Any) -> None:
        self.call = call
        self.received: list[PbCloudEvent] = []
        self._inbox: asyncio.Queue[Any] = asyncio.Queue()
        self._reader: asyncio.Task[None] | None = None

    async def _read(self) -> None:
        try:
            while (message := await self.call.read()) is not grpc.aio.EOF:
                self._inbox.put_nowait(message)
        except grpc.aio.AioRpcError as e:
            self._inbox.put_nowait(e)
        self._inbox.put_nowait(grpc.aio.EOF)

    async def next_message(self, timeout: float = 10.0) -> PbCloudEvent:
        if self._reader is None:
            self._reader = asyncio.create_task(self._read())
        message = await asyncio.wait_for(self._inbox.get(), timeout)
        if isinstance(message, grpc.aio.AioRpcError):
            raise message
        assert message is not grpc.aio.EOF, "the stream ended"
        return message  # type: ignore[no-any-return]

    async def open(self, message: PbCloudEvent) -> PbCloudEvent:
        """Send the subscription and return the runtime's confirmation."""
        await self.call.write(message)
        return await self.next_message()

    async def next_event(self, timeout: float = 10.0) -> PbCloudEvent:
        while True:
            message = await self.next_message(timeout)
            if string_attribute(message, "statuscode"):
                continue  # a status message, not an event
            self.received.append(message)
            return message

    async def events(self, count: int, timeout: float = 10.0) -> list[PbCloudEvent]:
        return [await self.next_event(timeout) for _ in range(count)]

    async def ack(self, message: PbCloudEvent) -> None:
        await self.call.write(control("ack", string_attribute(message, "deliverytag")))

    async def nack(self, message: PbCloudEvent, reason: str = "") -> None:
        tag = string_attribute(message, "deliverytag")
        await self.call.write(control("nack", tag, responsemessage=reason))

    async def close(self) -> None:
        """Half-close, let the runtime end the stream (so acks already written count), then
        cancel whatever is left."""
        if not self.call.done():
            await self.call.done_writing()
            if self._reader is None:
                self._reader = asyncio.create_task(self._read())
            await asyncio.wait({self._reader}, timeout=2)
        self.call.cancel()
        if self._reader is not None:
            await asyncio.wait({self._reader}, timeout=5)


async def drain_events(stream: Stream, quiet_s: float) -> AsyncIterator[PbCloudEvent]:
    """Events until none arrives for `quiet_s`."""
    while True:
        try:
            yield await stream.next_event(quiet_s)
        except TimeoutError:
            return
