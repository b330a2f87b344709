"""Where replayed events go, and how a recorded event becomes a replayed one.

**Same mesh or another: through the mesh's HTTP API.** A :class:`HttpTarget` posts batches to
``POST /v1/topics/{topic}/events`` in CloudEvents batch content mode, data as ``data_base64``
(so it arrives byte for byte, whatever its content type). The same mesh is reached the same way,
with topics remapped under a prefix (``replay.``). Writing into the mesh's store directly
(``runtime.stores``) was the other option and was not taken: it would bypass ``Mesh.publish`` --
validation, the partition-key ordering links the dispatchers rely on, the publish span, the
metrics, and above all capture, so replayed events would not appear in ClickHouse with their
replay id, which both the outcome diff and the resume reconciliation read. One HTTP request
carries a whole lane batch (up to 500 events), so the API costs little per event.

**Or through its gRPC API** (:class:`GrpcTarget`, ``grpc://host:10205``): EventMesh
``PublisherService/batchPublish`` through ``runtime.client``, one call per batch, data as protobuf
bytes (also byte for byte). As everywhere on that API the topic travels in the ``subject``
attribute (EventMesh's convention), so a recorded event's own ``subject`` arrives as the topic;
use the HTTP API to keep it. :func:`open_target` picks the target by the URL's scheme.

**Faithful re-produce** (:func:`replayed_event`): every recorded attribute and extension, the
data bytes and the partition key are kept; the CloudEvent ``time`` is the original's. Added:
``replayid``, ``replayoriginalid``, ``replayoriginaltopic``, ``replayoriginaltime`` (when the
mesh accepted the original, RFC 3339 with nanoseconds). The event ``id`` is new and
deterministic -- ``uuid5(replay id, original topic + id)`` -- so a resumed job re-sending an
event produces the same id (consumers and the reconciliation can recognise it), and a replayed
event never collides with its original. Trace context: each replayed event starts a new trace;
its creation span ``replay {topic}`` (PRODUCER) links to the original event's span (an
OpenTelemetry link), and the event's ``traceparent`` is that span's context, so the mesh's
publish and delivery spans of the replay hang under it.
"""

from __future__ import annotations

import base64
import json
import random
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Final, Protocol

import aiohttp
from opentelemetry.trace import (
    Link,
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    TraceFlags,
    Tracer,
    set_span_in_context,
)

from replay._errors import InvalidSpec, TargetRejected, TargetUnavailable
from runtime import CloudEvent
from runtime.client import AsyncMeshClient, InvalidArgument, MeshClientError, NotFound, TooLarge
from tracing import EventRow

__all__ = ["GrpcTarget", "HttpTarget", "Target", "open_target", "replayed_event", "replayed_id"]

_NAMESPACE: Final = uuid.UUID("5a1f3e0c-6d2b-4c1e-9f7a-3b8d2e4c6a10")
_DROPPED: Final = frozenset({"traceparent", "tracestate"})
_BATCH_CONTENT_TYPE: Final = "application/cloudevents-batch+json"


def replayed_id(replay_id: str, row: EventRow) -> str:
    """The replayed event's id: the same for the same replay and original, on every attempt."""
    return str(uuid.uuid5(_NAMESPACE, f"{replay_id}\0{row.topic}\0{row.event_id}"))


def _rfc3339_ns(ns: int) -> str:
    seconds, fraction = divmod(ns, 1_000_000_000)
    stamp = datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{stamp}.{fraction:09d}Z"


def _traceparent(row: EventRow, topic: str, tracer: Tracer | None) -> str:
    if tracer is None:
        trace_id, span_id = random.getrandbits(128) or 1, random.getrandbits(64) or 1
        return f"00-{trace_id:032x}-{span_id:016x}-01"
    links = []
    if row.trace_id and row.span_id:
        original = SpanContext(
            int(row.trace_id, 16), int(row.span_id, 16), True, TraceFlags(TraceFlags.SAMPLED)
        )
        links.append(Link(original, {"messaging.message.id": row.event_id}))
    # A new trace: the span is started with an invalid parent, not the current context.
    root = NonRecordingSpan(SpanContext(0, 0, False))
    span = tracer.start_span(
        f"replay {topic}",
        context=set_span_in_context(root),
        kind=SpanKind.PRODUCER,
        links=links,
        attributes={
            "messaging.system": "meshtap",
            "messaging.operation.type": "send",
            "messaging.operation.name": "replay",
            "messaging.destination.name": topic,
            "messaging.meshtap.original.topic": row.topic,
            "messaging.meshtap.original.message.id": row.event_id,
        },
    )
    span.end()
    context = span.get_span_context()
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"


def replayed_event(
    row: EventRow, replay_id: str, topic: str, tracer: Tracer | None = None
) -> dict[str, Any]:
    """``row`` as the CloudEvents JSON object to send on ``topic`` (see the module docstring)."""
    out: dict[str, Any] = {k: v for k, v in row.attributes().items() if k not in _DROPPED}
    out["id"] = replayed_id(replay_id, row)
    out["replayid"] = replay_id
    out["replayoriginalid"] = row.event_id
    out["replayoriginaltopic"] = row.topic
    out["replayoriginaltime"] = _rfc3339_ns(row.published_ns)
    out["traceparent"] = _traceparent(row, topic, tracer)
    if row.data:
        out["data_base64"] = base64.b64encode(row.data).decode()
    return out


class Target(Protocol):
    """Where a replay sends: ``send`` takes events for one topic, in order, all or nothing."""

    url: str

    async def send(self, topic: str, events: Sequence[dict[str, Any]]) -> None: ...

    async def close(self) -> None: ...


class HttpTarget:
    """A mesh's native HTTP API (this mesh or another, e.g. staging), batch content mode.

    Failures: connection errors, timeouts and 5xx/429 answers are :class:`TargetUnavailable`
    (retryable: the job fails with the reason and resumes from its checkpoint); other 4xx are
    :class:`TargetRejected` with the mesh's message.
    """

    def __init__(self, url: str, *, timeout_s: float = 30.0, token: str = "") -> None:
        self.url = url.rstrip("/")
        # A mesh with authentication wants a client holding the `replay` right on the topics.
        self._auth = {"Authorization": f"Bearer {token}"} if token else {}
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None

    async def send(self, topic: str, events: Sequence[dict[str, Any]]) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=self._timeout, connector=aiohttp.TCPConnector(limit=64)
            )
        body = json.dumps(list(events), separators=(",", ":"), ensure_ascii=False)
        url = f"{self.url}/v1/topics/{topic}/events"
        try:
            async with self._session.post(
                url,
                data=body.encode(),
                headers={"content-type": _BATCH_CONTENT_TYPE, **self._auth},
            ) as response:
                if response.status == 200:
                    await response.read()
                    return
                text = (await response.text())[:500]
        except (aiohttp.ClientError, TimeoutError, OSError) as e:
            raise TargetUnavailable(
                f"target {self.url} is unreachable ({type(e).__name__}: {e}); check that the "
                f"mesh runs there, then resume the job"
            ) from e
        if response.status >= 500 or response.status == 429:
            raise TargetUnavailable(
                f"target {self.url} answered {response.status} for {topic}: {text}; resume the "
                f"job once it is healthy"
            )
        raise TargetRejected(
            f"target {self.url} refused events for topic {topic!r} ({response.status}): {text}"
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


class GrpcTarget:
    """A mesh's gRPC API (``grpc://host:port``): one ``batchPublish`` per batch.

    Failures as for :class:`HttpTarget`: unreachable, UNAVAILABLE or a timeout (after the
    client's own short retries) is :class:`TargetUnavailable`; INVALID_ARGUMENT, NOT_FOUND and
    RESOURCE_EXHAUSTED are :class:`TargetRejected` with the mesh's message.
    """

    def __init__(self, url: str, *, timeout_s: float = 30.0, token: str = "") -> None:
        self.url = url.rstrip("/")
        self._address = self.url.removeprefix("grpc://")
        self._timeout_s = timeout_s
        self._token = token or None
        self._client: AsyncMeshClient | None = None

    async def send(self, topic: str, events: Sequence[dict[str, Any]]) -> None:
        if self._client is None:
            self._client = AsyncMeshClient(
                self._address, timeout_s=self._timeout_s, token=self._token
            )
        try:
            await self._client.publish_batch(topic, [_cloud_event(e) for e in events])
        except (InvalidArgument, NotFound, TooLarge) as e:
            raise TargetRejected(
                f"target {self.url} refused events for topic {topic!r} ({e.code}): {e}"
            ) from e
        except MeshClientError as e:
            raise TargetUnavailable(
                f"target {self.url} is unreachable ({e.code}: {e}); check that the mesh's gRPC "
                "API runs there, then resume the job"
            ) from e

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None


def _cloud_event(event: dict[str, Any]) -> CloudEvent:
    """A :func:`replayed_event` JSON object as the runtime's CloudEvent (data decoded)."""
    attributes = {k: v for k, v in event.items() if k not in ("data_base64", "data")}
    encoded = event.get("data_base64")
    return CloudEvent(attributes, base64.b64decode(encoded) if encoded is not None else None)


def open_target(url: str, *, token: str = "") -> Target:
    """The target for ``url``, by scheme: ``http(s)://`` :class:`HttpTarget`, ``grpc://``
    :class:`GrpcTarget`; ``token`` is the bearer token a mesh with authentication wants (it
    needs the replay right on the target topics)."""
    scheme = url.partition("://")[0].lower() if "://" in url else ""
    if scheme in ("http", "https"):
        return HttpTarget(url, token=token)
    if scheme == "grpc" and url[len("grpc://") :].strip("/"):
        return GrpcTarget(url, token=token)
    raise InvalidSpec(
        f"target {url!r} must be a mesh's HTTP API (http://HOST:10105) or gRPC API "
        "(grpc://HOST:10205)"
    )
