"""Subscriptions: who gets which events, how, and what happens when delivery fails.

A subscription is validated once, here, when it is created; everything downstream can trust it.
It is persisted in the store as JSON (`to_document`/`from_document`), so every runtime instance on
the same store sees the same set and subscriptions survive restarts.
"""

from __future__ import annotations

import ipaddress
import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Final, Literal
from urllib.parse import urlsplit

from runtime._errors import InvalidSubscription
from runtime._filters import EventFilter, compile_filters
from runtime._topics import TopicPattern, compile_pattern, validate_group, validate_pattern

Mode = Literal["clustering", "broadcast"]
PushProtocol = Literal["cloudevents", "eventmesh", "grpc"]
"""`grpc`: pushed over a gRPC `subscribeStream` of the runtime instance named in the sink."""
MODES: Final = ("clustering", "broadcast")

# Cloud metadata endpoints: a sink pointing there would let a subscriber exfiltrate credentials.
_METADATA_HOSTS: Final = frozenset(
    {"metadata.google.internal", "metadata", "instance-data", "metadata.azure.com"}
)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff with full jitter between `initial_backoff_ms` and `max_backoff_ms`."""

    max_attempts: int = 5
    initial_backoff_ms: int = 200
    max_backoff_ms: int = 30_000

    def backoff_ms(self, attempt: int) -> int:
        """Upper bound of the wait after failed attempt number `attempt` (1-based)."""
        return min(self.max_backoff_ms, self.initial_backoff_ms * (1 << (attempt - 1)))


@dataclass(frozen=True, slots=True)
class BatchPolicy:
    """Push up to `max_events` events in one request (CloudEvents batch content mode).

    One HTTP request per event costs the runtime and the subscriber far more than the event
    itself; batching is how a subscriber takes tens of thousands of events per second.
    `max_wait_ms` bounds the latency a partly filled batch adds.
    """

    max_events: int = 1
    max_wait_ms: int = 10


@dataclass(frozen=True, slots=True)
class Subscription:
    topic: str
    group: str
    sink: str
    mode: Mode = "clustering"
    filters: EventFilter = field(default_factory=lambda: compile_filters([]))
    retry: RetryPolicy = RetryPolicy()
    batch: BatchPolicy = BatchPolicy()
    timeout_ms: int = 5_000
    protocol: PushProtocol = "cloudevents"
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    created_ms: int = field(default_factory=lambda: time.time_ns() // 1_000_000)

    @property
    def pattern(self) -> TopicPattern:
        return compile_pattern(self.topic)

    @property
    def group_key(self) -> str:
        """The store consumer group: one per clustering group, one per broadcast subscriber."""
        if self.mode == "clustering":
            return f"g:{self.group}"
        return f"b:{self.group}:{self.id}"

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "topic": self.topic,
            "group": self.group,
            "mode": self.mode,
            "sink": self.sink,
            "filters": self.filters.to_json(),
            "retry": {
                "max_attempts": self.retry.max_attempts,
                "initial_backoff_ms": self.retry.initial_backoff_ms,
                "max_backoff_ms": self.retry.max_backoff_ms,
            },
            "batch": {"max_events": self.batch.max_events, "max_wait_ms": self.batch.max_wait_ms},
            "timeout_ms": self.timeout_ms,
            "protocol": self.protocol,
            "created_ms": self.created_ms,
        }

    def to_document(self) -> str:
        return json.dumps(self.to_json(), separators=(",", ":"))

    @classmethod
    def from_document(cls, document: str) -> Subscription:
        """Rebuild a stored subscription (already validated when it was created)."""
        raw = json.loads(document)
        return cls(
            id=raw["id"],
            topic=raw["topic"],
            group=raw["group"],
            mode=raw["mode"],
            sink=raw["sink"],
            filters=compile_filters(raw.get("filters", [])),
            retry=RetryPolicy(**raw.get("retry", {})),
            batch=BatchPolicy(**raw.get("batch", {})),
            timeout_ms=int(raw.get("timeout_ms", 5_000)),
            protocol=raw.get("protocol", "cloudevents"),
            created_ms=int(raw["created_ms"]),
        )


def _int_field(raw: dict[str, Any], name: str, default: int, low: int, high: int) -> int:
    value = raw.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidSubscription(
            f"{name!r} must be an integer from {low} to {high}, got {value!r}"
        )
    return value


def _object_field(
    raw: dict[str, Any], name: str, allowed: tuple[str, ...], example: str
) -> dict[str, Any]:
    """A nested policy object (`retry`, `batch`): an object with only the allowed keys."""
    value = raw.get(name, {})
    if not isinstance(value, dict):
        raise InvalidSubscription(f"{name!r} must be an object like {{{example}}}, got {value!r}")
    unknown = sorted(set(value) - set(allowed))
    if unknown:
        raise InvalidSubscription(
            f"unknown {name} field(s) {', '.join(map(repr, unknown))}; allowed: "
            f"{', '.join(map(repr, allowed))}"
        )
    return value


def parse_subscription(raw: Any, *, protocol: PushProtocol = "cloudevents") -> Subscription:
    """Validate a subscription request body (`POST /v1/subscriptions`)."""
    if not isinstance(raw, dict):
        raise InvalidSubscription(
            'the body must be a JSON object like {"topic": "orders.#", "group": "billing", '
            '"sink": "http://billing:8080/events"}'
        )
    known = {"topic", "group", "mode", "sink", "filters", "retry", "batch", "timeout_ms"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise InvalidSubscription(
            f"unknown field(s) {', '.join(map(repr, unknown))}; allowed: {', '.join(sorted(known))}"
        )
    for name in ("topic", "group", "sink"):
        if not isinstance(raw.get(name), str) or not raw[name]:
            raise InvalidSubscription(f"{name!r} is required and must be a non-empty string")
    mode = raw.get("mode", "clustering")
    if mode not in MODES:
        raise InvalidSubscription(f"'mode' must be 'clustering' or 'broadcast', got {mode!r}")
    retry_raw = _object_field(
        raw, "retry", ("max_attempts", "initial_backoff_ms", "max_backoff_ms"), '"max_attempts": 5'
    )
    retry = RetryPolicy(
        max_attempts=_int_field(retry_raw, "max_attempts", 5, 1, 100),
        initial_backoff_ms=_int_field(retry_raw, "initial_backoff_ms", 200, 1, 3_600_000),
        max_backoff_ms=_int_field(retry_raw, "max_backoff_ms", 30_000, 1, 3_600_000),
    )
    batch_raw = _object_field(
        raw, "batch", ("max_events", "max_wait_ms"), '"max_events": 100, "max_wait_ms": 10'
    )
    batch = BatchPolicy(
        max_events=_int_field(batch_raw, "max_events", 1, 1, 1000),
        max_wait_ms=_int_field(batch_raw, "max_wait_ms", 10, 0, 10_000),
    )
    return Subscription(
        topic=validate_pattern(raw["topic"]),
        group=validate_group(raw["group"]),
        mode=mode,
        sink=check_sink_url(raw["sink"]),
        filters=compile_filters(raw.get("filters", [])),
        retry=retry,
        batch=batch,
        timeout_ms=_int_field(raw, "timeout_ms", 5_000, 1, 600_000),
        protocol=protocol,
    )


def check_sink_url(url: str) -> str:
    """Refuse sink URLs that are not http(s) or that point at link-local or metadata addresses.

    Loopback and private addresses stay allowed: meshes commonly push to services on the same
    host or network. Host names are checked again when they are resolved at delivery time.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise InvalidSubscription(
            f"sink {url!r} must be an http:// or https:// URL (got scheme {parts.scheme!r})"
        )
    host = parts.hostname
    if not host:
        raise InvalidSubscription(f"sink {url!r} has no host; use e.g. http://billing:8080/events")
    try:
        _ = parts.port
    except ValueError:
        raise InvalidSubscription(f"sink {url!r} has an invalid port") from None
    reason = blocked_address_reason(host)
    if reason:
        raise InvalidSubscription(f"sink {url!r} is refused: {reason}")
    return url


def blocked_address_reason(host: str) -> str | None:
    """Why pushing to `host` (a name or an IP literal) is refused, or None when it is allowed."""
    if host.lower().rstrip(".") in _METADATA_HOSTS:
        return f"{host} is a cloud metadata endpoint"
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    if address.is_link_local:
        return f"{address} is a link-local address (cloud metadata services live there)"
    if address.is_unspecified:
        return f"{address} is the unspecified address; name the host that should receive events"
    if address.is_multicast:
        return f"{address} is a multicast address"
    if str(address) == "fd00:ec2::254":
        return f"{address} is the AWS IPv6 metadata endpoint"
    return None
