"""Standalone mode: the whole of Meshtap in one process (``python manage.py standalone``).

Why one process: chDB, the embedded ClickHouse, opens one data directory per process. The
runtime's capture writes into it, and the web admin, replays and audits read it, so all of them
must live here: the runtime on the main thread's event loop, the web admin in a WSGI server
thread, a Celery worker (solo pool, memory transport) and beat in two more threads. They all
open ``ClickHouse.open(url)`` on the same URL; ``tracing.clickhouse`` shares the process's one
chDB engine between those clients (each client serialises its own queries), and a client held
open here for the whole run keeps the engine up between them.

Any part can point at real servers instead (``--store redis://``, ``--capture clickhouse://``,
``--celery-broker redis://``); the runtime's own flags pass through unchanged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import signal
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.staticfiles.handlers import StaticFilesHandler
from django.core.management import call_command
from django.core.servers.basehttp import ThreadedWSGIServer, WSGIRequestHandler
from django.core.wsgi import get_wsgi_application

from runtime.server import Runtime, RuntimeConfig, config_from_args  # the CLI's own parsing
from tracing.clickhouse import ClickHouse

log = logging.getLogger("meshtap.standalone")


class StandaloneError(Exception):
    """Standalone mode could not start; the message says what to change."""


@dataclass(frozen=True)
class StandaloneOptions:
    """What ``manage.py standalone`` was asked for (flags already parsed)."""

    host: str = "127.0.0.1"
    port: int = 8000
    demo: bool = False
    demo_rate: float = 2.0
    celery_broker: str | None = None
    runtime_args: tuple[str, ...] = ()


@dataclass(frozen=True)
class AdminCredentials:
    username: str
    password: str | None
    """Set only when this start created the user or set its password from the environment."""


def runtime_config(options: StandaloneOptions, var_dir: Path) -> RuntimeConfig:
    """The runtime's config: embedded defaults under ``var_dir``, then the user's own flags."""
    defaults = [
        "--capture",
        f"chdb://{(var_dir / 'chdb').resolve()}",
        "--capture-spool-dir",
        str((var_dir / "spool").resolve()),
    ]
    try:
        return config_from_args([*defaults, *options.runtime_args])
    except SystemExit as e:  # argparse already printed what was wrong
        raise StandaloneError(
            f"invalid runtime flags {' '.join(options.runtime_args)!r}; see "
            "`python -m runtime --help` for the flags the runtime accepts"
        ) from e


def ensure_admin(username: str, password: str) -> AdminCredentials:
    """Create the admin user once; a password given in the environment always wins."""
    users = get_user_model()
    user = users.objects.filter(username=username).first()
    if user is None:
        chosen = password or secrets.token_urlsafe(12)
        users.objects.create_superuser(username=username, email="", password=chosen)
        return AdminCredentials(username, chosen)
    if password and not user.check_password(password):
        user.set_password(password)
        user.save(update_fields=["password"])
        return AdminCredentials(username, password)
    return AdminCredentials(username, None)


class _WebServer:
    """Django's threaded WSGI server (the one behind runserver, without autoreload), with the
    static files of the admin served by ``StaticFilesHandler``."""

    def __init__(self, host: str, port: int) -> None:
        try:
            self._server = ThreadedWSGIServer((host, port), WSGIRequestHandler)
        except OSError as e:
            raise StandaloneError(
                f"the web admin cannot listen on {host}:{port}: {e}; pass --port with a free "
                "port (0 = any)"
            ) from e
        self._server.set_app(StaticFilesHandler(get_wsgi_application()))
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="meshtap-web", daemon=True
        )
        self.url = f"http://{host}:{self._server.server_address[1]}"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(10)


class _Celery:
    """A Celery worker (solo pool) and beat, each on a thread of this process."""

    def __init__(self, broker: str | None, var_dir: Path) -> None:
        from celery.beat import EmbeddedService

        from meshadmin.celery import app
        from meshadmin.queues import Queue

        if broker:
            app.conf.broker_url = broker
            if broker.startswith(("redis://", "rediss://")):
                app.conf.result_backend = broker
        self.broker = str(app.conf.broker_url)
        self._worker = app.WorkController(
            pool_cls="solo",
            concurrency=1,
            queues=[queue.value for queue in Queue],
            hostname="standalone@%h",
            without_heartbeat=True,
            without_mingle=True,
            without_gossip=True,
            loglevel="WARNING",
        )
        self._worker_thread = threading.Thread(
            target=self._worker.start, name="meshtap-celery-worker", daemon=True
        )
        self._beat: Any = EmbeddedService(
            app, thread=True, schedule_filename=str(var_dir / "celerybeat-schedule")
        )

    def start(self) -> None:
        self._worker_thread.start()
        self._beat.start()

    def stop(self) -> None:
        self._beat.stop()
        self._worker.stop(in_sighandler=False)
        self._worker_thread.join(15)
        self._beat.join(10)


def banner(
    runtime: Runtime, web_url: str, credentials: AdminCredentials, broker: str, demo: bool
) -> str:
    """What a newcomer needs to see once everything is up."""
    if credentials.password is not None:
        login = f"user {credentials.username!r}, password {credentials.password!r} (shown once)"
    else:
        login = (
            f"user {credentials.username!r} (password printed at its first start; set "
            "MESHTAP_ADMIN_PASSWORD to change it)"
        )
    otlp = runtime.otlp
    otlp_line = (
        f"http://{runtime.config.host}:{otlp.http_port} (HTTP), "
        f"{runtime.config.host}:{otlp.grpc_port} (gRPC)"
        if otlp is not None
        else "off (no capture)"
    )
    grpc = runtime.grpc_target if runtime.grpc is not None else "off"
    return (
        "\nMeshtap standalone is up.\n"
        f"  Web admin:  {web_url}/  (traces, events, topology, replays; {login})\n"
        f"  Django admin: {web_url}/admin/  (replay jobs, audits, schedules)\n"
        f"  HTTP API:   {runtime.http_url}\n"
        f"  gRPC API:   {grpc}\n"
        f"  OTLP:       {otlp_line}\n"
        f"  Store:      {runtime.store.url}\n"
        f"  Capture:    {runtime.config.capture}\n"
        f"  Celery:     worker + beat in this process (broker {broker})\n"
        f"  Demo:       {'on (order -> payment -> shipping)' if demo else 'off (--demo)'}\n"
        "Stop: Ctrl-C\n"
    )


async def _serve(
    config: RuntimeConfig,
    options: StandaloneOptions,
    announce: Callable[[Runtime], None],
    out: TextIO,
) -> None:
    from meshadmin._demo import Demo

    runtime = Runtime(config)
    await runtime.start()
    demo: Demo | None = None
    try:
        if options.demo:
            demo = Demo(runtime, rate_per_s=options.demo_rate, out=out)
            await demo.start()
        announce(runtime)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        print("Stopping ...", file=out, flush=True)
    finally:
        if demo is not None:
            await demo.stop()
        await runtime.stop()


def run(options: StandaloneOptions, out: TextIO = sys.stdout) -> None:
    """Run everything until SIGINT/SIGTERM, then stop every part in order."""
    var_dir = Path(settings.VAR_DIR)
    var_dir.mkdir(parents=True, exist_ok=True)
    config = runtime_config(options, var_dir)
    capture_url = config.capture if config.capture != "none" else None
    if capture_url is not None:
        # The admin, replays and audits read what this runtime records.
        settings.MESHTAP_CLICKHOUSE_URL = capture_url
    settings.MESHTAP_RUNTIME_URL = f"http://{config.host}:{config.http_port}"

    call_command("migrate", interactive=False, verbosity=0)
    with contextlib.ExitStack() as stack:
        if capture_url is not None:
            # Held for the whole run: chDB's engine stays up while clients come and go.
            stack.enter_context(ClickHouse.open(capture_url))
            call_command("migrate_clickhouse", url=capture_url, stdout=_Quiet())
        credentials = ensure_admin(settings.MESHTAP_ADMIN_USER, settings.MESHTAP_ADMIN_PASSWORD)
        web = _WebServer(options.host, options.port)
        celery = _Celery(options.celery_broker, var_dir)
        web.start()
        stack.callback(web.stop)
        celery.start()
        stack.callback(celery.stop)

        def announce(runtime: Runtime) -> None:
            settings.MESHTAP_RUNTIME_URL = runtime.http_url
            print(banner(runtime, web.url, credentials, celery.broker, options.demo), file=out)
            out.flush()

        asyncio.run(_serve(config, options, announce, out))
    print("Stopped cleanly.", file=out, flush=True)


class _Quiet:
    """A stdout for sub-commands whose chatter would bury the banner."""

    def write(self, text: str) -> int:
        return len(text)

    def flush(self) -> None:
        return None
