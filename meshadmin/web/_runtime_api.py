"""The runtime's HTTP API (``/v1/topics``, ``/v1/subscriptions``) for the configuration page.

Topics and subscriptions live in the runtime's store (Redis in server mode); the admin keeps no
copy, so what it shows is what the mesh runs, and every change goes through the same API (and
validation) as ``curl`` would.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

TIMEOUT_S = 5.0


class RuntimeApiError(Exception):
    """The runtime refused the call (its message says why) or could not be reached."""


class RuntimeApi:
    def __init__(self, base_url: str) -> None:
        self.base_url = base_url.rstrip("/")

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.base_url + path,
            data=data,
            method=method,
            headers={"content-type": "application/json", "accept": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
                return json.loads(response.read() or b"{}")
        except urllib.error.HTTPError as e:
            try:
                reply = json.loads(e.read())
                message = reply.get("message") or reply.get("error") or str(reply)
            except ValueError:
                message = f"HTTP {e.code}"
            raise RuntimeApiError(f"the runtime refused it: {message}") from None
        except (urllib.error.URLError, TimeoutError, OSError) as e:
            raise RuntimeApiError(
                f"the runtime at {self.base_url} did not answer ({e}); is it running? "
                f"(MESHTAP_RUNTIME_URL)"
            ) from None

    def topics(self) -> list[str]:
        return sorted(self._call("GET", "/v1/topics")["topics"])

    def subscriptions(self) -> list[dict[str, Any]]:
        found = self._call("GET", "/v1/subscriptions")["subscriptions"]
        return sorted(found, key=lambda s: (s["topic"], s["group"], s["id"]))

    def subscribe(self, body: dict[str, Any]) -> dict[str, Any]:
        return dict(self._call("POST", "/v1/subscriptions", body))

    def unsubscribe(self, subscription_id: str) -> None:
        self._call("DELETE", "/v1/subscriptions/" + urllib.parse.quote(subscription_id, safe=""))

    def create_topic(self, topic: str) -> None:
        self._call("PUT", "/v1/topics/" + urllib.parse.quote(topic, safe=""))

    def delete_topic(self, topic: str) -> None:
        self._call("DELETE", "/v1/topics/" + urllib.parse.quote(topic, safe=""))
