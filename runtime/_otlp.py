"""OTLP trace receiver: applications export their spans to the runtime, which hands them to capture.

With it, an instrumented producer's and consumer's own spans land in the capture store next to
the runtime's, so one trace shows producer app -> mesh -> consumers. Two listeners, as an
OpenTelemetry Collector has them, both on the runtime's host:

* OTLP/HTTP on `--otlp-http-port` (4318): `POST /v1/traces` with an `ExportTraceServiceRequest`
  in binary protobuf (`application/x-protobuf`) or OTLP/JSON (`application/json`), optionally
  `Content-Encoding: gzip`.
* OTLP/gRPC on `--otlp-grpc-port` (4317): `opentelemetry.proto.collector.trace.v1.TraceService/
  Export`, served by grpc.aio in the runtime's event loop.

Answers follow the OTLP specification: success is an `ExportTraceServiceResponse`, with
`partial_success` counting the spans that were rejected (bad ids) and saying why; a request that
is not OTLP at all is HTTP 400 / gRPC INVALID_ARGUMENT with a `google.rpc.Status` message that
says what was wrong, in the request's encoding. Nothing else is affected: the receiver keeps
serving and the mesh keeps delivering. Bodies are limited to `--max-payload-bytes`, after
decompression too (HTTP 413 / gRPC RESOURCE_EXHAUSTED).

Decoding and conversion (`decode_http_body`, `spans_from_request`) are pure functions, apart
from the I/O (CONVENTIONS 6); they run in a worker thread so that a large export does not stall
the event loop that delivers events.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

import grpc  # type: ignore[import-untyped]
from aiohttp import web
from google.protobuf import json_format
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    DESCRIPTOR as TRACE_SERVICE_FILE,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTracePartialSuccess,
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

from runtime._auth import Authenticator, AuthSettings, bearer
from runtime._capture import CaptureSink, SpanEventRecord, SpanLinkRecord, SpanRecord
from runtime._errors import (
    CannotListen,
    InvalidOtlpRequest,
    PayloadTooLarge,
    Unauthenticated,
    UnsupportedOtlpEncoding,
)

log = logging.getLogger("meshtap.runtime.otlp")

PROTOBUF: Final = "application/x-protobuf"
JSON: Final = "application/json"
TRACES_PATH: Final = "/v1/traces"
SERVICE: Final = TRACE_SERVICE_FILE.services_by_name["TraceService"].full_name
EXPORT_METHOD: Final = f"/{SERVICE}/Export"
UNKNOWN_SERVICE: Final = "unknown_service"

Encoding = Literal["protobuf", "json"]

# google.rpc.Code values used in Status bodies.
_INVALID_ARGUMENT: Final = 3
_RESOURCE_EXHAUSTED: Final = 8
_UNAVAILABLE: Final = 14
_UNAUTHENTICATED: Final = 16

_KINDS: Final = {
    0: "internal",
    1: "internal",
    2: "server",
    3: "client",
    4: "producer",
    5: "consumer",
}
_STATUS_CODES: Final = {0: "unset", 1: "ok", 2: "error"}
_ID_FIELDS: Final = ("traceId", "trace_id", "spanId", "span_id", "parentSpanId", "parent_span_id")
_HOW: Final = (
    f"POST {TRACES_PATH} with an OTLP ExportTraceServiceRequest as {PROTOBUF} or {JSON} "
    "(optionally gzip), e.g. from an OpenTelemetry SDK's OTLP exporter"
)


# --------------------------------------------------------------------------------------------
# Decoding (pure)
# --------------------------------------------------------------------------------------------


def decode_http_body(
    body: bytes, content_type: str, content_encoding: str, limit: int
) -> tuple[ExportTraceServiceRequest, Encoding]:
    """The request in an OTLP/HTTP body, and its encoding (the response must use the same).

    Raises `UnsupportedOtlpEncoding` (415), `InvalidOtlpRequest` (400) or `PayloadTooLarge`
    (413, also when the body only grows past `limit` bytes once decompressed).
    """
    encoding = http_encoding(content_type)
    coding = content_encoding.strip().lower()
    if coding == "gzip":
        body = _gunzip(body, limit)
    elif coding not in ("", "identity"):
        raise UnsupportedOtlpEncoding(
            f"Content-Encoding {content_encoding!r} is not supported; send the body as is or "
            "gzip-compressed (Content-Encoding: gzip)"
        )
    if encoding == "json":
        return request_from_json(body), encoding
    return request_from_protobuf(body), encoding


def http_encoding(content_type: str) -> Encoding:
    media_type = content_type.split(";")[0].strip().lower()
    if media_type == PROTOBUF:
        return "protobuf"
    if media_type == JSON:
        return "json"
    raise UnsupportedOtlpEncoding(
        f"Content-Type {content_type or '(none)'!r} is not an OTLP encoding; send {PROTOBUF} "
        f"(binary protobuf) or {JSON} (OTLP/JSON)"
    )


def _gunzip(body: bytes, limit: int) -> bytes:
    inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    try:
        out = inflater.decompress(body, limit + 1)
    except zlib.error as e:
        raise InvalidOtlpRequest(
            f"the body is not valid gzip ({e}) although Content-Encoding says gzip; compress it "
            "with gzip or drop the Content-Encoding header"
        ) from None
    if len(out) > limit:
        raise PayloadTooLarge(
            f"the gzip body decompresses to more than {limit} bytes, the limit; export smaller "
            "batches (e.g. the SDK's OTEL_BSP_MAX_EXPORT_BATCH_SIZE) or raise "
            "--max-payload-bytes (MESHTAP_MAX_PAYLOAD_BYTES)"
        )
    if not inflater.eof:
        raise InvalidOtlpRequest("the gzip body is truncated; send the whole compressed body")
    return out


def request_from_protobuf(body: bytes) -> ExportTraceServiceRequest:
    request = ExportTraceServiceRequest()
    try:
        request.ParseFromString(body)
    except DecodeError as e:
        raise InvalidOtlpRequest(
            f"the body is not a protobuf-encoded OTLP ExportTraceServiceRequest ({e}; "
            f"{len(body)} bytes starting {body[:16]!r}); {_HOW}"
        ) from None
    return request


def request_from_json(body: bytes) -> ExportTraceServiceRequest:
    """OTLP/JSON: protobuf's JSON mapping, except that trace and span ids are hex, not base64."""
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise InvalidOtlpRequest(f"the body is not valid JSON: {e}; {_HOW}") from None
    if not isinstance(document, dict):
        raise InvalidOtlpRequest(
            "the body must be a JSON object (an OTLP/JSON ExportTraceServiceRequest with "
            f'"resourceSpans"), got {type(document).__name__}'
        )
    _hex_ids_to_base64(document)
    request = ExportTraceServiceRequest()
    try:
        json_format.ParseDict(document, request, ignore_unknown_fields=True)
    except json_format.ParseError as e:
        raise InvalidOtlpRequest(
            f"the body is not an OTLP/JSON ExportTraceServiceRequest: {e}"
        ) from None
    return request


def _members(container: object, *names: str) -> Iterable[tuple[int, dict[str, Any]]]:
    """Enumerate the objects in the first list found under `names` (wrong shapes are left to
    the protobuf JSON parser, which names them)."""
    if not isinstance(container, dict):
        return []
    for name in names:
        value = container.get(name)
        if isinstance(value, list):
            return [(i, item) for i, item in enumerate(value) if isinstance(item, dict)]
    return []


def _hex_ids_to_base64(document: dict[str, Any]) -> None:
    for r, resource_spans in _members(document, "resourceSpans", "resource_spans"):
        for s, scope_spans in _members(resource_spans, "scopeSpans", "scope_spans"):
            for i, span in _members(scope_spans, "spans"):
                where = f"resourceSpans[{r}].scopeSpans[{s}].spans[{i}]"
                _convert_ids(span, where)
                for j, link in _members(span, "links"):
                    _convert_ids(link, f"{where}.links[{j}]")


def _convert_ids(item: dict[str, Any], where: str) -> None:
    for name in _ID_FIELDS:
        value = item.get(name)
        if value is None or value == "":
            continue
        try:
            if not isinstance(value, str):
                raise ValueError
            item[name] = base64.b64encode(bytes.fromhex(value)).decode()
        except ValueError:
            raise InvalidOtlpRequest(
                f"{where}.{name} is {value!r}, not a hex id; OTLP/JSON writes trace ids as 32 and "
                "span ids as 16 hex digits"
            ) from None


# --------------------------------------------------------------------------------------------
# Conversion (pure)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Conversion:
    spans: tuple[SpanRecord, ...]
    rejected: int = 0
    """Spans left out because they cannot be stored (bad ids)."""
    error: str = ""
    """Why, for `partial_success.error_message`."""


def spans_from_request(request: ExportTraceServiceRequest) -> Conversion:
    """`SpanRecord`s for every valid span of an export request; ids hex, values strings."""
    records: list[SpanRecord] = []
    problems: list[str] = []
    rejected = 0
    for r, resource_spans in enumerate(request.resource_spans):
        resource = _attributes(resource_spans.resource.attributes)
        service_name = dict(resource).get("service.name") or UNKNOWN_SERVICE
        for s, scope_spans in enumerate(resource_spans.scope_spans):
            scope_name = scope_spans.scope.name
            for i, span in enumerate(scope_spans.spans):
                problem = _id_problem(span.trace_id, span.span_id, span.parent_span_id)
                if problem:
                    rejected += 1
                    if len(problems) < 3:
                        problems.append(f"resourceSpans[{r}].scopeSpans[{s}].spans[{i}] {problem}")
                    continue
                records.append(
                    SpanRecord(
                        trace_id=span.trace_id.hex(),
                        span_id=span.span_id.hex(),
                        parent_span_id=span.parent_span_id.hex(),
                        name=span.name,
                        kind=_KINDS.get(span.kind, "internal"),
                        service_name=service_name,
                        scope_name=scope_name,
                        start_ns=span.start_time_unix_nano,
                        end_ns=span.end_time_unix_nano,
                        status_code=_STATUS_CODES.get(span.status.code, "unset"),
                        status_message=span.status.message,
                        attributes=_attributes(span.attributes),
                        resource=resource,
                        events=tuple(
                            SpanEventRecord(e.name, e.time_unix_nano, _attributes(e.attributes))
                            for e in span.events
                        ),
                        links=tuple(
                            SpanLinkRecord(
                                link.trace_id.hex(),
                                link.span_id.hex(),
                                _attributes(link.attributes),
                            )
                            for link in span.links
                        ),
                    )
                )
    error = ""
    if rejected:
        more = f" (and {rejected - len(problems)} more)" if rejected > len(problems) else ""
        error = (
            f"{rejected} span(s) rejected: " + "; ".join(problems) + more + ". Trace ids are 16 "
            "bytes and span ids 8, neither all zero; fix the exporter that sent them"
        )
    return Conversion(tuple(records), rejected, error)


def _id_problem(trace_id: bytes, span_id: bytes, parent_span_id: bytes) -> str:
    if len(trace_id) != 16 or not any(trace_id):
        return f"has trace_id {trace_id.hex()!r}, not 16 bytes with one non-zero"
    if len(span_id) != 8 or not any(span_id):
        return f"has span_id {span_id.hex()!r}, not 8 bytes with one non-zero"
    if parent_span_id and len(parent_span_id) != 8:
        return f"has parent_span_id {parent_span_id.hex()!r}, not empty or 8 bytes"
    return ""


def _attributes(pairs: Sequence[KeyValue]) -> tuple[tuple[str, str], ...]:
    return tuple((pair.key, attribute_text(pair.value)) for pair in pairs)


def attribute_text(value: AnyValue) -> str:
    """An OTLP attribute value as a string: scalars as written, arrays and maps as JSON."""
    which = value.WhichOneof("value")
    if which == "string_value":
        return value.string_value
    if which is None:
        return ""
    if which in ("array_value", "kvlist_value"):
        return json.dumps(_native(value), separators=(",", ":"), ensure_ascii=False)
    return json.dumps(_native(value)) if which == "bool_value" else str(_native(value))


def _native(value: AnyValue) -> Any:
    which = value.WhichOneof("value")
    if which == "string_value":
        return value.string_value
    if which == "bool_value":
        return value.bool_value
    if which == "int_value":
        return value.int_value
    if which == "double_value":
        return value.double_value
    if which == "bytes_value":
        return base64.b64encode(value.bytes_value).decode()
    if which == "array_value":
        return [_native(item) for item in value.array_value.values]
    if which == "kvlist_value":
        return {pair.key: _native(pair.value) for pair in value.kvlist_value.values}
    return None


def export_response(conversion: Conversion) -> ExportTraceServiceResponse:
    response = ExportTraceServiceResponse()
    if conversion.rejected:
        response.partial_success.CopyFrom(
            ExportTracePartialSuccess(
                rejected_spans=conversion.rejected, error_message=conversion.error
            )
        )
    return response


def _decode_and_convert(
    body: bytes, content_type: str, content_encoding: str, limit: int
) -> tuple[Conversion, Encoding]:
    request, encoding = decode_http_body(body, content_type, content_encoding, limit)
    return spans_from_request(request), encoding


def _convert_protobuf(body: bytes) -> Conversion:
    return spans_from_request(request_from_protobuf(body))


# --------------------------------------------------------------------------------------------
# Status bodies (google.rpc.Status, encoded by hand: two fields do not warrant a dependency)
# --------------------------------------------------------------------------------------------


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        if value:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def status_protobuf(code: int, message: str) -> bytes:
    """A protobuf-encoded `google.rpc.Status{code, message}`."""
    text = message.encode()
    return b"\x08" + _varint(code) + b"\x12" + _varint(len(text)) + text


def _status_response(status: int, code: int, message: str, encoding: Encoding) -> web.Response:
    if encoding == "protobuf":
        return web.Response(
            status=status, body=status_protobuf(code, message), content_type=PROTOBUF
        )
    return web.json_response({"code": code, "message": message}, status=status)


# --------------------------------------------------------------------------------------------
# Listeners
# --------------------------------------------------------------------------------------------


class OtlpReceiver:
    """The OTLP/HTTP and OTLP/gRPC listeners; a port of 0 leaves that listener off."""

    def __init__(
        self,
        capture: CaptureSink,
        *,
        host: str,
        http_port: int,
        grpc_port: int,
        max_payload_bytes: int,
        auth: Authenticator | None = None,
    ) -> None:
        # With authentication on, exporters send a credential as the mesh's clients do
        # (OTEL_EXPORTER_OTLP_HEADERS="authorization=Bearer <token>"); any valid client may.
        self._auth = auth or Authenticator(AuthSettings())
        self._capture = capture
        self._host = host
        self._wanted_http_port = http_port
        self._wanted_grpc_port = grpc_port
        self._limit = max_payload_bytes
        self._runner: web.AppRunner | None = None
        self._grpc: Any = None
        self.http_port: int | None = None
        self.grpc_port: int | None = None

    async def start(self) -> None:
        try:
            if self._wanted_http_port:
                await self._start_http()
            if self._wanted_grpc_port:
                await self._start_grpc()
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        if self._grpc is not None:
            await self._grpc.stop(grace=1.0)
            self._grpc = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # -- HTTP ---------------------------------------------------------------------------------

    async def _start_http(self) -> None:
        app = web.Application(client_max_size=self._limit)
        app.router.add_post(TRACES_PATH, self._export_http)
        app.router.add_route("*", "/{tail:.*}", self._elsewhere)
        # Compressed bodies are inflated here, against the payload limit, not by aiohttp.
        self._runner = web.AppRunner(
            app, access_log=None, handle_signals=False, auto_decompress=False
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._wanted_http_port, reuse_address=True)
        try:
            await site.start()
        except OSError as e:
            raise CannotListen(
                f"cannot listen for OTLP/HTTP on {self._host}:{self._wanted_http_port}: "
                f"{e.strerror or e}; pick another port with --otlp-http-port "
                "(MESHTAP_OTLP_HTTP_PORT), or 0 to turn the receiver off"
            ) from e
        server: Any = site._server
        self.http_port = int(server.sockets[0].getsockname()[1])
        log.info("OTLP/HTTP receiver on http://%s:%d%s", self._host, self.http_port, TRACES_PATH)

    async def _elsewhere(self, request: web.Request) -> web.Response:
        if request.path == TRACES_PATH:
            message = f"{request.method} is not allowed on {TRACES_PATH}; {_HOW}"
            return web.json_response({"code": _INVALID_ARGUMENT, "message": message}, status=405)
        message = (
            f"no OTLP endpoint {request.method} {request.path}: this receiver takes traces only; "
            + _HOW
        )
        return web.json_response({"code": _INVALID_ARGUMENT, "message": message}, status=404)

    async def _export_http(self, request: web.Request) -> web.Response:
        encoding: Encoding = "json"
        try:
            encoding = http_encoding(request.headers.get("Content-Type", ""))
            self._authenticate(request.headers.get("Authorization"), request.remote or "")
            body = await self._read(request)
            conversion, encoding = await asyncio.to_thread(
                _decode_and_convert,
                body,
                request.headers.get("Content-Type", ""),
                request.headers.get("Content-Encoding", ""),
                self._limit,
            )
        except UnsupportedOtlpEncoding as e:
            self._refused(request.remote, e)
            return _status_response(e.status, _INVALID_ARGUMENT, str(e), encoding)
        except Unauthenticated as e:
            self._refused(request.remote, e)
            return _status_response(401, _UNAUTHENTICATED, str(e), encoding)
        except InvalidOtlpRequest as e:
            self._refused(request.remote, e)
            return _status_response(400, _INVALID_ARGUMENT, str(e), encoding)
        except PayloadTooLarge as e:
            self._refused(request.remote, e)
            return _status_response(413, _RESOURCE_EXHAUSTED, str(e), encoding)
        if not self._record(conversion):
            message = "the capture store cannot take spans right now; retry later"
            return _status_response(503, _UNAVAILABLE, message, encoding)
        response = export_response(conversion)
        if encoding == "protobuf":
            return web.Response(body=response.SerializeToString(), content_type=PROTOBUF)
        return web.json_response(json_format.MessageToDict(response))

    async def _read(self, request: web.Request) -> bytes:
        size = request.content_length
        if size is None or size <= self._limit:
            try:
                return await request.read()
            except web.HTTPRequestEntityTooLarge:
                size = None
        shown = f"{size} bytes" if size is not None else "larger than the limit"
        raise PayloadTooLarge(
            f"the request body is {shown}; the limit is {self._limit} bytes. Export smaller "
            "batches (e.g. the SDK's OTEL_BSP_MAX_EXPORT_BATCH_SIZE) or raise "
            "--max-payload-bytes (MESHTAP_MAX_PAYLOAD_BYTES)"
        )

    # -- gRPC ---------------------------------------------------------------------------------

    async def _start_grpc(self) -> None:
        server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", self._limit),
                # Without this, grpc shares a busy port (SO_REUSEPORT) instead of failing.
                ("grpc.so_reuseport", 0),
            ]
        )
        handler = grpc.method_handlers_generic_handler(
            SERVICE, {"Export": grpc.unary_unary_rpc_method_handler(self._export_grpc)}
        )
        server.add_generic_rpc_handlers((handler,))
        host = f"[{self._host}]" if ":" in self._host else self._host
        try:
            port = server.add_insecure_port(f"{host}:{self._wanted_grpc_port}")
        except RuntimeError as e:
            port = 0
            problem = str(e)
        else:
            problem = "the port is in use or the address is not local"
        if not port:
            await server.stop(None)
            raise CannotListen(
                f"cannot listen for OTLP/gRPC on {self._host}:{self._wanted_grpc_port}: "
                f"{problem}; pick another port with --otlp-grpc-port (MESHTAP_OTLP_GRPC_PORT), "
                "or 0 to turn the receiver off"
            )
        await server.start()
        self._grpc = server
        self.grpc_port = int(port)
        log.info("OTLP/gRPC receiver on %s:%d", self._host, self.grpc_port)

    async def _export_grpc(self, request: bytes, context: Any) -> bytes:
        """`TraceService/Export` on raw bytes, so that garbage is INVALID_ARGUMENT (a generated
        servicer would answer a request it cannot deserialize with INTERNAL)."""
        metadata = dict(context.invocation_metadata() or ())
        try:
            self._authenticate(metadata.get("authorization"), context.peer())
        except Unauthenticated as e:
            self._refused(context.peer(), e)
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, str(e))
        try:
            conversion = await asyncio.to_thread(_convert_protobuf, request)
        except InvalidOtlpRequest as e:
            self._refused(context.peer(), e)
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
            raise  # abort() raises; this line is for the type checker
        if not self._record(conversion):
            await context.abort(
                grpc.StatusCode.UNAVAILABLE,
                "the capture store cannot take spans right now; retry later",
            )
        return bytes(export_response(conversion).SerializeToString())

    # -- both ---------------------------------------------------------------------------------

    def _authenticate(self, authorization: str | None, remote: str) -> None:
        self._auth.authenticate(credential=bearer(authorization), cert_name=None, remote=remote)

    def _record(self, conversion: Conversion) -> bool:
        if conversion.rejected:
            log.warning("OTLP export: %s", conversion.error)
        if not conversion.spans:
            return True
        try:
            self._capture.record_spans(conversion.spans)
        except Exception:  # the contract says never; a broken plugin must not break the receiver
            log.exception("capture plugin failed to take %d spans", len(conversion.spans))
            return False
        return True

    @staticmethod
    def _refused(peer: str | None, error: Exception) -> None:
        log.warning("OTLP export from %s refused: %s", peer or "unknown peer", error)
