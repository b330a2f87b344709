"""What an audit is given and what it returns: frozen, JSON-able, free of Django."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from tracing.clickhouse import ClickHouse

__all__ = ["AuditContext", "AuditResult", "Status"]

Status = Literal["pass", "fail"]


@dataclass(frozen=True)
class AuditContext:
    """Where an audit reads from, handed in by the composition root (meshadmin).

    ``runtime_url`` is the mesh's HTTP API (capture health reads its ``/metrics``; replay
    regression replays through it unless the parameters name another target);
    ``retention_days`` is what housekeeping keeps, for "was retention applied".
    """

    clickhouse: ClickHouse
    now: datetime
    runtime_url: str = ""
    retention_days: int = 30


@dataclass(frozen=True)
class AuditResult:
    """One run's verdict: ``fail`` when any finding is above the audit's thresholds.

    ``findings`` are JSON objects (one per problem, shaped by the kind: the missing
    ``(event, group)`` pair, the group over its SLO ...), at most :data:`MAX_FINDINGS` of them
    (``figures["findings_total"]`` counts all); ``figures`` are the numbers measured, whether
    or not they failed, so a run history can be charted.
    """

    status: Status
    summary: str
    findings: tuple[Mapping[str, Any], ...] = ()
    figures: Mapping[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "summary": self.summary,
            "findings": [dict(f) for f in self.findings],
            "figures": dict(self.figures),
        }
