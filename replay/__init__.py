"""Meshtap replay: choose a window of recorded traffic and play it back into topics. No Django.

* :class:`ReplaySpec` (with :class:`Filter`, :class:`Pacing`) -- what to replay and how fast;
  checks itself when built.
* :func:`dry_run` -- read the selection once: counts per topic, keys, first/last time, expected
  duration; applies the guard (sandbox prefixes, ``max_events``). Returns a :class:`Selection`
  whose :class:`DryRun` report is ``.report``.
* :func:`run_replay` -- pace the selection into a :class:`Target` (:class:`HttpTarget`: this
  mesh or another, through its HTTP API), checkpointed into a :class:`ReplayJobStore`
  (:class:`FileJobStore`, :class:`MemoryJobStore`; meshadmin keeps it in a Django row) with
  pause/resume/cancel; returns a :class:`ReplayResult`.
* :func:`outcome_diff` -- what the system under test emitted in response to the replay vs
  the original (:class:`DiffRules`, :class:`DiffReport`).
* :class:`Pacer` -- the pacing engine on its own (original timing, scaled, fixed rate, as
  fast as possible, per-key order).

Errors (``_errors``)::

    ReplayError
    ├── InvalidSpec (ValueError)      the spec cannot run; nothing was read
    ├── NoEventsMatched               valid, but selects nothing (the spec echoed)
    ├── ReplayRefused                 the guard; nothing was sent
    │   ├── ProductionTargetRefused
    │   └── CapExceeded
    └── TargetError
        ├── TargetUnavailable         retryable: resume the job
        └── TargetRejected
"""

from __future__ import annotations

from replay._diff import DiffReport, DiffRules, FieldDiff, ResponseDiff, outcome_diff
from replay._errors import (
    CapExceeded,
    InvalidSpec,
    NoEventsMatched,
    ProductionTargetRefused,
    ReplayError,
    ReplayRefused,
    TargetError,
    TargetRejected,
    TargetUnavailable,
)
from replay._job import (
    Checkpoint,
    Command,
    FileJobStore,
    MemoryJobStore,
    Progress,
    ReplayJobStore,
    ReplayResult,
    run_replay,
)
from replay._pacing import Pacer, PacingReport
from replay._select import DryRun, Selection, dry_run, select, streaming_plan
from replay._spec import SANDBOX_PREFIXES, Filter, Pacing, ReplaySpec, parse_time
from replay._targets import HttpTarget, Target, replayed_event, replayed_id

__all__ = [
    "SANDBOX_PREFIXES",
    "CapExceeded",
    "Checkpoint",
    "Command",
    "DiffReport",
    "DiffRules",
    "DryRun",
    "FieldDiff",
    "FileJobStore",
    "Filter",
    "HttpTarget",
    "InvalidSpec",
    "MemoryJobStore",
    "NoEventsMatched",
    "Pacer",
    "Pacing",
    "PacingReport",
    "ProductionTargetRefused",
    "Progress",
    "ReplayError",
    "ReplayJobStore",
    "ReplayRefused",
    "ReplayResult",
    "ReplaySpec",
    "ResponseDiff",
    "Selection",
    "Target",
    "TargetError",
    "TargetRejected",
    "TargetUnavailable",
    "dry_run",
    "outcome_diff",
    "parse_time",
    "replayed_event",
    "replayed_id",
    "run_replay",
    "select",
    "streaming_plan",
]
