"""EventMesh-compatible HTTP: the `/eventmesh/...` endpoints and the webhook push contract.

Filled in from the Apache EventMesh sources (see docs/eventmesh-compat.md).
"""

from __future__ import annotations

import json
from urllib.parse import urlencode

from runtime._events import CloudEvent, to_json_object
from runtime._push import Outcome, PushRequest
from runtime._subscriptions import Subscription


class EventMeshContract:
    """EventMesh's async HTTP push: form-encoded body, header `code: 105`, JSON `retCode` reply."""

    def request(
        self, subscription: Subscription, topic: str, event: CloudEvent, attempt: int
    ) -> PushRequest:
        form = {
            "content": json.dumps(to_json_object(event), separators=(",", ":")),
            "topic": str(event.attributes.get("meshtaptopic", "")),
            "uniqueId": event.id,
            "bizseqno": event.id,
        }
        headers = {"code": "105", "content-type": "application/x-www-form-urlencoded"}
        return PushRequest(headers, urlencode(form).encode())

    def judge(self, status: int, body: bytes) -> tuple[Outcome, str]:
        if status != 200:
            return Outcome.RETRY, f"subscriber answered HTTP {status}"
        try:
            code = int(json.loads(body)["retCode"])
        except (ValueError, KeyError, TypeError):
            return Outcome.RETRY, "subscriber reply has no JSON retCode"
        if code in (0, 1):
            return Outcome.ACKED, ""
        return Outcome.RETRY, f"subscriber answered retCode {code}"
