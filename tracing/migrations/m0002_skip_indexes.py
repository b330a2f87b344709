"""Skip indexes for the rare-value searches, on servers that have them (ClickHouse >= 21.8).

Additive and version-gated: ClickHouse 18.16 has no data-skipping indexes, so there these
operations are skipped and the searches below scan the days of their window, as m0001 says.
Newer engines (chDB included) get indexes that let those searches skip most granules:

* ``deliveries.outcome`` -- dead-letter and rejection audits look for a rare outcome;
* ``spans.status_code`` -- "failed spans" search looks for the rare ``error``;
* ``spans.duration_ns`` -- "slower than N ms" search skips granules of fast spans;
* ``events.event_id`` -- following one event by id when its topic is not known.

An index covers parts written after it exists; older parts get it when merges rewrite them
(no ``MATERIALIZE INDEX``: a full rewrite of the history is not worth a faster audit).
"""

from __future__ import annotations

from tracing.clickhouse import Operation

_SKIP_INDEXES = (21, 8)

OPERATIONS = [
    Operation(
        "ALTER TABLE meshtap.deliveries "
        "ADD INDEX IF NOT EXISTS deliveries_outcome outcome TYPE set(16) GRANULARITY 4",
        min_version=_SKIP_INDEXES,
    ),
    Operation(
        "ALTER TABLE meshtap.spans "
        "ADD INDEX IF NOT EXISTS spans_status_code status_code TYPE set(8) GRANULARITY 4",
        min_version=_SKIP_INDEXES,
    ),
    Operation(
        "ALTER TABLE meshtap.spans "
        "ADD INDEX IF NOT EXISTS spans_duration duration_ns TYPE minmax GRANULARITY 1",
        min_version=_SKIP_INDEXES,
    ),
    Operation(
        "ALTER TABLE meshtap.events "
        "ADD INDEX IF NOT EXISTS events_event_id event_id TYPE bloom_filter(0.01) GRANULARITY 4",
        min_version=_SKIP_INDEXES,
    ),
]
