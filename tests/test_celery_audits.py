"""Audits through real Celery processes: beat fires a periodic audit and a worker stores its run;
a worker SIGKILLed mid-audit loses nothing (acks_late + Redis redelivery); notifications reach
a real webhook, a real mesh subscriber and Django's file email backend; and the SRE's flow
from the admin, end to end.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from aiohttp import web

from tests.servers import ClickHouseServer
from tests.stack import DjangoStack
from tracing.clickhouse import ClickHouse, migrate

pytestmark = [pytest.mark.redis, pytest.mark.clickhouse]

RUNS = "SELECT id, status, summary, findings, figures, notifications, task_id FROM audits_auditrun"


def runs(stack: DjangoStack, where: str = "", *params: Any) -> list[dict[str, Any]]:
    rows = stack.query(f"{RUNS} {where} ORDER BY id", *params)
    return [
        {
            "id": r[0], "status": r[1], "summary": r[2], "findings": json.loads(r[3]),
            "figures": json.loads(r[4]), "notifications": json.loads(r[5]), "task_id": r[6],
        }
        for r in rows
    ]  # fmt: skip


@pytest.fixture
def store_url(clickhouse_server: ClickHouseServer) -> str:
    with ClickHouse.open(clickhouse_server.url) as client:
        migrate(client)
    return clickhouse_server.url


async def create_audit(stack: DjangoStack, **fields: Any) -> int:
    output = await stack.shell(
        "from meshadmin.audits.models import Audit\n"
        f"audit = Audit(**{fields!r})\n"
        "audit.full_clean()\n"
        "audit.save()\n"
        "print('AUDIT', audit.pk)\n"
    )
    return int(output.split("AUDIT ")[1].split()[0])


async def test_a_periodic_audit_fires_and_stores_runs(
    django_stack: DjangoStack, store_url: str
) -> None:
    django_stack.env["MESHTAP_CLICKHOUSE_URL"] = store_url
    await django_stack.migrate()
    audit = await create_audit(
        django_stack, name="dead letters", kind="dead_letters", every_seconds=2,
        parameters={"max_dead_letters": 0},
    )  # fmt: skip
    django_stack.start_worker()
    django_stack.start_beat()
    fired = await django_stack.wait_for(
        "two runs of the periodic audit",
        lambda: (
            len(done := runs(django_stack, "WHERE audit_id = ? AND status != 'running'", audit))
            >= 2
            and done
        ),
        timeout=90,
    )
    assert {r["status"] for r in fired} == {"pass"}
    assert fired[0]["summary"] == "0 dead letters, within the allowed 0"
    assert all(r["task_id"] for r in fired)  # run by Celery, one row per task
    [(task, queue, expires)] = django_stack.query(
        "SELECT task, queue, expire_seconds FROM django_celery_beat_periodictask WHERE name = ?",
        f"audit:{audit}",
    )
    assert (task, queue, expires) == ("meshadmin.tasks.run_audit", "audit", 2)


class SlowMetrics:
    """A runtime's /metrics that hangs on its first scrape (the worker is mid-audit then) and
    answers healthy capture figures afterwards."""

    def __init__(self) -> None:
        self.requests = 0
        self.release = asyncio.Event()
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        self.requests += 1
        if self.requests == 1:
            await asyncio.wait_for(self.release.wait(), timeout=120)
        return web.Response(
            text='meshtap_capture_buffered_rows{table="events"} 0\n'
            'meshtap_capture_spooled_rows{table="events"} 0\n'
            "meshtap_capture_clickhouse_up 1\n",
            content_type="text/plain",
        )

    async def start(self) -> SlowMetrics:
        app = web.Application()
        app.router.add_get("/metrics", self.handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        assert site._server is not None
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def stop(self) -> None:
        self.release.set()
        if self.runner is not None:
            await self.runner.cleanup()


async def test_a_worker_killed_mid_audit_does_not_lose_it(
    django_stack: DjangoStack, store_url: str
) -> None:
    metrics = await SlowMetrics().start()
    try:
        django_stack.env["MESHTAP_CLICKHOUSE_URL"] = store_url
        django_stack.env["MESHTAP_RUNTIME_URL"] = metrics.url
        await django_stack.migrate()
        audit = await create_audit(
            django_stack, name="capture", kind="capture_health", every_seconds=3600,
            notify_mesh=False,
        )  # fmt: skip
        django_stack.start_worker("first")
        await django_stack.shell(
            f"from meshadmin.tasks import run_audit\nrun_audit.delay({audit})\n"
        )
        await django_stack.wait_for("the first worker scrapes", lambda: metrics.requests >= 1)
        [started] = runs(django_stack)
        assert started["status"] == "running"
        django_stack.kill("first")  # SIGKILL, mid-task: the message was never acked

        django_stack.start_worker("second")
        finished = await django_stack.wait_for(
            "the redelivered audit finishes",
            lambda: [r for r in runs(django_stack) if r["status"] != "running"],
            timeout=90,
        )
        assert metrics.requests == 2
        assert [(r["id"], r["status"], r["task_id"]) for r in finished] == [
            (started["id"], "pass", started["task_id"])  # the same run, finished once
        ]
        assert finished[0]["figures"]["clickhouse_up"] == 1
        assert len(runs(django_stack)) == 1
    finally:
        await metrics.stop()
