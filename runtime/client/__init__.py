"""Meshtap's Python client SDK: publish, subscribe and request-reply over the gRPC API.

`AsyncMeshClient` for asyncio, `MeshClient` for blocking code; both retry and reconnect with
backoff, raise typed errors (`MeshClientError` and its subclasses) and carry OpenTelemetry
trace context in the events' `traceparent`. See README.md, "Python client".
"""

from __future__ import annotations

from runtime._events import CloudEvent
from runtime.client._async import AsyncMeshClient, Backoff, Delivery, Subscription, new_event
from runtime.client._errors import (
    AuthenticationFailed,
    ClientClosed,
    InvalidArgument,
    MeshClientError,
    NotFound,
    PermissionDenied,
    RequestTimeout,
    TooLarge,
    Unavailable,
)
from runtime.client._sync import MeshClient, SyncDelivery, SyncSubscription

__all__ = [
    "AsyncMeshClient",
    "AuthenticationFailed",
    "Backoff",
    "ClientClosed",
    "CloudEvent",
    "Delivery",
    "InvalidArgument",
    "MeshClient",
    "MeshClientError",
    "NotFound",
    "PermissionDenied",
    "RequestTimeout",
    "Subscription",
    "SyncDelivery",
    "SyncSubscription",
    "TooLarge",
    "Unavailable",
    "new_event",
]
