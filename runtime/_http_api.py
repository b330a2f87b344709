"""The native HTTP API (`/v1/...`), the HTTP source (`/webhook/{name}`), metrics and health.

Handlers are thin: parse the request, call `Mesh`, shape the reply. Errors are `MeshtapError`s
turned into `{"error": code, "message": ...}` by one middleware, so every endpoint fails the same
way and every message says what to do.
"""

from __future__ import annotations

import base64
import json
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from runtime._auth import Authenticator, Principal, auth_settings, bearer, current_principal
from runtime._config import RuntimeConfig
from runtime._errors import (
    InvalidRequest,
    MeshtapError,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    StoreUnavailable,
    Unauthenticated,
)
from runtime._events import CloudEvent, from_http, now_rfc3339
from runtime._mesh import Mesh
from runtime._subscriptions import parse_subscription
from runtime._topics import validate_topic

log = logging.getLogger("meshtap.runtime.http")

MESH_KEY: web.AppKey[Mesh] = web.AppKey("mesh", Mesh)
CONFIG_KEY: web.AppKey[RuntimeConfig] = web.AppKey("config", RuntimeConfig)
AUTH_KEY: web.AppKey[Authenticator] = web.AppKey("auth", Authenticator)
# Credentials meant for the mesh itself never travel on to consumers.
_SOURCE_DROPPED_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie", "token"})

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def error_response(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": code, "message": message}, status=status)


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except MeshtapError as e:
        if isinstance(e, StoreUnavailable):
            request.app[MESH_KEY].metrics.publish_rejected.labels("store_unavailable").inc()
        response = error_response(e.status, e.code, str(e))
        if isinstance(e, RateLimited):
            response.headers["Retry-After"] = str(e.retry_after_s)
        if isinstance(e, Unauthenticated):
            response.headers["WWW-Authenticate"] = 'Bearer realm="meshtap"'
        return response
    except web.HTTPException as e:
        if e.status >= 400 and e.content_type != "application/json":
            message = e.text or e.reason
            if e.status == 404:
                message = f"no endpoint {request.method} {request.path}; see README.md for the API"
            elif e.status == 405:
                message = f"{request.method} is not allowed on {request.path}"
            return error_response(e.status, e.reason.lower().replace(" ", "_"), message)
        raise


def cert_common_name(request: web.Request) -> str | None:
    """The CN of the client's verified TLS certificate (mTLS), if it sent one."""
    transport = request.transport
    cert = transport.get_extra_info("peercert") if transport is not None else None
    if not cert:
        return None
    for rdn in cert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return None


def is_eventmesh_path(path: str) -> bool:
    return path == "/" or path.startswith("/eventmesh/") or path == "/eventmesh"


def deny(request: web.Request, error: MeshtapError) -> None:
    """Count and log a refused request. The message never holds the credential itself."""
    reason = "rate_limited" if isinstance(error, RateLimited) else "unauthenticated"
    request.app[MESH_KEY].metrics.auth_denied.labels(reason).inc()
    log.warning("denied %s %s from %s: %s", request.method, request.path, request.remote, error)


def authenticate(request: web.Request) -> Principal:
    """The caller of `request`, rate-limited; raises Unauthenticated or RateLimited."""
    auth = request.app[AUTH_KEY]
    credential = bearer(request.headers.get("Authorization"), request.headers.get("token"))
    principal = auth.authenticate(
        credential=credential, cert_name=cert_common_name(request), remote=request.remote or ""
    )
    key = principal.name if principal.method != "anonymous" else f"@{request.remote}"
    auth.rate.take(key)
    return principal


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Authenticate every request (health probes excepted) and make the caller current."""
    auth = request.app[AUTH_KEY]
    if request.path in auth.settings.open_paths:
        return await handler(request)
    try:
        principal = authenticate(request)
    except (Unauthenticated, RateLimited) as e:
        deny(request, e)
        if is_eventmesh_path(request.path):
            from runtime._eventmesh import refusal_response

            return refusal_response(request, e)
        raise
    token = current_principal.set(principal)
    try:
        return await handler(request)
    finally:
        current_principal.reset(token)


async def read_body(request: web.Request) -> bytes:
    """The request body, or PayloadTooLarge naming the limit and the flag that sets it."""
    limit = request.app[CONFIG_KEY].max_payload_bytes
    if request.content_length is not None and request.content_length > limit:
        size = request.content_length
    else:
        try:
            return await request.read()
        except web.HTTPRequestEntityTooLarge:
            size = None
    request.app[MESH_KEY].metrics.publish_rejected.labels("too_large").inc()
    shown = f"{size} bytes" if size is not None else "larger than the limit"
    raise PayloadTooLarge(
        f"request body is {shown}; the limit is {limit} bytes. Split the batch or raise "
        "--max-payload-bytes (MESHTAP_MAX_PAYLOAD_BYTES)"
    )


async def read_json(request: web.Request) -> Any:
    body = await read_body(request)
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise InvalidRequest(f"the body is not valid JSON: {e}") from None


# -- publish -------------------------------------------------------------------------------


async def publish(request: web.Request) -> web.Response:
    topic = validate_topic(request.match_info["topic"])
    body = await read_body(request)
    try:
        events = from_http(request.headers, body)
    except MeshtapError:
        request.app[MESH_KEY].metrics.publish_rejected.labels("invalid").inc()
        raise
    accepted = await request.app[MESH_KEY].publish(
        topic, events, producer=request.remote or "", protocol="http"
    )
    return web.json_response({"topic": topic, "accepted": [e.id for e in accepted]})


# -- subscriptions -------------------------------------------------------------------------


async def create_subscription(request: web.Request) -> web.Response:
    subscription = parse_subscription(await read_json(request))
    await request.app[MESH_KEY].subscribe(subscription)
    response = web.json_response(subscription.to_json(), status=201)
    response.headers["Location"] = f"/v1/subscriptions/{subscription.id}"
    return response


async def list_subscriptions(request: web.Request) -> web.Response:
    found = await request.app[MESH_KEY].subscriptions()
    return web.json_response({"subscriptions": [s.to_json() for s in found]})


async def get_subscription(request: web.Request) -> web.Response:
    found = await request.app[MESH_KEY].get_subscription(request.match_info["id"])
    return web.json_response(found.to_json())


async def delete_subscription(request: web.Request) -> web.Response:
    removed = await request.app[MESH_KEY].unsubscribe(request.match_info["id"])
    return web.json_response({"deleted": removed.id})


# -- topics --------------------------------------------------------------------------------


async def list_topics(request: web.Request) -> web.Response:
    return web.json_response({"topics": await request.app[MESH_KEY].topics()})


async def create_topic(request: web.Request) -> web.Response:
    topic = request.match_info["topic"]
    created = await request.app[MESH_KEY].create_topic(topic)
    return web.json_response({"topic": topic, "created": created}, status=201 if created else 200)


async def delete_topic(request: web.Request) -> web.Response:
    topic = request.match_info["topic"]
    if not await request.app[MESH_KEY].delete_topic(topic):
        raise NotFound(f"no topic {topic!r}; GET /v1/topics lists them")
    return web.json_response({"deleted": topic})


# -- HTTP source ---------------------------------------------------------------------------


def _text(value: str) -> str:
    """A header/query string as valid Unicode: bytes that were not UTF-8 (kept by aiohttp as
    surrogates, which JSON cannot encode) are read as Latin-1, as HTTP/1.1 defines them."""
    try:
        value.encode()
    except UnicodeEncodeError:
        return value.encode("utf-8", "surrogateescape").decode("latin-1")
    return value


def request_to_event(request: web.Request, body: bytes, name: str) -> CloudEvent:
    """Any HTTP request as a CloudEvent: data carries method, path, query, headers and body."""
    data: dict[str, Any] = {
        "method": request.method,
        "path": _text(request.path),
        "query": {
            _text(key): [_text(v) for v in request.query.getall(key)] for key in request.query
        },
        "headers": {
            _text(k): _text(v)
            for k, v in request.headers.items()
            if k.lower() not in _SOURCE_DROPPED_HEADERS
        },
    }
    try:
        data["body"] = body.decode()
    except UnicodeDecodeError:
        data["body_base64"] = base64.b64encode(body).decode()
    return CloudEvent(
        {
            "specversion": "1.0",
            "id": uuid.uuid4().hex,
            "source": f"/webhook/{name}",
            "type": "io.meshtap.webhook.request",
            "subject": name,
            "time": now_rfc3339(),
            "datacontenttype": "application/json",
        },
        json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode(),
    )


async def webhook_source(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    config = request.app[CONFIG_KEY]
    topic = config.webhook_topics.get(name, f"webhook.{name}")
    body = await read_body(request)
    event = request_to_event(request, body, name)
    await request.app[MESH_KEY].publish(
        topic, [event], producer=request.remote or "", protocol="webhook"
    )
    return web.json_response({"topic": topic, "accepted": [event.id]}, status=202)


# -- operations ----------------------------------------------------------------------------


async def metrics(request: web.Request) -> web.Response:
    registry = request.app[MESH_KEY].metrics.registry
    response = web.Response(body=generate_latest(registry))
    response.headers["Content-Type"] = CONTENT_TYPE_LATEST
    return response


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    mesh = request.app[MESH_KEY]
    if mesh.dispatcher.draining:
        return web.json_response({"status": "draining"}, status=503)
    try:
        await mesh.store.ping()
    except StoreUnavailable as e:
        return web.json_response({"status": "store_unavailable", "message": str(e)}, status=503)
    return web.json_response({"status": "ready", "store": mesh.store.url})


def build_app(
    mesh: Mesh, config: RuntimeConfig, auth: Authenticator | None = None
) -> web.Application:
    app = web.Application(
        middlewares=[errors_middleware, auth_middleware], client_max_size=config.max_payload_bytes
    )
    app[MESH_KEY] = mesh
    app[CONFIG_KEY] = config
    app[AUTH_KEY] = auth or Authenticator(auth_settings(config))
    app.router.add_post("/v1/topics/{topic}/events", publish)
    app.router.add_get("/v1/topics", list_topics)
    app.router.add_put("/v1/topics/{topic}", create_topic)
    app.router.add_delete("/v1/topics/{topic}", delete_topic)
    app.router.add_post("/v1/subscriptions", create_subscription)
    app.router.add_get("/v1/subscriptions", list_subscriptions)
    app.router.add_get("/v1/subscriptions/{id}", get_subscription)
    app.router.add_delete("/v1/subscriptions/{id}", delete_subscription)
    app.router.add_route("*", "/webhook/{name}", webhook_source)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    from runtime._eventmesh import add_eventmesh_routes  # late: _eventmesh imports this module

    add_eventmesh_routes(app)
    from runtime._bridge_api import add_bridge_routes  # late: it imports this module

    add_bridge_routes(app)
    return app
