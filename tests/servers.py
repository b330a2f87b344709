"""Real service processes for tests and benchmarks: redis-server, clickhouse-server, nats-server.

Why real servers: Meshtap's promises (at-least-once delivery, reclaiming a crashed instance's
events, spooling while ClickHouse is down) only mean something against the real thing, and fault
tests must be able to kill, pause and restart it. So each server here is a child process of the
test run, listening on free loopback ports, with all of its state in one directory. A test can
break it without touching anything else on the machine -- in particular never the machine's own
Redis on 6379 or NATS on 4222.

This module does not import pytest, so benchmarks in ``bench/`` can start the same servers. The
pytest wiring (markers, fixtures) lives in ``tests/conftest.py``; the socket guard that keeps tests
away from services they did not declare lives in ``tests/guard.py`` and asks this module which
ports belong to which server (:func:`server_for_port`).

Usage::

    with RedisServer() as redis_server:          # temp dir, free port, removed on exit
        client = redis.Redis.from_url(redis_server.url)
        redis_server.kill()                       # crash it
        redis_server.restart()                    # same port, same data dir (AOF replayed)

Errors::

    ServerError                 anything that goes wrong with a test server
    ├── ServerBinaryMissing     the binary is not installed; the message names the Debian package
    └── ServerStartError        it did not become ready; the message carries the tail of its log
"""

from __future__ import annotations

import atexit
import contextlib
import contextvars
import ctypes
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import ClassVar, Self
from urllib.parse import quote

__all__ = [
    "ClickHouseServer",
    "NatsServer",
    "RedisServer",
    "Server",
    "ServerBinaryMissing",
    "ServerError",
    "ServerStartError",
    "find_binary",
    "harness_traffic",
    "is_harness_traffic",
    "server_for_port",
]

LOOPBACK = "127.0.0.1"

# Debian puts some server binaries in /usr/sbin, which is not on a normal user's PATH.
_EXTRA_BINARY_DIRS = ("/usr/sbin", "/usr/local/sbin", "/usr/bin", "/usr/local/bin")


class ServerError(Exception):
    """Something went wrong with a test server (base of the harness's errors)."""


class ServerBinaryMissing(ServerError):
    """The server binary is not installed. The message says which Debian package provides it."""


class ServerStartError(ServerError):
    """The server exited or did not become ready in time. The message ends with its log tail."""

    def __init__(self, message: str, *, port_in_use: bool = False) -> None:
        super().__init__(message)
        self.port_in_use = port_in_use


# --- registry: which port belongs to which server --------------------------------------------

# port -> the open server that owns it. The socket guard reads this on every connect, so it is a
# plain dict (a lookup is a few tens of nanoseconds).
_ports_in_use: dict[int, Server] = {}
# Every server not yet closed, so the interpreter's exit can reap what a crashed test left behind.
_open_servers: set[Server] = set()
_registry_lock = threading.Lock()

_harness_traffic: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "meshtap_harness_traffic", default=False
)


def server_for_port(port: int) -> Server | None:
    """The open test server listening on ``port`` (on loopback), if any."""
    return _ports_in_use.get(port)


def is_harness_traffic() -> bool:
    """True while the harness itself talks to a server (readiness probes, resets).

    The socket guard lets this traffic through: the harness may probe a server that the test
    which started it has not declared (e.g. the harness's own tests of the guard).
    """
    return _harness_traffic.get()


@contextlib.contextmanager
def harness_traffic() -> Iterator[None]:
    """Mark connections made in this block as the harness's own (see :func:`is_harness_traffic`)."""
    token = _harness_traffic.set(True)
    try:
        yield
    finally:
        _harness_traffic.reset(token)


def find_binary(name: str, debian_package: str) -> str:
    """The path of the ``name`` executable, looked for on PATH and in Debian's binary dirs.

    Raises :class:`ServerBinaryMissing` saying which package to install.
    """
    path = os.environ.get("PATH", os.defpath) + os.pathsep + os.pathsep.join(_EXTRA_BINARY_DIRS)
    found = shutil.which(name, path=path)
    if found is None:
        raise ServerBinaryMissing(
            f"{name} is not installed (looked on PATH and in {', '.join(_EXTRA_BINARY_DIRS)}). "
            f"Install the Debian package: "
            f"`sudo apt-get install -y --no-install-recommends {debian_package}`, "
            f"or run `make services`."
        )
    return found


def _pick_free_ports(count: int) -> tuple[int, ...]:
    """Ask the kernel for ``count`` distinct free loopback ports.

    All probe sockets stay bound until every port is picked, so the ports are distinct; ports
    already handed to another server in this process are skipped. Another process can still take
    a port before the server binds it, so :meth:`Server.start` retries on "address in use".
    """
    probes: list[socket.socket] = []
    ports: list[int] = []
    try:
        while len(ports) < count:
            probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            probes.append(probe)
            probe.bind((LOOPBACK, 0))
            port = probe.getsockname()[1]
            if port not in _ports_in_use:
                ports.append(port)
    finally:
        for probe in probes:
            probe.close()
    return tuple(ports)


def _die_with_parent_hook() -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the kernel SIGKILL the server when the test run dies.

    ``atexit`` covers normal exits and Ctrl-C; this covers a test run that is itself SIGKILLed
    (CI timeout, OOM killer), which would otherwise leave servers running on the box. Linux
    delivers the signal when the *thread* that forked exits, so it is only used from the main
    thread -- a server restarted from a worker thread must not die with that thread.
    """
    if threading.current_thread() is not threading.main_thread():
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError):  # not Linux
        return None
    pr_set_pdeathsig = 1

    def hook() -> None:
        prctl(pr_set_pdeathsig, signal.SIGKILL)

    return hook


# --- the servers --------------------------------------------------------------------------------


class Server:
    """One server process on free loopback ports, with its state in one directory.

    Subclasses say which binary to run (:attr:`binary_name`), how (:meth:`_command`), how to tell
    it is ready (:meth:`_ready`) and how to empty it (:meth:`reset`). The lifecycle is shared:
    ports are picked on the first :meth:`start` and kept for its whole life, so :meth:`restart`
    comes back on the same address with the same data directory, the way a crashed production
    server would.
    """

    kind: ClassVar[str]
    """The pytest marker and fixture prefix for this service (``redis``, ``clickhouse``, ...)."""
    binary_name: ClassVar[str]
    debian_package: ClassVar[str]
    startup_timeout: ClassVar[float] = 15.0
    _port_count: ClassVar[int] = 1

    def __init__(
        self,
        data_dir: str | os.PathLike[str] | None = None,
        *,
        startup_timeout: float | None = None,
    ) -> None:
        """Prepare (but do not start) a server keeping its files in ``data_dir``.

        Without ``data_dir`` the server makes a temporary directory and removes it on
        :meth:`close`; a given directory is left in place so a failed test's logs can be read.
        """
        if data_dir is None:
            self._dir = Path(tempfile.mkdtemp(prefix=f"meshtap-{self.kind}-"))
            self._owns_dir = True
        else:
            self._dir = Path(data_dir)
            self._dir.mkdir(parents=True, exist_ok=True)
            self._owns_dir = False
        self._startup_timeout = self.startup_timeout if startup_timeout is None else startup_timeout
        self._ports: tuple[int, ...] = ()
        self._proc: subprocess.Popen[bytes] | None = None
        self._paused = False
        self._closed = False
        with _registry_lock:
            _open_servers.add(self)

    # -- addresses

    @property
    def host(self) -> str:
        return LOOPBACK

    @property
    def port(self) -> int:
        """The main (client protocol) port."""
        return self._require_ports()[0]

    @property
    def url(self) -> str:
        raise NotImplementedError

    @property
    def data_dir(self) -> Path:
        return self._dir

    @property
    def log_path(self) -> Path:
        """The server's stdout and stderr, appended to across restarts."""
        return self._dir / "server.log"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        """The process is alive (possibly paused)."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def paused(self) -> bool:
        return self._paused and self.running

    # -- lifecycle

    def start(self) -> Self:
        """Start the server and wait until it answers; return ``self``.

        Raises :class:`ServerBinaryMissing` if the binary is not installed and
        :class:`ServerStartError` (with the log tail) if it does not become ready in time.
        """
        if self._closed:
            raise ServerError(f"{self!r} is closed; create a new server instead")
        if self.running:
            return self
        binary = self._locate_binary()
        if self._ports:  # a restart: keep the address clients already know
            self._launch(binary)
            return self
        attempts = 3
        for attempt in range(1, attempts + 1):
            self._claim_ports(_pick_free_ports(self._port_count))
            try:
                self._launch(binary)
                return self
            except ServerStartError as e:
                self._release_ports()
                if e.port_in_use and attempt < attempts:
                    continue  # another process took a port between picking and binding
                raise
            except BaseException:
                self.kill()
                self._release_ports()
                raise
        raise AssertionError("unreachable")

    def stop(self, timeout: float = 15.0) -> None:
        """Shut down gracefully (SIGTERM), SIGKILL if it takes longer than ``timeout`` seconds.

        Use this to test a clean restart; use :meth:`kill` to test a crash.
        """
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            if self._paused:  # a stopped process acts on SIGTERM only once continued
                proc.send_signal(signal.SIGCONT)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        else:
            proc.wait()
        self._proc = None
        self._paused = False

    def kill(self) -> None:
        """Crash the server (SIGKILL): nothing is flushed, nothing is said goodbye to."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        self._proc = None
        self._paused = False

    def pause(self) -> None:
        """Freeze the process (SIGSTOP), as a network partition looks to clients.

        The kernel keeps accepting connections into the listen backlog, so clients connect and
        then time out waiting for answers -- exactly what a partition does.
        """
        proc = self._require_running()
        proc.send_signal(signal.SIGSTOP)
        self._paused = True
        _wait_for_process_state(proc.pid, "T", timeout=2.0)

    def resume(self) -> None:
        """Undo :meth:`pause` (SIGCONT)."""
        proc = self._require_running()
        proc.send_signal(signal.SIGCONT)
        self._paused = False

    def restart(self) -> Self:
        """Stop the server if it still runs, then start it on the same ports and data dir.

        Data survives where the server persists it: Redis replays its AOF, ClickHouse keeps its
        parts, NATS JetStream keeps file-backed streams.
        """
        if self.running:
            self.stop()
        return self.start()

    def ensure_running(self) -> None:
        """Bring back a shared server that a previous test left paused or dead."""
        if self.paused:
            self.resume()
        if not self.running:
            self.start()

    def reset(self) -> None:
        """Empty the server so the next test starts from a clean state."""
        raise NotImplementedError

    def close(self) -> None:
        """Kill the process, give its ports back and remove a temp dir this object made.

        Killing rather than stopping: the data is thrown away with the server, so a graceful
        shutdown would only cost time (ClickHouse 18.16 takes ~1.5 s to stop).
        """
        if self._closed:
            return
        self.kill()
        self._release_ports()
        self._closed = True
        with _registry_lock:
            _open_servers.discard(self)
        if self._owns_dir:
            shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        where = self.url if self._ports else "no port yet"
        state = "paused" if self.paused else "running" if self.running else "not running"
        return f"<{type(self).__name__} {where} pid={self.pid} {state} dir={self._dir}>"

    def log_tail(self, lines: int = 40) -> str:
        """The last ``lines`` lines of each of the server's logs, for error messages."""
        parts = []
        for path in self._log_files():
            try:
                with path.open("rb") as f:
                    f.seek(0, os.SEEK_END)
                    f.seek(max(0, f.tell() - 64 * 1024))
                    text = f.read().decode("utf-8", "replace")
            except FileNotFoundError:
                continue
            tail = "\n".join(text.splitlines()[-lines:])
            parts.append(f"--- last {lines} lines of {path} ---\n{tail}")
        return "\n".join(parts) if parts else "(the server wrote no log)"

    # -- for subclasses

    def _command(self, binary: str) -> list[str]:
        raise NotImplementedError

    def _prepare(self) -> None:
        """Write config files for the current ports (called before every launch)."""

    def _ready(self) -> bool:
        """Probe the server once; True when it serves requests. May raise OSError."""
        raise NotImplementedError

    def _on_ready(self) -> None:
        """Runs once the server is ready, on every (re)start."""

    def _log_files(self) -> list[Path]:
        return [self.log_path]

    # -- internals

    def _locate_binary(self) -> str:
        return find_binary(self.binary_name, self.debian_package)

    def _launch(self, binary: str) -> None:
        self._prepare()
        with self.log_path.open("ab") as log:
            log_start = log.tell()
            # A new session: Ctrl-C in the terminal reaches pytest, which cleans up in order,
            # rather than every server at once.
            self._proc = subprocess.Popen(
                self._command(binary),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self._dir,
                start_new_session=True,
                preexec_fn=_die_with_parent_hook(),
            )
        self._paused = False
        self._wait_ready(log_start)
        with harness_traffic():
            self._on_ready()

    def _wait_ready(self, log_start: int) -> None:
        proc = self._proc
        assert proc is not None
        deadline = time.monotonic() + self._startup_timeout
        delay = 0.005
        while True:
            status = proc.poll()
            if status is not None:
                self._proc = None
                raise ServerStartError(
                    f"{self.binary_name} exited with status {status} while starting "
                    f"({self._command_line()}).\n{self.log_tail()}",
                    port_in_use=self._log_mentions_port_in_use(log_start),
                )
            try:
                with harness_traffic():
                    if self._ready():
                        return
            except (OSError, http.client.HTTPException):
                pass  # not listening yet
            if time.monotonic() >= deadline:
                self.kill()
                raise ServerStartError(
                    f"{self.binary_name} did not become ready within {self._startup_timeout:g} s "
                    f"({self._command_line()}). Raise startup_timeout if this machine is slow.\n"
                    f"{self.log_tail()}"
                )
            time.sleep(delay)
            delay = min(delay * 2, 0.1)

    def _log_mentions_port_in_use(self, log_start: int) -> bool:
        try:
            with self.log_path.open("rb") as f:
                f.seek(log_start)
                text = f.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return False
        return "address already in use" in text.lower()

    def _command_line(self) -> str:
        return " ".join(self._command(self.binary_name))

    def _require_ports(self) -> tuple[int, ...]:
        if not self._ports:
            raise ServerError(f"{type(self).__name__} has no port until start() is called")
        return self._ports

    def _require_running(self) -> subprocess.Popen[bytes]:
        if self._proc is None or self._proc.poll() is not None:
            raise ServerError(f"{self!r} is not running")
        return self._proc

    def _claim_ports(self, ports: tuple[int, ...]) -> None:
        with _registry_lock:
            for port in ports:
                _ports_in_use[port] = self
        self._ports = ports

    def _release_ports(self) -> None:
        with _registry_lock:
            for port in self._ports:
                if _ports_in_use.get(port) is self:
                    del _ports_in_use[port]
        self._ports = ()


def _wait_for_process_state(pid: int, state: str, timeout: float) -> None:
    """Wait until /proc says the process is in ``state`` (SIGSTOP is delivered asynchronously)."""
    stat = Path(f"/proc/{pid}/stat")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            # The state is the field after the parenthesised command name.
            if stat.read_text().rpartition(")")[2].split()[0] == state:
                return
        except (FileNotFoundError, IndexError):
            return  # no /proc (not Linux) or the process is gone: nothing to wait for
        time.sleep(0.002)


# --- Redis ------------------------------------------------------------------------------------


def _resp_command(*args: str) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg.encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


def _redis_simple_replies(host: str, port: int, commands: list[tuple[str, ...]]) -> list[bytes]:
    """Send commands whose replies are one-line (``+OK``, ``-ERR ...``); return those lines.

    The harness speaks RESP itself so that probing and resetting do not depend on -- or get
    confused with -- the client library the tests are exercising.
    """
    with socket.create_connection((host, port), timeout=5.0) as sock:
        sock.sendall(b"".join(_resp_command(*c) for c in commands))
        buf = b""
        while buf.count(b"\r\n") < len(commands):
            chunk = sock.recv(4096)
            if not chunk:
                raise ConnectionResetError("redis-server closed the connection")
            buf += chunk
    return buf.split(b"\r\n")[: len(commands)]


class RedisServer(Server):
    """``redis-server`` with every acknowledged write fsynced to its AOF.

    ``--appendonly yes --appendfsync always`` means a write Redis has answered is on disk, so
    fault tests can kill -9 the server, restart it and find everything that was acknowledged.
    ``--save ""`` turns off RDB snapshots, which would only add forked background saves.
    """

    kind = "redis"
    binary_name = "redis-server"
    debian_package = "redis-server"

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def _command(self, binary: str) -> list[str]:
        data = self._dir / "data"
        data.mkdir(exist_ok=True)
        return [
            binary,
            "--bind", self.host,
            "--port", str(self.port),
            "--dir", str(data),
            "--appendonly", "yes",
            "--appendfsync", "always",
            "--save", "",
            "--daemonize", "no",
            "--logfile", "",  # stdout, captured in server.log
        ]  # fmt: skip

    def _ready(self) -> bool:
        # "-LOADING" while the AOF is replayed after a restart: not ready yet.
        return _redis_simple_replies(self.host, self.port, [("PING",)])[0] == b"+PONG"

    def reset(self) -> None:
        """FLUSHALL, and drop Lua scripts and functions (FLUSHALL keeps those)."""
        with harness_traffic():
            replies = _redis_simple_replies(
                self.host, self.port, [("FLUSHALL",), ("SCRIPT", "FLUSH"), ("FUNCTION", "FLUSH")]
            )
        if any(not r.startswith(b"+") for r in replies):
            raise ServerError(f"could not reset {self!r}: {replies!r}")


# --- ClickHouse -----------------------------------------------------------------------------

# `<yandex>` is the root element 18.16 requires (newer servers accept it too). What is left out
# is as deliberate as what is in: no interserver_http_port (no replication port is opened), no
# mysql_port (18.16 has no MySQL protocol; newer servers only open it when configured), no
# system.*_log tables (less background work), no listen on anything but loopback.
_CLICKHOUSE_CONFIG = """\
<?xml version="1.0"?>
<yandex>
    <logger>
        <level>information</level>
        <log>{dir}/log/clickhouse-server.log</log>
        <errorlog>{dir}/log/clickhouse-server.err.log</errorlog>
        <size>10M</size>
        <count>1</count>
    </logger>
    <listen_host>{host}</listen_host>
    <tcp_port>{tcp_port}</tcp_port>
    <http_port>{http_port}</http_port>
    <path>{dir}/data/</path>
    <tmp_path>{dir}/tmp/</tmp_path>
    <user_files_path>{dir}/user_files/</user_files_path>
    <format_schema_path>{dir}/format_schemas/</format_schema_path>
    <users_config>{dir}/users.xml</users_config>
    <default_profile>default</default_profile>
    <default_database>default</default_database>
    <timezone>UTC</timezone>
    <mark_cache_size>268435456</mark_cache_size>
    <max_concurrent_queries>100</max_concurrent_queries>
</yandex>
"""

_CLICKHOUSE_USERS = """\
<?xml version="1.0"?>
<yandex>
    <profiles>
        <default>
            <max_memory_usage>2000000000</max_memory_usage>
        </default>
    </profiles>
    <users>
        <default>
            <password></password>
            <networks>
                <ip>127.0.0.1</ip>
                <ip>::1</ip>
            </networks>
            <profile>default</profile>
            <quota>default</quota>
        </default>
    </users>
    <quotas>
        <default>
            <interval>
                <duration>3600</duration>
                <queries>0</queries>
                <errors>0</errors>
                <result_rows>0</result_rows>
                <read_rows>0</read_rows>
                <execution_time>0</execution_time>
            </interval>
        </default>
    </quotas>
</yandex>
"""

_CH_USER_DATABASES = (
    "SELECT name FROM system.databases WHERE name NOT IN ('system', 'default') FORMAT TSV"
)
# Materialized views first: dropping one drops its inner table, the reverse order can fail.
_CH_DEFAULT_TABLES = (
    "SELECT name FROM system.tables WHERE database = 'default' "
    "ORDER BY engine = 'MaterializedView' DESC FORMAT TSV"
)


def _ch_quote_identifier(name: str) -> str:
    return "`" + name.replace("\\", "\\\\").replace("`", "\\`") + "`"


class ClickHouseServer(Server):
    """Debian's ``clickhouse-server`` (18.16, the oldest ClickHouse Meshtap supports).

    It gets its own ``config.xml``/``users.xml`` in the data dir -- never /etc/clickhouse-server
    -- with the native and HTTP ports on free loopback ports and a ``default`` user without a
    password. The ``meshtap`` database (the one in :attr:`url`) exists after every start and
    reset, so a client can connect to the url straight away.
    """

    kind = "clickhouse"
    binary_name = "clickhouse-server"
    debian_package = "clickhouse-server"
    startup_timeout = 60.0  # 18.16 loads metadata before listening; slow on a busy 2-core box
    database = "meshtap"
    _port_count = 2

    @property
    def url(self) -> str:
        """Native protocol url, as clickhouse-driver's ``Client.from_url`` takes it."""
        return f"clickhouse://{self.host}:{self.port}/{self.database}"

    @property
    def http_port(self) -> int:
        return self._require_ports()[1]

    @property
    def config_path(self) -> Path:
        return self._dir / "config.xml"

    def _prepare(self) -> None:
        for sub in ("data", "tmp", "user_files", "format_schemas", "log"):
            (self._dir / sub).mkdir(exist_ok=True)
        values = {
            "dir": str(self._dir),
            "host": self.host,
            "tcp_port": self.port,
            "http_port": self.http_port,
        }
        self.config_path.write_text(_CLICKHOUSE_CONFIG.format(**values))
        (self._dir / "users.xml").write_text(_CLICKHOUSE_USERS)

    def _command(self, binary: str) -> list[str]:
        return [binary, f"--config-file={self.config_path}"]

    def _ready(self) -> bool:
        if self._http_query("SELECT 1", timeout=2.0).strip() != "1":
            return False
        # HTTP answering does not prove the native port listens yet; both are bound at startup.
        with socket.create_connection((self.host, self.port), timeout=2.0):
            return True

    def _on_ready(self) -> None:
        self._http_query(f"CREATE DATABASE IF NOT EXISTS {_ch_quote_identifier(self.database)}")

    def _log_files(self) -> list[Path]:
        log = self._dir / "log"
        return [
            self.log_path,
            log / "clickhouse-server.err.log",
            log / "clickhouse-server.log",
        ]

    def reset(self) -> None:
        """Drop every database but ``system`` and ``default``, empty ``default``, recreate
        ``meshtap``."""
        with harness_traffic():
            for name in self._http_query(_CH_USER_DATABASES).splitlines():
                self._http_query(f"DROP DATABASE IF EXISTS {_ch_quote_identifier(name)}")
            for name in self._http_query(_CH_DEFAULT_TABLES).splitlines():
                self._http_query(f"DROP TABLE IF EXISTS default.{_ch_quote_identifier(name)}")
            self._on_ready()

    def _http_query(self, sql: str, timeout: float = 30.0) -> str:
        """Run one statement over the HTTP interface (stdlib only, no driver involved).

        SQL here is harness-made; names from ``system`` tables are quoted as identifiers. The
        TSV output escapes tabs/newlines in names, which the harness never creates.
        """
        conn = http.client.HTTPConnection(self.host, self.http_port, timeout=timeout)
        try:
            conn.request("POST", "/?query=" + quote(sql))
            response = conn.getresponse()
            body = response.read().decode("utf-8", "replace")
        finally:
            conn.close()
        if response.status != 200:
            raise ServerError(f"ClickHouse rejected {sql!r}: HTTP {response.status}: {body}")
        return body


# --- NATS -----------------------------------------------------------------------------------


class _NatsWire:
    """Just enough of the NATS client protocol for the harness: handshake and request-reply.

    Spoken directly (not through nats-py) so readiness and reset work from plain synchronous
    code, outside whatever event loop a test runs, and do not depend on the client under test.
    """

    _INBOX = b"_MESHTAP_HARNESS.reply"

    def __init__(self, host: str, port: int, timeout: float) -> None:
        self._sock = socket.create_connection((host, port), timeout=timeout)
        self._buf = b""
        try:
            line = self._read_line()
            if not line.startswith(b"INFO "):
                raise ServerError(f"nats-server greeted with {line!r}, expected INFO")
            self.info: dict[str, object] = json.loads(line[5:])
            connect = {"verbose": False, "pedantic": False, "headers": True, "protocol": 1}
            connect["no_responders"] = True
            self._sock.sendall(b"CONNECT %s\r\nPING\r\n" % json.dumps(connect).encode())
            while (line := self._read_line()) != b"PONG":
                if line.startswith(b"-ERR"):
                    raise ServerError(f"nats-server refused the harness: {line!r}")
            self._sock.sendall(b"SUB %s 1\r\n" % self._INBOX)
        except BaseException:
            self._sock.close()
            raise

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def request(self, subject: str, payload: bytes = b"") -> bytes:
        self._sock.sendall(
            b"PUB %s %s %d\r\n%s\r\n" % (subject.encode(), self._INBOX, len(payload), payload)
        )
        while True:
            line = self._read_line()
            if line == b"PING":
                self._sock.sendall(b"PONG\r\n")
            elif line.startswith(b"MSG "):  # MSG <subject> <sid> [reply] <bytes>
                size = int(line.split()[-1])
                return self._read_exact(size + 2)[:-2]
            elif line.startswith(b"HMSG "):  # HMSG <subject> <sid> [reply] <hdr bytes> <total>
                fields = line.split()
                header_size, total = int(fields[-2]), int(fields[-1])
                data = self._read_exact(total + 2)
                if b" 503" in data[:header_size].split(b"\r\n", 1)[0]:
                    raise ServerError(f"no responders for {subject}: is JetStream enabled?")
                return data[header_size:total]
            elif line.startswith(b"-ERR"):
                raise ServerError(f"nats-server: {line.decode(errors='replace')}")
            # +OK, PONG, INFO updates: nothing to do

    def _read_line(self) -> bytes:
        while b"\r\n" not in self._buf:
            self._fill()
        line, _, self._buf = self._buf.partition(b"\r\n")
        return line

    def _read_exact(self, size: int) -> bytes:
        while len(self._buf) < size:
            self._fill()
        data, self._buf = self._buf[:size], self._buf[size:]
        return data

    def _fill(self) -> None:
        chunk = self._sock.recv(65536)
        if not chunk:
            raise ConnectionResetError("nats-server closed the connection")
        self._buf += chunk


def _jetstream_reply(raw: bytes, what: str) -> dict[str, object]:
    reply: dict[str, object] = json.loads(raw)
    if "error" in reply:
        raise ServerError(f"JetStream refused to {what}: {reply['error']}")
    return reply


class NatsServer(Server):
    """``nats-server`` with JetStream, its file store in the data dir.

    Readiness is a real handshake (INFO, CONNECT, PING/PONG) and the INFO must announce
    JetStream, so a test never races the JetStream subsystem's startup.
    """

    kind = "nats"
    binary_name = "nats-server"
    debian_package = "nats-server"

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    @property
    def store_dir(self) -> Path:
        return self._dir / "store"

    def _command(self, binary: str) -> list[str]:
        return [binary, "-js", "-sd", str(self.store_dir), "-a", self.host, "-p", str(self.port)]

    def _ready(self) -> bool:
        with _NatsWire(self.host, self.port, timeout=2.0) as wire:
            return bool(wire.info.get("jetstream"))

    def reset(self) -> None:
        """Delete every JetStream stream (KV buckets and object stores are streams too)."""
        with harness_traffic(), _NatsWire(self.host, self.port, timeout=10.0) as wire:
            names: list[str] = []
            while True:
                request = json.dumps({"offset": len(names)}).encode()
                reply = _jetstream_reply(wire.request("$JS.API.STREAM.NAMES", request), "list")
                batch = reply.get("streams") or []
                assert isinstance(batch, list)
                names.extend(batch)
                total = reply.get("total", 0)
                assert isinstance(total, int)
                if not batch or len(names) >= total:
                    break
            for name in names:
                _jetstream_reply(wire.request(f"$JS.API.STREAM.DELETE.{name}"), f"delete {name}")


@atexit.register
def _close_leftover_servers() -> None:
    """Reap servers a crashed test or a forgotten ``close()`` left running."""
    with _registry_lock:
        leftovers = list(_open_servers)
    for server in leftovers:
        server.close()
