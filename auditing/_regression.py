"""The replay-regression audit: replay a saved window into a sandbox and score the outcome.

Nightly regression testing on production traffic: the window of recorded originals is replayed
(``replay.run_replay``) under a sandbox prefix into the mesh (or ``target_url``), the system
under test answers the replayed events as it answered the originals, and ``replay.outcome_diff``
compares the two sets of answers. The run fails when the diff's score is below ``min_score``;
the findings are the diff's differing, missing and extra responses.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Mapping
from typing import Any

from auditing._errors import AuditUnavailable, InvalidParameters
from auditing._model import AuditContext, AuditResult
from replay import (
    DiffRules,
    HttpTarget,
    MemoryJobStore,
    ReplayError,
    ReplaySpec,
    TargetUnavailable,
    dry_run,
    outcome_diff,
    parse_time,
    run_replay,
)

__all__ = ["check_window", "replay_regression"]


def _spec(params: Mapping[str, Any]) -> ReplaySpec:
    return ReplaySpec(
        topics=tuple(params.get("topics", ("#",))),
        since=parse_time(params["since"], "since"),
        until=parse_time(params["until"], "until"),
        speed=str(params.get("speed", "max")),
        to_prefix=str(params.get("to_prefix", "replay.")),
    )


def check_window(params: Mapping[str, Any]) -> None:
    """The replay spec the parameters describe must be valid (times with zones, in order)."""
    try:
        _spec(params)
    except ReplayError as e:
        raise InvalidParameters(f"replay_regression parameters: {e}") from e


async def _replay(ctx: AuditContext, spec: ReplaySpec, target_url: str, replay_id: str) -> str:
    selection = dry_run(ctx.clickhouse, spec)
    target = HttpTarget(target_url)
    try:
        result = await run_replay(
            ctx.clickhouse, spec, target, replay_id=replay_id, job=MemoryJobStore(),
            reconcile=ctx.clickhouse, selection=selection,
        )  # fmt: skip
    finally:
        await target.close()
    return result.status


def replay_regression(ctx: AuditContext, params: dict[str, Any]) -> AuditResult:
    spec = _spec(params)
    target_url = str(params.get("target_url") or ctx.runtime_url)
    if not target_url:
        raise InvalidParameters(
            "replay_regression needs a target: set target_url in the parameters or "
            "MESHTAP_RUNTIME_URL"
        )
    replay_id = f"audit-{uuid.uuid4().hex[:12]}"
    started_ns = time.time_ns()
    try:
        status = asyncio.run(_replay(ctx, spec, target_url, replay_id))
    except TargetUnavailable as e:
        raise AuditUnavailable(f"replay_regression: {e}") from e
    if status != "completed":
        return AuditResult("fail", f"the replay {replay_id} ended {status}", (), {})
    time.sleep(float(params["settle_s"]))  # the system under test answers, capture records
    rules = DiffRules(ignore=tuple(params["ignore"]), unordered=tuple(params["unordered"]))
    report = outcome_diff(
        ctx.clickhouse, dry_run(ctx.clickhouse, spec), replay_id, since_ns=started_ns - 10**9,
        rules=rules,
    )  # fmt: skip
    diff = report.to_json()
    minimum = float(params["min_score"])
    failed = report.score < minimum
    figures = {
        "score": round(report.score, 4),
        "triggers": float(report.triggers),
        "matched": float(report.matched),
        "differing": float(report.differing),
        "missing": float(report.missing),
        "extra": float(report.extra),
    }
    summary = f"replay {replay_id}: outcome-diff score {report.score:.3f} (minimum {minimum})"
    return AuditResult(
        "fail" if failed else "pass",
        summary,
        tuple({"replay_id": replay_id, **item} for item in diff["items"]),
        figures,
    )
