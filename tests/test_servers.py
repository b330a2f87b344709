"""Tests of the test harness itself, against the real server binaries.

Every other test trusts these fixtures to hand it a real, empty server on its own port, to bring
it down and back up when asked, and to stop it from reaching services it did not declare. If the
harness lied about any of that, fault tests would pass for the wrong reason -- so it is tested
like product code: with the real clients the product uses (redis-py, clickhouse-driver, nats-py).
"""

from __future__ import annotations

import asyncio
import http.client
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import nats
import pytest
import redis
from clickhouse_driver import Client
from redis.backoff import NoBackoff
from redis.retry import Retry

from tests.guard import DEFAULT_SERVICE_PORTS
from tests.servers import (
    ClickHouseServer,
    NatsServer,
    RedisServer,
    ServerBinaryMissing,
    ServerStartError,
    server_for_port,
)

ROOT = Path(__file__).resolve().parent.parent


def _redis_client(server: RedisServer, timeout: float = 5.0) -> redis.Redis:
    # No retries: a test of a dead or frozen server wants the first error, not a backoff loop.
    return redis.Redis.from_url(server.url, socket_timeout=timeout, retry=Retry(NoBackoff(), 0))


def _process_gone(pid: int) -> bool:
    """True once ``pid`` has exited (a zombie nobody reaped counts as exited)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rpartition(")")[2].split()[0] == "Z"


def _wait_gone(pid: int, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not _process_gone(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


# --- Redis ------------------------------------------------------------------------------------


@pytest.mark.redis
def test_redis_server_answers_on_its_own_port(redis_server: RedisServer) -> None:
    assert redis_server.url == f"redis://127.0.0.1:{redis_server.port}/0"
    assert redis_server.port not in DEFAULT_SERVICE_PORTS
    with _redis_client(redis_server) as client:
        assert client.ping()
        client.set("greeting", "hello")
        assert client.get("greeting") == b"hello"
        assert client.config_get("appendfsync") == {"appendfsync": "always"}


@pytest.mark.redis
@pytest.mark.parametrize("turn", [1, 2])
def test_redis_server_is_flushed_before_each_test(redis_server: RedisServer, turn: int) -> None:
    # Whichever turn runs second sees what the first one left, unless the fixture flushed it.
    with _redis_client(redis_server) as client:
        assert client.dbsize() == 0
        client.set(f"left-behind-{turn}", "x")
        client.xadd("events", {"turn": turn})


@pytest.mark.redis
def test_redis_kill_and_restart_keep_acknowledged_writes(fresh_redis_server: RedisServer) -> None:
    port = fresh_redis_server.port
    with _redis_client(fresh_redis_server) as client:
        for i in range(50):
            client.xadd("orders", {"n": i})
        client.set("last", "49")

        fresh_redis_server.kill()
        assert not fresh_redis_server.running
        with pytest.raises(redis.ConnectionError):
            client.ping()

        fresh_redis_server.restart()
        assert fresh_redis_server.port == port
        assert client.xlen("orders") == 50
        assert client.get("last") == b"49"


@pytest.mark.redis
def test_redis_pause_times_out_clients_and_resume_recovers(
    fresh_redis_server: RedisServer,
) -> None:
    with _redis_client(fresh_redis_server, timeout=0.3) as client:
        client.set("k", "v")
        fresh_redis_server.pause()
        try:
            assert fresh_redis_server.paused
            with pytest.raises(redis.TimeoutError):
                client.get("k")
        finally:
            fresh_redis_server.resume()
        assert client.get("k") == b"v"


# --- ClickHouse -------------------------------------------------------------------------------


@pytest.mark.clickhouse
def test_clickhouse_server_is_18_16_over_the_native_protocol(
    clickhouse_server: ClickHouseServer,
) -> None:
    assert clickhouse_server.url == f"clickhouse://127.0.0.1:{clickhouse_server.port}/meshtap"
    with Client.from_url(clickhouse_server.url) as client:
        [(version, database)] = client.execute("SELECT version(), currentDatabase()")
    assert version.startswith("18.")
    assert database == "meshtap"

    conn = http.client.HTTPConnection(clickhouse_server.host, clickhouse_server.http_port)
    try:
        conn.request("GET", "/?query=SELECT%201")
        assert conn.getresponse().read() == b"1\n"
    finally:
        conn.close()


@pytest.mark.clickhouse
@pytest.mark.parametrize("turn", [1, 2])
def test_clickhouse_server_is_emptied_before_each_test(
    clickhouse_server: ClickHouseServer, turn: int
) -> None:
    with Client.from_url(clickhouse_server.url) as client:
        databases = {name for (name,) in client.execute("SELECT name FROM system.databases")}
        assert databases == {"default", "meshtap", "system"}
        tables = client.execute(
            "SELECT database, name FROM system.tables WHERE database IN ('default', 'meshtap')"
        )
        assert tables == []
        client.execute(f"CREATE DATABASE scratch_{turn}")
        client.execute(f"CREATE TABLE default.t{turn} (x UInt8) ENGINE = Memory")
        client.execute(f"CREATE TABLE meshtap.t{turn} (x UInt8) ENGINE = MergeTree() ORDER BY x")


@pytest.mark.clickhouse
def test_clickhouse_kill_and_restart_keep_inserted_rows(
    fresh_clickhouse_server: ClickHouseServer,
) -> None:
    ports = (fresh_clickhouse_server.port, fresh_clickhouse_server.http_port)
    with Client.from_url(fresh_clickhouse_server.url) as client:
        client.execute("CREATE TABLE events (n UInt64) ENGINE = MergeTree() ORDER BY n")
        client.execute("INSERT INTO events (n) VALUES", [(n,) for n in range(1000)])

    fresh_clickhouse_server.kill()
    fresh_clickhouse_server.restart()

    assert (fresh_clickhouse_server.port, fresh_clickhouse_server.http_port) == ports
    with Client.from_url(fresh_clickhouse_server.url) as client:
        assert client.execute("SELECT count(), sum(n) FROM events") == [(1000, 499500)]


# --- NATS -------------------------------------------------------------------------------------


@pytest.mark.nats
async def test_nats_server_round_trips_through_jetstream(nats_server: NatsServer) -> None:
    assert nats_server.url == f"nats://127.0.0.1:{nats_server.port}"
    nc = await nats.connect(nats_server.url, allow_reconnect=False)
    try:
        js = nc.jetstream()
        await js.add_stream(name="ORDERS", subjects=["orders.>"])
        ack = await js.publish("orders.eu.created", b'{"id": 1}')
        assert ack.stream == "ORDERS"
        stored = await js.get_msg("ORDERS", ack.seq)
        assert stored.subject == "orders.eu.created"
        assert stored.data == b'{"id": 1}'
    finally:
        await nc.close()


@pytest.mark.nats
@pytest.mark.parametrize("turn", [1, 2])
async def test_nats_streams_are_deleted_before_each_test(
    nats_server: NatsServer, turn: int
) -> None:
    nc = await nats.connect(nats_server.url, allow_reconnect=False)
    try:
        js = nc.jetstream()
        assert await js.streams_info() == []
        await js.add_stream(name=f"LEFT_BEHIND_{turn}", subjects=[f"left.{turn}"])
        kv = await js.create_key_value(bucket=f"kv_{turn}")
        await kv.put("k", b"v")
    finally:
        await nc.close()


@pytest.mark.nats
async def test_nats_restart_keeps_file_backed_streams(fresh_nats_server: NatsServer) -> None:
    nc = await nats.connect(fresh_nats_server.url, allow_reconnect=False)
    try:
        js = nc.jetstream()
        await js.add_stream(name="AUDIT", subjects=["audit"])
        ack = await js.publish("audit", b"kept")
    finally:
        await nc.close()

    fresh_nats_server.restart()

    nc = await nats.connect(fresh_nats_server.url, allow_reconnect=False)
    try:
        stored = await nc.jetstream().get_msg("AUDIT", ack.seq)
        assert stored.data == b"kept"
    finally:
        await nc.close()


# --- the browser ------------------------------------------------------------------------------


@pytest.mark.browser
def test_chromium_executable_is_an_installed_chromium(chromium_executable: str) -> None:
    assert Path(chromium_executable).name == "chromium"
    assert os.access(chromium_executable, os.X_OK)


# --- the harness's own behaviour ----------------------------------------------------------------


def test_servers_take_distinct_free_ports_and_give_them_back(tmp_path: Path) -> None:
    with (
        RedisServer(tmp_path / "a") as a,
        NatsServer(tmp_path / "b") as b,
        ClickHouseServer(tmp_path / "c") as c,
    ):
        ports = [a.port, b.port, c.port, c.http_port]
        assert len(set(ports)) == 4
        assert not set(ports) & set(DEFAULT_SERVICE_PORTS)
        assert [server_for_port(p) for p in ports] == [a, b, c, c]
    assert [server_for_port(p) for p in ports] == [None] * 4
    assert [a.running, b.running, c.running] == [False, False, False]
    for port in ports:  # the processes are gone, so the ports can be bound again
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", port))


def test_missing_binary_names_the_debian_package() -> None:
    class NotInstalledRedis(RedisServer):
        binary_name = "meshtap-no-such-redis-server"

    server = NotInstalledRedis()
    try:
        with pytest.raises(ServerBinaryMissing) as info:
            server.start()
    finally:
        server.close()
    message = str(info.value)
    assert "apt-get install -y --no-install-recommends redis-server" in message
    assert "make services" in message


def test_a_server_that_fails_to_start_reports_its_log() -> None:
    class MisconfiguredRedis(RedisServer):
        def _command(self, binary: str) -> list[str]:
            return [*super()._command(binary), "--no-such-directive", "1"]

    server = MisconfiguredRedis()
    try:
        with pytest.raises(ServerStartError, match="no-such-directive") as info:
            server.start()
    finally:
        server.close()
    assert "exited with status" in str(info.value)
    assert "last 40 lines of" in str(info.value)


def _run_python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_servers_left_running_are_reaped_when_the_process_exits() -> None:
    done = _run_python(
        "from tests.servers import RedisServer\n"
        "server = RedisServer().start()\n"
        "print(server.pid, server.data_dir, flush=True)\n"  # and exit without close()
    )
    assert done.returncode == 0, done.stderr
    pid, data_dir = done.stdout.split()
    assert _wait_gone(int(pid), timeout=1.0)
    assert not Path(data_dir).exists()


def test_servers_die_with_a_test_run_that_is_killed() -> None:
    done = _run_python(
        "import os, signal\n"
        "from tests.servers import RedisServer\n"
        "server = RedisServer().start()\n"
        "print(server.pid, server.data_dir, flush=True)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"  # no atexit, no finalizers
    )
    assert done.returncode == -9, done.stderr
    pid, data_dir = done.stdout.split()
    try:
        assert _wait_gone(int(pid)), f"redis-server {pid} outlived the killed test run"
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


async def test_the_guard_leaves_other_loopback_traffic_alone() -> None:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(await reader.readline())
        await writer.drain()
        writer.close()
        await writer.wait_closed()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"ping\n")
        assert await reader.readline() == b"ping\n"
        writer.close()
        await writer.wait_closed()
        with socket.create_connection(("127.0.0.1", port)) as sock:
            assert sock.getpeername()[1] == port
    finally:
        server.close()
        await server.wait_closed()


# --- meta-tests: run a small suite through the real conftest and read its verdicts ----------------

_META_TESTS = """
import asyncio
import socket

import pytest

from tests import servers

PORTS = {}


def test_fixture_without_its_marker(redis_server):
    pass


def test_fresh_fixture_without_its_marker(fresh_nats_server):
    pass


@pytest.mark.redis
def test_fixture_of_another_kind(clickhouse_server):
    pass


def test_browser_fixture_without_its_marker(chromium_executable):
    pass


@pytest.mark.redis
def test_declared_service(redis_server):
    PORTS["redis"] = redis_server.port
    with socket.create_connection((redis_server.host, redis_server.port)):
        pass


@pytest.mark.nats
def test_undeclared_harness_server():
    socket.create_connection(("127.0.0.1", PORTS["redis"]))


def test_undeclared_harness_server_connect_ex():
    with socket.socket() as sock:
        sock.connect_ex(("127.0.0.1", PORTS["redis"]))


@pytest.mark.nats
def test_machines_own_nats():
    socket.create_connection(("127.0.0.1", 4222))


def test_machines_own_clickhouse_error_swallowed():
    try:
        socket.create_connection(("localhost", 8123))
    except Exception:
        pass


@pytest.mark.redis
async def test_machines_own_redis_from_asyncio():
    await asyncio.open_connection("127.0.0.1", 6379)


@pytest.mark.nats
def test_missing_binary(monkeypatch, request):
    monkeypatch.setattr(servers.NatsServer, "binary_name", "meshtap-no-such-nats-server")
    request.getfixturevalue("fresh_nats_server")
"""


def test_the_rules_fail_tests_loudly(pytester: pytest.Pytester) -> None:
    harness = pytester.mkpydir("tests")
    for name in ("__init__.py", "conftest.py", "servers.py", "guard.py"):
        shutil.copy(ROOT / "tests" / name, harness / name)
    shutil.copy(ROOT / "pyproject.toml", pytester.path / "pyproject.toml")  # same pytest config
    (harness / "test_meta.py").write_text(_META_TESTS)

    result = pytester.runpytest_subprocess("tests/test_meta.py", "-p", "no:cacheprovider", "-rA")

    result.assert_outcomes(passed=1, failed=6, errors=4)
    result.stdout.fnmatch_lines_random(
        [
            "ERROR tests/test_meta.py::test_fixture_without_its_marker *",
            "ERROR tests/test_meta.py::test_fresh_fixture_without_its_marker *",
            "ERROR tests/test_meta.py::test_fixture_of_another_kind *",
            "ERROR tests/test_meta.py::test_browser_fixture_without_its_marker *",
            "PASSED tests/test_meta.py::test_declared_service",
            "FAILED tests/test_meta.py::test_undeclared_harness_server *",
            "FAILED tests/test_meta.py::test_undeclared_harness_server_connect_ex *",
            "FAILED tests/test_meta.py::test_machines_own_nats *",
            "FAILED tests/test_meta.py::test_machines_own_clickhouse_error_swallowed *",
            "FAILED tests/test_meta.py::test_machines_own_redis_from_asyncio *",
            "FAILED tests/test_meta.py::test_missing_binary *",
        ]
    )
    out = result.stdout.str()
    for expected in [
        "test uses redis_server but is not marked @pytest.mark.redis",
        "test uses fresh_nats_server but is not marked @pytest.mark.nats",
        "test uses clickhouse_server but is not marked @pytest.mark.clickhouse",
        "test uses chromium_executable but is not marked @pytest.mark.browser",
        "the redis server the test harness started, but the test is not marked @pytest.mark.redis",
        "127.0.0.1:4222, the default NATS port",
        "127.0.0.1:8123, the default ClickHouse (HTTP) port",
        "the error was caught inside the test",
        "127.0.0.1:6379, the default Redis port",
        "meshtap-no-such-nats-server is not installed",
        "apt-get install -y --no-install-recommends nats-server",
    ]:
        assert expected in out
    assert "skipped" not in out
