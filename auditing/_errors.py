"""The audit package's errors (one hierarchy, drawn in ``auditing/__init__``)."""

from __future__ import annotations

__all__ = ["AuditError", "AuditUnavailable", "InvalidParameters", "UnknownKind"]


class AuditError(Exception):
    """Base of every error an audit raises; a failing check is a result, not an error."""


class UnknownKind(AuditError, ValueError):
    """The audit kind is not one of :data:`auditing.KINDS`; the message lists them."""


class InvalidParameters(AuditError, ValueError):
    """The parameters do not fit the kind's JSON Schema; the message names the field, the
    offending value and the rule it broke."""


class AuditUnavailable(AuditError):
    """What the audit reads (ClickHouse, the runtime) cannot be reached now: retry later."""
