"""Meshtap runtime: the event mesh (CloudEvents, topics, stores, protocols, delivery).

No Django and no ClickHouse here; plugins (stores, capture sinks) are found through entry points.
"""

from __future__ import annotations

from runtime._errors import (
    InvalidCloudEvent,
    InvalidFilter,
    InvalidRequest,
    InvalidSubscription,
    InvalidTopic,
    MeshtapError,
    NotFound,
    PayloadTooLarge,
    StoreUnavailable,
    SubscriptionNotFound,
)
from runtime._events import CloudEvent

__all__ = [
    "CloudEvent",
    "InvalidCloudEvent",
    "InvalidFilter",
    "InvalidRequest",
    "InvalidSubscription",
    "InvalidTopic",
    "MeshtapError",
    "NotFound",
    "PayloadTooLarge",
    "StoreUnavailable",
    "SubscriptionNotFound",
]
