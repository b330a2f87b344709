"""Tell people about a run: a CloudEvent on the mesh, webhooks, email.

On failure (``fail`` or ``error``), and on recovery (a pass after a failure) when the audit asks
for it. Each channel is tried on its own; one that fails is noted on the run
(``AuditRun.notifications``) and never fails the run or the others.
"""

from __future__ import annotations

import json
import logging
import urllib.request
from typing import Any

from django.conf import settings
from django.core.mail import send_mail

from meshadmin.audits.models import Audit, AuditRun

log = logging.getLogger("meshtap.audits")

TOPIC = "meshtap.audit.result"
EVENT_TYPE = "meshtap.audit.result"
_FINDINGS_SENT = 50
_TIMEOUT_S = 10


def payload(audit: Audit, run: AuditRun, previous: str | None) -> dict[str, Any]:
    """What every channel carries (the CloudEvent's data, the webhook's body)."""
    return {
        "audit_id": audit.pk,
        "audit": audit.name,
        "kind": audit.kind,
        "run_id": run.pk,
        "status": run.status,
        "previous_status": previous,
        "summary": run.summary or run.error,
        "findings": run.findings[:_FINDINGS_SENT],
        "findings_total": len(run.findings),
        "figures": run.figures,
        "started_at": run.started_at.isoformat() if run.started_at else None,
        "finished_at": run.finished_at.isoformat() if run.finished_at else None,
    }


def should_notify(audit: Audit, run: AuditRun, previous: str | None) -> bool:
    failed = {AuditRun.Status.FAIL, AuditRun.Status.ERROR}
    if run.status in failed:
        return True
    return audit.notify_on_recovery and previous in failed and run.status == AuditRun.Status.PASS


def _post(url: str, body: bytes, content_type: str) -> int:
    request = urllib.request.Request(
        url, data=body, method="POST", headers={"content-type": content_type}
    )
    with urllib.request.urlopen(request, timeout=_TIMEOUT_S) as response:
        return int(response.status)


def notify(audit: Audit, run: AuditRun, previous: str | None) -> list[dict[str, Any]]:
    """Send the run's result on every channel the audit names; returns what happened."""
    if not should_notify(audit, run, previous):
        return []
    data = payload(audit, run, previous)
    body = json.dumps(data).encode()
    outcomes: list[dict[str, Any]] = []

    def attempt(channel: str, target: str, send: Any) -> None:
        try:
            send()
            outcomes.append({"channel": channel, "target": target, "ok": True})
        except Exception as e:  # a channel's failure is noted, never raised
            log.warning("audit %s: %s notification to %s failed: %s", audit, channel, target, e)
            outcomes.append({"channel": channel, "target": target, "ok": False, "error": str(e)})

    if audit.notify_mesh:
        runtime = str(settings.MESHTAP_RUNTIME_URL).rstrip("/")
        event = {
            "specversion": "1.0",
            "id": f"audit-run-{run.pk}",
            "source": f"/meshtap/audits/{audit.pk}",
            "type": EVENT_TYPE,
            "subject": audit.name,
            "time": (run.finished_at or run.started_at).isoformat(),
            "datacontenttype": "application/json",
            "data": data,
        }
        attempt(
            "mesh",
            f"{runtime} {TOPIC}",
            lambda: _post(
                f"{runtime}/v1/topics/{TOPIC}/events",
                json.dumps(event).encode(),
                "application/cloudevents+json",
            ),
        )
    for url in audit.webhooks:
        attempt("webhook", url, lambda url=url: _post(url, body, "application/json"))
    if audit.emails:
        subject = f"[meshtap] audit {audit.name}: {run.status}"
        lines = [data["summary"], ""] + [json.dumps(f) for f in data["findings"]]
        attempt(
            "email",
            ", ".join(audit.emails),
            lambda: send_mail(subject, "\n".join(lines), settings.DEFAULT_FROM_EMAIL, audit.emails),
        )
    return outcomes
