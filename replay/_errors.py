"""The replay package's one exception hierarchy.

Every error a user can cause says what was wrong, with the offending value, and what to do::

    ReplayError
    ├── InvalidSpec (also ValueError)  the spec cannot run: empty/inverted window, bad topic
    │                                  pattern, bad filter, unknown speed ... nothing was read
    ├── NoEventsMatched                the spec is valid but selects nothing (the spec echoed)
    ├── ReplayRefused                  the guard: nothing was sent
    │   ├── ProductionTargetRefused    a target topic outside the sandbox prefixes without
    │   │                              allow_production=True
    │   └── CapExceeded                more events than max_events
    └── TargetError                    the target did not take a batch
        ├── TargetUnavailable          unreachable / 5xx / timeout: retryable, the job resumes
        │                              from its checkpoint
        └── TargetRejected             4xx: the target refused the events; retrying won't help

ClickHouse failures while selecting stay ``tracing.clickhouse.ClickhouseError``.
"""

from __future__ import annotations

__all__ = [
    "CapExceeded",
    "InvalidSpec",
    "NoEventsMatched",
    "ProductionTargetRefused",
    "ReplayError",
    "ReplayRefused",
    "TargetError",
    "TargetRejected",
    "TargetUnavailable",
]


class ReplayError(Exception):
    """Base of every replay error."""

    retryable = False


class InvalidSpec(ReplayError, ValueError):
    """The replay spec cannot run; the message names the field and the offending value."""


class NoEventsMatched(ReplayError):
    """A valid spec selected no recorded event; the message echoes the spec."""


class ReplayRefused(ReplayError):
    """The guard refused the replay before anything was sent."""


class ProductionTargetRefused(ReplayRefused):
    """A target topic is not under a sandbox prefix and the spec did not allow production."""


class CapExceeded(ReplayRefused):
    """The selection holds more events than the spec's ``max_events``."""


class TargetError(ReplayError):
    """The target did not accept a batch."""


class TargetUnavailable(TargetError):
    """The target could not be reached or answered 5xx: retry later; the job resumes."""

    retryable = True


class TargetRejected(TargetError):
    """The target refused the events (4xx); the message carries its answer."""
