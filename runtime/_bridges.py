"""Bridges: forwarding chosen topics into another mesh (a DMZ mesh into the internal one, say).

A bridge is a subscription (`Subscription.bridge` set, protocol `bridge`) whose "sink" is another
mesh's API: `http(s)://host:port` (the native `POST /v1/topics/{topic}/events`, CloudEvents batch
mode with `data_base64`, so data arrives byte for byte) or `grpc://host:port` (EventMesh
PublisherService `batchPublish`). Being a subscription, it gets everything delivery gives any
subscriber - its own clustering group per bridge, per-`partitionkey` order, retries with backoff,
dead letters to `_dlq.bridge.{name}` with the reason, capture records and `process` spans - and
it is persisted in the store, so it survives restarts and every instance of the mesh forwards.

Loop prevention. Each mesh has a name (`--mesh-name`). When a bridge forwards an event it
appends its own mesh's name to the event's `meshpath` extension (comma-separated, oldest first),
so the path names every mesh the event has been in. A mesh that receives an event whose path
already names it drops it at publish (acknowledged, not stored: it has been here before), so
A -> B -> A stops at A's door. `max_hops` bounds chains that never return (A -> B -> C -> ...):
an event whose path is that long is dead-lettered instead of forwarded.
"""

from __future__ import annotations

import base64
import contextlib
import json
import re
import time
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any, Final
from urllib.parse import urlsplit

import aiohttp

from runtime._errors import (
    InvalidBridge,
    InvalidSubscription,
    InvalidTopic,
)
from runtime._events import BATCH_CONTENT_TYPE, CloudEvent
from runtime._filters import compile_filters
from runtime._push import CloudEventsContract, Outcome, PushResult
from runtime._subscriptions import (
    BatchPolicy,
    BridgeRoute,
    Subscription,
    blocked_address_reason,
    check_sink_url,
    parse_policies,
    timeout_field,
)
from runtime._topics import validate_pattern, validate_topic
from runtime._tracing import qualified_name
from runtime.client import (
    AsyncMeshClient,
    Backoff,
    InvalidArgument,
    MeshClientError,
    TooLarge,
)

MESH_PATH: Final = "meshpath"
"""CloudEvents extension listing the meshes an event passed, comma-separated, oldest first."""
BRIDGE_PROTOCOL: Final = "bridge"
GROUP_PREFIX: Final = "bridge."
DEFAULT_BATCH: Final = BatchPolicy(max_events=100, max_wait_ms=10)
"""Bridges batch by default: forwarding one request per event would cap a bridge's rate."""
MAX_HOPS_LIMIT: Final = 64
_NAME_RE: Final = re.compile(r"[A-Za-z0-9_-]{1,100}")
_MESH_NAME_RE: Final = re.compile(r"[A-Za-z0-9_.:-]{1,100}")
_FIELDS: Final = (
    "name",
    "topic",
    "target",
    "rename",
    "max_hops",
    "filters",
    "retry",
    "batch",
    "timeout_ms",
)
_EXAMPLE: Final = (
    '{"topic": "orders.#", "target": "http://internal-mesh:10105", "rename": {"prefix": "dmz."}}'
)
_CLI_EXAMPLE: Final = "'orders.#=>http://internal:10105;prefix=dmz.;name=to-internal'"


def validate_mesh_name(name: str) -> str:
    """Mesh names travel in `meshpath`, comma-separated: no commas, no spaces."""
    if not _MESH_NAME_RE.fullmatch(name):
        raise InvalidBridge(
            f"mesh name {name!r} must be 1 to 100 ASCII letters, digits, '_', '-', '.' or ':' "
            "(it is listed in the 'meshpath' extension of forwarded events); e.g. --mesh-name dmz"
        )
    return name


def mesh_path(event: CloudEvent) -> list[str]:
    """The meshes `event` has been forwarded from, oldest first (empty if never bridged)."""
    value = event.attributes.get(MESH_PATH)
    if not value:
        return []
    return [name for name in str(value).split(",") if name]


def has_passed(event: CloudEvent, mesh_name: str) -> bool:
    return mesh_name in mesh_path(event)


def hop_refusal(route: BridgeRoute, event: CloudEvent) -> str | None:
    """Why `event` must not be forwarded over `route` (it has travelled too far), or None."""
    path = mesh_path(event)
    if len(path) < route.max_hops:
        return None
    return (
        f"not forwarded by bridge {route.name!r}: the event already passed {len(path)} meshes "
        f"({' -> '.join(path)}), the bridge's max_hops; a bridge chain is probably looping - "
        "check the bridges of those meshes, or raise max_hops if the chain is meant to be long"
    )


# -- configuration --------------------------------------------------------------------------


def _check_target(target: str) -> str:
    parts = urlsplit(target)
    if parts.scheme in ("http", "https"):
        try:
            check_sink_url(target)
        except InvalidSubscription as e:
            raise InvalidBridge(str(e).replace("sink", "target", 1)) from None
        if parts.path not in ("", "/") or parts.query:
            raise InvalidBridge(
                f"target {target!r} must be the other mesh's base URL without a path, like "
                "http://internal-mesh:10105 (events go to its /v1/topics/{topic}/events)"
            )
        return target.rstrip("/")
    if parts.scheme == "grpc":
        try:
            port = parts.port
        except ValueError:
            port = None
        if not parts.hostname or port is None or parts.path not in ("", "/"):
            raise InvalidBridge(
                f"target {target!r} must name the other mesh's gRPC API as grpc://HOST:PORT, "
                "e.g. grpc://internal-mesh:10205"
            )
        reason = blocked_address_reason(parts.hostname)
        if reason:
            raise InvalidBridge(f"target {target!r} is refused: {reason}")
        return f"grpc://{parts.netloc}"
    raise InvalidBridge(
        f"target {target!r} must be another mesh's HTTP API (http://HOST:PORT) or gRPC API "
        f"(grpc://HOST:PORT); got scheme {parts.scheme!r}"
    )


def default_name(topic: str, target: str) -> str:
    """A readable, stable name from what the bridge does (so a restart finds the same bridge)."""
    words = re.sub(r"[^A-Za-z0-9_-]+", "-", f"{topic}-{urlsplit(target).netloc}").strip("-")
    words = words.replace("#", "").strip("-") or "all"
    return f"{words[:80]}-{zlib.crc32(f'{topic}=>{target}'.encode()):08x}"


def _rename(raw: Any, topic: str) -> tuple[str, str]:
    if raw is None:
        return "", ""
    if not isinstance(raw, dict) or set(raw) - {"strip", "prefix"}:
        raise InvalidBridge(
            f"'rename' must be an object with 'strip' and/or 'prefix', like "
            f'{{"strip": "orders.", "prefix": "shop.orders."}}, got {raw!r}'
        )
    strip, prefix = raw.get("strip", ""), raw.get("prefix", "")
    for name, value in (("strip", strip), ("prefix", prefix)):
        if not isinstance(value, str):
            raise InvalidBridge(f"rename.{name} must be a string, got {value!r}")
        if value and not value.endswith("."):
            raise InvalidBridge(
                f"rename.{name} {value!r} must end with '.' (whole topic segments), "
                f"e.g. {value + '.'!r}"
            )
    if prefix:
        try:
            validate_topic(prefix[:-1])
        except InvalidTopic as e:
            raise InvalidBridge(
                f"rename.prefix {prefix!r} is not a valid topic prefix: {e}"
            ) from None
        if prefix.startswith("_"):
            raise InvalidBridge(
                f"rename.prefix {prefix!r} would forward into internal topics (names starting "
                "with '_' are the runtime's); pick a prefix like 'dmz.'"
            )
    if strip and not topic.startswith(strip):
        raise InvalidBridge(
            f"rename.strip {strip!r} must be the start of the bridge's topic pattern {topic!r} "
            f"(it is removed from every forwarded topic), e.g. topic {strip + '#'!r}"
        )
    if strip and not prefix and topic == strip + "#":
        raise InvalidBridge(
            f"rename.strip {strip!r} without a prefix would forward the topic {strip[:-1]!r} "
            "itself under an empty name; add a 'prefix'"
        )
    return strip, prefix


def parse_bridge(raw: Any) -> Subscription:
    """Validate a bridge request body (`POST /v1/bridges`, `--bridge`) into its subscription."""
    if not isinstance(raw, dict):
        raise InvalidBridge(f"the body must be a JSON object like {_EXAMPLE}")
    unknown = sorted(set(raw) - set(_FIELDS))
    if unknown:
        raise InvalidBridge(
            f"unknown field(s) {', '.join(map(repr, unknown))}; allowed: {', '.join(_FIELDS)}"
        )
    for name in ("topic", "target"):
        if not isinstance(raw.get(name), str) or not raw[name]:
            raise InvalidBridge(f"{name!r} is required and must be a non-empty string: {_EXAMPLE}")
    try:
        topic = validate_pattern(raw["topic"])
    except InvalidTopic as e:
        raise InvalidBridge(str(e)) from None
    target = _check_target(raw["target"])
    name = raw.get("name", default_name(topic, target))
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise InvalidBridge(
            f"'name' must be 1 to 100 ASCII letters, digits, '_' or '-', got {name!r}; "
            "e.g. 'dmz-to-internal'"
        )
    strip, prefix = _rename(raw.get("rename"), topic)
    max_hops = raw.get("max_hops", 8)
    if isinstance(max_hops, bool) or not isinstance(max_hops, int):
        raise InvalidBridge(
            f"'max_hops' must be an integer from 1 to {MAX_HOPS_LIMIT}, got {max_hops!r}"
        )
    if not 1 <= max_hops <= MAX_HOPS_LIMIT:
        raise InvalidBridge(
            f"'max_hops' must be an integer from 1 to {MAX_HOPS_LIMIT}, got {max_hops!r}"
        )
    try:
        retry, batch = parse_policies(raw, DEFAULT_BATCH)
        timeout_ms = timeout_field(raw)
        filters = compile_filters(raw.get("filters", []))
    except InvalidSubscription as e:
        raise InvalidBridge(str(e)) from None
    return Subscription(
        topic=topic,
        group=GROUP_PREFIX + name,
        sink=target,
        filters=filters,
        retry=retry,
        batch=batch,
        timeout_ms=timeout_ms,
        protocol=BRIDGE_PROTOCOL,
        id=f"bridge-{name}",
        bridge=BridgeRoute(name=name, strip=strip, prefix=prefix, max_hops=max_hops),
    )


def parse_bridge_flag(text: str) -> Subscription:
    """`PATTERN=>TARGET[;key=value...]` (the `--bridge` flag) into a validated bridge.

    Keys: name, prefix, strip, max_hops, max_attempts, timeout_ms.
    """
    spec, *options = text.strip().split(";")
    topic, arrow, target = spec.partition("=>")
    if not arrow or not topic.strip() or not target.strip():
        raise InvalidBridge(
            f"--bridge expects PATTERN=>TARGET[;key=value...], e.g. {_CLI_EXAMPLE}; got {text!r}"
        )
    raw: dict[str, Any] = {"topic": topic.strip(), "target": target.strip()}
    rename: dict[str, str] = {}
    for option in options:
        key, sep, value = option.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key:
            raise InvalidBridge(
                f"--bridge option {option!r} must be key=value, e.g. {_CLI_EXAMPLE}"
            )
        if key in ("prefix", "strip"):
            rename[key] = value
        elif key == "name":
            raw["name"] = value
        elif key in ("max_hops", "timeout_ms", "max_attempts"):
            if not value.isdigit():
                raise InvalidBridge(f"--bridge option {key} must be a whole number, got {value!r}")
            if key == "max_attempts":
                raw["retry"] = {"max_attempts": int(value)}
            else:
                raw[key] = int(value)
        else:
            raise InvalidBridge(
                f"unknown --bridge option {key!r}; allowed: name, prefix, strip, max_hops, "
                "max_attempts, timeout_ms"
            )
    if rename:
        raw["rename"] = rename
    return parse_bridge(raw)


def bridge_json(subscription: Subscription) -> dict[str, Any]:
    """How the API shows a bridge."""
    route = subscription.bridge
    assert route is not None
    document = subscription.to_json()
    return {
        "name": route.name,
        "topic": subscription.topic,
        "target": subscription.sink,
        "rename": {"strip": route.strip, "prefix": route.prefix},
        "max_hops": route.max_hops,
        "filters": document["filters"],
        "retry": document["retry"],
        "batch": document["batch"],
        "timeout_ms": subscription.timeout_ms,
        "group": subscription.group,
        "dead_letter_topic": f"_dlq.{subscription.group}",
        "created_ms": subscription.created_ms,
    }


# -- forwarding -----------------------------------------------------------------------------


def _runs(items: Sequence[tuple[str, CloudEvent]]) -> list[tuple[str, list[CloudEvent]]]:
    """Consecutive items with the same topic, in order (one publish call each)."""
    runs: list[tuple[str, list[CloudEvent]]] = []
    for topic, event in items:
        if runs and runs[-1][0] == topic:
            runs[-1][1].append(event)
        else:
            runs.append((topic, [event]))
    return runs


def _wire_json(event: CloudEvent) -> dict[str, Any]:
    """JSON format with the data always as `data_base64`: the data arrives byte for byte."""
    out: dict[str, Any] = dict(event.attributes)
    if event.data is not None:
        out["data_base64"] = base64.b64encode(event.data).decode()
    return out


_TOO_LARGE: Final = frozenset({"413", "RESOURCE_EXHAUSTED"})


class BridgeChannel:
    """The `bridge` push channel: publishes a delivery's events into the target mesh.

    One delivery attempt is one call per run of same-topic events; the whole attempt is retried
    when any call fails (at-least-once: the target may see a run twice, never out of order). A
    run the target finds too large (over its --max-payload-bytes) is split in halves and sent
    in order, so only an event too large on its own is dead-lettered.
    """

    def __init__(self, mesh_name: str) -> None:
        self.mesh_name = mesh_name
        self._session: aiohttp.ClientSession | None = None
        self._clients: dict[str, AsyncMeshClient] = {}
        self._judge = CloudEventsContract().judge

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(skip_auto_headers=("User-Agent",))

    async def close(self) -> None:
        for client in self._clients.values():
            with contextlib.suppress(Exception):
                await client.close()
        self._clients.clear()
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _forwarded(
        self, route: BridgeRoute, topic: str, event: CloudEvent
    ) -> tuple[str, CloudEvent]:
        path = ",".join([*mesh_path(event), self.mesh_name])
        return route.target_topic(topic), event.with_attributes(**{MESH_PATH: path})

    async def push(
        self,
        subscription: Subscription,
        items: Sequence[tuple[str, CloudEvent]],
        attempt: int,
        trace_headers: Mapping[str, str] | None,
    ) -> PushResult:
        route = subscription.bridge
        assert route is not None, "a bridge subscription carries its route"
        started = time.perf_counter()
        forwarded = [self._forwarded(route, topic, event) for topic, event in items]
        for topic, _ in forwarded:
            try:
                validate_topic(topic)
            except InvalidTopic as e:
                return PushResult(
                    Outcome.REJECTED,
                    time.perf_counter() - started,
                    error=f"bridge {route.name!r} renames to an invalid topic: {e}",
                    error_type="_OTHER",
                )
        status: int | None = None
        for topic, events in _runs(forwarded):
            failure = await self._send_splitting(subscription, topic, events, trace_headers)
            if failure is not None:
                return replace(failure, duration_s=time.perf_counter() - started)
            status = None if subscription.sink.startswith("grpc://") else 200
        return PushResult(Outcome.ACKED, time.perf_counter() - started, status)

    async def _send_splitting(
        self,
        subscription: Subscription,
        topic: str,
        events: Sequence[CloudEvent],
        trace_headers: Mapping[str, str] | None,
    ) -> PushResult | None:
        """Send one run; None once the target accepted all of it, else why not."""
        if subscription.sink.startswith("grpc://"):
            failure = await self._send_grpc(subscription, topic, events)
        else:
            failure = await self._send_http(subscription, topic, events, trace_headers)
        if failure is None or failure.error_type not in _TOO_LARGE or len(events) == 1:
            return failure
        half = len(events) // 2
        return await self._send_splitting(
            subscription, topic, events[:half], trace_headers
        ) or await self._send_splitting(subscription, topic, events[half:], trace_headers)

    async def _send_http(
        self,
        subscription: Subscription,
        topic: str,
        events: Sequence[CloudEvent],
        trace_headers: Mapping[str, str] | None,
    ) -> PushResult | None:
        assert self._session is not None, "BridgeChannel.start() was not called"
        headers = {"content-type": BATCH_CONTENT_TYPE, **(trace_headers or {})}
        timeout = aiohttp.ClientTimeout(total=subscription.timeout_ms / 1000)
        url = f"{subscription.sink}/v1/topics/{topic}/events"
        body = json.dumps([_wire_json(e) for e in events], separators=(",", ":"))
        try:
            async with self._session.post(
                url, data=body.encode(), headers=headers, timeout=timeout, allow_redirects=False
            ) as response:
                reply = await response.read()
                outcome, error = self._judge(response.status, reply)
        except TimeoutError:
            return PushResult(
                Outcome.RETRY,
                0.0,
                error=f"target mesh {subscription.sink} did not answer within "
                f"{subscription.timeout_ms} ms",
                error_type="timeout",
            )
        except (aiohttp.ClientError, OSError) as e:
            return PushResult(
                Outcome.RETRY,
                0.0,
                error=f"cannot forward to target mesh {subscription.sink}: {type(e).__name__}: {e}",
                error_type=qualified_name(e),
            )
        if outcome is Outcome.ACKED:
            return None
        return PushResult(
            outcome,
            0.0,
            response.status,
            error.replace("sink", f"target mesh {subscription.sink}", 1),
            str(response.status),
        )

    def _client(self, target: str, timeout_s: float) -> AsyncMeshClient:
        client = self._clients.get(target)
        if client is None:
            # One try per delivery attempt: retries and backoff are the dispatcher's.
            client = AsyncMeshClient(target, timeout_s=timeout_s, backoff=Backoff(attempts=1))
            self._clients[target] = client
        client.timeout_s = timeout_s
        return client

    async def _send_grpc(
        self, subscription: Subscription, topic: str, events: Sequence[CloudEvent]
    ) -> PushResult | None:
        address = subscription.sink.removeprefix("grpc://")
        client = self._client(address, subscription.timeout_ms / 1000)
        try:
            await client.publish_batch(topic, events)
        except (InvalidArgument, TooLarge) as e:
            return PushResult(
                Outcome.REJECTED,
                0.0,
                error=f"target mesh {subscription.sink} refused the events: {e}",
                error_type=e.code or "_OTHER",
            )
        except MeshClientError as e:
            return PushResult(
                Outcome.RETRY,
                0.0,
                error=f"cannot forward to target mesh {subscription.sink}: {e}",
                error_type=e.code or "_OTHER",
            )
        return None
