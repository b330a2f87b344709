"""Meshtap runtime: the event mesh (CloudEvents, topics, stores, protocols, delivery).

No Django and no ClickHouse here; plugins (stores, capture sinks) are found through entry points.
"""

from __future__ import annotations

from runtime._auth import Principal, TokenFile
from runtime._capture import (
    CaptureConfig,
    CaptureNotReady,
    CaptureSink,
    DeliveryRecord,
    NullCapture,
    PublishRecord,
    SpanEventRecord,
    SpanLinkRecord,
    SpanRecord,
)
from runtime._errors import (
    Forbidden,
    InsecureSetup,
    InvalidCloudEvent,
    InvalidFilter,
    InvalidRequest,
    InvalidSubscription,
    InvalidTopic,
    MeshtapError,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    ReplyTimeout,
    StoreUnavailable,
    SubscriptionNotFound,
    Unauthenticated,
)
from runtime._events import CloudEvent
from runtime._netguard import SIGNATURE_HEADER, SinkPolicy, sign_push, verify_push_signature

__all__ = [
    "SIGNATURE_HEADER",
    "CaptureConfig",
    "CaptureNotReady",
    "CaptureSink",
    "CloudEvent",
    "DeliveryRecord",
    "Forbidden",
    "InsecureSetup",
    "InvalidCloudEvent",
    "InvalidFilter",
    "InvalidRequest",
    "InvalidSubscription",
    "InvalidTopic",
    "MeshtapError",
    "NotFound",
    "NullCapture",
    "PayloadTooLarge",
    "Principal",
    "PublishRecord",
    "RateLimited",
    "ReplyTimeout",
    "SinkPolicy",
    "SpanEventRecord",
    "SpanLinkRecord",
    "SpanRecord",
    "StoreUnavailable",
    "SubscriptionNotFound",
    "TokenFile",
    "Unauthenticated",
    "sign_push",
    "verify_push_signature",
]
