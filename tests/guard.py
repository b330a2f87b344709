"""The socket guard: a test talks only to the services it declares with a marker.

Why: a test that reaches a service it did not declare passes on a laptop where Redis happens to
run on 6379 and fails -- or, worse, writes into somebody's real data -- everywhere else. And an
undeclared dependency on a test server hides which tests a broken Redis would break. So every
``connect``/``connect_ex`` on a Python socket is checked, which covers blocking clients
(redis-py, clickhouse-driver) and asyncio ones (redis.asyncio, nats-py, aiohttp) alike:

- a loopback port of a server the harness started (``tests.servers``) is allowed only if the
  running test carries that server's marker (``@pytest.mark.redis`` ...);
- the machine's default service ports on loopback (6379, 4222, 9000, 8123, 5432, 5672) are never
  allowed: those are the box's own services, not the test's.

Everything else (a test's own HTTP server on a loopback port, asyncio's internals) passes
untouched after one dict lookup. Sockets made in C (grpcio's core) are not seen.

The violation is raised at the ``connect`` *and* recorded: ``conftest.py`` fails the test even
if the code under test caught the error and carried on (a reconnect loop, a ``try/except``).
"""

from __future__ import annotations

import ipaddress
import socket
import threading
from collections.abc import Callable, Iterable
from typing import Any

from tests.servers import is_harness_traffic, server_for_port

__all__ = ["DEFAULT_SERVICE_PORTS", "SocketGuard", "UndeclaredServiceError"]

# port -> (what runs there by default, the marker a test would use for its own such server)
DEFAULT_SERVICE_PORTS: dict[int, tuple[str, str | None]] = {
    6379: ("Redis", "redis"),
    4222: ("NATS", "nats"),
    9000: ("ClickHouse (native)", "clickhouse"),
    8123: ("ClickHouse (HTTP)", "clickhouse"),
    5432: ("PostgreSQL", None),
    5672: ("RabbitMQ (AMQP)", None),
}


class UndeclaredServiceError(Exception):
    """A test connected to a service it did not declare (see the module docstring).

    Deliberately not an ``OSError``: client libraries treat those as a flaky network and retry,
    which would turn a wrong test into a slow one.
    """


def _is_loopback(host: object) -> bool:
    if isinstance(host, bytes):
        host = host.decode(errors="replace")
    if not isinstance(host, str):
        return False
    host = host.split("%", 1)[0]  # IPv6 scope id
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        name = host.lower().rstrip(".")
        return name == "localhost" or name.endswith(".localhost")
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback or ip.is_unspecified  # connecting to 0.0.0.0 reaches this host


class SocketGuard:
    """Patches ``socket.socket.connect``/``connect_ex``; pytest hooks tell it which test runs.

    Between tests (collection, session teardown) harness servers of any kind are allowed and
    only the default service ports are refused.
    """

    def __init__(self) -> None:
        self._test: str | None = None
        self._declared: frozenset[str] | None = None
        self._violations: list[str] = []
        self._lock = threading.Lock()
        self._saved: dict[str, Any] | None = None

    # -- installation

    def install(self) -> None:
        if self._saved is not None:
            return
        cls = socket.socket
        self._saved = {name: cls.__dict__.get(name) for name in ("connect", "connect_ex")}
        original_connect: Callable[[socket.socket, Any], None] = cls.connect
        original_connect_ex: Callable[[socket.socket, Any], int] = cls.connect_ex
        check = self._check

        def connect(sock: socket.socket, address: Any) -> None:
            __tracebackhide__ = True  # point pytest's traceback at the caller, not at us
            check(sock, address)
            return original_connect(sock, address)

        def connect_ex(sock: socket.socket, address: Any) -> int:
            __tracebackhide__ = True
            check(sock, address)
            return original_connect_ex(sock, address)

        cls.connect = connect  # type: ignore[method-assign,assignment]
        cls.connect_ex = connect_ex  # type: ignore[method-assign,assignment]

    def uninstall(self) -> None:
        if self._saved is None:
            return
        for name, original in self._saved.items():
            if original is None:
                delattr(socket.socket, name)  # back to the inherited C method
            else:
                setattr(socket.socket, name, original)
        self._saved = None

    # -- per test

    def begin_test(self, test: str, declared: Iterable[str]) -> None:
        with self._lock:
            self._test = test
            self._declared = frozenset(declared)
            self._violations.clear()

    def end_test(self) -> None:
        with self._lock:
            self._test = None
            self._declared = None
            self._violations.clear()

    def take_violations(self) -> list[str]:
        """The violations since the last call (each test phase takes its own)."""
        with self._lock:
            taken = list(self._violations)
            self._violations.clear()
        return taken

    # -- the check, on every connect

    def _check(self, sock: socket.socket, address: Any) -> None:
        __tracebackhide__ = True
        if type(address) is not tuple or len(address) < 2:
            return  # AF_UNIX path or something exotic
        port = address[1]
        server = server_for_port(port)
        default = DEFAULT_SERVICE_PORTS.get(port)
        if server is None and default is None:
            return  # the common case: one dict lookup and out
        host = address[0]
        if not _is_loopback(host) or is_harness_traffic():
            return
        who = f"{self._test} connected" if self._test else "A connection was made"
        if server is not None:
            declared = self._declared
            if declared is None or server.kind in declared:
                return
            message = (
                f"{who} to {host}:{port}, the {server.kind} server the test harness started, "
                f"but the test is not marked @pytest.mark.{server.kind}. Add "
                f"@pytest.mark.{server.kind} and take the server from the "
                f"`{server.kind}_server` fixture."
            )
        else:
            assert default is not None
            service, marker = default
            message = (
                f"{who} to {host}:{port}, the default {service} port: that is this machine's "
                f"own service, which tests must never use."
            )
            if marker is not None:
                message += (
                    f" Use the `{marker}_server` fixture's .url instead and mark the test "
                    f"@pytest.mark.{marker}."
                )
            else:
                message += " Start a server of your own for the test instead."
        with self._lock:
            if self._test is not None:
                self._violations.append(message)
        sock.close()  # the caller gets no socket to leak (and no ResourceWarning)
        raise UndeclaredServiceError(message)
