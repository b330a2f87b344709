"""Meshtap audits: the checks an SRE schedules against the recorded mesh. No Django.

Sits between ``replay`` and ``meshadmin`` in the layers: reads the capture store through
``tracing``'s read side (and replays through ``replay`` for the regression audit); meshadmin
stores audits and runs, validates parameters in its forms, schedules and notifies.

* :data:`KINDS` -- the audit kinds by name (:class:`AuditKind`: title, parameters' JSON
  Schema, check): ``delivery_completeness``, ``latency_slo``, ``dead_letters``,
  ``schema_conformance``, ``trace_integrity``, ``replay_regression``, ``capture_health``.
* :func:`validate_parameters` -- parameters checked against the kind's schema, defaults filled.
* :func:`run_audit` -- one run: an :class:`AuditResult` (pass/fail, summary, findings,
  figures) given an :class:`AuditContext` (the ClickHouse client, now, the runtime URL).

Errors::

    AuditError
    ├── UnknownKind (ValueError)         the kind is not in KINDS
    ├── InvalidParameters (ValueError)   the field, the value, the rule broken
    └── AuditUnavailable                 ClickHouse or the target unreachable: retry later
"""

from __future__ import annotations

from auditing._errors import AuditError, AuditUnavailable, InvalidParameters, UnknownKind
from auditing._kinds import KINDS, MAX_FINDINGS, AuditKind, run_audit, validate_parameters
from auditing._model import AuditContext, AuditResult

__all__ = [
    "KINDS",
    "MAX_FINDINGS",
    "AuditContext",
    "AuditError",
    "AuditKind",
    "AuditResult",
    "AuditUnavailable",
    "InvalidParameters",
    "UnknownKind",
    "run_audit",
    "validate_parameters",
]
