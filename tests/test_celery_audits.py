"""Audits through real Celery processes: beat fires a periodic audit and a worker stores its run;
a worker SIGKILLed mid-audit loses nothing (acks_late + Redis redelivery); notifications reach
a real webhook, a real mesh subscriber and Django's file email backend; and the SRE's flow
from the admin, end to end.
"""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from runtime import CaptureConfig
from tests.meshes import event, free_port, running
from tests.servers import ClickHouseServer
from tests.sinks import Push, RecordingSink
from tests.stack import AdminClient, DjangoStack
from tests.test_queries import delivery, insert, ns
from tests.test_queries import event as event_row
from tracing import ClickHouseCapture
from tracing.clickhouse import ClickHouse, Purpose, migrate

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


async def test_the_sre_flow_from_the_admin_end_to_end(
    django_stack: DjangoStack, store_url: str, tmp_path: Path
) -> None:
    """An SRE creates a delivery-completeness audit in the admin (every 3 s here, every 5 min in
    production), sees it pass, a subscriber breaks, and a failing run lists the missing
    deliveries and notifies: a CloudEvent on meshtap.audit.result, a webhook, an email."""
    billing = await RecordingSink().start()
    on_call = await RecordingSink().start()  # subscribed to meshtap.audit.result on the mesh
    webhook = await RecordingSink().start()
    capture = ClickHouseCapture(CaptureConfig(url=store_url, spool_dir=str(tmp_path / "spool")))
    try:
        async with running(capture=capture) as (runtime, client):
            await client.subscribe(topic="orders.#", group="billing", sink=billing.url)
            await client.subscribe(topic="meshtap.audit.result", group="sre", sink=on_call.url)
            django_stack.env["MESHTAP_CLICKHOUSE_URL"] = store_url
            django_stack.env["MESHTAP_RUNTIME_URL"] = runtime.http_url
            await django_stack.migrate()
            await django_stack.start_web()
            django_stack.start_worker()
            django_stack.start_beat()

            # unsafe: keep cookies set by an IP-address host (the CSRF and session cookies)
            jar = aiohttp.CookieJar(unsafe=True)
            async with aiohttp.ClientSession(cookie_jar=jar) as session:
                admin = AdminClient(django_stack.web_url, session)
                await admin.login()
                form = {
                    "name": "orders reach billing",
                    "kind": "delivery_completeness",
                    "parameters": json.dumps(
                        {"topics": ["orders.#"], "within_s": 2, "window_s": 120}
                    ),
                    "enabled": "on",
                    "every_seconds": "3",
                    "crontab": "",
                    "notify_mesh": "on",
                    "notify_webhooks": webhook.url,
                    "notify_emails": "oncall@example.com",
                    "_save": "Save",
                }
                # A mistake first: the form says what is wrong and nothing is saved.
                status, page = await admin.submit(
                    "/admin/audits/audit/add/", {**form, "parameters": '{"within_s": "soon"}'}
                )
                assert status == 200
                assert "at within_s: &#x27;soon&#x27; is not of type &#x27;number&#x27;" in page
                status, page = await admin.submit("/admin/audits/audit/add/", form)
                assert status == 302, page

                for n in range(5):
                    await client.publish("orders.eu", event(f"ok-{n}"))
                await billing.wait_for(5)

                def passing() -> list[dict[str, Any]]:
                    return [
                        r for r in runs(django_stack, "WHERE status = 'pass'")
                        if r["figures"].get("events", 0) >= 5
                    ]  # fmt: skip

                [seen, *_] = await django_stack.wait_for("a passing run", passing, timeout=90)
                assert seen["notifications"] == []  # nothing to say while it passes
                listing = await admin.page("/admin/audits/audit/")
                assert "orders reach billing" in listing
                assert ">pass</b>" in listing

                # The subscriber breaks: every push now fails.
                billing.respond = lambda push: web.Response(status=500)
                for n in range(3):
                    await client.publish("orders.eu", event(f"lost-{n}"))

                def failing() -> list[dict[str, Any]]:
                    return [
                        r for r in runs(django_stack, "WHERE status = 'fail'")
                        if len(r["findings"]) == 3 and r["notifications"]
                    ]  # fmt: skip

                [failed, *_] = await django_stack.wait_for("a failing run", failing, timeout=90)
                assert failed["summary"].startswith("3 of ")
                assert sorted((f["event_id"], f["group"]) for f in failed["findings"]) == [
                    (f"lost-{n}", "billing") for n in range(3)
                ]
                assert all(f["reason"].startswith("not acked") for f in failed["findings"])
                assert sorted(n["channel"] for n in failed["notifications"] if n["ok"]) == [
                    "email", "mesh", "webhook",
                ]  # fmt: skip
                run_page = await admin.page(f"/admin/audits/auditrun/{failed['id']}/change/")
                assert "lost-0" in run_page
                assert "not acked" in run_page

            # The notifications arrived: webhook, the mesh's subscriber, the mail file.
            def result_of(pushes: list[Push]) -> list[dict[str, Any]]:
                bodies = [json.loads(p.body) for p in pushes]
                return [b for b in bodies if b.get("run_id") == failed["id"]]

            [hooked] = result_of(webhook.pushes)
            assert hooked["status"] == "fail"
            assert hooked["audit"] == "orders reach billing"
            assert {f["event_id"] for f in hooked["findings"]} == {"lost-0", "lost-1", "lost-2"}
            await on_call.wait_for(1)
            [pushed] = [
                p for p in on_call.pushes if p.attributes["id"] == f"audit-run-{failed['id']}"
            ]
            assert pushed.attributes["type"] == "meshtap.audit.result"
            assert pushed.attributes["subject"] == "orders reach billing"
            assert json.loads(pushed.body)["findings_total"] == 3
            mails = "\n".join(p.read_text() for p in (tmp_path / "mail").iterdir())
            assert "Subject: [meshtap] audit orders reach billing: fail" in mails
            assert "To: oncall@example.com" in mails
            assert "lost-1" in mails
    finally:
        for sink in (billing, on_call, webhook):
            await sink.stop()


async def test_notifications_on_failure_and_recovery_and_a_broken_channel(
    django_stack: DjangoStack, store_url: str, tmp_path: Path
) -> None:
    webhook = await RecordingSink().start()
    nowhere = f"http://127.0.0.1:{free_port()}/hook"
    try:
        django_stack.env["MESHTAP_CLICKHOUSE_URL"] = store_url
        await django_stack.migrate()
        audit = await create_audit(
            django_stack, name="dlq", kind="dead_letters", every_seconds=3600,
            parameters={"max_dead_letters": 0}, notify_mesh=False, notify_on_recovery=True,
            notify_webhooks=f"{webhook.url}\n{nowhere}",
            notify_emails="a@example.com, b@example.com",
        )  # fmt: skip
        now = time.time_ns()
        with ClickHouse.open(store_url) as client:
            insert(client, "deliveries", [
                delivery("d1", "orders.eu", "shipping", 3, "dead_lettered", 500, now, now, "", ""),
            ])  # fmt: skip

        async def run_once(parameters: dict[str, Any]) -> dict[str, Any]:
            await django_stack.shell(
                "from meshadmin.audits.models import Audit\n"
                "from meshadmin.audits.runner import execute_audit\n"
                f"Audit.objects.filter(pk={audit}).update(parameters={parameters!r})\n"
                f"execute_audit({audit})\n"
            )
            return runs(django_stack)[-1]

        failed = await run_once({"max_dead_letters": 0})
        assert failed["status"] == "fail"
        sent = {(n["channel"], n["target"]): n for n in failed["notifications"]}
        assert sent[("webhook", webhook.url)]["ok"] is True
        assert sent[("webhook", nowhere)]["ok"] is False  # noted, and the others still went
        assert "Connection refused" in sent[("webhook", nowhere)]["error"]
        assert sent[("email", "a@example.com, b@example.com")]["ok"] is True
        [hook] = await webhook.wait_for(1)
        assert json.loads(hook.body)["findings"][0]["sample"] == ["d1"]

        recovered = await run_once({"max_dead_letters": 5})
        assert recovered["status"] == "pass"
        assert [n["channel"] for n in recovered["notifications"] if n["ok"]] == ["webhook", "email"]
        [_, hook] = await webhook.wait_for(2)
        assert (json.loads(hook.body)["status"], json.loads(hook.body)["previous_status"]) == (
            "pass", "fail",
        )  # fmt: skip

        quiet = await run_once({"max_dead_letters": 5})
        assert (quiet["status"], quiet["notifications"]) == ("pass", [])  # pass after pass
        mails = sorted((tmp_path / "mail").iterdir())
        assert len(mails) == 2
        assert "Subject: [meshtap] audit dlq: pass" in mails[1].read_text()
    finally:
        await webhook.stop()


async def test_admin_actions_and_housekeeping_through_the_worker(
    django_stack: DjangoStack, store_url: str
) -> None:
    django_stack.env["MESHTAP_CLICKHOUSE_URL"] = store_url
    await django_stack.migrate()
    audit = await create_audit(
        django_stack, name="traces", kind="trace_integrity", every_seconds=3600, notify_mesh=False,
    )  # fmt: skip
    old = datetime.now(UTC) - timedelta(days=45)
    with ClickHouse.open(store_url) as client:
        insert(client, "events", [event_row("old-1", "orders.eu", ns(old), "")])
    django_stack.env["MESHTAP_RUNTIME_URL"] = f"http://127.0.0.1:{free_port()}"
    await django_stack.start_web()
    django_stack.start_worker()

    def enabled() -> bool:
        [(on,)] = django_stack.query(
            "SELECT enabled FROM django_celery_beat_periodictask WHERE name = ?", f"audit:{audit}"
        )
        return bool(on)

    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
        admin = AdminClient(django_stack.web_url, session)
        await admin.login()
        changelist = "/admin/audits/audit/"
        for action in ("run_now", "disable"):
            status, _ = await admin.submit(
                changelist, {"action": action, "_selected_action": str(audit), "index": "0"}
            )
            assert status == 302
        [run] = await django_stack.wait_for(
            "the run-now run", lambda: runs(django_stack, "WHERE status != 'running'")
        )
        assert run["status"] == "pass"
        assert run["summary"] == "every trace in the window is whole"
        history = await admin.page(f"/admin/audits/audit/{audit}/change/")
        assert f'href="/admin/audits/auditrun/{run["id"]}/change/"' in history
        assert not enabled()
        await admin.submit(
            changelist, {"action": "enable", "_selected_action": str(audit), "index": "0"}
        )
        assert enabled()

        # A schedule the form cannot use is refused with the reason, and nothing is saved.
        add = "/admin/audits/audit/add/"
        form = {"name": "x", "kind": "dead_letters", "parameters": "{}", "crontab": "",
                "_save": "Save"}  # fmt: skip
        status, page = await admin.submit(add, {**form, "crontab": "* *"})
        assert status == 200
        assert "crontab &#x27;* *&#x27; needs 5 fields" in page
        status, page = await admin.submit(add, form)
        assert "give a schedule: every N seconds, or a crontab" in page
        status, page = await admin.submit(
            add, {**form, "crontab": "*/5 * * * *", "every_seconds": "60"}
        )
        assert "give one schedule" in page
        assert len(django_stack.query("SELECT id FROM audits_audit")) == 1

    # Housekeeping: retention drops the 45-day-old partition, through the housekeeping queue.
    await django_stack.shell(
        "from meshadmin.tasks import apply_retention\n"
        "print('DROPPED', apply_retention.delay(30).get(timeout=60))\n"
    )
    with ClickHouse.open(store_url) as client:
        left = client.execute("SELECT count() FROM meshtap.events", purpose=Purpose.QUERY)
    assert left == [(0,)]
    # Capture health as housekeeping: ClickHouse answers, the runtime's /metrics does not.
    output = await django_stack.shell(
        "import json\n"
        "from meshadmin.tasks import check_capture_health\n"
        "print('HEALTH', json.dumps(check_capture_health.delay().get(timeout=60)))\n"
    )
    health = json.loads(output.split("HEALTH ")[1])
    assert health["status"] == "fail"
    assert health["figures"]["clickhouse_reachable"] == 1
    assert [f["check"] for f in health["findings"]] == ["runtime metrics"]
