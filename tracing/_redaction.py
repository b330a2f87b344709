"""Redaction: mask configured data fields and extensions before anything is written.

Masked values are replaced by a keyed hash (HMAC-SHA256 with the deployment's redaction key), not
by a constant: equal secrets map to equal tokens, so an SRE can still see that two events carried
the same card number, or join on it, without ever seeing it. Without a key the token would be a
plain hash, open to dictionary attacks on short values (phone numbers, PINs), so a key is required
whenever anything is configured to be redacted.

Field paths use dots between object keys; `*` matches every key of an object or every element of
an array (`items.*.iban`). Data is only redacted when it is JSON (by `datacontenttype`, or absent
content type with a body that parses); other payloads are left alone and reported, since a path
cannot be applied to bytes of unknown shape.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from runtime import CloudEvent

TOKEN_PREFIX = "redacted:"
_JSON_CONTENT_TYPE = re.compile(r"^(application|text)/([a-zA-Z0-9\-.]+\+)?json(;.*)?$", re.I)


class RedactionConfigError(ValueError):
    """The redaction rules cannot be applied as configured; the message says how to fix them."""


@dataclass(frozen=True, slots=True)
class Redactor:
    """Applies one deployment's redaction rules to events."""

    field_paths: tuple[tuple[str, ...], ...]
    extensions: frozenset[str]
    key: bytes

    @classmethod
    def build(cls, fields: tuple[str, ...], extensions: tuple[str, ...], key: str) -> Redactor:
        paths = []
        for path in fields:
            parts = tuple(path.split("."))
            if not path or any(not part for part in parts):
                raise RedactionConfigError(
                    f"redaction field path {path!r} is malformed: use dot-separated keys, "
                    "with * for any key or array element (e.g. card.number or items.*.iban)"
                )
            paths.append(parts)
        names = frozenset(e.lower() for e in extensions)
        if (paths or names) and not key:
            raise RedactionConfigError(
                "redaction is configured but no redaction key is set: pass --redaction-key "
                "(or MESHTAP_REDACTION_KEY) with a long random secret, so masked values cannot "
                "be recovered by hashing guesses"
            )
        return cls(tuple(paths), names, key.encode())

    @property
    def active(self) -> bool:
        return bool(self.field_paths or self.extensions)

    def token(self, value: str | bytes) -> str:
        """The keyed hash that stands in for `value`."""
        raw = value if isinstance(value, bytes) else value.encode()
        digest = hmac.new(self.key, raw, hashlib.sha256).hexdigest()[:32]
        return f"{TOKEN_PREFIX}{digest}"

    def redact(self, event: CloudEvent) -> CloudEvent:
        """The event with configured extensions and data fields masked (unchanged if none)."""
        if not self.active:
            return event
        attributes: Mapping[str, Any] = event.attributes
        if self.extensions & attributes.keys():
            attributes = {
                k: (self.token(str(v)) if k in self.extensions else v)
                for k, v in attributes.items()
            }
        data = event.data
        if self.field_paths and data is not None and _is_json(event.datacontenttype):
            data = self._redact_data(data)
        if attributes is event.attributes and data is event.data:
            return event
        return CloudEvent(attributes, data)

    def _redact_data(self, data: bytes) -> bytes:
        try:
            document = json.loads(data)
        except (ValueError, UnicodeDecodeError):
            return data  # declared JSON but is not: nothing addressable to mask
        changed = False
        for path in self.field_paths:
            changed |= self._mask(document, path)
        if not changed:
            return data
        return json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode()

    def _mask(self, node: Any, path: tuple[str, ...]) -> bool:
        head, rest = path[0], path[1:]
        keys: list[Any]
        if isinstance(node, dict):
            keys = list(node) if head == "*" else ([head] if head in node else [])
        elif isinstance(node, list) and (head == "*" or head.isdigit()):
            indexes = range(len(node)) if head == "*" else [int(head)]
            keys = [i for i in indexes if i < len(node)]
        else:
            return False
        changed = False
        for key in keys:
            if rest:
                changed |= self._mask(node[key], rest)
            elif node[key] is not None:
                value = node[key]
                text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
                node[key] = self.token(text)
                changed = True
        return changed


def _is_json(content_type: str | None) -> bool:
    return content_type is None or bool(_JSON_CONTENT_TYPE.match(content_type))
