"""`python manage.py standalone --demo` as a real process: demo traces land in chDB with spans
from the demo services and the mesh, the printed credentials log in to the admin, SIGINT exits
0, and a second start keeps the recorded data."""

from __future__ import annotations

import http.cookiejar
import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.meshes import ROOT
from tests.servers import ClickHouseServer, RedisServer
from tests.standalone import ADMIN, BANNER_END, Standalone
from tracing.clickhouse import ClickHouse, Purpose

PASSWORD = re.compile(r"user '([^']+)', password '([^']+)' \(shown once\)")
SHIPPED = re.compile(r"^demo: .*\bshipped (\d+)", re.M)

# Run in a child: chDB opens one data directory per process, and this test process may hold
# another. Traces whose spans come from the order service, both consumers and the mesh.
READ_TRACES = """
import json, sys
from tracing.clickhouse import ClickHouse, Purpose
with ClickHouse.open("chdb://" + sys.argv[1]) as client:
    rows = client.execute(
        "SELECT trace_id, groupUniqArray(service_name) FROM meshtap.spans GROUP BY trace_id",
        purpose=Purpose.QUERY,
    )
print(json.dumps({trace: sorted(services) for trace, services in rows}))
"""
DEMO_SERVICES = {"order-service", "payment-service", "shipping-service", "meshtap-runtime"}


def traces(var_dir: Path) -> dict[str, list[str]]:
    result = subprocess.run(
        [sys.executable, "-c", READ_TRACES, str(var_dir / "chdb")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    parsed: dict[str, list[str]] = json.loads(result.stdout)
    return parsed


def log_in(admin_url: str, username: str, password: str) -> str:
    """Log in through the admin's login form; returns the page it lands on."""
    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    with opener.open(f"{admin_url}/admin/login/?next=/admin/", timeout=30) as response:
        form = response.read().decode()
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', form)
    assert token is not None, form
    body = urllib.parse.urlencode(
        {
            "csrfmiddlewaretoken": token.group(1),
            "username": username,
            "password": password,
            "next": "/admin/",
        }
    ).encode()
    request = urllib.request.Request(
        f"{admin_url}/admin/login/?next=/admin/", data=body, headers={"Referer": admin_url}
    )
    with opener.open(request, timeout=30) as response:
        return str(response.read().decode())


def test_standalone_demo_records_traces_logs_in_and_keeps_data(tmp_path: Path) -> None:
    first = Standalone(tmp_path, "--demo", "--demo-rate", "4")
    try:
        first.wait_for(BANNER_END, timeout=120)
        credentials = PASSWORD.search(first.output)
        assert credentials is not None, first.output
        admin_url = ADMIN.search(first.output)
        assert admin_url is not None
        page = log_in(admin_url.group(1), credentials.group(1), credentials.group(2))
        assert "Log out" in page or "logout" in page, page[:2000]
        assert "Please enter the correct username" not in page
        # The admin's static files are served too.
        with urllib.request.urlopen(
            f"{admin_url.group(1)}/static/admin/css/base.css", timeout=30
        ) as response:
            assert response.status == 200
        # Demo reports come every 10 s; wait for a few orders to have gone all the way.
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            shipped = [int(n) for n in SHIPPED.findall(first.output)]
            if shipped and shipped[-1] >= 5:
                break
            time.sleep(1)
        else:
            raise AssertionError(f"the demo shipped too little:\n{first.output}")
        # The admin reads chDB from many request threads while capture writes into it.
        with ThreadPoolExecutor(max_workers=8) as pool:
            answers = list(
                pool.map(
                    lambda _: _call(f"{first.admin_url}/api/traces?service=order-service"),
                    range(40),
                )
            )
        assert {status for status, _ in answers} == {200}, answers
        assert all(body["traces"] for _, body in answers)
        assert first.interrupt() == 0, first.output
    finally:
        first.kill()
    assert "Stopped cleanly." in first.output

    recorded = traces(tmp_path)
    whole = [trace for trace, services in recorded.items() if set(services) >= DEMO_SERVICES]
    assert len(whole) >= 3, recorded

    second = Standalone(tmp_path, env={"MESHTAP_ADMIN_PASSWORD": ""})
    try:
        second.wait_for(BANNER_END, timeout=120)
        assert PASSWORD.search(second.output) is None, "the password must be printed only once"
        admin_url = ADMIN.search(second.output)
        assert admin_url is not None
        page = log_in(admin_url.group(1), credentials.group(1), credentials.group(2))
        assert "Please enter the correct username" not in page
        assert second.interrupt() == 0, second.output
    finally:
        second.kill()
    kept = traces(tmp_path)
    assert set(whole) <= set(kept)


def test_admin_credentials_from_the_environment(tmp_path: Path) -> None:
    process = Standalone(
        tmp_path, env={"MESHTAP_ADMIN_USER": "ops", "MESHTAP_ADMIN_PASSWORD": "s3cret-pass"}
    )
    try:
        process.wait_for(BANNER_END, timeout=120)
        assert "user 'ops', password 's3cret-pass'" in process.output
        admin_url = ADMIN.search(process.output)
        assert admin_url is not None
        page = log_in(admin_url.group(1), "ops", "s3cret-pass")
        assert "Please enter the correct username" not in page
        assert process.interrupt() == 0, process.output
    finally:
        process.kill()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--store", "nosuch://x"), "nosuch"),
        (("--http-port", "not-a-port"), "invalid runtime flags"),
    ],
)
def test_bad_flags_fail_with_a_clear_message(
    tmp_path: Path, args: tuple[str, ...], message: str
) -> None:
    result = subprocess.run(
        [sys.executable, "manage.py", "standalone", "--port", "0", *args],
        cwd=ROOT,
        env={**os.environ, "MESHTAP_VAR_DIR": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode != 0
    assert message in result.stdout + result.stderr, result.stdout + result.stderr


def _call(url: str, body: bytes | None = None) -> tuple[int, dict[str, object]]:
    request = urllib.request.Request(url, data=body, method="POST" if body is not None else "GET")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        with e:
            return e.code, json.loads(e.read())


def test_json_api_refuses_bad_input_with_clear_messages(tmp_path: Path) -> None:
    process = Standalone(tmp_path)
    try:
        process.wait_for(BANNER_END, timeout=120)
        api = process.admin_url + "/api"
        status, body = _call(f"{api}/traces/4bf92f3577b34da6a3ce929d0e0e4736")
        assert (status, body["error"]) == (404, "not_found")
        assert "4bf92f3577b34da6a3ce929d0e0e4736" in str(body["message"])
        status, body = _call(f"{api}/traces?limit=many")
        assert (status, body["error"]) == (400, "invalid_query")
        assert "many" in str(body["message"])
        status, body = _call(f"{api}/replays", b"[1, 2]")
        assert (status, body["error"]) == (400, "invalid_replay")
        assert "JSON object" in str(body["message"])
        status, body = _call(
            f"{api}/replays",
            json.dumps(
                {"topics": ["orders.#"], "since": "2026-11-26T10:00:00Z", "speed": "fast"}
            ).encode(),
        )
        assert (status, body["error"]) == (400, "invalid_replay")
        assert "until" in str(body["message"])
        status, body = _call(f"{api}/replays/r-nosuch")
        assert (status, body["error"]) == (404, "not_found")
        status, body = _call(f"{api}/replays/r-nosuch/diff", b"{}")
        assert (status, body["error"]) == (404, "not_found")
        assert process.interrupt() == 0, process.output
    finally:
        process.kill()


def test_json_api_needs_a_login_when_loopback_is_not_trusted(tmp_path: Path) -> None:
    process = Standalone(tmp_path, env={"MESHTAP_API_LOOPBACK_ANONYMOUS": "0"})
    try:
        process.wait_for(BANNER_END, timeout=120)
        status, body = _call(process.admin_url + "/api/traces")
        assert (status, body["error"]) == (403, "forbidden")
        assert "log in to the admin" in str(body["message"])
        assert process.interrupt() == 0, process.output
    finally:
        process.kill()


@pytest.mark.redis
@pytest.mark.clickhouse
def test_standalone_on_real_servers(
    tmp_path: Path, redis_server: RedisServer, clickhouse_server: ClickHouseServer
) -> None:
    """--store, --capture and --celery-broker point the parts at servers; the demo's traces land
    in the ClickHouse server and a replay runs through the Redis broker."""
    broker = redis_server.url.rsplit("/", 1)[0] + "/1"
    process = Standalone(
        tmp_path,
        "--demo",
        "--demo-rate",
        "4",
        "--store",
        redis_server.url,
        "--capture",
        clickhouse_server.url,
        "--celery-broker",
        broker,
    )
    try:
        process.wait_for(BANNER_END, timeout=120)
        assert f"Store:      {redis_server.url}" in process.output
        assert f"broker {broker}" in process.output
        process.wait_for(SHIPPED, timeout=60)
        start = time.time()
        since = datetime.fromtimestamp(start - 120, UTC).isoformat()
        until = datetime.fromtimestamp(start, UTC).isoformat()
        status, job = _call(
            process.admin_url + "/api/replays",
            json.dumps(
                {"topics": ["shop.orders.created"], "since": since, "until": until, "limit": 5,
                 "speed": "max"}
            ).encode(),
        )  # fmt: skip
        assert status == 202, job
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            status, job = _call(f"{process.admin_url}/api/replays/{job['replay_id']}")
            if job["status"] in ("completed", "failed"):
                break
            time.sleep(0.5)
        assert (job["status"], job["sent"]) == ("completed", 5), job
        assert process.interrupt() == 0, process.output
    finally:
        process.kill()
    with ClickHouse.open(clickhouse_server.url) as client:
        rows = client.execute(
            "SELECT count() FROM meshtap.spans WHERE service_name = %(service)s",
            {"service": "shipping-service"},
            purpose=Purpose.QUERY,
        )
    assert rows[0][0] >= 1


def test_ensure_admin_creates_once_and_takes_the_password_from_the_environment(
    tmp_path: Path,
) -> None:
    """Server mode's migrate step: created once (password printed), then left alone, and a
    password given in the environment is set."""

    def manage(*args: str, password: str = "") -> str:
        env = {**os.environ, "MESHTAP_VAR_DIR": str(tmp_path), "MESHTAP_ADMIN_PASSWORD": password}
        result = subprocess.run(
            [sys.executable, "manage.py", *args],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        return result.stdout

    manage("migrate", "--noinput", "-v0")
    created = manage("ensure_admin")
    assert re.search(r"Created admin user 'admin' with password '\S{12,}' \(shown once\)", created)
    assert "nothing to do" in manage("ensure_admin")
    assert "password from env" in manage("ensure_admin", password="from-env-123")
    assert "nothing to do" in manage("ensure_admin", password="from-env-123")
