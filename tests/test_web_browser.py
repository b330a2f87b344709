"""The web admin in headless Chromium (Debian's ``chromium``, driven by Playwright): sign in,
find a failing delivery's trace, expand its spans, open an event, replay a window and watch the
progress bar reach 100%. Screenshots go to ``test-artifacts/screenshots/`` (gitignored).

The stack is real end to end: a runtime capturing into clickhouse-server (``tests.webmesh``),
Django's live server, and a Celery worker consuming the ``replay`` queue.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from celery.contrib.testing.worker import start_worker
from django.contrib.auth.models import Group, User
from playwright.sync_api import Page, expect, sync_playwright

from meshadmin.celery import app as celery_app
from meshadmin.web import _store
from tests.meshes import ROOT
from tests.servers import ClickHouseServer
from tests.webmesh import ORDERS, Mesh, mesh_with_traffic
from tracing.clickhouse import ClickHouse, migrate

SHOTS = ROOT / "test-artifacts" / "screenshots"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.clickhouse,
    pytest.mark.django_db(transaction=True, serialized_rollback=True),
]


@pytest.fixture
def mesh(clickhouse_server: ClickHouseServer, tmp_path: Path, settings: Any) -> Iterator[Mesh]:
    settings.MESHTAP_CLICKHOUSE_URL = clickhouse_server.url
    settings.MESHTAP_REPLAY_SPOOL_DIR = str(tmp_path / "replay-spool")
    settings.MESHTAP_REPLAY_IN_PROCESS = False  # the real Celery worker runs them
    try:
        with mesh_with_traffic(clickhouse_server.url, tmp_path / "spool") as recorded:
            settings.MESHTAP_RUNTIME_URL = recorded.http_url
            yield recorded
    finally:
        _store.close_all()


@pytest.fixture
def qa_user() -> str:
    """Made before the browser starts: Playwright's sync API runs an event loop in this thread,
    where Django refuses ORM calls."""
    user = User.objects.create_user("quinn", password="correct horse 1")
    user.groups.add(Group.objects.get(name="QA"))
    return user.username


@pytest.fixture
def replay_worker() -> Iterator[None]:
    """A real Celery worker (in a thread, Celery's own test harness) on the ``replay`` queue;
    started before the browser, as its Django fixups touch the ORM."""
    with start_worker(celery_app, perform_ping_check=False, queues=["replay"], shutdown_timeout=30):
        yield


@pytest.fixture
def page(chromium_executable: str) -> Iterator[Page]:
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=chromium_executable, args=["--no-sandbox", "--disable-gpu"]
        )
        context = browser.new_context(viewport={"width": 1440, "height": 900})
        page = context.new_page()
        page.set_default_timeout(20_000)
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        try:
            yield page
        finally:
            browser.close()
        assert errors == [], errors  # no script errors on any page


def shot(page: Page, name: str) -> None:
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def test_find_a_failed_delivery_open_it_and_replay_its_window(
    mesh: Mesh, live_server: Any, qa_user: str, replay_worker: None, page: Page
) -> None:
    base = live_server.url

    # Sign in (the login page first: every page needs a user).
    page.goto(base + "/")
    expect(page.get_by_role("heading", name=re.compile("Sign in"))).to_be_visible()
    shot(page, "01-login")
    page.get_by_label("User name").fill(qa_user)
    page.get_by_label("Password").fill("correct horse 1")
    page.get_by_role("button", name="Sign in").click()

    # Search: failed traces on orders.
    page.get_by_label("Topic").fill("orders.#")
    page.get_by_label("Status").select_option("error")
    page.get_by_role("button", name="Find traces").click()
    rows = page.locator("table.results tbody tr")
    expect(rows).to_have_count(ORDERS // 5)
    assert "status=error" in page.url  # the URL holds the query
    shot(page, "02-trace-search")

    # Open the first trace: waterfall, then collapse and expand the span tree.
    rows.first.locator("a.mono").click()
    expect(page.locator(".wf-row").first).to_be_visible()
    spans = page.locator(".wf-row").count()
    assert spans >= 3  # publish, the deliveries, the dead letter
    expect(page.locator(".wf-row.critical").first).to_be_visible()
    page.get_by_role("button", name="Collapse all").click()
    assert page.locator(".wf-row").count() < spans
    page.locator(".wf-row button.tog").first.click()
    assert page.locator(".wf-row").count() > 1
    page.get_by_role("button", name="Expand all").click()
    expect(page.locator(".wf-row")).to_have_count(spans)
    page.locator(".wf-row.error").first.click()
    detail = page.locator("#spandetail")
    expect(detail).to_be_visible()
    expect(detail).to_contain_text("Attributes")
    assert "#span=" in page.url  # deep link to the span
    expect(page.locator("text=dead_lettered").first).to_be_visible()
    shot(page, "03-trace-view")

    # A deep link reopens the same span.
    page.goto(page.url)
    expect(page.locator("#spandetail")).to_be_visible()

    # Its event: payload and every delivery attempt.
    page.get_by_role("link", name="Event page →").first.click()
    expect(page.locator("pre.payload")).to_contain_text('"customer"')
    expect(page.locator("span.outcome.dead_lettered")).to_be_visible()
    shot(page, "04-event")

    # Event browser: the histogram, then "Replay this window…" at a pace we can watch.
    page.goto(base + "/events/?topic=orders.*.created&range=1h")
    expect(page.locator("svg.histogram rect.bar").first).to_be_visible()
    shot(page, "05-events")
    page.get_by_role("link", name="Replay this window…").click()
    expect(page.locator("text=Dry run")).to_be_visible()
    expect(page.locator(".kv").first).to_contain_text(str(ORDERS))
    page.get_by_label("Speed").select_option("10x")
    page.get_by_role("button", name="Estimate").click()
    shot(page, "06-replay-form")

    page.get_by_label("Speed").select_option("10/s")  # 4 s: long enough to pause and watch
    page.get_by_role("button", name="Start replay").click()
    expect(page.locator("#status")).to_have_text(re.compile("running"))
    page.get_by_role("button", name="Pause").click()
    expect(page.locator("#status")).to_have_text("paused", timeout=30_000)
    paused_at = int(page.locator("#sent").inner_text())
    assert paused_at < ORDERS
    page.get_by_role("button", name="Resume").click()
    expect(page.locator("#status")).to_have_text("running", timeout=30_000)
    shot(page, "07-replay-running")
    expect(page.locator("#pct")).to_have_text("100%", timeout=90_000)
    expect(page.locator("#status")).to_have_text("completed")
    assert mesh.replays is not None
    assert len(mesh.replays.pushes) == ORDERS
    page.reload()
    shot(page, "08-replay-job")

    page.goto(base + "/topology/?range=1h")
    expect(page.locator("svg.topology")).to_be_visible()
    shot(page, "09-topology")


BIG = 10_000


def insert_big_trace(url: str) -> str:
    """One trace of 10,000 spans: a root with ten children, each of those with ten ... (a
    4-level tree), every 97th span failed."""
    trace_id = "b" * 32
    start = int(datetime.now(UTC).timestamp()) * 1_000_000_000 - 60 * 1_000_000_000
    names = (
        "trace_id", "span_id", "parent_span_id", "name", "kind", "service_name", "start_ns",
        "end_ns", "duration_ns", "start_at", "status_code", "attr_keys", "attr_values",
    )  # fmt: skip
    columns: dict[str, list[Any]] = {c: [] for c in names}
    for n in range(BIG):
        begin = start + n * 20_000
        values = {
            "trace_id": trace_id,
            "span_id": f"{n + 1:016x}",
            "parent_span_id": "" if n == 0 else f"{(n - 1) // 10 + 1:016x}",
            "name": f"step-{n}",
            "kind": "internal",
            "service_name": f"svc-{n % 9}",
            "start_ns": begin,
            "end_ns": begin + 15_000,
            "duration_ns": 15_000,
            "start_at": begin // 1_000_000_000,
            "status_code": "error" if n % 97 == 5 else "ok",
            "attr_keys": ["step"],
            "attr_values": [str(n)],
        }
        for key, value in values.items():
            columns[key].append(value)
    with ClickHouse.open(url) as client:
        client.insert("spans", list(columns), list(columns.values()))
    return trace_id


@pytest.fixture
def big_trace(clickhouse_server: ClickHouseServer, settings: Any) -> Iterator[str]:
    settings.MESHTAP_CLICKHOUSE_URL = clickhouse_server.url
    with ClickHouse.open(clickhouse_server.url) as client:
        migrate(client)
    try:
        yield insert_big_trace(clickhouse_server.url)
    finally:
        _store.close_all()


def test_a_trace_of_10000_spans_renders_lazily(
    big_trace: str, live_server: Any, qa_user: str, page: Page
) -> None:
    page.goto(live_server.url + "/login/")
    page.get_by_label("User name").fill(qa_user)
    page.get_by_label("Password").fill("correct horse 1")
    page.get_by_role("button", name="Sign in").click()

    started = time.monotonic()
    page.goto(f"{live_server.url}/traces/{big_trace}/")
    expect(page.locator(".wf-row").first).to_be_visible()
    page.get_by_role("button", name="Expand all").click()
    expect(page.locator("#wf-count")).to_have_text(f"{BIG} of {BIG} spans shown")
    opened_s = time.monotonic() - started
    assert page.locator(".wf-row").count() < 120  # only the rows in view exist
    # Scroll to the end: the last spans are drawn, still only a window of rows.
    page.locator("#wf-body").evaluate("b => { b.scrollTop = b.scrollHeight; }")
    expect(page.locator(".wf-row", has_text="step-1110")).to_be_visible()  # last in tree order
    assert page.locator(".wf-row").count() < 120
    # Find a deep span: the tree opens to it and its detail shows.
    page.get_by_role("button", name="Collapse all").click()
    page.locator("#wf-find").fill("step-5432")
    page.locator("#wf-find").press("Enter")
    expect(page.locator("#spandetail")).to_contain_text("step-5432")
    shot(page, "10-trace-10000-spans")
    assert opened_s < 30, f"opening and expanding {BIG} spans took {opened_s:.1f} s"
