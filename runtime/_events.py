"""The CloudEvent model and its HTTP bindings (binary, structured and batch content modes).

Meshtap records and replays events, so the model is byte-faithful: `data` is kept as the exact
bytes the producer sent (structured JSON data is kept as compact JSON bytes) and attribute values
keep their JSON types. Parsing and validation of the HTTP bindings go through the CloudEvents SDK;
this module only converts between the SDK's objects and our frozen dataclass and turns SDK errors
into messages that name the offending attribute.

Everything here is pure conversion: no I/O.
"""

from __future__ import annotations

import base64
import json
import random
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from cloudevents.core.bindings import http as ce_http
from cloudevents.core.exceptions import BaseCloudEventException, CloudEventValidationError
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent as SdkCloudEvent

from runtime._errors import InvalidCloudEvent

AttributeValue = str | int | bool

REQUIRED_ATTRIBUTES: Final = ("id", "source", "type", "specversion")
STRUCTURED_CONTENT_TYPE: Final = "application/cloudevents+json"
BATCH_CONTENT_TYPE: Final = "application/cloudevents-batch+json"
PARTITION_KEY: Final = "partitionkey"
TRACEPARENT: Final = "traceparent"
TRACESTATE: Final = "tracestate"
_TRACEPARENT = re.compile(
    r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?\Z", re.S
)
_JSON_CONTENT_TYPE = re.compile(r"^(application|text)/([a-zA-Z0-9\-.]+\+)?json(;.*)?$", re.I)


@dataclass(frozen=True, slots=True)
class CloudEvent:
    """A CloudEvents 1.0 event.

    `attributes` holds every context attribute, extensions included, by lower-case name; `time`
    is an RFC 3339 string. `data` is the payload exactly as received (None when absent).
    """

    attributes: Mapping[str, AttributeValue]
    data: bytes | None = None

    @property
    def id(self) -> str:
        return str(self.attributes["id"])

    @property
    def source(self) -> str:
        return str(self.attributes["source"])

    @property
    def type(self) -> str:
        return str(self.attributes["type"])

    @property
    def subject(self) -> str | None:
        value = self.attributes.get("subject")
        return None if value is None else str(value)

    @property
    def time(self) -> str | None:
        value = self.attributes.get("time")
        return None if value is None else str(value)

    @property
    def datacontenttype(self) -> str | None:
        value = self.attributes.get("datacontenttype")
        return None if value is None else str(value)

    @property
    def partition_key(self) -> str | None:
        value = self.attributes.get(PARTITION_KEY)
        return None if value is None or value == "" else str(value)

    def with_attributes(self, **changes: AttributeValue | None) -> CloudEvent:
        """A copy with attributes set (or removed when the value is None)."""
        attributes = dict(self.attributes)
        for name, value in changes.items():
            if value is None:
                attributes.pop(name, None)
            else:
                attributes[name] = value
        return CloudEvent(attributes, self.data)


# --------------------------------------------------------------------------------------------
# Stamping
# --------------------------------------------------------------------------------------------


def now_rfc3339() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def new_traceparent() -> str:
    """A fresh W3C traceparent (sampled) for events that arrive without trace context.

    Used when no tracer provider is configured (the OpenTelemetry API's no-op tracer has no span
    context to offer); with one, the runtime stamps its publish span's context instead
    (`runtime._tracing`). Ids need to be unique, not secret: `getrandbits` as in the
    OpenTelemetry SDK, which is far cheaper per event than the OS entropy source.
    """
    trace_id = random.getrandbits(128) or 1
    span_id = random.getrandbits(64) or 1
    return format_traceparent(trace_id, span_id, 1)


def format_traceparent(trace_id: int, span_id: int, flags: int) -> str:
    """The W3C `traceparent` (version 00) for these ids."""
    return f"00-{trace_id:032x}-{span_id:016x}-{flags & 0xFF:02x}"


def parse_traceparent(value: object) -> tuple[int, int, int] | None:
    """`(trace_id, span_id, flags)` of a W3C traceparent, or None when it is not a valid one.

    Follows the W3C rules a receiver applies: lower-case hex, non-zero ids, version `ff`
    refused, version 00 exactly 55 characters, later versions at least 55 with a `-` after the
    flags (their extra fields are ignored).
    """
    if not isinstance(value, str):
        return None
    match = _TRACEPARENT.match(value)
    if match is None:
        return None
    version, trace_hex, span_hex, flags_hex, rest = match.groups()
    if version == "ff" or (version == "00" and rest):
        return None
    trace_id, span_id = int(trace_hex, 16), int(span_hex, 16)
    if not trace_id or not span_id:
        return None
    return trace_id, span_id, int(flags_hex, 16)


def stamp(
    event: CloudEvent, traceparent: str | None = None, tracestate: str | None = None
) -> CloudEvent:
    """Add `time` and `traceparent` when the producer did not set them.

    `traceparent`/`tracestate` are the creation context to stamp (the runtime's publish span);
    without one a random traceparent is made. An event that already carries a `traceparent`
    keeps it and its `tracestate` untouched: the extension is the producer's creation context.
    """
    changes: dict[str, AttributeValue | None] = {}
    if "time" not in event.attributes:
        changes["time"] = now_rfc3339()
    if TRACEPARENT not in event.attributes:
        changes[TRACEPARENT] = traceparent or new_traceparent()
        if traceparent and tracestate:
            changes[TRACESTATE] = tracestate
    return event.with_attributes(**changes) if changes else event


# --------------------------------------------------------------------------------------------
# SDK <-> model
# --------------------------------------------------------------------------------------------


class _RawDataFormat(JSONFormat):
    """JSON event format that leaves binary-mode bodies as bytes instead of parsing them."""

    def read_data(self, body: bytes, datacontenttype: str | None) -> bytes | None:
        return body or None


_FORMAT = JSONFormat()
_RAW_FORMAT = _RawDataFormat()


def _describe(error: BaseCloudEventException) -> str:
    if isinstance(error, CloudEventValidationError):
        parts = []
        for attribute, problems in error.errors.items():
            for problem in problems:
                parts.append(f"attribute {attribute!r}: {problem}")
        return "; ".join(parts)
    return str(error)


def _check_required(attributes: Mapping[str, Any], where: str) -> None:
    missing = [name for name in REQUIRED_ATTRIBUTES if name not in attributes]
    if missing:
        names = ", ".join(repr(name) for name in missing)
        raise InvalidCloudEvent(
            f"{where} is missing required CloudEvents attribute(s) {names}; every event needs "
            "'id', 'source', 'type' and 'specversion' (\"1.0\")"
        )


def _attribute_to_model(name: str, value: Any) -> AttributeValue:
    if isinstance(value, datetime):
        return value.isoformat().replace("+00:00", "Z")
    if isinstance(value, bool | int | str):
        return value
    raise InvalidCloudEvent(
        f"attribute {name!r} has a value of type {type(value).__name__}; CloudEvents attributes "
        "are strings, integers or booleans"
    )


def _from_sdk(event: Any, data: bytes | None) -> CloudEvent:
    attributes = {
        name: _attribute_to_model(name, value)
        for name, value in event.get_attributes().items()
        if value is not None
    }
    return CloudEvent(attributes, data)


def _validated(attributes: dict[str, Any], where: str) -> Any:
    """Validate attributes with the SDK's v1.0 rules, without letting it invent id or time."""
    _check_required(attributes, where)
    if "time" in attributes and isinstance(attributes["time"], str):
        try:
            attributes["time"] = datetime.fromisoformat(attributes["time"].replace("Z", "+00:00"))
        except ValueError:
            raise InvalidCloudEvent(
                f"{where} has attribute 'time' = {attributes['time']!r}, which is not an RFC 3339 "
                "timestamp (e.g. 2026-01-31T12:00:00Z)"
            ) from None
    had_time = "time" in attributes
    try:
        sdk_event = SdkCloudEvent(attributes, None)
    except BaseCloudEventException as e:
        raise InvalidCloudEvent(f"{where} is not a valid CloudEvent: {_describe(e)}") from e
    if not had_time:
        sdk_event.get_attributes().pop("time", None)
    return sdk_event


def _data_from_json_member(item: Mapping[str, Any], where: str) -> bytes | None:
    if "data_base64" in item:
        if "data" in item:
            raise InvalidCloudEvent(f"{where} has both 'data' and 'data_base64'; send only one")
        try:
            return base64.b64decode(item["data_base64"], validate=True)
        except (ValueError, TypeError):
            raise InvalidCloudEvent(f"{where} has 'data_base64' that is not valid base64") from None
    if "data" not in item or item["data"] is None:
        return None
    value = item["data"]
    content_type = item.get("datacontenttype")
    if isinstance(value, str) and not (
        content_type is None or _JSON_CONTENT_TYPE.match(str(content_type))
    ):
        return value.encode()
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def from_json_object(item: Any, where: str = "the event") -> CloudEvent:
    """One event in the JSON event format (structured mode, or one element of a batch)."""
    if not isinstance(item, dict):
        raise InvalidCloudEvent(
            f"{where} must be a JSON object in the CloudEvents JSON format, got "
            f"{type(item).__name__}"
        )
    data = _data_from_json_member(item, where)
    attributes = {k: v for k, v in item.items() if k not in ("data", "data_base64")}
    return _from_sdk(_validated(attributes, where), data)


def to_json_object(event: CloudEvent) -> dict[str, Any]:
    """The event in the CloudEvents JSON format (structured mode)."""
    out: dict[str, Any] = dict(event.attributes)
    if event.data is not None:
        content_type = event.datacontenttype
        if content_type is None or _JSON_CONTENT_TYPE.match(content_type):
            try:
                out["data"] = json.loads(event.data)
                return out
            except (ValueError, RecursionError):
                pass
        try:
            out["data"] = event.data.decode()
        except UnicodeDecodeError:
            out["data_base64"] = base64.b64encode(event.data).decode()
    return out


# --------------------------------------------------------------------------------------------
# HTTP binding
# --------------------------------------------------------------------------------------------


def _parse_json(body: bytes, what: str) -> Any:
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise InvalidCloudEvent(f"{what} is not valid JSON: {e}") from None


def from_http(headers: Mapping[str, str], body: bytes) -> list[CloudEvent]:
    """Events from an HTTP request in any content mode: binary, structured or batch.

    Raises InvalidCloudEvent naming the attribute (and, in a batch, the index) that is wrong.
    """
    lower = {k.lower(): v for k, v in headers.items()}
    content_type = lower.get("content-type", "").split(";")[0].strip().lower()
    if content_type == BATCH_CONTENT_TYPE:
        items = _parse_json(body, "the batch body")
        if not isinstance(items, list):
            raise InvalidCloudEvent(
                f"a {BATCH_CONTENT_TYPE} body must be a JSON array of events, got "
                f"{type(items).__name__}"
            )
        if not items:
            raise InvalidCloudEvent("the batch is empty; send at least one event")
        return [from_json_object(item, f"event [{i}] of the batch") for i, item in enumerate(items)]
    if content_type == STRUCTURED_CONTENT_TYPE:
        return [from_json_object(_parse_json(body, "the structured event"), "the event")]
    if "ce-specversion" in lower or any(k.startswith("ce-") for k in lower):
        return [_from_binary(lower, body)]
    raise InvalidCloudEvent(
        "the request is not a CloudEvent: use binary mode (ce-id, ce-source, ce-type and "
        f"ce-specversion headers), structured mode (Content-Type: {STRUCTURED_CONTENT_TYPE}) or "
        f"batch mode (Content-Type: {BATCH_CONTENT_TYPE}); got Content-Type "
        f"{content_type or '(none)'!r} without ce-* headers"
    )


def _from_binary(lower_headers: Mapping[str, str], body: bytes) -> CloudEvent:
    attributes = {k[3:]: v for k, v in lower_headers.items() if k.startswith("ce-")}
    _check_required(attributes, "the event (binary mode: ce-* headers)")
    message = ce_http.HTTPMessage(headers=dict(lower_headers), body=body)
    try:
        sdk_event = ce_http.from_binary(message, _RAW_FORMAT, SdkCloudEvent)
    except BaseCloudEventException as e:
        raise InvalidCloudEvent(f"the event is not a valid CloudEvent: {_describe(e)}") from e
    except ValueError as e:  # unparsable ce-time
        raise InvalidCloudEvent(f"the event has an invalid ce-time header: {e}") from e
    event = _from_sdk(sdk_event, body or None)
    if "ce-time" not in lower_headers:
        event = event.with_attributes(time=None)
    return event


def to_binary_http(event: CloudEvent) -> tuple[dict[str, str], bytes]:
    """Headers and body for pushing `event` in HTTP binary content mode."""
    sdk_attributes: dict[str, Any] = dict(event.attributes)
    if "time" in sdk_attributes:
        sdk_attributes["time"] = datetime.fromisoformat(
            str(sdk_attributes["time"]).replace("Z", "+00:00")
        )
    sdk_event = SdkCloudEvent(sdk_attributes, event.data)
    message = ce_http.to_binary(sdk_event, _FORMAT)
    if "time" in event.attributes:
        message.headers["ce-time"] = ce_http._encode_header_value(str(event.attributes["time"]))
    return message.headers, message.body
