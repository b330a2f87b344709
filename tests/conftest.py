"""Fixtures for real services, and the rules that keep tests honest about using them.

Each service has a marker (registered in pyproject.toml) and two fixtures:

- ``redis_server`` / ``clickhouse_server`` / ``nats_server``: one server per test session,
  emptied before each test that takes it (starting a server per test would cost seconds).
- ``fresh_redis_server`` / ``fresh_clickhouse_server`` / ``fresh_nats_server``: a server of the
  test's own, for fault tests that kill, pause or restart it; gone after the test.

``django_stack`` (marker ``redis``): the Django + Celery stack as real processes (worker, beat,
web admin, manage.py) with the session's redis-server as broker, see tests/stack.py.

``chromium_executable`` (marker ``browser``) is the path of Debian's chromium for Playwright.

Rules (DESIGN.md "Tests", CONVENTIONS.md 9):

- A test that takes a fixture must carry its marker, else the fixture fails the test.
- A test that connects to a service it did not declare fails (``tests/guard.py``).
- A missing server binary fails the test with the package to install -- tests never skip.
"""

from __future__ import annotations

import os
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import pytest

from tests.guard import SocketGuard
from tests.servers import (
    ClickHouseServer,
    NatsServer,
    RedisServer,
    Server,
    ServerBinaryMissing,
    ServerStartError,
    find_binary,
)

if TYPE_CHECKING:
    from tests.stack import DjangoStack

# pytester runs the harness's meta-tests (a fixture without its marker, the socket guard).
pytest_plugins = ["pytester"]

SERVICE_MARKERS = ("redis", "clickhouse", "nats")

_guard = SocketGuard()

S = TypeVar("S", bound=Server)


# --- the socket guard, wired to the test lifecycle ----------------------------------------------


def pytest_configure(config: pytest.Config) -> None:
    _guard.install()


def pytest_unconfigure(config: pytest.Config) -> None:
    _guard.uninstall()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(
    item: pytest.Item, nextitem: pytest.Item | None
) -> Generator[None, object, object]:
    declared = {m.name for m in item.iter_markers()} & set(SERVICE_MARKERS)
    _guard.begin_test(item.nodeid, declared)
    try:
        return (yield)
    finally:
        _guard.end_test()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    violations = _guard.take_violations()
    if violations and report.passed:
        # The code under test caught UndeclaredServiceError and went on: fail it all the same.
        report.outcome = "failed"
        report.longrepr = "\n".join(
            [*violations, "(the error was caught inside the test, which does not make it right)"]
        )
    return report


# --- helpers ----------------------------------------------------------------------------------


def _require_marker(request: pytest.FixtureRequest, kind: str, fixture: str) -> None:
    if request.node.get_closest_marker(kind) is None:
        pytest.fail(
            f"test uses {fixture} but is not marked @pytest.mark.{kind}; add "
            f"@pytest.mark.{kind} so runs can select it (-m {kind}) and the socket guard "
            f"lets it reach the server",
            pytrace=False,
        )


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1")


def _missing_binary(error: ServerBinaryMissing) -> str:
    if _in_ci():
        return f"{error} CI is set, so this is a failure, never a skip."
    return f"{error} Tests never skip a service they need."


def _serve(server: S) -> Iterator[S]:
    """Start ``server`` for a fixture and always close it, whatever the test did to it."""
    try:
        problem = None
        try:
            server.start()
        except ServerBinaryMissing as e:
            problem = _missing_binary(e)
        except ServerStartError as e:
            problem = str(e)
        if problem is not None:  # failed outside the except block: no chained traceback
            pytest.fail(problem, pytrace=False)
        yield server
    finally:
        server.close()


def _shared(request: pytest.FixtureRequest, kind: str, fixture: str) -> Server:
    _require_marker(request, kind, fixture)
    # Looked up only now, so an unmarked test fails without starting anything.
    server: Server = request.getfixturevalue(f"_{kind}_session")
    server.ensure_running()
    server.reset()
    return server


# --- one server per session, emptied before each test ----------------------------------------


@pytest.fixture(scope="session")
def _redis_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    yield from _serve(RedisServer(tmp_path_factory.mktemp("redis")))


@pytest.fixture(scope="session")
def _clickhouse_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClickHouseServer]:
    yield from _serve(ClickHouseServer(tmp_path_factory.mktemp("clickhouse")))


@pytest.fixture(scope="session")
def _nats_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    yield from _serve(NatsServer(tmp_path_factory.mktemp("nats")))


@pytest.fixture
def redis_server(request: pytest.FixtureRequest) -> RedisServer:
    """The session's redis-server, FLUSHALLed before the test. Do not kill it: use
    ``fresh_redis_server`` for that."""
    server = _shared(request, "redis", "redis_server")
    assert isinstance(server, RedisServer)
    return server


@pytest.fixture
def clickhouse_server(request: pytest.FixtureRequest) -> ClickHouseServer:
    """The session's clickhouse-server with only an empty ``meshtap`` database besides
    ``system`` and an empty ``default``."""
    server = _shared(request, "clickhouse", "clickhouse_server")
    assert isinstance(server, ClickHouseServer)
    return server


@pytest.fixture
def nats_server(request: pytest.FixtureRequest) -> NatsServer:
    """The session's nats-server (JetStream), with every stream deleted before the test."""
    server = _shared(request, "nats", "nats_server")
    assert isinstance(server, NatsServer)
    return server


# --- a server of the test's own, to kill, pause and restart -----------------------------------


@pytest.fixture
def fresh_redis_server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RedisServer]:
    _require_marker(request, "redis", "fresh_redis_server")
    yield from _serve(RedisServer(tmp_path_factory.mktemp("fresh-redis")))


@pytest.fixture
def fresh_clickhouse_server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ClickHouseServer]:
    _require_marker(request, "clickhouse", "fresh_clickhouse_server")
    yield from _serve(ClickHouseServer(tmp_path_factory.mktemp("fresh-clickhouse")))


@pytest.fixture
def fresh_nats_server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[NatsServer]:
    _require_marker(request, "nats", "fresh_nats_server")
    yield from _serve(NatsServer(tmp_path_factory.mktemp("fresh-nats")))


# --- the browser ------------------------------------------------------------------------------


@pytest.fixture
def chromium_executable(request: pytest.FixtureRequest) -> str:
    """Debian's chromium, for Playwright's ``chromium.launch(executable_path=...)``.

    Playwright's own browser download is not used: CI installs the Debian package instead.
    """
    _require_marker(request, "browser", "chromium_executable")
    try:
        return find_binary("chromium", "chromium")
    except ServerBinaryMissing as e:
        problem = _missing_binary(e)
    pytest.fail(problem, pytrace=False)


# --- the Django + Celery stack ------------------------------------------------------------------


@pytest.fixture
def django_stack(redis_server: RedisServer, tmp_path: Path) -> Iterator[DjangoStack]:
    """manage.py, Celery worker and beat, and the web admin as real processes on a SQLite file
    in the test's directory, with the session's redis-server as broker and result backend
    (marker ``redis``). Every process it started is stopped after the test."""
    from tests.stack import DjangoStack  # here: the harness meta-tests copy this file alone

    stack = DjangoStack(tmp_path, broker_url=redis_server.url.rsplit("/", 1)[0] + "/1")
    try:
        yield stack
    finally:
        stack.close()
