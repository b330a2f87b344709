"""EventMesh-compatible HTTP: the `/eventmesh/...` endpoints, the SDK's `code`-header protocol and
EventMesh's webhook push contract, so Apache EventMesh HTTP clients and subscribers work unchanged.

The wire facts come from docs/eventmesh-compat-notes.md (EventMesh v1.12.0 / HEAD). Everything
here translates: requests become `Mesh` calls, replies get EventMesh's shape, and subscriptions
made this way are pushed with `EventMeshContract`.

What is compatible
    * Both dispatch styles on one port. Path style, as curl users and the docs use it:
      ``POST /eventmesh/publish/{topic}``, ``/eventmesh/subscribe/local``,
      ``/eventmesh/unsubscribe/local``, ``/eventmesh/topic/create``, ``/eventmesh/topic/delete``
      and ``GET|POST /eventmesh/subscrition/query`` (sic). Code style, as the Java SDK uses it:
      ``POST /`` with a form body and header ``code`` (104 publish, 206 subscribe,
      207 unsubscribe, 203 heartbeat).
    * Replies are JSON objects with EventMesh's numeric ``retCode`` and ``retMsg``; HTTP 200 for
      business errors; ``resTime`` on the code route; ``retMessage`` (sic) on topic create/delete
      success; HTTP 400 + retCode 2 for a missing or unknown ``code`` header.
    * Subscribe bodies (``url``, ``consumerGroup``, ``topic`` items with ``mode``/``type``),
      unsubscribe bodies (``topic`` names), ``;``-separated topic create/delete.
    * Webhook push: form-encoded ``content``/``bizseqno``/``uniqueId``/``randomNo``/``topic``/
      ``extFields`` with headers ``code: 105``, ``language``, ``version`` and ``eventmesh*``;
      for events published over the path route the CloudEvent attributes travel as headers too.
      The subscriber's ``{"retCode": n}`` decides: 0/1 done, 2/5 retry. Retries follow
      EventMesh's defaults: 4 attempts about 3 s apart, 5 s timeout.

What is deliberately different, and why
    * Every error message says what was wrong and what to do. The retCode stays EventMesh's
      (clients branch on it); the retMsg starts with EventMesh's text and adds the detail.
      Where EventMesh answers a bare HTTP 500 (missing url/consumerGroup, bad mode/type enum,
      non-object JSON, no topic in the publish path) Meshtap answers retCode 7 with a message.
    * Publish is byte-faithful: the request body becomes the event's data exactly as sent, with
      datacontenttype = the Content-Type (any value, parameters such as ``; charset=utf-8``
      included; EventMesh refuses all but exactly ``application/json``). EventMesh instead wraps
      the parsed body into ``{"headers","body","path","method"}``. Meshtap records and replays
      traffic, so the payload must stay what the producer sent. The client's ``uniqueid`` (or
      ``bizseqno``) header becomes the event id (EventMesh always makes a random one), a
      W3C ``traceparent`` header joins the producer's trace, and there is no 1000-character
      event-size limit, only ``--max-payload-bytes`` (retCode 8).
    * The topic is the path segment only: a query string is not part of it, and an empty
      topic is refused instead of falling back to ``TEST-HTTP-TOPIC``.
    * Headers ``env``/``idc``/``sys``/``pid`` are not required, and ``username``/``passwd``/
      ``token`` are never copied into events nor pushed to subscribers (EventMesh forwards the
      publisher's credentials to every subscriber).
    * Sink URLs: loopback is allowed (normal in the embedded default, where subscribers run on
      the same host), link-local and cloud-metadata addresses are refused
      (`check_sink_url`), instead of EventMesh's resolve-then-blacklist rule.
    * After the last attempt, and at once on retCode 3 (FAIL), 410 or 415, the event is
      dead-lettered to ``_dlq.{consumerGroup}`` with the reason; EventMesh drops it silently.
      A 2xx reply without a readable retCode acknowledges (EventMesh treats it as FAIL).
      ``Retry-After`` on a 429 is not honoured yet (the normal backoff applies).
    * A push's ``uniqueId``/``bizseqno`` are the event's (its ``uniqueid``/``bizseqno``
      extension, else its id), the same on every attempt, so subscribers can deduplicate;
      EventMesh sends random digits when the event has none.
    * Unsubscribe removes exactly the (url, consumerGroup, topic) subscriptions named; EventMesh
      may drop the whole consumer group when its last client leaves.
    * Re-subscribing the same (url, consumerGroup, topic) changes nothing (first one wins, as in
      EventMesh) and never duplicates; topics may be Meshtap patterns (``orders.*``).
    * Topic create/delete act on the store: delete removes the topic's retained events
      (EventMesh only edits an in-memory name set).
    * Not supported yet, each with a retCode and a message saying so: request-reply (101, 301),
      batch publish (102, 107), remote subscribe/unsubscribe and bridge publish. GET is only
      served on the subscription query; subscription type SYNC is accepted but pushed with
      ``code: 105`` (storing the type needs a Subscription field).
    * Replies are ``application/json`` (EventMesh says ``text/plain``; its clients only parse
      the body).

retCodes Meshtap returns (EventMesh's numbers and names)

    =====  ==================================  ============================================
    code   EventMesh name                      when
    =====  ==================================  ============================================
    0      SUCCESS                             the request was done
    2      EVENTMESH_REQUESTCODE_INVALID       ``POST /`` without a known ``code`` header
                                               (HTTP 400); no such ``/eventmesh/`` endpoint
                                               (HTTP 404) or method (HTTP 405)
    3      EVENTMESH_SEND_SYNC_MSG_ERR         code 101: request-reply is not supported yet
    6      EVENTMESH_PROTOCOL_HEADER_ERR       bad ``version``/``protocoltype`` header, or a
                                               header that makes an invalid CloudEvent
    7      EVENTMESH_PROTOCOL_BODY_ERR         anything wrong with the body, topic or url
    8      EVENTMESH_PROTOCOL_BODY_SIZE_ERR    body over ``--max-payload-bytes``
    10     EVENTMESH_REJECT_BY_PROCESSOR_ERROR codes 102/107: batch publish not supported yet;
                                               over the client's rate limit (HTTP 429)
    15     EVENTMESH_SEND_ASYNC_MSG_ERR        publish: the store is unavailable (retry);
                                               bridge publish is not supported
    16     EVENTMESH_REPLY_MSG_ERR             code 301: reply is not supported yet
    18     EVENTMESH_RUNTIME_ERR               topic/query: store unavailable; unexpected
                                               error (HTTP 500)
    19     EVENTMESH_SUBSCRIBE_ERR             subscribe: store unavailable; remote subscribe
    20     EVENTMESH_UNSUBSCRIBE_ERR           unsubscribe: store unavailable; remote
    17     EVENTMESH_ACL_ERR                   no or bad credentials (HTTP 401), or the client
                                               lacks the right (HTTP 403)
    100    EVENTMESH_OPERATE_FAIL              topic/delete of a topic that does not exist
    =====  ==================================  ============================================

Subscribers answer with EventMesh's ClientRetCode: 0 (REMOTE_OK) and 1 (OK) acknowledge,
2 (RETRY) and 5 (NOLISTEN) retry, 3 (FAIL) and any other number dead-letter at once.
"""

from __future__ import annotations

import enum
import functools
import hashlib
import json
import logging
import secrets
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal
from urllib.parse import parse_qsl, urlencode

from aiohttp import web

from runtime._errors import (
    Forbidden,
    InvalidRequest,
    MeshtapError,
    PayloadTooLarge,
    RateLimited,
    StoreUnavailable,
    SubscriptionNotFound,
    Unauthenticated,
)
from runtime._events import AttributeValue, CloudEvent, from_json_object, to_json_object
from runtime._http_api import MESH_KEY, read_body
from runtime._mesh import Mesh
from runtime._push import Outcome, PushRequest
from runtime._subscriptions import Mode, RetryPolicy, Subscription, check_sink_url
from runtime._topics import validate_group, validate_pattern, validate_topic

log = logging.getLogger("meshtap.runtime.eventmesh")

PROTOCOL: Final = "eventmesh"
# EventMesh's push: 1 + 3 attempts about 3 s apart (DEFAULT_PUSH_RETRY_TIMES, 3000 ms), 5 s
# socket timeout (HTTPClientPool). Meshtap jitters each wait between 1.5 s and 3 s.
EVENTMESH_RETRY: Final = RetryPolicy(max_attempts=4, initial_backoff_ms=3000, max_backoff_ms=3000)
EVENTMESH_TIMEOUT_MS: Final = 5000

# What Meshtap says about itself in the eventmesh* headers. There is one cluster and no IDCs
# or environments; ENV and IDC are the values of EventMesh's shipped eventmesh.properties,
# which is what subscribers written against EventMesh most often see.
CLUSTER: Final = "meshtap"
ENV: Final = "PRD"
IDC: Final = "DEFAULT"
LANGUAGE: Final = "PYTHON"

_SUBSCRIBE_EXAMPLE: Final = (
    '{"url": "http://127.0.0.1:8088/sub", "consumerGroup": "demo-group", '
    '"topic": [{"topic": "demo-topic", "mode": "CLUSTERING", "type": "ASYNC"}]}'
)
_UNSUBSCRIBE_EXAMPLE: Final = (
    '{"url": "http://127.0.0.1:8088/sub", "consumerGroup": "demo-group", "topic": ["demo-topic"]}'
)
_TOPIC_EXAMPLE: Final = '{"topic": "demo-topic;other-topic"}'
_PUBLISH_EXAMPLE: Final = (
    "curl -X POST http://127.0.0.1:10105/eventmesh/publish/demo-topic "
    "-H 'Content-Type: application/json' -d '{\"name\": \"admin\"}'"
)
_CE_EXAMPLE: Final = (
    '{"specversion": "1.0", "id": "1", "source": "/app", "type": "demo", '
    '"subject": "demo-topic", "data": {"name": "admin"}}'
)


class RetCode(enum.IntEnum):
    """The EventMeshRetCode values Meshtap uses, with EventMesh's own message for each."""

    SUCCESS = 0
    REQUEST_CODE_INVALID = 2
    SEND_SYNC_MSG_ERR = 3
    PROTOCOL_HEADER_ERR = 6
    PROTOCOL_BODY_ERR = 7
    PROTOCOL_BODY_SIZE_ERR = 8
    REJECT_BY_PROCESSOR_ERROR = 10
    SEND_ASYNC_MSG_ERR = 15
    REPLY_MSG_ERR = 16
    ACL_ERR = 17
    RUNTIME_ERR = 18
    SUBSCRIBE_ERR = 19
    UNSUBSCRIBE_ERR = 20
    OPERATE_FAIL = 100

    @property
    def message(self) -> str:
        return _RET_MESSAGES[self]


_RET_MESSAGES: Final = {
    RetCode.SUCCESS: "success",
    RetCode.REQUEST_CODE_INVALID: "requestCode can't be null, or must be number",
    RetCode.SEND_SYNC_MSG_ERR: "eventMesh send rr msg error",
    RetCode.PROTOCOL_HEADER_ERR: "eventMesh protocol[header] error",
    RetCode.PROTOCOL_BODY_ERR: "eventMesh protocol[body] error",
    RetCode.PROTOCOL_BODY_SIZE_ERR: "event size exceeds the limit",
    RetCode.REJECT_BY_PROCESSOR_ERROR: "eventMesh reject by processor error",
    RetCode.SEND_ASYNC_MSG_ERR: "eventMesh send async msg error",
    RetCode.REPLY_MSG_ERR: "eventMesh reply msg err",
    RetCode.RUNTIME_ERR: "eventMesh runtime error",
    RetCode.SUBSCRIBE_ERR: "eventMesh subscribe error",
    RetCode.UNSUBSCRIBE_ERR: "eventMesh unsubscribe error",
    RetCode.OPERATE_FAIL: "operate fail",
    RetCode.ACL_ERR: "eventMesh acl error",
}


class _Refused(Exception):
    """A request answered with an EventMesh error retCode (HTTP 200 unless said otherwise)."""

    def __init__(self, code: RetCode, detail: str, *, http_status: int = 200) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail
        self.http_status = http_status

    @property
    def message(self) -> str:
        return f"{self.code.message}: {self.detail}"


def _body_error(detail: str) -> _Refused:
    return _Refused(RetCode.PROTOCOL_BODY_ERR, detail)


def _refusal(error: Exception, store_code: RetCode) -> _Refused:
    if isinstance(error, _Refused):
        return error
    if isinstance(error, PayloadTooLarge):
        return _Refused(RetCode.PROTOCOL_BODY_SIZE_ERR, str(error))
    if isinstance(error, (Unauthenticated, Forbidden)):
        # HTTP 401/403 (unlike EventMesh's HTTP 200): a proxy or client that only looks at the
        # status must not take a refused publish for a delivered one.
        return _Refused(RetCode.ACL_ERR, str(error), http_status=error.status)
    if isinstance(error, RateLimited):
        return _Refused(RetCode.REJECT_BY_PROCESSOR_ERROR, str(error), http_status=429)
    if isinstance(error, StoreUnavailable):
        # HTTP 200, as EventMesh answers its own storage failures: EventMesh clients only look
        # at retCode, and some treat a non-2xx reply as a transport error with no retMsg to
        # show. The message says to retry; /readyz reports the outage with a 503.
        return _Refused(store_code, f"{error}; nothing was changed, retry shortly")
    if isinstance(error, InvalidRequest):
        return _body_error(str(error))
    return _Refused(RetCode.RUNTIME_ERR, str(error), http_status=500)


# --------------------------------------------------------------------------------------------
# Replies
# --------------------------------------------------------------------------------------------

_dumps = functools.partial(json.dumps, separators=(",", ":"), ensure_ascii=False)


@functools.cache
def local_ip() -> str:
    """This host's outward IP for the `eventmeship` header (no packet is sent, no DNS asked)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect(("192.0.2.1", 9))  # TEST-NET-1: only picks the outgoing interface
            return str(probe.getsockname()[0])
    except OSError:
        return "127.0.0.1"


def _identity_headers() -> dict[str, str]:
    return {
        "eventmeshcluster": CLUSTER,
        "eventmeship": local_ip(),
        "eventmeshenv": ENV,
        "eventmeshidc": IDC,
    }


def _json_reply(body: Mapping[str, Any], status: int, headers: Mapping[str, str]) -> web.Response:
    response = web.json_response(dict(body), status=status, dumps=_dumps)
    response.headers.update(headers)
    return response


def _error_body(refused: _Refused) -> dict[str, Any]:
    return {"retCode": int(refused.code), "retMsg": refused.message}


def refusal_response(request: web.Request, error: MeshtapError) -> web.Response:
    """An authentication or rate-limit refusal in EventMesh's reply shape (retCode + status)."""
    refused = _refusal(error, RetCode.RUNTIME_ERR)
    if request.path == "/":
        headers = {"code": (request.headers.get("code") or "").strip(), **_identity_headers()}
        response = _code_reply(_error_body(refused), refused.http_status, headers)
    else:
        headers = {"uri": request.raw_path, **_identity_headers()}
        response = _json_reply(_error_body(refused), refused.http_status, headers)
    if isinstance(error, RateLimited):
        response.headers["Retry-After"] = str(error.retry_after_s)
    return response


def _count_rejected_publish(request: web.Request, error: Exception) -> None:
    if isinstance(error, (PayloadTooLarge, Forbidden)):
        return  # read_body() / the mesh counted it
    reason = "store_unavailable" if isinstance(error, StoreUnavailable) else "invalid"
    request.app[MESH_KEY].metrics.publish_rejected.labels(reason).inc()


PathHandler = Callable[[web.Request], Awaitable[dict[str, Any]]]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _path_endpoint(
    store_code: RetCode, *, publishing: bool = False
) -> Callable[[PathHandler], Handler]:
    """Turn a handler returning a success body into an endpoint that answers EventMesh-style.

    `store_code` is the retCode EventMesh uses when this operation fails inside the mesh.
    """

    def wrap(handler: PathHandler) -> Handler:
        @functools.wraps(handler)
        async def endpoint(request: web.Request) -> web.StreamResponse:
            headers = {"uri": request.raw_path, **_identity_headers()}
            try:
                return _json_reply(await handler(request), 200, headers)
            except (MeshtapError, _Refused) as e:
                if publishing:
                    _count_rejected_publish(request, e)
                refused = _refusal(e, store_code)
            except web.HTTPException:
                raise
            except Exception:
                log.exception("EventMesh endpoint %s %s failed", request.method, request.path)
                refused = _unexpected()
            return _json_reply(_error_body(refused), refused.http_status, headers)

        return endpoint

    return wrap


def _unexpected() -> _Refused:
    return _Refused(
        RetCode.RUNTIME_ERR,
        "unexpected error in the runtime (logged with its traceback); retry, and report it if "
        "it persists",
        http_status=500,
    )


# --------------------------------------------------------------------------------------------
# Request parsing
# --------------------------------------------------------------------------------------------


def _json_kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object" if isinstance(value, dict) else type(value).__name__


def _shown(value: object) -> str:
    text = json.dumps(value, ensure_ascii=False) if _json_kind(value) != "object" else "{...}"
    return text if len(text) <= 80 else text[:77] + "..."


def parse_body_map(
    body: bytes, content_type: str, hint: str, *, allow_empty: bool = False
) -> dict[str, Any]:
    """A request body as EventMesh reads it: a JSON object, or form fields.

    JSON when the Content-Type says so, and also when the body plainly is a JSON object or array
    (``curl -d '{...}'`` without ``-H`` sends it as a form); form fields otherwise. `hint` says
    what to send instead, e.g. "send a JSON object like {...}".
    """
    try:
        text = body.decode()
    except UnicodeDecodeError:
        raise _body_error(f"the body is not UTF-8 text; {hint}") from None
    stripped = text.strip()
    if not stripped:
        if allow_empty:
            return {}
        raise _body_error(f"the body is empty; {hint}")
    if "json" in content_type.lower() or stripped[0] in "{[":
        try:
            value = json.loads(stripped)
        except (ValueError, RecursionError) as e:
            raise _body_error(f"the body is not valid JSON ({e}); {hint}") from None
        if not isinstance(value, dict):
            raise _body_error(
                f"the body must be a JSON object, got a JSON {_json_kind(value)}; {hint}"
            )
        return value
    try:
        pairs = parse_qsl(stripped, keep_blank_values=True, errors="strict")
    except UnicodeDecodeError:
        raise _body_error(
            "the form fields are not UTF-8 after percent-decoding; encode them as UTF-8"
        ) from None
    fields: dict[str, Any] = {}
    for name, value in pairs:
        fields.setdefault(name, value)
    return fields


def _text_field(body: Mapping[str, Any], name: str, example: str) -> str:
    value = body.get(name)
    if value is None or (isinstance(value, str) and not value.strip()):
        raise _body_error(f"{name!r} is required, e.g. {example}")
    if not isinstance(value, str):
        raise _body_error(
            f"{name!r} must be a string, got a JSON {_json_kind(value)} {_shown(value)}; "
            f"e.g. {example}"
        )
    return value.strip()


def _json_list(raw: Any, name: str, what: str, example: str) -> list[Any]:
    """A list field; form bodies (and the Java SDK) carry it as a JSON array in a string."""
    if isinstance(raw, str):
        stripped = raw.strip()
        if stripped.startswith(("[", "{")):
            try:
                raw = json.loads(stripped)
            except (ValueError, RecursionError) as e:
                raise _body_error(
                    f"{name!r} holds invalid JSON ({e}); it must be {what}, e.g. {example}"
                ) from None
    if not isinstance(raw, list) or not raw:
        raise _body_error(f"{name!r} must be {what}, got {_shown(raw)}; e.g. {example}")
    return raw


_MODES: Final[dict[str, Mode]] = {"CLUSTERING": "clustering", "BROADCASTING": "broadcast"}
_EVENTMESH_MODES: Final[dict[str, str]] = {v: k for k, v in _MODES.items()}
_TYPES: Final = ("ASYNC", "SYNC")


@dataclass(frozen=True, slots=True)
class SubscriptionItem:
    topic: str
    mode: Mode
    type: Literal["ASYNC", "SYNC"]


def _enum_field(item: Mapping[str, Any], name: str, allowed: Iterable[str], where: str) -> str:
    value = item.get(name)
    names = " or ".join(repr(a) for a in allowed)
    if value is None:
        return next(iter(allowed))  # EventMesh treats a missing mode/type as the first value
    if not isinstance(value, str) or value.strip().upper() not in allowed:
        raise _body_error(f"{where}.{name} must be {names}, got {_shown(value)}")
    return value.strip().upper()


def parse_subscription_items(raw: Any) -> list[SubscriptionItem]:
    items: list[SubscriptionItem] = []
    what = 'a non-empty list of items like {"topic": "demo-topic", "mode": "CLUSTERING"}'
    if raw is None:
        raise _body_error(f"'topic' is required, e.g. {_SUBSCRIBE_EXAMPLE}")
    if isinstance(raw, dict):
        raw = [raw]
    for index, item in enumerate(_json_list(raw, "topic", what, _SUBSCRIBE_EXAMPLE)):
        where = f"topic[{index}]"
        if isinstance(item, str):
            item = {"topic": item}
        if not isinstance(item, dict):
            raise _body_error(
                f'{where} must be an object like {{"topic": "demo-topic", "mode": "CLUSTERING", '
                f'"type": "ASYNC"}}, got {_shown(item)}'
            )
        name = item.get("topic")
        if not isinstance(name, str) or not name.strip():
            raise _body_error(
                f'{where}.topic is required and must be a topic name, e.g. {{"topic": '
                f'"demo-topic", "mode": "CLUSTERING", "type": "ASYNC"}}'
            )
        try:
            pattern = validate_pattern(name.strip())
        except InvalidRequest as e:
            raise _body_error(f"{where}: {e}") from None
        mode = _MODES[_enum_field(item, "mode", _MODES, where)]
        kind: Literal["ASYNC", "SYNC"] = (
            "SYNC" if _enum_field(item, "type", _TYPES, where) == "SYNC" else "ASYNC"
        )
        items.append(SubscriptionItem(pattern, mode, kind))
    return items


def parse_topic_names(body: Mapping[str, Any]) -> list[str]:
    """The unsubscribe list: `topic` (EventMesh's code) or `topics` (EventMesh's README)."""
    raw = body.get("topic", body.get("topics"))
    if raw is None:
        raise _body_error(
            f"'topic' is required: the topic names to unsubscribe from, e.g. {_UNSUBSCRIBE_EXAMPLE}"
        )
    if isinstance(raw, str) and not raw.strip().startswith("["):
        raw = [raw]
    what = 'a non-empty list of topic names like ["demo-topic"]'
    names = []
    for index, item in enumerate(_json_list(raw, "topic", what, _UNSUBSCRIBE_EXAMPLE)):
        if isinstance(item, dict):  # the subscribe item shape, sent by mistake: take its topic
            item = item.get("topic")
        if not isinstance(item, str) or not item.strip():
            raise _body_error(
                f"topic[{index}] must be a topic name, got {_shown(item)}; "
                f"e.g. {_UNSUBSCRIBE_EXAMPLE}"
            )
        names.append(item.strip())
    return names


def _semicolon_topics(body: Mapping[str, Any]) -> list[str]:
    raw = body.get("topic")
    if isinstance(raw, list) and all(isinstance(name, str) for name in raw):
        raw = ";".join(raw)
    if not isinstance(raw, str):
        shown = "missing" if raw is None else f"a JSON {_json_kind(raw)}"
        raise _body_error(
            f"'topic' must be topic names separated by ';' (got {shown}), e.g. {_TOPIC_EXAMPLE}"
        )
    names = ["".join(part.split()) for part in raw.split(";")]
    names = list(dict.fromkeys(name for name in names if name))
    if not names:
        raise _body_error(f"'topic' names no topic, e.g. {_TOPIC_EXAMPLE}")
    for name in names:
        validate_topic(name)  # InvalidTopic -> retCode 7 with the rule that is broken
    return names


def _header(request: web.Request, name: str) -> str | None:
    value = request.headers.get(name, "").strip()
    return value or None


async def _request_map(
    request: web.Request, hint: str, *, allow_empty: bool = False
) -> dict[str, Any]:
    body = await read_body(request)
    content_type = request.headers.get("Content-Type", "")
    return parse_body_map(body, content_type, hint, allow_empty=allow_empty)


# --------------------------------------------------------------------------------------------
# Operations shared by both dispatch styles
# --------------------------------------------------------------------------------------------


def subscription_id(url: str, group: str, topic: str) -> str:
    """Stable id of the subscription for (url, group, topic).

    Deterministic so that a repeated subscribe - on any runtime instance, even concurrently -
    lands on the same stored subscription instead of adding a duplicate.
    """
    key = "\x00".join((PROTOCOL, url, group, topic)).encode()
    return hashlib.sha256(key).hexdigest()[:32]


async def subscribe(
    mesh: Mesh, url: str, group: str, items: list[SubscriptionItem]
) -> tuple[list[Subscription], list[str]]:
    """Create one Meshtap subscription per item; existing ones are kept as they are.

    Returns the subscriptions for `items` and the ids of those that existed already (a
    repeated subscribe with another mode or type does not change them, as in EventMesh).
    """
    try:
        sink = check_sink_url(url)
    except InvalidRequest as e:
        raise _body_error(
            f"invalid URL: {e}; 'url' is where events are pushed, e.g. http://127.0.0.1:8088/sub"
        ) from None
    group = validate_group(group)
    existing = {s.id: s for s in await mesh.subscriptions()}
    same = {(s.sink, s.group, s.topic): s for s in existing.values() if s.protocol == PROTOCOL}
    result: dict[str, Subscription] = {}
    unchanged: list[str] = []
    for item in items:
        found = same.get((sink, group, item.topic))
        if found is not None:  # EventMesh: the first subscription for a group+topic wins
            result[found.id] = found
            unchanged.append(found.id)
            continue
        sid = subscription_id(sink, group, item.topic)
        if sid in result:
            continue
        # TODO: item.type == "SYNC" should push with code 106; needs a Subscription field.
        created = Subscription(
            topic=item.topic,
            group=group,
            sink=sink,
            mode=item.mode,
            retry=EVENTMESH_RETRY,
            timeout_ms=EVENTMESH_TIMEOUT_MS,
            protocol=PROTOCOL,
            id=sid,
        )
        result[sid] = await mesh.subscribe(created)
    return list(result.values()), unchanged


async def unsubscribe(mesh: Mesh, url: str, group: str, topics: list[str]) -> list[str]:
    """Remove the EventMesh subscriptions of (url, group) on `topics`; the ids removed."""
    wanted = set(topics)
    removed = []
    for found in await mesh.subscriptions():
        if (
            found.protocol == PROTOCOL
            and found.sink == url
            and found.group == group
            and found.topic in wanted
        ):
            try:
                await mesh.unsubscribe(found.id)
            except SubscriptionNotFound:
                continue  # removed concurrently: the outcome is the same
            removed.append(found.id)
    return removed


def _success_send(topic: str, event_id: str) -> str:
    # EventMesh's text is "success" + SendResult.toString(); some clients log or parse it.
    return f"successSendResult[topic={topic}, messageId={event_id}]"


def _event(attributes: dict[str, Any], data: bytes | None, where: str, code: RetCode) -> CloudEvent:
    try:
        event = from_json_object(attributes, where)
    except InvalidRequest as e:
        raise _Refused(code, str(e)) from None
    return CloudEvent(event.attributes, data)


# --------------------------------------------------------------------------------------------
# Path-style endpoints
# --------------------------------------------------------------------------------------------

# Request headers copied into the event as extensions. Never username/passwd/token: those are
# the publisher's credentials for the mesh, and EventMesh leaks them to every subscriber.
_PUBLISH_EXTENSION_HEADERS: Final = (
    "bizseqno",
    "uniqueid",
    "producergroup",
    "traceparent",
    "tracestate",
)


@_path_endpoint(RetCode.SEND_ASYNC_MSG_ERR, publishing=True)
async def publish_path(request: web.Request) -> dict[str, Any]:
    """``POST /eventmesh/publish/{topic}``: the body, exactly as sent, is the event's data."""
    topic = request.match_info.get("topic", "")
    if not topic:
        raise _body_error(
            "the topic goes in the path: POST /eventmesh/publish/{topic}, e.g. " + _PUBLISH_EXAMPLE
        )
    validate_topic(topic)
    body = await read_body(request)
    if not body:
        raise _body_error(
            f"the body is empty; the body is the event payload, e.g. {_PUBLISH_EXAMPLE}"
        )
    attributes: dict[str, Any] = {
        "specversion": "1.0",
        "id": _header(request, "uniqueid") or _header(request, "bizseqno") or uuid.uuid4().hex,
        "source": _header(request, "source") or "/eventmesh/http",
        "type": _header(request, "type") or "http_request",
        "subject": topic,
        "datacontenttype": _header(request, "Content-Type") or "application/json",
        "protocoltype": "http",
    }
    for name in _PUBLISH_EXTENSION_HEADERS:
        value = _header(request, name)
        if value is not None:
            attributes[name] = value
    event = _event(
        attributes, body, "the event built from the request headers", RetCode.PROTOCOL_HEADER_ERR
    )
    (accepted,) = await request.app[MESH_KEY].publish(
        topic, [event], producer=request.remote or "", protocol="eventmesh"
    )
    return {
        "retCode": 0,
        "retMsg": _success_send(topic, accepted.id),
        "data": {"topic": topic, "id": accepted.id},
    }


@_path_endpoint(RetCode.SUBSCRIBE_ERR)
async def subscribe_path(request: web.Request) -> dict[str, Any]:
    """``POST /eventmesh/subscribe/local``."""
    body = await _request_map(request, f"send a JSON object like {_SUBSCRIBE_EXAMPLE}")
    url = _text_field(body, "url", _SUBSCRIBE_EXAMPLE)
    group = _text_field(body, "consumerGroup", _SUBSCRIBE_EXAMPLE)
    items = parse_subscription_items(body.get("topic"))
    found, unchanged = await subscribe(request.app[MESH_KEY], url, group, items)
    # `unchanged`: already subscribed with this url, group and topic; kept as they were.
    data = {"subscriptions": [s.id for s in found], "unchanged": unchanged}
    return {"retCode": 0, "retMsg": "success", "data": data}


@_path_endpoint(RetCode.UNSUBSCRIBE_ERR)
async def unsubscribe_path(request: web.Request) -> dict[str, Any]:
    """``POST /eventmesh/unsubscribe/local``: success even when nothing matched (as EventMesh)."""
    body = await _request_map(request, f"send a JSON object like {_UNSUBSCRIBE_EXAMPLE}")
    url = _text_field(body, "url", _UNSUBSCRIBE_EXAMPLE)
    group = _text_field(body, "consumerGroup", _UNSUBSCRIBE_EXAMPLE)
    topics = parse_topic_names(body)
    removed = await unsubscribe(request.app[MESH_KEY], url, group, topics)
    return {"retCode": 0, "retMsg": "success", "data": {"removed": removed}}


@_path_endpoint(RetCode.RUNTIME_ERR)
async def create_topics(request: web.Request) -> dict[str, Any]:
    """``POST /eventmesh/topic/create`` with ``{"topic": "a;b"}``."""
    names = _semicolon_topics(
        await _request_map(request, f"send a JSON object like {_TOPIC_EXAMPLE}")
    )
    mesh = request.app[MESH_KEY]
    created = [name for name in names if await mesh.create_topic(name)]
    # `retMessage` (sic) is what EventMesh answers here; `retMsg` too for clients that read
    # that key everywhere.
    return {
        "retCode": 0,
        "retMessage": "success",
        "retMsg": "success",
        "data": {"created": created, "existing": [n for n in names if n not in created]},
    }


@_path_endpoint(RetCode.RUNTIME_ERR)
async def delete_topics(request: web.Request) -> dict[str, Any]:
    """``POST /eventmesh/topic/delete``: all named topics must exist, else nothing is deleted."""
    names = _semicolon_topics(
        await _request_map(request, f"send a JSON object like {_TOPIC_EXAMPLE}")
    )
    mesh = request.app[MESH_KEY]
    known = set(await mesh.topics())
    missing = [name for name in names if name not in known]
    if missing:
        raise _Refused(
            RetCode.OPERATE_FAIL,
            f"topic(s) {', '.join(map(repr, missing))} do not exist, so nothing was deleted; "
            "GET /v1/topics lists the topics",
        )
    for name in names:
        await mesh.delete_topic(name)
    return {"retCode": 0, "retMessage": "success", "retMsg": "success", "data": {"deleted": names}}


@_path_endpoint(RetCode.RUNTIME_ERR)
async def query_subscriptions(request: web.Request) -> dict[str, Any]:
    """``GET|POST /eventmesh/subscrition/query`` (EventMesh's spelling, keys included)."""
    mesh = request.app[MESH_KEY]
    confs: dict[tuple[str, str], dict[str, Any]] = {}
    for found in await mesh.subscriptions():
        if found.protocol != PROTOCOL:
            continue
        conf = confs.setdefault(
            (found.group, found.topic),
            {
                "consumerGroup": found.group,
                "topic": found.topic,
                "subscriptionItem": {
                    "topic": found.topic,
                    "mode": _EVENTMESH_MODES[found.mode],
                    "type": "ASYNC",
                },
                "idcUrls": {IDC: []},
                "urls": [],
                "httpAuthTypeMap": {},
            },
        )
        if found.sink not in conf["urls"]:
            conf["urls"].append(found.sink)
            conf["idcUrls"][IDC].append(found.sink)
    return {"subsrciption": list(confs.values()), "localTopicSet": await mesh.topics()}


def _not_supported(code: RetCode, detail: str) -> Handler:
    @_path_endpoint(code)
    async def endpoint(request: web.Request) -> dict[str, Any]:
        raise _Refused(code, detail)

    return endpoint


_ENDPOINTS: Final = (
    "POST /eventmesh/publish/{topic}, POST /eventmesh/subscribe/local, "
    "POST /eventmesh/unsubscribe/local, POST /eventmesh/topic/create, "
    "POST /eventmesh/topic/delete, GET|POST /eventmesh/subscrition/query, "
    "and POST / with a 'code' header"
)
_KNOWN_PATHS: Final = {
    "/eventmesh/publish": "POST",
    "/eventmesh/subscribe/local": "POST",
    "/eventmesh/unsubscribe/local": "POST",
    "/eventmesh/topic/create": "POST",
    "/eventmesh/topic/delete": "POST",
}


async def unknown_endpoint(request: web.Request) -> web.StreamResponse:
    path = request.path
    allowed = _KNOWN_PATHS.get(path) or ("POST" if path.startswith("/eventmesh/publish/") else None)
    if allowed is not None:
        status = 405
        detail = f"{request.method} is not supported on {path}; use {allowed}"
    else:
        status = 404
        detail = f"no EventMesh endpoint {request.method} {path} in Meshtap; it serves {_ENDPOINTS}"
        if path.rstrip("/") == "/eventmesh/topic/list":
            detail += " (EventMesh has no topic list either; GET /v1/topics lists topics)"
    refused = _Refused(RetCode.REQUEST_CODE_INVALID, detail, http_status=status)
    headers = {"uri": request.raw_path, **_identity_headers()}
    return _json_reply(_error_body(refused), status, headers)


# --------------------------------------------------------------------------------------------
# Code-style endpoint (the Java SDK): POST / with header `code`
# --------------------------------------------------------------------------------------------

CodeHandler = Callable[[web.Request, dict[str, Any]], Awaitable[str]]


def _sdk_fields(example: str) -> str:
    return f"form fields {example}"


async def sdk_publish(request: web.Request, form: dict[str, Any]) -> str:
    """Code 104: one event, as a structured CloudEvent or an EventMeshMessage."""
    protocol = (_header(request, "protocoltype") or "").lower()
    producer_group = form.get("producergroup") or form.get("producerGroup")
    if protocol == "cloudevents":
        content = _text_field(form, "content", _sdk_fields(f"content={_CE_EXAMPLE}"))
        try:
            raw = json.loads(content)
        except (ValueError, RecursionError) as e:
            raise _body_error(
                f"'content' is not valid JSON ({e}); with protocoltype cloudevents it is the "
                f"CloudEvent in JSON format, e.g. {_CE_EXAMPLE}"
            ) from None
        # InvalidCloudEvent names the attribute that is wrong -> retCode 7
        event = from_json_object(raw, "the CloudEvent in 'content'")
        topic = event.subject
        if not topic:
            raise _body_error(
                "the CloudEvent in 'content' has no 'subject'; the EventMesh SDK carries the "
                f"topic there, e.g. {_CE_EXAMPLE}"
            )
        validate_topic(topic)
        if (
            isinstance(producer_group, str)
            and producer_group
            and ("producergroup" not in event.attributes)
        ):
            event = event.with_attributes(producergroup=producer_group)
    elif protocol == "eventmeshmessage":
        example = _sdk_fields("topic=demo-topic&content=hello&uniqueid=1&bizseqno=1&ttl=4000")
        topic = validate_topic(_text_field(form, "topic", example))
        text = form.get("content")  # not stripped: the content is the data, byte for byte
        if text is None or text == "":
            raise _body_error(f"'content' is required, e.g. {example}")
        if not isinstance(text, str):
            raise _body_error(f"'content' must be a string, got a JSON {_json_kind(text)}")
        attributes: dict[str, Any] = {
            "specversion": "1.0",
            "id": form.get("uniqueid") or form.get("bizseqno") or uuid.uuid4().hex,
            "source": "/eventmesh/sdk",
            "type": "eventmeshmessage",
            "subject": topic,
            "datacontenttype": "text/plain",
            "protocoltype": "eventmeshmessage",
        }
        for name in ("bizseqno", "uniqueid", "ttl", "tag"):
            value = form.get(name)
            if isinstance(value, str) and value:
                attributes[name] = value
        if isinstance(producer_group, str) and producer_group:
            attributes["producergroup"] = producer_group
        attributes.update(_ext_fields(form.get("extFields"), attributes))
        event = _event(attributes, text.encode(), "the message", RetCode.PROTOCOL_BODY_ERR)
    elif protocol:
        raise _Refused(
            RetCode.PROTOCOL_HEADER_ERR,
            f"protocoltype {protocol!r} is not supported; use 'cloudevents' (content = a "
            "CloudEvent in JSON format) or 'eventmeshmessage' (topic + content)",
        )
    else:
        raise _Refused(
            RetCode.PROTOCOL_HEADER_ERR,
            "header 'protocoltype' is required with code 104: 'cloudevents' (content = a "
            "CloudEvent in JSON format) or 'eventmeshmessage' (topic + content)",
        )
    (accepted,) = await request.app[MESH_KEY].publish(
        topic, [event], producer=request.remote or "", protocol="eventmesh"
    )
    return _success_send(topic, accepted.id)


def _ext_fields(raw: Any, taken: Mapping[str, Any]) -> dict[str, str]:
    """`extFields` of an EventMeshMessage (a JSON object of strings) as CloudEvent extensions."""
    if raw is None or raw == "":
        return {}
    try:
        fields = json.loads(raw) if isinstance(raw, str) else raw
    except (ValueError, RecursionError) as e:
        raise _body_error(
            f"'extFields' is not valid JSON ({e}); send a JSON object of strings"
        ) from None
    if not isinstance(fields, dict):
        raise _body_error(f"'extFields' must be a JSON object of strings, got {_shown(fields)}")
    out = {}
    for key, value in fields.items():
        name = str(key).lower()
        if not name.isascii() or not name.isalnum() or name in taken:
            raise _body_error(
                f"extFields key {key!r} cannot become a CloudEvent extension: names are lower-case "
                "letters and digits and must not repeat an attribute the message already sets"
            )
        out[name] = value if isinstance(value, str) else json.dumps(value)
    return out


async def sdk_subscribe(request: web.Request, form: dict[str, Any]) -> str:
    """Code 206: `topic` is a JSON array (in a string) of subscription items."""
    example = _sdk_fields(
        'url=http://127.0.0.1:8088/sub&consumerGroup=demo-group&topic=[{"topic":"demo-topic",'
        '"mode":"CLUSTERING","type":"ASYNC"}]'
    )
    url = _text_field(form, "url", example)
    group = _text_field(form, "consumerGroup", example)
    await subscribe(request.app[MESH_KEY], url, group, parse_subscription_items(form.get("topic")))
    return "success"


async def sdk_unsubscribe(request: web.Request, form: dict[str, Any]) -> str:
    """Code 207: `topic` is a JSON array (in a string) of topic names."""
    example = _sdk_fields(
        'url=http://127.0.0.1:8088/sub&consumerGroup=demo-group&topic=["demo-topic"]'
    )
    url = _text_field(form, "url", example)
    group = _text_field(form, "consumerGroup", example)
    await unsubscribe(request.app[MESH_KEY], url, group, parse_topic_names(form))
    return "success"


async def sdk_heartbeat(request: web.Request, form: dict[str, Any]) -> str:
    """Code 203: subscriptions live in the store and never expire, so there is nothing to do."""
    return "success"


def _sdk_not_supported(code: RetCode, detail: str) -> CodeHandler:
    async def handler(request: web.Request, form: dict[str, Any]) -> str:
        raise _Refused(code, detail)

    return handler


_REQUEST_REPLY = (
    "request-reply over HTTP is not supported by Meshtap yet; publish with code 104 and let "
    "the consumer answer on a topic of its own"
)
_CODE_HANDLERS: Final[dict[int, tuple[CodeHandler, RetCode]]] = {
    104: (sdk_publish, RetCode.SEND_ASYNC_MSG_ERR),
    206: (sdk_subscribe, RetCode.SUBSCRIBE_ERR),
    207: (sdk_unsubscribe, RetCode.UNSUBSCRIBE_ERR),
    203: (sdk_heartbeat, RetCode.RUNTIME_ERR),
    101: (
        _sdk_not_supported(RetCode.SEND_SYNC_MSG_ERR, f"code 101: {_REQUEST_REPLY}"),
        RetCode.SEND_SYNC_MSG_ERR,
    ),
    301: (
        _sdk_not_supported(RetCode.REPLY_MSG_ERR, f"code 301 (reply): {_REQUEST_REPLY}"),
        RetCode.REPLY_MSG_ERR,
    ),
}
for _batch in (102, 107):
    _CODE_HANDLERS[_batch] = (
        _sdk_not_supported(
            RetCode.REJECT_BY_PROCESSOR_ERROR,
            f"batch publish (code {_batch}) is not supported by Meshtap yet; publish each "
            "message with code 104, or send a CloudEvents batch to POST /v1/topics/{topic}/events "
            "with Content-Type application/cloudevents-batch+json",
        ),
        RetCode.REJECT_BY_PROCESSOR_ERROR,
    )
_SDK_BODY_HINT: Final = (
    "send url-encoded form fields as the EventMesh SDK does, e.g. "
    "topic=demo-topic&content=hello (code 104, protocoltype eventmeshmessage)"
)
_SDK_EXAMPLE: Final = (
    "e.g. header 'code: 104' to publish, 206 subscribe, 207 unsubscribe, 203 heartbeat"
)


async def code_endpoint(request: web.Request) -> web.StreamResponse:
    """``POST /``: dispatch on the ``code`` header, as EventMesh's HTTP server does for the SDK."""
    raw_code = (request.headers.get("code") or "").strip()
    headers = {"code": raw_code, **_identity_headers()}
    code: int | None = None
    try:
        code = _request_code(raw_code, (request.headers.get("version") or "").strip())
        handler = _CODE_HANDLERS[code][0]
        form = await _request_map(request, _SDK_BODY_HINT, allow_empty=True)
        return _code_reply({"retCode": 0, "retMsg": await handler(request, form)}, 200, headers)
    except (MeshtapError, _Refused) as e:
        if code == 104:
            _count_rejected_publish(request, e)
        refused = _refusal(e, _CODE_HANDLERS[code][1] if code else RetCode.RUNTIME_ERR)
    except web.HTTPException:
        raise
    except Exception:
        log.exception("EventMesh request code %s failed", code)
        refused = _unexpected()
    return _code_reply(_error_body(refused), refused.http_status, headers)


def _request_code(raw_code: str, version: str) -> int:
    """The request code to dispatch on, or _Refused as EventMesh's dispatcher answers (400)."""
    if version and version not in ("1.0", "2.0"):
        raise _Refused(
            RetCode.PROTOCOL_HEADER_ERR,
            f"header 'version' is {version!r}; EventMesh clients send 1.0 or 2.0 (or omit it)",
            http_status=400,
        )
    if raw_code.isascii() and raw_code.isdigit() and int(raw_code) in _CODE_HANDLERS:
        return int(raw_code)
    shown = (
        "missing" if not raw_code else f"{raw_code!r}, which is not a request code Meshtap serves"
    )
    raise _Refused(
        RetCode.REQUEST_CODE_INVALID,
        f"header 'code' is {shown}; {_SDK_EXAMPLE}. For curl, use the /eventmesh/... paths "
        f"instead: {_ENDPOINTS}",
        http_status=400,
    )


def _code_reply(body: dict[str, Any], status: int, headers: Mapping[str, str]) -> web.Response:
    # Exactly the SDK's EventMeshRetObj keys (retCode, retMsg, resTime): nothing extra.
    return _json_reply({**body, "resTime": time.time_ns() // 1_000_000}, status, headers)


def add_eventmesh_routes(app: web.Application) -> None:
    """Register the EventMesh-compatible endpoints on the runtime's HTTP app."""
    router = app.router
    router.add_post("/", code_endpoint)
    router.add_post("/eventmesh/publish", publish_path)
    router.add_post("/eventmesh/publish/{topic:.*}", publish_path)
    router.add_post("/eventmesh/subscribe/local", subscribe_path)
    router.add_post("/eventmesh/unsubscribe/local", unsubscribe_path)
    router.add_post("/eventmesh/topic/create", create_topics)
    router.add_post("/eventmesh/topic/delete", delete_topics)
    router.add_route("GET", "/eventmesh/subscrition/query", query_subscriptions)
    router.add_post("/eventmesh/subscrition/query", query_subscriptions)
    remote = (
        "subscribing on behalf of another mesh is not supported; subscribe with "
        "/eventmesh/subscribe/local on the runtime that has the topic"
    )
    router.add_post("/eventmesh/subscribe/remote", _not_supported(RetCode.SUBSCRIBE_ERR, remote))
    router.add_post(
        "/eventmesh/unsubscribe/remote",
        _not_supported(RetCode.UNSUBSCRIBE_ERR, remote.replace("subscribing", "unsubscribing")),
    )
    router.add_post(
        "/eventmesh/bridge/publish",
        _not_supported(
            RetCode.SEND_ASYNC_MSG_ERR,
            "bridge publish from another EventMesh is not supported; publish with "
            "POST /eventmesh/publish/{topic}",
        ),
    )
    router.add_route("*", "/eventmesh/{tail:.*}", unknown_endpoint)


# --------------------------------------------------------------------------------------------
# Webhook push contract
# --------------------------------------------------------------------------------------------

# Attributes never sent to EventMesh subscribers, in any header, form field or content.
# EventMesh copies the publisher's `username`/`passwd`/`token` request headers into every event
# and pushes them on to every subscriber; events recorded from (or bridged by) an EventMesh
# still carry them. They are the producer's credentials for the mesh, not the consumer's.
NEVER_FORWARDED: Final = frozenset({"passwd", "username", "token"})
# Attribute names that must not become request headers: they would change what the HTTP
# request means (routing, framing) or smuggle credentials to the subscriber.
_UNSAFE_HEADERS: Final = frozenset(
    {"host", "connection", "expect", "upgrade", "te", "trailer", "authorization", "cookie"}
)
_CORE_ATTRIBUTES: Final = frozenset(
    {"specversion", "id", "source", "type", "datacontenttype", "dataschema", "subject", "time"}
)
# Events whose data is the EventMesh message content itself (not a CloudEvent to serialise).
_RAW_CONTENT_PROTOCOLS: Final = frozenset({"http", "eventmeshmessage"})
_RETRYABLE: Final = {2: "RETRY", 5: "NOLISTEN"}


def _attribute_text(value: AttributeValue) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _random_digits(count: int) -> str:
    return "".join(secrets.choice("0123456789") for _ in range(count))


def push_code(subscription: Subscription) -> str:
    """The `code` header of a push: 105 (async); 106 for SYNC subscriptions once stored."""
    return "105"


class EventMeshContract:
    """EventMesh's HTTP webhook push: form-encoded body, `code: 105`, JSON `retCode` reply."""

    def request(
        self, subscription: Subscription, topic: str, event: CloudEvent, attempt: int
    ) -> PushRequest:
        attributes = {
            name: value for name, value in event.attributes.items() if name not in NEVER_FORWARDED
        }
        extensions = {
            name: _attribute_text(value)
            for name, value in attributes.items()
            if name not in _CORE_ATTRIBUTES
        }
        protocol = extensions.get("protocoltype", "")
        content: bytes | str
        if protocol in _RAW_CONTENT_PROTOCOLS:
            content = event.data or b""  # urlencode() percent-encodes the exact bytes
        else:
            structured = to_json_object(CloudEvent(attributes, event.data))
            content = _dumps(structured)
        # bizseqno/uniqueId stay the same on every attempt (EventMesh makes random ones) so
        # that a subscriber can drop the duplicates that at-least-once delivery brings.
        form = [
            ("content", content),
            ("bizseqno", extensions.get("bizseqno") or event.id),
            ("uniqueId", extensions.get("uniqueid") or event.id),
            ("randomNo", f"{time.time_ns() // 1_000_000}{_random_digits(4)}"),
            ("topic", topic),
            ("extFields", _dumps(extensions)),
        ]
        headers = {
            "content-type": "application/x-www-form-urlencoded; charset=UTF-8",
            "code": push_code(subscription),
            "language": LANGUAGE,
            "version": "1.0",
            **_identity_headers(),
        }
        if protocol == "http":
            # Published through /eventmesh/publish: EventMesh also sends every attribute as a
            # header, without replacing the headers above.
            for name, value in attributes.items():
                text = _attribute_text(value)
                if name in headers or name in _UNSAFE_HEADERS or not _header_safe(text):
                    continue
                headers[name] = text
        return PushRequest(headers, urlencode(form).encode())

    def judge(self, status: int, body: bytes) -> tuple[Outcome, str]:
        if 200 <= status < 300:
            code = _ret_code(body)
            if code is None or code in (0, 1):
                # Deviation: EventMesh counts a 2xx without a readable retCode as FAIL (and
                # drops the event). The subscriber did take the event over HTTP, so Meshtap
                # acknowledges, as the native contract does.
                return Outcome.ACKED, ""
            if code in _RETRYABLE:
                return Outcome.RETRY, f"subscriber answered retCode {code} ({_RETRYABLE[code]})"
            if code == 3:
                return Outcome.REJECTED, "subscriber answered retCode 3 (FAIL)"
            return (
                Outcome.REJECTED,
                f"subscriber answered retCode {code}, which EventMesh treats as FAIL (use 0/1 "
                "to acknowledge, 2 to retry)",
            )
        snippet = body[:200].decode(errors="replace").strip()
        reason = f"subscriber answered HTTP {status}" + (f": {snippet}" if snippet else "")
        if status in (410, 415):
            return Outcome.REJECTED, reason
        return Outcome.RETRY, reason  # 429, 5xx, and (as in EventMesh) other 4xx


def _header_safe(text: str) -> bool:
    return text.isprintable() and text.isascii()


def _ret_code(body: bytes) -> int | None:
    """The integer `retCode` of a subscriber's JSON reply, or None when there is none."""
    try:
        reply = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    value = reply.get("retCode") if isinstance(reply, dict) else None
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return None
