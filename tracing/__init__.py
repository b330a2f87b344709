"""Meshtap tracing: OpenTelemetry setup, the event-flow recorder and the ClickHouse store.

Depends on `runtime` (never the other way round); no Django here. Built out by the capture issue.
"""

from __future__ import annotations

__all__: list[str] = []
