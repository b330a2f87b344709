"""Meshtap runtime: the event mesh (CloudEvents, topics, stores, protocols, delivery).

No Django and no ClickHouse here; plugins (stores, capture sinks) are found through entry points.
"""

from __future__ import annotations

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
    InvalidCloudEvent,
    InvalidFilter,
    InvalidRequest,
    InvalidSubscription,
    InvalidTopic,
    MeshtapError,
    NotFound,
    PayloadTooLarge,
    ReplyTimeout,
    StoreUnavailable,
    SubscriptionNotFound,
)
from runtime._events import CloudEvent
from runtime._topics import TopicPattern, compile_pattern, validate_pattern

__all__ = [
    "CaptureConfig",
    "CaptureNotReady",
    "CaptureSink",
    "CloudEvent",
    "DeliveryRecord",
    "InvalidCloudEvent",
    "InvalidFilter",
    "InvalidRequest",
    "InvalidSubscription",
    "InvalidTopic",
    "MeshtapError",
    "NotFound",
    "NullCapture",
    "PayloadTooLarge",
    "PublishRecord",
    "ReplyTimeout",
    "SpanEventRecord",
    "SpanLinkRecord",
    "SpanRecord",
    "StoreUnavailable",
    "SubscriptionNotFound",
    "TopicPattern",
    "compile_pattern",
    "validate_pattern",
]
