"""The OTLP receiver: applications' own spans reach the capture plugin as `SpanRecord`s.

The SDK's real OTLP exporters (HTTP/protobuf and gRPC) talk to the runtime's real listeners on
loopback ports (CONVENTIONS 10); garbage is sent over the same wires. The SDK runs in a thread
(its exporters are blocking) while the runtime serves in the test's event loop.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import socket
from collections.abc import AsyncIterator, Sequence
from typing import Any

import aiohttp
import grpc
import pytest
from google.rpc import status_pb2
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
    OTLPSpanExporter as GrpcSpanExporter,
)
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
    OTLPSpanExporter as HttpSpanExporter,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2_grpc import TraceServiceStub
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags

from runtime import SpanRecord
from runtime._errors import CannotListen
from runtime._otlp import EXPORT_METHOD, attribute_text, spans_from_request, status_protobuf
from runtime._server import Runtime
from tests.meshes import Client, event, free_port, running
from tests.sinks import RecordingSink
from tests.test_capture_hooks import ListCapture

LINKED = SpanContext(
    0x0AF7651916CD43DD8448EB211C80319C,
    0xB7AD6B7169203331,
    is_remote=True,
    trace_flags=TraceFlags(1),
)


@pytest.fixture
def app_spans() -> list[ReadableSpan]:
    """Spans an instrumented application made: a server span and its children."""
    memory = InMemorySpanExporter()
    provider = TracerProvider(
        resource=Resource.create({"service.name": "checkout", "deployment.environment": "qa"})
    )
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("shop.checkout", "1.2.3")
    with (
        tracer.start_as_current_span(
            "POST /pay",
            kind=SpanKind.SERVER,
            attributes={
                "http.route": "/pay",
                "retry": True,
                "http.response.status_code": 502,
                "ratio": 1.5,
                "tags": ["a", "b"],
                "codes": [1, 2],
            },
        ),
        tracer.start_as_current_span(
            "publish orders", kind=SpanKind.PRODUCER, links=[Link(LINKED, {"why": "retry-of"})]
        ) as producer,
    ):
        producer.add_event("queued", {"depth": 3})
        producer.set_status(Status(StatusCode.ERROR, "broker said no"))
    provider.shutdown()
    return list(memory.get_finished_spans())


@pytest.fixture
async def mesh() -> AsyncIterator[tuple[Runtime, Client, ListCapture]]:
    capture = ListCapture()
    async with running(capture=capture, otlp_http_port=free_port(), otlp_grpc_port=free_port()) as (
        runtime,
        client,
    ):
        yield runtime, client, capture


def receiver_ports(runtime: Runtime) -> tuple[int, int]:
    assert runtime.otlp is not None
    assert runtime.otlp.http_port
    assert runtime.otlp.grpc_port
    return runtime.otlp.http_port, runtime.otlp.grpc_port


async def export_http(port: int, spans: Sequence[ReadableSpan], **options: Any) -> Any:
    exporter = HttpSpanExporter(endpoint=f"http://127.0.0.1:{port}/v1/traces", **options)
    try:
        return await asyncio.to_thread(exporter.export, spans)
    finally:
        exporter.shutdown()


async def export_grpc(port: int, spans: Sequence[ReadableSpan], **options: Any) -> Any:
    exporter = GrpcSpanExporter(endpoint=f"127.0.0.1:{port}", insecure=True, **options)
    try:
        return await asyncio.to_thread(exporter.export, spans)
    finally:
        exporter.shutdown()


def assert_received(records: list[SpanRecord], sent: list[ReadableSpan]) -> None:
    """The records are the application's spans, field by field."""
    by_name = {r.name: r for r in records}
    assert set(by_name) == {"POST /pay", "publish orders"}
    server, producer = by_name["POST /pay"], by_name["publish orders"]
    sent_by_name = {s.name: s for s in sent}
    for record in (server, producer):
        context = sent_by_name[record.name].context
        assert context is not None
        assert record.trace_id == f"{context.trace_id:032x}"
        assert record.span_id == f"{context.span_id:016x}"
        assert record.service_name == "checkout"
        assert record.scope_name == "shop.checkout"
        assert ("deployment.environment", "qa") in record.resource
        assert record.end_ns >= record.start_ns > 0
    assert server.parent_span_id == ""
    assert producer.parent_span_id == server.span_id
    assert producer.trace_id == server.trace_id
    assert (server.kind, producer.kind) == ("server", "producer")
    assert (server.status_code, producer.status_code) == ("unset", "error")
    assert producer.status_message == "broker said no"
    assert dict(server.attributes) == {
        "http.route": "/pay",
        "retry": "true",
        "http.response.status_code": "502",
        "ratio": "1.5",
        "tags": '["a","b"]',
        "codes": "[1,2]",
    }
    (queued,) = producer.events
    assert (queued.name, queued.attributes) == ("queued", (("depth", "3"),))
    assert queued.time_ns >= producer.start_ns
    (link,) = producer.links
    assert (link.trace_id, link.span_id) == ("0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331")
    assert link.attributes == (("why", "retry-of"),)


async def test_sdk_http_exporter_spans_reach_capture(
    mesh: tuple[Runtime, Client, ListCapture], app_spans: list[ReadableSpan]
) -> None:
    runtime, _, capture = mesh
    http_port, _ = receiver_ports(runtime)
    assert await export_http(http_port, app_spans) is SpanExportResult.SUCCESS
    assert_received(capture.spans, app_spans)


async def test_sdk_http_exporter_gzip_spans_reach_capture(
    mesh: tuple[Runtime, Client, ListCapture], app_spans: list[ReadableSpan]
) -> None:
    runtime, _, capture = mesh
    http_port, _ = receiver_ports(runtime)
    result = await export_http(http_port, app_spans, compression=Compression.Gzip)
    assert result is SpanExportResult.SUCCESS
    assert_received(capture.spans, app_spans)


async def test_sdk_grpc_exporter_spans_reach_capture(
    mesh: tuple[Runtime, Client, ListCapture], app_spans: list[ReadableSpan]
) -> None:
    runtime, _, capture = mesh
    _, grpc_port = receiver_ports(runtime)
    result = await export_grpc(grpc_port, app_spans, compression=grpc.Compression.Gzip)
    assert result is SpanExportResult.SUCCESS
    assert_received(capture.spans, app_spans)


async def test_otlp_json_is_accepted_with_hex_ids(
    mesh: tuple[Runtime, Client, ListCapture],
) -> None:
    runtime, _, capture = mesh
    http_port, _ = receiver_ports(runtime)
    document = {
        "resourceSpans": [
            {
                "resource": {
                    "attributes": [{"key": "service.name", "value": {"stringValue": "billing"}}]
                },
                "scopeSpans": [
                    {
                        "scope": {"name": "billing.worker"},
                        "spans": [
                            {
                                "traceId": "5b8efff798038103d269b633813fc60c",
                                "spanId": "eee19b7ec3c1b174",
                                "parentSpanId": "eee19b7ec3c1b173",
                                "name": "process orders",
                                "kind": 5,
                                "startTimeUnixNano": "1544712660000000000",
                                "endTimeUnixNano": "1544712661000000000",
                                "attributes": [
                                    {"key": "n", "value": {"intValue": "7"}},
                                    {
                                        "key": "m",
                                        "value": {
                                            "kvlistValue": {
                                                "values": [
                                                    {"key": "a", "value": {"boolValue": False}}
                                                ]
                                            }
                                        },
                                    },
                                ],
                                "status": {"code": 1},
                            }
                        ],
                    }
                ],
            }
        ]
    }
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"http://127.0.0.1:{http_port}/v1/traces", json=document) as response,
    ):
        assert response.status == 200
        assert response.content_type == "application/json"
        assert await response.json() == {}
    (record,) = capture.spans
    assert (record.trace_id, record.span_id, record.parent_span_id) == (
        "5b8efff798038103d269b633813fc60c",
        "eee19b7ec3c1b174",
        "eee19b7ec3c1b173",
    )
    assert (record.kind, record.status_code, record.service_name, record.scope_name) == (
        "consumer",
        "ok",
        "billing",
        "billing.worker",
    )
    assert (record.start_ns, record.end_ns) == (1544712660000000000, 1544712661000000000)
    assert dict(record.attributes) == {"n": "7", "m": '{"a":false}'}


def _request_with_bad_span() -> ExportTraceServiceRequest:
    good = Span(trace_id=b"\x01" * 16, span_id=b"\x02" * 8, name="good")
    bad = Span(trace_id=b"", span_id=b"\x03" * 8, name="no trace id")
    return ExportTraceServiceRequest(
        resource_spans=[ResourceSpans(scope_spans=[ScopeSpans(spans=[good, bad])])]
    )


async def test_spans_with_bad_ids_are_a_partial_success(
    mesh: tuple[Runtime, Client, ListCapture],
) -> None:
    runtime, _, capture = mesh
    http_port, grpc_port = receiver_ports(runtime)
    body = _request_with_bad_span().SerializeToString()
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"http://127.0.0.1:{http_port}/v1/traces",
            data=body,
            headers={"content-type": "application/x-protobuf"},
        ) as response,
    ):
        assert response.status == 200
        assert response.content_type == "application/x-protobuf"
        reply = ExportTraceServiceResponse.FromString(await response.read())
    assert reply.partial_success.rejected_spans == 1
    assert "spans[1] has trace_id ''" in reply.partial_success.error_message
    async with grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
        reply = await TraceServiceStub(channel).Export(_request_with_bad_span())
    assert reply.partial_success.rejected_spans == 1
    assert [r.name for r in capture.spans] == ["good", "good"]
    assert capture.spans[0].service_name == "unknown_service"


async def test_garbage_over_http_is_400_with_a_status_saying_what_was_wrong(
    mesh: tuple[Runtime, Client, ListCapture], app_spans: list[ReadableSpan]
) -> None:
    runtime, _, capture = mesh
    http_port, _ = receiver_ports(runtime)
    url = f"http://127.0.0.1:{http_port}/v1/traces"
    async with aiohttp.ClientSession() as session:
        async with session.post(
            url, data=b"\xff\xfe garbage", headers={"content-type": "application/x-protobuf"}
        ) as response:
            assert response.status == 400
            assert response.content_type == "application/x-protobuf"
            status = status_pb2.Status.FromString(await response.read())
        assert status.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
        assert "not a protobuf-encoded OTLP ExportTraceServiceRequest" in status.message

        async with session.post(
            url, data=b"{not json", headers={"content-type": "application/json"}
        ) as response:
            assert response.status == 400
            reply = await response.json()
        assert reply["code"] == 3
        assert reply["message"].startswith("the body is not valid JSON")

        async with session.post(
            url,
            data=json.dumps({"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": "xyz"}]}]}]}),
            headers={"content-type": "application/json"},
        ) as response:
            assert response.status == 400
            reply = await response.json()
        assert "resourceSpans[0].scopeSpans[0].spans[0].traceId is 'xyz'" in reply["message"]

        async with session.post(
            url,
            data=b"not gzip",
            headers={"content-type": "application/x-protobuf", "content-encoding": "gzip"},
        ) as response:
            assert response.status == 400
            status = status_pb2.Status.FromString(await response.read())
        assert "not valid gzip" in status.message

        async with session.post(url, data=b"x", headers={"content-type": "text/plain"}) as response:
            assert response.status == 415
            reply = await response.json()
        assert "'text/plain' is not an OTLP encoding" in reply["message"]

        async with session.post(
            f"http://127.0.0.1:{http_port}/v1/metrics",
            data=b"",
            headers={"content-type": "application/x-protobuf"},
        ) as response:
            assert response.status == 404
            assert "takes traces only" in (await response.json())["message"]

    # Nothing else is affected: the receiver keeps serving.
    assert capture.spans == []
    assert await export_http(http_port, app_spans) is SpanExportResult.SUCCESS
    assert len(capture.spans) == 2


async def test_bodies_over_the_payload_limit_are_refused_also_once_inflated() -> None:
    capture = ListCapture()
    limited = running(
        capture=capture,
        otlp_http_port=free_port(),
        otlp_grpc_port=free_port(),
        max_payload_bytes=10_000,
    )
    async with limited as (runtime, _):
        http_port, grpc_port = receiver_ports(runtime)
        url = f"http://127.0.0.1:{http_port}/v1/traces"
        bomb = gzip.compress(b"\x00" * 1_000_000)  # ~1 KB that inflates to 1 MB
        assert len(bomb) < 10_000
        async with aiohttp.ClientSession() as session:
            async with session.post(
                url, data=b"\x00" * 20_000, headers={"content-type": "application/x-protobuf"}
            ) as response:
                assert response.status == 413
                status = status_pb2.Status.FromString(await response.read())
            assert "the limit is 10000 bytes" in status.message
            assert "--max-payload-bytes" in status.message
            async with session.post(
                url,
                data=bomb,
                headers={"content-type": "application/x-protobuf", "content-encoding": "gzip"},
            ) as response:
                assert response.status == 413
                status = status_pb2.Status.FromString(await response.read())
            assert "decompresses to more than 10000 bytes" in status.message
        async with grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            with pytest.raises(grpc.aio.AioRpcError) as failure:
                await channel.unary_unary(EXPORT_METHOD)(b"\x00" * 20_000)
        assert failure.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert capture.spans == []


async def test_garbage_over_grpc_is_invalid_argument_and_the_mesh_keeps_delivering(
    mesh: tuple[Runtime, Client, ListCapture], app_spans: list[ReadableSpan]
) -> None:
    runtime, client, capture = mesh
    _, grpc_port = receiver_ports(runtime)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
        export = channel.unary_unary(EXPORT_METHOD)  # raw bytes in and out
        with pytest.raises(grpc.aio.AioRpcError) as failure:
            await export(b"\xff\xfe garbage")
    assert failure.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    details = failure.value.details() or ""
    assert "not a protobuf-encoded OTLP ExportTraceServiceRequest" in details

    # The receiver still takes spans, and the mesh still publishes and delivers.
    assert await export_grpc(grpc_port, app_spans) is SpanExportResult.SUCCESS
    assert len(capture.spans) == 2
    sink = await RecordingSink().start()
    try:
        await client.subscribe(topic="orders", group="billing", sink=sink.url)
        await client.publish("orders", event("e-1"))
        (push,) = await sink.wait_for(1)
    finally:
        await sink.stop()
    assert push.id == "e-1"


async def test_receiver_is_off_without_capture_or_with_port_zero() -> None:
    async with running(otlp_http_port=free_port(), otlp_grpc_port=free_port()) as (runtime, _):
        assert runtime.otlp is None  # --capture none: nothing would keep the spans
    async with running(capture=ListCapture()) as (runtime, _):
        assert runtime.otlp is None  # both ports 0


@pytest.mark.parametrize("listener", ["otlp_http_port", "otlp_grpc_port"])
async def test_a_busy_port_is_refused_with_the_flag_to_change(listener: str) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        flag = "--" + listener.replace("_", "-")
        with pytest.raises(CannotListen, match=f"{flag}.*or 0 to turn the receiver off"):
            async with running(capture=ListCapture(), **{listener: port}):
                pass


def test_conversion_is_pure_and_stringifies_every_value_kind() -> None:
    request = ExportTraceServiceRequest.FromString(_request_with_bad_span().SerializeToString())
    first, second = spans_from_request(request), spans_from_request(request)
    assert first == second
    assert first.rejected == 1
    values = ExportTraceServiceRequest()
    attribute = values.resource_spans.add().resource.attributes.add()
    attribute.value.bytes_value = b"\x00\x01"
    assert attribute_text(attribute.value) == "AAE="
    attribute.value.double_value = 0.25
    assert attribute_text(attribute.value) == "0.25"
    attribute.value.ClearField("double_value")
    assert attribute_text(attribute.value) == ""


def test_status_bodies_are_google_rpc_status() -> None:
    message = "é" * 200  # multi-byte and longer than one varint byte
    decoded = status_pb2.Status.FromString(status_protobuf(3, message))
    assert (decoded.code, decoded.message) == (3, message)
