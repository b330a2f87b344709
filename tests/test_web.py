"""The web admin's pages and permissions, on real recorded traffic (clickhouse-server and chDB).

Traffic comes from a real runtime capturing into the store (``tests.webmesh``); pages are
rendered by Django's test client; replays run on a real Celery worker (in-process, Celery's
own ``start_worker``) that consumes the ``replay`` queue and sends to the runtime.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from celery.contrib.testing.worker import start_worker
from django.contrib.auth.models import Group, User
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import Client

from meshadmin.celery import app as celery_app
from meshadmin.models import ReplayJob
from meshadmin.web import _store
from meshadmin.web._runtime_api import RuntimeApi
from tests.servers import ClickHouseServer
from tests.webmesh import ORDERS, Mesh, mesh_with_traffic

BACKENDS = [pytest.param("server", marks=pytest.mark.clickhouse), "chdb"]


@pytest.fixture(params=BACKENDS)
def mesh(request: pytest.FixtureRequest, tmp_path: Path, settings: Any) -> Iterator[Mesh]:
    if request.param == "server":
        server: ClickHouseServer = request.getfixturevalue("clickhouse_server")
        url = server.url
    else:
        url = f"chdb://{tmp_path / 'chdb'}"
    settings.MESHTAP_CLICKHOUSE_URL = url
    settings.MESHTAP_REPLAY_SPOOL_DIR = str(tmp_path / "replay-spool")
    settings.MESHTAP_REPLAY_IN_PROCESS = False  # the real Celery worker runs them
    try:
        with mesh_with_traffic(url, tmp_path / "spool") as recorded:
            settings.MESHTAP_RUNTIME_URL = recorded.http_url
            yield recorded
    finally:
        _store.close_all()


def login(role: str) -> Client:
    user = User.objects.create_user(f"{role.lower()}-user", password="correct horse 1")
    user.groups.add(Group.objects.get(name=role))
    user.is_staff = role == "admin"
    user.save()
    client = Client()
    assert client.login(username=user.username, password="correct horse 1")
    return client


def text(response: Any) -> str:
    return response.content.decode()


# --- permissions ---------------------------------------------------------------------------------


@pytest.mark.django_db
def test_pages_need_a_login() -> None:
    response = Client().get("/")
    assert response.status_code == 302
    assert response["location"].startswith("/login/")


@pytest.mark.django_db
def test_a_user_without_a_role_is_refused() -> None:
    User.objects.create_user("nobody", password="correct horse 1")
    client = Client()
    client.login(username="nobody", password="correct horse 1")
    assert client.get("/events/").status_code == 403


@pytest.mark.django_db
def test_an_sre_cannot_start_a_replay() -> None:
    client = login("SRE")
    assert client.get("/replays/new/").status_code == 403
    response = client.post("/replays/new/", {"topics": "orders.#", "start": "1"})
    assert response.status_code == 403
    assert client.get("/replays/").status_code == 200  # browsing jobs is fine
    assert ReplayJob.objects.count() == 0


@pytest.mark.django_db
def test_the_groups_exist_with_their_permissions() -> None:
    assert {g.name for g in Group.objects.all()} >= {"SRE", "QA", "admin"}
    qa = login("QA")
    assert qa.get("/replays/new/").status_code == 200


@pytest.mark.django_db
def test_meshtap_user_creates_users_and_refuses_bad_input() -> None:
    call_command("meshtap_user", "ann", "--role", "qa", "--password", "long enough 1")
    ann = User.objects.get(username="ann")
    assert [g.name for g in ann.groups.all()] == ["QA"]
    assert not ann.is_staff
    call_command("meshtap_user", "root", "--role", "admin", "--password", "long enough 1")
    assert User.objects.get(username="root").is_staff
    with pytest.raises(CommandError, match=r"--role 'boss' is not one of sre, qa, admin"):
        call_command("meshtap_user", "bob", "--role", "boss", "--password", "long enough 1")
    with pytest.raises(CommandError, match="shorter than 8"):
        call_command("meshtap_user", "bob", "--role", "sre", "--password", "short")
    assert not User.objects.filter(username="bob").exists()


# --- pages on recorded traffic ------------------------------------------------------------------


@pytest.mark.django_db
def test_search_finds_the_failed_deliveries_trace_and_shows_payload_and_attempts(
    mesh: Mesh,
) -> None:
    client = login("SRE")
    page = client.get("/", {"topic": "orders.#", "status": "error", "range": "1h"})
    assert page.status_code == 200, text(page)
    html = text(page)
    failed = mesh.failed_order_trace()
    assert f"/traces/{failed}/" in html
    assert html.count('class="err"') >= ORDERS // 5  # every dead-lettered order's trace

    trace = client.get(f"/traces/{failed}/")
    html = text(trace)
    assert trace.status_code == 200
    assert "dead_lettered" in html
    assert "retry" in html
    assert "&quot;customer&quot;: &quot;c-" in html  # the payload, pretty-printed
    assert '"publish orders.' in html  # the spans for the waterfall
    assert "Replay…" not in html  # an SRE is not offered a replay

    # The URL holds the query; bad input says what was wrong.
    bad = client.get("/", {"min": "fast"})
    assert bad.status_code == 400
    assert "min duration &#x27;fast&#x27; is not a duration" in text(bad)
    bad = client.get("/", {"attr": "nokeyvalue"})
    assert "is not key=value" in text(bad)
    assert client.get("/", {"range": "3y"}).status_code == 400
    assert client.get("/traces/xyz/").status_code == 400
    assert client.get("/traces/" + "ab" * 16 + "/").status_code == 404


@pytest.mark.django_db
def test_trace_search_pages_with_a_cursor(mesh: Mesh) -> None:
    client = login("SRE")
    first = text(client.get("/", {"topic": "orders.#", "range": "1h"}))
    found = set(re.findall(r"/traces/([0-9a-f]{32})/", first))
    assert len(found) == 25
    cursor = re.search(r'href="\?([^"]*cursor=[^"]+)"', first)
    assert cursor is not None
    second = text(client.get("/?" + cursor.group(1).replace("&amp;", "&")))
    more = set(re.findall(r"/traces/([0-9a-f]{32})/", second))
    assert more
    assert not more & found


@pytest.mark.django_db
def test_event_browser_histogram_payload_search_and_event_detail(mesh: Mesh) -> None:
    client = login("SRE")
    page = client.get("/events/", {"topic": "orders.*.created", "range": "1h"})
    html = text(page)
    assert page.status_code == 200, html
    assert '<svg class="histogram"' in html
    assert f"<b>{ORDERS}</b> events" in html
    assert html.count('class="bar"') >= 1

    found = text(client.get("/events/", {"topic": "orders.*.created", "q": '"order":13,'}))
    assert "<b>1</b> events" in found
    link = re.search(r'href="(/events/orders\.us\.created/\d+/order-0013)"', found)
    assert link is not None
    detail = text(client.get(link.group(1)))
    assert "order.created" in detail
    assert "shipping" in detail
    assert "dead_lettered" in detail  # order 13 failed at shipping
    assert "Open its trace" in detail

    bad = client.get("/events/", {"topic": "orders..x"})
    assert bad.status_code == 400


@pytest.mark.django_db
def test_topology_draws_producers_topics_and_groups(mesh: Mesh) -> None:
    client = login("SRE")
    html = text(client.get("/topology/", {"range": "1h"}))
    assert '<svg class="topology"' in html
    for name in ("orders.eu.created", "payments.captured", "billing", "shipping", "ledger"):
        assert f">{name}<" in html
    assert "% failed" in html  # shipping's error rate
    assert "8 DLQ" in html  # the dead letters
    assert 'class="edge error"' in html


@pytest.mark.django_db
def test_a_qa_user_cannot_target_production(mesh: Mesh) -> None:
    client = login("QA")
    form = {
        "topics": "orders.#",
        "since": mesh.since.isoformat(),
        "until": mesh.until.isoformat(),
        "speed": "max",
        "to_prefix": "",
        "target_url": mesh.http_url,
        "start": "1",
    }
    response = client.post("/replays/new/", form)
    assert response.status_code == 403
    assert "writes production topics" in text(response)
    response = client.post(
        "/replays/new/", {**form, "to_prefix": "replay.", "allow_production": "1"}
    )
    assert response.status_code == 403
    assert ReplayJob.objects.count() == 0


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_replay_from_a_trace_runs_on_a_celery_worker(mesh: Mesh) -> None:
    client = login("QA")
    failed = mesh.failed_order_trace()
    form_page = text(client.get("/replays/new/", {"trace": failed}))
    assert failed in form_page
    assert "<th>events</th><td><b>1</b></td>" in form_page  # the dry run of that one trace
    fields = dict(re.findall(r'<input name="(\w+)" value="([^"]*)"', form_page))
    fields = {k: v.replace("&#x27;", "'") for k, v in fields.items()}
    with start_worker(celery_app, perform_ping_check=False, queues=["replay"], shutdown_timeout=30):
        response = client.post(
            "/replays/new/", {**fields, "trace_ids": failed, "speed": "max", "start": "1"}
        )
        assert response.status_code == 302, text(response)
        job = ReplayJob.objects.get()
        assert response["location"] == f"/replays/{job.pk}/"
        deadline = time.monotonic() + 60
        while True:
            progress = client.get(f"/replays/{job.pk}/progress.json").json()
            if progress["finished"]:
                break
            assert time.monotonic() < deadline, progress
            time.sleep(0.2)
    assert progress["status"] == "completed", progress
    assert progress["percent"] == 100.0
    assert progress["sent"] == 1
    assert mesh.replays is not None
    assert len(mesh.replays.pushes) == 1
    page = text(client.get(f"/replays/{job.pk}/"))
    assert "completed" in page
    assert job.replay_id in page
    # The original trace links to its replay, and the replay's trace back to the original.
    original = text(client.get(f"/traces/{failed}/"))
    replayed = re.search(r"replayed as <a class=\"mono\" href=\"/traces/([0-9a-f]{32})/", original)
    assert replayed is not None, "no 'replayed as' link"
    assert f'replayed from <a class="mono" href="/traces/{failed}/' in text(
        client.get(f"/traces/{replayed.group(1)}/")
    )
    # The outcome diff of the finished job (nothing consumes replay.# and answers here, so
    # the one trigger has no responses either way: matched by being equally silent or missing).
    assert client.post(f"/replays/{job.pk}/diff/").status_code == 302
    job.refresh_from_db()
    assert job.diff_report is not None
    assert job.diff_report["triggers"] == 1
    assert "Outcome diff" in text(client.get(f"/replays/{job.pk}/"))
    # Finished: pause is refused with the reason.
    refused = client.post(f"/replays/{job.pk}/pause/")
    assert refused.status_code == 409
    assert "cannot pause a job that is completed" in text(refused)


@pytest.mark.django_db
def test_the_django_admin_lists_filters_and_cancels_replay_jobs() -> None:
    admin = login("admin")
    paused = ReplayJob.objects.create(
        spec={"topics": ["orders.#"], "to_prefix": "replay."},
        target_url="http://127.0.0.1:1",
        status=ReplayJob.Status.PAUSED,
    )
    done = ReplayJob.objects.create(
        spec={"topics": ["payments.#"], "to_prefix": "sandbox."},
        target_url="http://127.0.0.1:1",
        status=ReplayJob.Status.COMPLETED,
    )
    listing = text(admin.get("/admin/meshadmin/replayjob/", {"status__exact": "paused"}))
    assert paused.replay_id in listing
    assert done.replay_id not in listing
    assert "orders.#" in listing
    assert paused.replay_id in text(
        admin.get("/admin/meshadmin/replayjob/", {"q": paused.replay_id})
    )
    response = admin.post(
        "/admin/meshadmin/replayjob/",
        {"action": "cancel", "_selected_action": [paused.pk, done.pk]},
    )
    assert response.status_code == 302
    paused.refresh_from_db()
    done.refresh_from_db()
    assert paused.status == "cancelled"
    assert done.status == "completed"  # finished jobs are left alone
    # QA users are not staff: no configuration.
    assert login("QA").get("/admin/meshadmin/replayjob/").status_code == 302


@pytest.mark.django_db
@pytest.mark.parametrize("mesh", ["chdb"], indirect=True)
def test_admins_change_subscriptions_through_the_runtime_api(mesh: Mesh) -> None:
    assert login("QA").get("/config/subscriptions/").status_code == 403
    admin = login("admin")
    page = text(admin.get("/config/subscriptions/"))
    assert "<b>shipping</b>" in page  # live from the runtime
    api = RuntimeApi(mesh.http_url)
    before = api.subscriptions()

    form = {"action": "subscribe", "topic": "audits.#", "group": "audit", "mode": "clustering"}
    bad = admin.post(
        "/config/subscriptions/", {**form, "sink": "http://127.0.0.1:9/x", "filters": "[{"}
    )
    assert bad.status_code == 400
    assert "filters are not JSON" in text(bad)
    refused = admin.post("/config/subscriptions/", {**form, "sink": "http://169.254.169.254/"})
    assert refused.status_code == 400
    assert "the runtime refused it:" in text(refused)
    assert api.subscriptions() == before  # nothing was created

    done = admin.post("/config/subscriptions/", {**form, "sink": "http://127.0.0.1:9/x"})
    assert done.status_code == 302
    created = [s for s in api.subscriptions() if s["group"] == "audit"]
    assert [s["topic"] for s in created] == ["audits.#"]
    assert "<b>audit</b>" in text(admin.get("/config/subscriptions/"))
    admin.post("/config/subscriptions/", {"action": "unsubscribe", "id": created[0]["id"]})
    assert api.subscriptions() == before

    admin.post("/config/subscriptions/", {"action": "create_topic", "name": "audits.daily"})
    assert "audits.daily" in api.topics()


@pytest.mark.django_db
@pytest.mark.parametrize("mesh", ["chdb"], indirect=True)
def test_replay_of_an_event_selection_is_prefilled_with_its_dry_run(mesh: Mesh) -> None:
    qa = login("QA")
    browser = text(qa.get("/events/", {"topic": "orders.*.created", "range": "1h"}))
    assert "Replay selected…" in browser
    form = text(
        qa.get(
            "/replays/new/",
            {
                "topic": "orders.*.created",
                "since": mesh.since.isoformat(),
                "until": mesh.until.isoformat(),
                "event": ["order-0001", "order-0002"],
            },
        )
    )
    assert "order-0001\norder-0002</textarea>" in form
    assert "<th>events</th><td><b>2</b></td>" in form
    assert "replay.orders.us.created" in form  # where they would go
    bad = qa.get("/replays/new/", {"topic": "orders.#", "since": "yesterday"})
    assert bad.status_code == 400
    assert "since &#x27;yesterday&#x27; is not a time" in text(bad)


@pytest.mark.django_db
def test_an_unmigrated_store_is_a_503_saying_what_to_run(tmp_path: Path, settings: Any) -> None:
    settings.MESHTAP_CLICKHOUSE_URL = f"chdb://{tmp_path / 'empty'}"
    client = login("SRE")
    try:
        for url in ("/", "/topology/", "/events/", "/traces/" + "ab" * 16 + "/"):
            response = client.get(url)
            assert response.status_code == 503, url
            assert "migrate_clickhouse" in text(response), url
    finally:
        _store.close_all()


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
@pytest.mark.parametrize("mesh", ["chdb"], indirect=True)
def test_with_the_embedded_broker_a_replay_runs_in_the_web_process(
    mesh: Mesh, settings: Any
) -> None:
    settings.MESHTAP_REPLAY_IN_PROCESS = True  # the default with CELERY_BROKER_URL memory://
    client = login("QA")
    failed = mesh.failed_order_trace()
    response = client.post(
        "/replays/new/",
        {
            "topics": "orders.#",
            "since": mesh.since.isoformat(),
            "until": mesh.until.isoformat(),
            "trace_ids": failed,
            "speed": "max",
            "to_prefix": "sandbox.",
            "target_url": mesh.http_url,
            "start": "1",
        },
    )
    assert response.status_code == 302, text(response)
    job = ReplayJob.objects.get()
    deadline = time.monotonic() + 60
    while not (progress := client.get(f"/replays/{job.pk}/progress.json").json())["finished"]:
        assert time.monotonic() < deadline, progress
        time.sleep(0.2)
    assert progress["status"] == "completed", progress
    assert progress["sent"] == 1
