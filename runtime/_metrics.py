"""Prometheus metrics of one runtime instance.

Each runtime owns its registry, so several runtimes can live in one process (tests, standalone
mode) without their counters mixing. Label sets are kept small: topic and group only.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics

# `_created` timestamps double the series count and no dashboard uses them.
disable_created_metrics()  # type: ignore[no-untyped-call]

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class RuntimeMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.published = Counter(
            "meshtap_events_published", "Events accepted by publish.", ["topic"], registry=r
        )
        self.publish_rejected = Counter(
            "meshtap_publish_rejected",
            "Publish requests refused, by reason (invalid, too_large, store_unavailable ...).",
            ["reason"],
            registry=r,
        )
        self.auth_denied = Counter(
            "meshtap_auth_denied",
            "Requests refused by authentication, authorisation or rate limits, by reason "
            "(unauthenticated, forbidden, rate_limited).",
            ["reason"],
            registry=r,
        )
        self.delivered = Counter(
            "meshtap_events_delivered",
            "Events acknowledged by a subscriber.",
            ["topic", "group"],
            registry=r,
        )
        self.delivery_failures = Counter(
            "meshtap_delivery_failures",
            "Failed delivery attempts (each retry counts).",
            ["topic", "group"],
            registry=r,
        )
        self.dead_lettered = Counter(
            "meshtap_events_dead_lettered",
            "Events moved to the group's dead-letter topic.",
            ["topic", "group"],
            registry=r,
        )
        self.filtered = Counter(
            "meshtap_events_filtered",
            "Events a group skipped because no subscription filter matched.",
            ["topic", "group"],
            registry=r,
        )
        self.attempt_duration = Histogram(
            "meshtap_delivery_attempt_duration_seconds",
            "Duration of one push to a sink, whatever its outcome.",
            ["group"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.delivery_latency = Histogram(
            "meshtap_delivery_latency_seconds",
            "From publish (store append) to the subscriber's acknowledgement.",
            ["group"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.backlog = Gauge(
            "meshtap_group_backlog_events",
            "Events not yet acknowledged by a group (pending + not yet read).",
            ["group"],
            registry=r,
        )
        self.bridge_loops_stopped = Counter(
            "meshtap_bridge_loops_stopped",
            "Events a bridge brought back to a mesh they had passed (acknowledged, not stored).",
            ["topic"],
            registry=r,
        )
        self.consumer_backlog = Gauge(
            "meshtap_consumer_backlog",
            "Events of a topic a consumer group has not acknowledged (pending + not yet read), "
            "as the store reports it: every instance shows the same value, so aggregate with "
            "max(), not sum(). Scale consumers on this rather than on CPU.",
            ["topic", "group"],
            registry=r,
        )
        self.oldest_unacked_age = Gauge(
            "meshtap_consumer_oldest_unacked_age_seconds",
            "Age of the oldest event of a topic a consumer group has not acknowledged (0 when "
            "it has none).",
            ["topic", "group"],
            registry=r,
        )
        self.in_flight = Gauge(
            "meshtap_deliveries_in_flight",
            "Deliveries being worked on by this instance.",
            registry=r,
        )
