"""Errors raised by the runtime.

Every error a client can cause says what was wrong (with the offending value) and what to do.
The HTTP layer maps each class to one status code, so handlers never pick codes by hand::

    MeshtapError
    ├── InvalidRequest                400  the client sent something we cannot accept
    │   ├── InvalidCloudEvent         400  malformed or incomplete CloudEvent
    │   ├── InvalidTopic              400  topic name or pattern breaks the naming rules
    │   ├── InvalidFilter             400  subscription filter expression is wrong
    │   ├── InvalidSubscription       400  bad sink URL, mode, retry policy ...
    │   │   └── InvalidBridge         400  bad bridge target, rename, max_hops ...
    │   └── InvalidOtlpRequest        400  an OTLP trace export the receiver cannot decode
    │       └── UnsupportedOtlpEncoding  415  a Content-Type/-Encoding OTLP does not define
    ├── Unauthenticated               401  no, unknown or invalid credentials
    ├── Forbidden                     403  the client lacks the right (publish/subscribe/replay)
    ├── RateLimited                   429  the client is over its rate limit (Retry-After)
    ├── PayloadTooLarge               413  body over the configured limit
    ├── NotFound                      404
    │   ├── SubscriptionNotFound      404
    │   └── BridgeNotFound            404
    ├── BridgeExists                  409  a bridge of that name is already configured
    ├── StoreUnavailable              503  the store (Redis, NATS) cannot be reached right now
    ├── ReplyTimeout                  504  request-reply: no reply within the timeout
    ├── CannotListen                       a listener's port cannot be bound (at start-up)
    └── InsecureSetup                      an open mesh on a non-loopback host (at start-up)
"""

from __future__ import annotations


class MeshtapError(Exception):
    """Base class of every error the runtime raises on purpose."""

    status = 500
    code = "internal_error"


class InvalidRequest(MeshtapError):
    status = 400
    code = "invalid_request"


class InvalidCloudEvent(InvalidRequest):
    code = "invalid_cloudevent"


class InvalidTopic(InvalidRequest):
    code = "invalid_topic"


class InvalidFilter(InvalidRequest):
    code = "invalid_filter"


class InvalidSubscription(InvalidRequest):
    code = "invalid_subscription"


class InvalidBridge(InvalidSubscription):
    code = "invalid_bridge"


class InvalidOtlpRequest(InvalidRequest):
    """An OTLP export request that is not OTLP (answered 400 / gRPC INVALID_ARGUMENT)."""

    code = "invalid_otlp_request"


class UnsupportedOtlpEncoding(InvalidOtlpRequest):
    status = 415
    code = "unsupported_media_type"


class Unauthenticated(MeshtapError):
    """No credentials, or credentials the runtime does not accept (gRPC UNAUTHENTICATED)."""

    status = 401
    code = "unauthenticated"


class Forbidden(MeshtapError):
    """The client is known but lacks the right (gRPC PERMISSION_DENIED)."""

    status = 403
    code = "forbidden"


class RateLimited(MeshtapError):
    """The client is over its request budget; `retry_after_s` says when to come back."""

    status = 429
    code = "rate_limited"

    def __init__(self, message: str, *, retry_after_s: int = 1) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class PayloadTooLarge(MeshtapError):
    status = 413
    code = "payload_too_large"


class NotFound(MeshtapError):
    status = 404
    code = "not_found"


class SubscriptionNotFound(NotFound):
    code = "subscription_not_found"


class BridgeNotFound(NotFound):
    code = "bridge_not_found"


class BridgeExists(MeshtapError):
    status = 409
    code = "bridge_exists"


class StoreUnavailable(MeshtapError):
    """The store cannot be reached. Nothing was acknowledged; the client should retry."""

    status = 503
    code = "store_unavailable"


class ReplyTimeout(MeshtapError):
    """No reply to a request arrived in time (gRPC DEADLINE_EXCEEDED); the request was published."""

    status = 504
    code = "reply_timeout"


class CannotListen(MeshtapError):
    """A listener could not bind its port; the message names the flag that moves or disables it."""

    code = "cannot_listen"


class InsecureSetup(MeshtapError):
    """Start-up refused: the configuration would expose an unauthenticated mesh."""

    code = "insecure_setup"
