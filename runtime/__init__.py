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
    BridgeExists,
    BridgeNotFound,
    Forbidden,
    InsecureSetup,
    InvalidBridge,
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
from runtime._topics import TopicPattern, compile_pattern, validate_pattern

__all__ = [
    "SIGNATURE_HEADER",
    "BridgeExists",
    "BridgeNotFound",
    "CaptureConfig",
    "CaptureNotReady",
    "CaptureSink",
    "CloudEvent",
    "DeliveryRecord",
    "Forbidden",
    "InsecureSetup",
    "InvalidBridge",
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
    "TopicPattern",
    "Unauthenticated",
    "compile_pattern",
    "sign_push",
    "validate_pattern",
    "verify_push_signature",
]
