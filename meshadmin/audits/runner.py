"""Running an audit from Django: the composition root for ``auditing``.

Settings pick the capture store and the runtime; the run is an ``AuditRun`` row keyed by the
Celery task id, so a redelivered task finishes the run its killed worker began.
"""

from __future__ import annotations

import logging

from django.conf import settings
from django.db import close_old_connections
from django.utils import timezone

from auditing import AuditContext, AuditUnavailable, run_audit
from meshadmin.audits.models import Audit, AuditRun
from meshadmin.audits.notify import notify
from tracing.clickhouse import ClickHouse

log = logging.getLogger("meshtap.audits")


def execute_audit(audit_id: int, *, task_id: str | None = None, final: bool = True) -> AuditRun:
    """Run audit ``audit_id`` once and store the run (``task_id``'s run if it exists).

    ClickHouse or the target being unreachable raises :class:`auditing.AuditUnavailable`
    unless ``final`` (the last retry): then the run is stored as ``error``. Any other error
    is an ``error`` run with the message; a check that finds problems is a ``fail`` run.
    Notifications go out after the run is stored.
    """
    close_old_connections()
    audit = Audit.objects.get(pk=audit_id)
    if task_id is not None:
        run, _ = AuditRun.objects.get_or_create(task_id=task_id, defaults={"audit": audit})
    else:
        run = AuditRun.objects.create(audit=audit)
    previous = (
        audit.runs.exclude(pk=run.pk)
        .exclude(status=AuditRun.Status.RUNNING)
        .values_list("status", flat=True)
        .first()
    )
    ctx_client = ClickHouse.open(str(settings.MESHTAP_CLICKHOUSE_URL))
    try:
        context = AuditContext(
            clickhouse=ctx_client,
            now=timezone.now(),
            runtime_url=str(settings.MESHTAP_RUNTIME_URL),
            retention_days=int(settings.MESHTAP_RETENTION_DAYS),
        )
        result = run_audit(audit.kind, audit.parameters, context)
    except AuditUnavailable as e:
        if not final:
            raise
        run.status, run.error = AuditRun.Status.ERROR, str(e)
    except Exception as e:
        log.exception("audit %s failed to run", audit)
        run.status, run.error = AuditRun.Status.ERROR, f"{type(e).__name__}: {e}"
    else:
        run.status = AuditRun.Status(result.status)
        run.summary = result.summary
        run.findings = [dict(f) for f in result.findings]
        run.figures = dict(result.figures)
    finally:
        ctx_client.close()
    run.finished_at = timezone.now()
    run.save()
    run.notifications = notify(audit, run, previous)
    if run.notifications:
        run.save(update_fields=["notifications"])
    log.info("audit %s run %s: %s %s", audit, run.pk, run.status, run.summary or run.error)
    return run
