"""CloudEvents protobuf format (EventMesh's `CloudEvent` message) <-> our `CloudEvent`.

Pure conversion, no I/O, so the gRPC API, the client SDK and the tests share one mapping:

* `id`, `source`, `spec_version`, `type` are fields; every other attribute is in `attributes`.
* Attribute values keep their CloudEvents type: `ce_string`/`ce_uri`/`ce_uri_ref` -> str,
  `ce_integer` -> int, `ce_boolean` -> bool, `ce_timestamp` -> RFC 3339 str, `ce_bytes` -> base64
  str (the CloudEvents JSON rule for Binary).
* Data: `binary_data` is kept byte for byte, `text_data` as its UTF-8 bytes, `proto_data` as the
  packed message's bytes with `datacontenttype` `application/protobuf` and `dataschema` the
  Any's type URL (unless the producer set them).
* Going out, data is `text_data` when the content type is text or JSON and the bytes are UTF-8,
  else `binary_data`; `time` goes out as `ce_timestamp`.

Validation goes through the same CloudEvents SDK rules as the HTTP bindings
(`runtime._events`), so a malformed event gets the same message on every protocol.
"""

from __future__ import annotations

import base64
import re
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Final

from runtime._errors import InvalidCloudEvent
from runtime._events import AttributeValue, CloudEvent, _from_sdk, _validated
from runtime._proto.eventmesh_pb2 import CloudEvent as PbCloudEvent
from runtime._proto.eventmesh_pb2 import CloudEventBatch as PbCloudEventBatch

__all__ = [
    "BATCH_FRAME_TYPE",
    "PbCloudEvent",
    "PbCloudEventBatch",
    "batch_frame",
    "from_proto",
    "string_attribute",
    "to_proto",
    "unpack_frame",
]

BATCH_FRAME_TYPE: Final = "io.meshtap.batch"
BATCH_FRAME_CONTENT_TYPE: Final = "application/cloudevents-batch+protobuf"

Value = PbCloudEvent.CloudEventAttributeValue
_TEXT_CONTENT: Final = re.compile(
    r"^(text/.*|application/([a-zA-Z0-9\-.]+\+)?(json|xml)(;.*)?)$", re.I
)
_FIELDS: Final = ("id", "source", "specversion", "type")
_INT32: Final = range(-(2**31), 2**31)


def _rfc3339(seconds: int, nanos: int) -> str:
    """A protobuf Timestamp as RFC 3339 (UTC, microseconds), without building a datetime."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{nanos // 1000:06d}Z"


def _value(name: str, value: Value, where: str) -> AttributeValue:
    kind = value.WhichOneof("attr")
    if kind == "ce_string":
        return value.ce_string
    if kind in ("ce_uri", "ce_uri_ref"):
        text: str = getattr(value, kind)
        return text
    if kind == "ce_integer":
        return int(value.ce_integer)
    if kind == "ce_boolean":
        return bool(value.ce_boolean)
    if kind == "ce_bytes":
        return base64.b64encode(value.ce_bytes).decode()
    if kind == "ce_timestamp":
        return _rfc3339(value.ce_timestamp.seconds, value.ce_timestamp.nanos)
    raise InvalidCloudEvent(
        f"{where}: attribute {name!r} has no value set; set one of ce_string, ce_integer, "
        "ce_boolean, ce_bytes, ce_uri, ce_uri_ref or ce_timestamp"
    )


def string_attribute(message: PbCloudEvent, name: str) -> str:
    """A protocol attribute as text ('' when absent), whatever type the client sent it as."""
    if name not in message.attributes:
        return ""
    value = message.attributes[name]
    kind = value.WhichOneof("attr")
    if kind is None or kind in ("ce_bytes", "ce_timestamp"):
        return ""
    return str(getattr(value, kind)).strip()


def from_proto(
    message: PbCloudEvent,
    where: str = "the event",
    *,
    drop: frozenset[str] = frozenset(),
    trusted: bool = False,
) -> CloudEvent:
    """Our model of `message`; InvalidCloudEvent names what is wrong. `drop` names attributes
    that are protocol plumbing (credentials, response codes) and never stored. `trusted` skips
    the CloudEvents validation for events the runtime already validated (what clients receive).
    """
    attributes: dict[str, Any] = {}
    if message.id:
        attributes["id"] = message.id
    if message.source:
        attributes["source"] = message.source
    if message.spec_version:
        attributes["specversion"] = message.spec_version
    if message.type:
        attributes["type"] = message.type
    for name, value in message.attributes.items():
        lower = name.lower()
        if lower in drop or lower in _FIELDS:
            continue
        attributes[lower] = _value(name, value, where)
    data: bytes | None = None
    kind = message.WhichOneof("data")
    if kind == "binary_data":
        data = bytes(message.binary_data)
    elif kind == "text_data":
        data = message.text_data.encode()
    elif kind == "proto_data":
        data = bytes(message.proto_data.value)
        attributes.setdefault("datacontenttype", "application/protobuf")
        if message.proto_data.type_url:
            attributes.setdefault("dataschema", message.proto_data.type_url)
    missing = [name for name in ("id", "source", "type") if not attributes.get(name)]
    if not attributes.get("specversion"):
        missing.append("spec_version")
    if missing:
        names = ", ".join(repr(name) for name in missing)
        raise InvalidCloudEvent(
            f"{where} is missing required CloudEvents field(s) {names}; set id, source, "
            'spec_version ("1.0") and type on the CloudEvent message'
        )
    if trusted:
        return CloudEvent(attributes, data or None)
    return _from_sdk(_validated(attributes, where), data or None)


def _set_value(target: Value, name: str, value: AttributeValue) -> None:
    if isinstance(value, bool):
        target.ce_boolean = value
    elif isinstance(value, int):
        if value in _INT32:
            target.ce_integer = value
        else:
            target.ce_string = str(value)
    elif name == "time":
        try:
            moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            target.ce_string = value
            return
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        stamp = target.ce_timestamp
        stamp.seconds = int(moment.timestamp() // 1)
        stamp.nanos = moment.microsecond * 1000
    else:
        target.ce_string = value


def to_proto(event: CloudEvent, extra: Mapping[str, str] | None = None) -> PbCloudEvent:
    """`event` as the protobuf message; `extra` string attributes are set on top."""
    message = PbCloudEvent(
        id=event.id,
        source=event.source,
        spec_version=str(event.attributes.get("specversion", "1.0")),
        type=event.type,
    )
    attributes = message.attributes
    for name, value in event.attributes.items():
        if name not in _FIELDS:
            _set_value(attributes[name], name, value)
    for name, text in (extra or {}).items():
        attributes[name].ce_string = text
    if event.data is not None:
        content_type = event.datacontenttype
        text_content = content_type is None or _TEXT_CONTENT.match(content_type) is not None
        if text_content:
            try:
                message.text_data = event.data.decode()
            except UnicodeDecodeError:
                message.binary_data = event.data
        else:
            message.binary_data = event.data
    return message


def batch_frame(messages: list[PbCloudEvent], tag: str) -> PbCloudEvent:
    """Several events as one stream message (Meshtap's `framing = batch`): a CloudEvent of type
    `io.meshtap.batch` whose data is a serialized `CloudEventBatch`, acknowledged as a whole by
    its `deliverytag`. One gRPC message per event costs more than the event itself."""
    frame = PbCloudEvent(
        id=tag,
        source="/meshtap",
        spec_version="1.0",
        type=BATCH_FRAME_TYPE,
        binary_data=PbCloudEventBatch(events=messages).SerializeToString(),
    )
    frame.attributes["datacontenttype"].CopyFrom(Value(ce_string=BATCH_FRAME_CONTENT_TYPE))
    frame.attributes["deliverytag"].CopyFrom(Value(ce_string=tag))
    return frame


def unpack_frame(message: PbCloudEvent) -> list[PbCloudEvent] | None:
    """The events of a batch frame, or None when `message` is a single event."""
    if message.type != BATCH_FRAME_TYPE:
        return None
    return list(PbCloudEventBatch.FromString(message.binary_data).events)
