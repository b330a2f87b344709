"""A bounded fuzz run against a real `python -m runtime`: malformed bodies and headers, huge and
deeply nested payloads over HTTP (native and EventMesh routes) and gRPC. The runtime must
answer every request with a client error or success -- never a 5xx, a crash or a hang -- and
its memory must stay bounded."""

from __future__ import annotations

import asyncio
import http.client
import json
import os
from collections.abc import Iterator
from urllib.parse import quote

import grpc  # type: ignore[import-untyped]
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runtime._grpc_api import PACKAGE
from tests.meshes import RuntimeProcess, free_port

LIMIT = 65_536
FUZZ = settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    report_multiple_bugs=False,
)


@pytest.fixture(scope="module")
def runtime() -> Iterator[RuntimeProcess]:
    process = RuntimeProcess(
        ["--max-payload-bytes", str(LIMIT), "--log-level", "ERROR", "--capture", "none"]
    )
    grpc_port = free_port()
    process.args += ["--grpc-port", str(grpc_port)]
    asyncio.run(process.start())
    process.grpc_port = grpc_port  # type: ignore[attr-defined]
    try:
        yield process
    finally:
        alive = process.process is not None and process.process.poll() is None
        process.kill()
        output = process.output()
        assert alive, f"the runtime died during the fuzz run:\n{output}"
        assert "Traceback" not in output, output


def rss_kb(runtime: RuntimeProcess) -> int:
    assert runtime.process is not None
    with open(f"/proc/{runtime.process.pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def exchange(
    runtime: RuntimeProcess, method: str, path: str, headers: dict[str, str], body: bytes
) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", runtime.port, timeout=15)
    try:
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def send(
    runtime: RuntimeProcess, method: str, path: str, headers: dict[str, str], body: bytes
) -> int:
    return exchange(runtime, method, path, headers, body)[0]


header_text = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"),
    max_size=60,
)
header_names = st.sampled_from(
    [
        "content-type",
        "ce-id",
        "ce-source",
        "ce-type",
        "ce-specversion",
        "ce-time",
        "ce-traceparent",
        "ce-partitionkey",
        "ce-replayid",
        "code",
        "version",
        "protocoltype",
        "uniqueid",
        "authorization",
        "token",
        "content-encoding",
        "x-anything",
    ]
)
segment = st.text(min_size=0, max_size=12)
paths = st.one_of(
    segment.map(lambda t: f"/v1/topics/{quote(t, safe='')}/events"),
    segment.map(lambda t: f"/v1/topics/{quote(t, safe='')}"),
    st.just("/v1/subscriptions"),
    segment.map(lambda t: f"/v1/subscriptions/{quote(t, safe='')}"),
    segment.map(lambda t: f"/eventmesh/publish/{quote(t, safe='')}"),
    st.sampled_from(
        [
            "/",
            "/eventmesh/subscribe/local",
            "/eventmesh/unsubscribe/local",
            "/eventmesh/topic/create",
            "/eventmesh/topic/delete",
            "/eventmesh/subscrition/query",
        ]
    ),
    segment.map(lambda t: f"/webhook/{quote(t, safe='')}"),
    segment.map(lambda t: "/" + quote(t)),
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=25,
)
bodies = st.one_of(
    st.binary(max_size=300),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.builds(
        lambda extra: json.dumps(
            {"specversion": "1.0", "id": "1", "source": "/f", "type": "t", **extra}
        ).encode(),
        st.dictionaries(st.text(max_size=10), json_values, max_size=4),
    ),
    st.integers(1, 4).map(lambda n: b"topic=a&content=" + b"%" * n + b"&url=http://x"),
)


@FUZZ
@given(
    st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH"]),
    paths,
    st.dictionaries(header_names, header_text, max_size=6),
    bodies,
)
def test_http_never_answers_5xx(
    runtime: RuntimeProcess, method: str, path: str, headers: dict[str, str], body: bytes
) -> None:
    headers = {k: v.encode("latin-1").decode("latin-1") for k, v in headers.items()}
    headers.pop("content-encoding", None)  # a bogus encoding is a 400 from aiohttp, not ours
    status = send(runtime, method, path, headers, body)
    assert status < 500, (method, path, headers, body[:200])


def test_non_utf8_headers_on_the_http_source_are_kept_not_a_500(runtime: RuntimeProcess) -> None:
    """Found by the fuzz run: a Latin-1 header value made /webhook/{name} answer 500."""
    assert send(runtime, "GET", "/webhook/0?q=%FF%e9", {"content-type": "\x80\xe9"}, b"") == 202


def test_huge_and_deeply_nested_payloads_are_refused_quickly(runtime: RuntimeProcess) -> None:
    before = rss_kb(runtime)
    structured = {"content-type": "application/cloudevents+json"}
    huge = b'{"specversion":"1.0","id":"1","source":"/s","type":"t","data":"' + b"x" * (LIMIT * 40)
    for path in ("/v1/topics/a/events", "/webhook/a"):
        assert send(runtime, "POST", path, structured, huge) == 413
    for path in ("/eventmesh/publish/a", "/"):  # EventMesh's convention: HTTP 200, retCode 8
        status, reply = exchange(runtime, "POST", path, {**structured, "code": "104"}, huge)
        assert status == 200
        assert json.loads(reply)["retCode"] == 8
    deep = b"[" * 200_000 + b"]" * 200_000
    deep_object = b'{"a":' * 20_000 + b"1" + b"}" * 20_000
    for body in (deep[: LIMIT - 10], deep_object[: LIMIT - 10], deep_object):
        for path in ("/v1/topics/a/events", "/v1/subscriptions"):
            assert send(runtime, "POST", path, structured, body) in (400, 413)
        status, reply = exchange(runtime, "POST", "/eventmesh/subscribe/local", structured, body)
        assert status == 200
        assert json.loads(reply)["retCode"] in (7, 8)  # body error / too large
    nested_event = (
        b'{"specversion":"1.0","id":"1","source":"/s","type":"t","data":'
        + b"[" * 5_000
        + b"]" * 5_000
        + b"}"
    )
    assert send(runtime, "POST", "/v1/topics/a/events", structured, nested_event) in (200, 400)
    assert send(runtime, "GET", "/healthz", {}, b"") == 200
    assert rss_kb(runtime) - before < 200_000  # bounded: not a copy per nesting level


@FUZZ
@given(
    st.sampled_from(
        [
            "PublisherService/publish",
            "PublisherService/publishOneWay",
            "PublisherService/batchPublish",
            "PublisherService/requestReply",
            "ConsumerService/subscribe",
            "ConsumerService/unsubscribe",
            "HeartbeatService/heartbeat",
        ]
    ),
    st.binary(max_size=400),
    st.lists(
        st.tuples(st.sampled_from(["authorization", "token", "x-y"]), header_text), max_size=2
    ),
)
def test_grpc_never_answers_internal_or_unknown(
    runtime: RuntimeProcess, method: str, payload: bytes, metadata: list[tuple[str, str]]
) -> None:
    port = runtime.grpc_port  # type: ignore[attr-defined]
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.unary_unary(
            f"/{PACKAGE}.{method}",
            request_serializer=lambda b: b,
            response_deserializer=lambda b: b,
        )
        ascii_metadata = [(k, v.encode("ascii", "replace").decode()) for k, v in metadata]
        code, details = grpc.StatusCode.OK, ""
        try:
            call(payload, timeout=3 if "requestReply" in method else 15, metadata=ascii_metadata)
        except grpc.RpcError as e:
            code, details = e.code(), e.details()
        assert code not in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN), (method, details)


def test_the_runtime_is_still_healthy_after_the_fuzz_run(runtime: RuntimeProcess) -> None:
    assert send(runtime, "GET", "/readyz", {}, b"") == 200
    assert os.path.exists(f"/proc/{runtime.process.pid}")  # type: ignore[union-attr]
