"""How stores serialise an event: attributes as compact JSON, data as raw bytes."""

from __future__ import annotations

import json

from runtime._events import CloudEvent


def encode_attributes(event: CloudEvent) -> bytes:
    return json.dumps(event.attributes, separators=(",", ":"), ensure_ascii=False).encode()


def decode_event(attributes: bytes | str, data: bytes | None) -> CloudEvent:
    return CloudEvent(json.loads(attributes), data)
