"""Pushing one event to one subscriber's sink, and judging the answer.

A push contract turns an event into an HTTP request and the sink's response into an outcome:

* ACKED   - the subscriber has the event; settle it.
* RETRY   - try again after a backoff (429, 5xx, timeouts, connection errors).
* REJECTED - retrying cannot help (other 4xx, or the subscriber said so); dead-letter at once.

The CloudEvents contract (HTTP binary content mode) is the native one; the EventMesh webhook
contract lives in `runtime._eventmesh` and plugs in through the same protocol.
"""

from __future__ import annotations

import asyncio
import enum
import json
import ssl
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import aiohttp

from runtime._events import BATCH_CONTENT_TYPE, CloudEvent, to_binary_http, to_json_object
from runtime._netguard import SIGNATURE_HEADER, GuardedResolver, SinkPolicy, sign_push
from runtime._subscriptions import Subscription
from runtime._tracing import qualified_name


class Outcome(enum.Enum):
    ACKED = "acked"
    RETRY = "retry"
    REJECTED = "rejected"


@dataclass(frozen=True, slots=True)
class PushResult:
    outcome: Outcome
    duration_s: float
    status: int | None = None
    error: str = ""
    """Why the push did not succeed, in words fit for a dead-letter reason."""
    error_type: str = ""
    """The failure's class for the span's `error.type` (semconv): the HTTP status code, `timeout`,
    the exception's qualified class name, or `_OTHER` (e.g. a 2xx reply the contract refused)."""


@dataclass(frozen=True, slots=True)
class PushRequest:
    headers: dict[str, str]
    body: bytes


class SubscriberGone(Exception):
    """The subscriber's connection is gone (a closed gRPC stream): leave the event pending.

    Retrying the same subscriber cannot help and dead-lettering would lose an event another
    subscriber of the group can take, so delivery stops here and the store's reclaim hands the
    event out again after `claim_idle_ms`.
    """


class PushChannel(Protocol):
    """Delivers to subscribers that are not HTTP sinks (gRPC streams, `runtime._streams`)."""

    async def push(
        self,
        subscription: Subscription,
        items: Sequence[tuple[str, CloudEvent]],
        attempt: int,
        trace_headers: Mapping[str, str] | None,
    ) -> PushResult: ...


class PushContract(Protocol):
    def request(
        self, subscription: Subscription, topic: str, event: CloudEvent, attempt: int
    ) -> PushRequest: ...

    def judge(self, status: int, body: bytes) -> tuple[Outcome, str]: ...


class BatchPushContract(PushContract, Protocol):
    def batch_request(
        self, subscription: Subscription, items: Sequence[tuple[str, CloudEvent]], attempt: int
    ) -> PushRequest: ...


class CloudEventsContract:
    """CloudEvents HTTP binary mode: `ce-*` headers, body = data; any 2xx acknowledges.

    Batched subscriptions get CloudEvents batch content mode: a JSON array of events in the
    JSON event format; a 2xx acknowledges the whole batch.
    """

    def request(
        self, subscription: Subscription, topic: str, event: CloudEvent, attempt: int
    ) -> PushRequest:
        headers, body = to_binary_http(event)
        return PushRequest(headers, body)

    def batch_request(
        self, subscription: Subscription, items: Sequence[tuple[str, CloudEvent]], attempt: int
    ) -> PushRequest:
        body = json.dumps([to_json_object(event) for _, event in items], separators=(",", ":"))
        return PushRequest({"content-type": BATCH_CONTENT_TYPE}, body.encode())

    def judge(self, status: int, body: bytes) -> tuple[Outcome, str]:
        if 200 <= status < 300:
            return Outcome.ACKED, ""
        snippet = body[:200].decode(errors="replace").strip()
        reason = f"sink answered HTTP {status}" + (f": {snippet}" if snippet else "")
        if status == 429 or status >= 500:
            return Outcome.RETRY, reason
        return Outcome.REJECTED, reason


class Pusher:
    """Owns the HTTP client used for every push of one runtime instance."""

    def __init__(
        self,
        contracts: dict[str, PushContract],
        *,
        max_connections: int = 512,
        channels: Mapping[str, PushChannel] | None = None,
        ssl_context: ssl.SSLContext | None = None,
        sink_policy: SinkPolicy | None = None,
        signing_key: str = "",
    ) -> None:
        self._ssl: ssl.SSLContext | bool = ssl_context if ssl_context is not None else True
        self._sink_policy = sink_policy
        self._signing_key = signing_key
        self._contracts = contracts
        self._channels = dict(channels or {})
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        # ssl: https sinks are always verified (system CAs, plus --sink-ca-bundle); the
        # resolver refuses names that resolve to blocked networks (runtime._netguard).
        connector = aiohttp.TCPConnector(
            limit=self._max_connections,
            limit_per_host=0,
            ttl_dns_cache=30,
            ssl=self._ssl,
            resolver=GuardedResolver(self._sink_policy) if self._sink_policy else None,
        )
        self._session = aiohttp.ClientSession(
            connector=connector, auto_decompress=False, skip_auto_headers=("User-Agent",)
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def push(
        self,
        subscription: Subscription,
        items: Sequence[tuple[str, CloudEvent]],
        attempt: int,
        *,
        trace_headers: Mapping[str, str] | None = None,
    ) -> PushResult:
        """Push one event, or several in one request when the contract can batch.

        `trace_headers` (W3C `traceparent`/`tracestate` of the attempt's span) are added to the
        request whatever the contract, so an instrumented subscriber continues the trace; they
        replace a contract's own headers of the same name.
        """
        channel = self._channels.get(subscription.protocol)
        if channel is not None:
            return await channel.push(subscription, items, attempt, trace_headers)
        assert self._session is not None, "Pusher.start() was not called"
        contract = self._contracts[subscription.protocol]
        if len(items) == 1:
            topic, event = items[0]
            request = contract.request(subscription, topic, event, attempt)
        else:
            assert isinstance(contract, CloudEventsContract), "only CloudEvents pushes batch"
            request = contract.batch_request(subscription, items, attempt)
        headers = request.headers
        if trace_headers:
            headers = {**headers, **trace_headers}
        if self._signing_key:
            headers = {**headers, SIGNATURE_HEADER: sign_push(self._signing_key, request.body)}
        started = time.perf_counter()
        timeout = aiohttp.ClientTimeout(total=subscription.timeout_ms / 1000)
        try:
            async with self._session.post(
                subscription.sink,
                data=request.body,
                headers=headers,
                timeout=timeout,
                allow_redirects=False,
            ) as response:
                body = await response.read()
                outcome, error = contract.judge(response.status, body)
                status = response.status
                error_type = ""
                if outcome is not Outcome.ACKED:
                    error_type = "_OTHER" if 200 <= status < 300 else str(status)
                return PushResult(outcome, time.perf_counter() - started, status, error, error_type)
        except TimeoutError:
            error = f"sink did not answer within {subscription.timeout_ms} ms"
            error_type = "timeout"
        except aiohttp.ClientConnectorError as e:
            error = f"cannot connect to sink {subscription.sink}: {e.os_error or e}"
            error_type = qualified_name(e)
        except (aiohttp.ClientError, OSError) as e:
            error = f"push to sink {subscription.sink} failed: {type(e).__name__}: {e}"
            error_type = qualified_name(e)
        except asyncio.CancelledError:
            raise
        return PushResult(Outcome.RETRY, time.perf_counter() - started, None, error, error_type)
