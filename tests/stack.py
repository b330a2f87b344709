"""The Django + Celery stack as real processes, for the audit tests: ``manage.py`` commands, a
Celery worker, Celery beat and the web admin (``runserver``), all on one SQLite file in the
test's directory and a real Redis as broker and result backend.

The ``django_stack`` fixture (tests/conftest.py) builds one per test and stops every process it
started, whatever the test did.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from tests.meshes import ROOT, free_port

PASSWORD = "sre-password-123"


@dataclass
class DjangoStack:
    tmp: Path
    broker_url: str
    env: dict[str, str] = field(default_factory=dict)
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    web_url: str = ""

    def __post_init__(self) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        env.pop("DJANGO_SETTINGS_MODULE", None)
        env.update(
            {
                "MESHTAP_VAR_DIR": str(self.tmp),
                "MESHTAP_CELERY_BROKER_URL": self.broker_url,
                # A task whose worker died is redelivered after this long (acks_late).
                "MESHTAP_CELERY_VISIBILITY_TIMEOUT": "3",
                "MESHTAP_CELERY_RESTORE_INTERVAL": "1",
                "MESHTAP_EMAIL_BACKEND": "django.core.mail.backends.filebased.EmailBackend",
                "MESHTAP_EMAIL_FILE_PATH": str(self.tmp / "mail"),
            }
        )
        self.env = env

    @property
    def db(self) -> Path:
        return self.tmp / "meshadmin.sqlite3"

    # --- commands ------------------------------------------------------------------------------

    async def manage(self, *args: str, timeout: float = 120) -> str:
        """``python manage.py ARGS`` to its end; fails the test unless it exits 0."""
        process = await asyncio.create_subprocess_exec(
            sys.executable, "manage.py", *args, cwd=ROOT, env=self.env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        output, _ = await asyncio.wait_for(process.communicate(), timeout=timeout)
        text = output.decode(errors="replace")
        assert process.returncode == 0, (
            f"manage.py {' '.join(args)} exited {process.returncode}:\n{text}"
        )
        return text

    async def shell(self, code: str) -> str:
        return await self.manage("shell", "-c", code)

    async def migrate(self) -> None:
        await self.manage("migrate", "--noinput")
        await self.shell(
            "from django.contrib.auth.models import User\n"
            f"User.objects.create_superuser('sre', 'sre@example.com', {PASSWORD!r})\n"
        )

    def query(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        """Read the Django database directly (what the processes wrote)."""
        with sqlite3.connect(self.db, timeout=20) as connection:
            return connection.execute(sql, params).fetchall()

    # --- processes -----------------------------------------------------------------------------

    def _start(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        log = open(self.tmp / f"{name}.log", "wb")  # noqa: SIM115 (closed with the process)
        process = subprocess.Popen(
            [sys.executable, *args], cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT
        )
        log.close()
        self.processes[name] = process
        return process

    def start_worker(self, name: str = "worker") -> subprocess.Popen[bytes]:
        """A Celery worker on every queue. ``solo`` pool: the task runs in this very process,
        so killing it kills the task."""
        return self._start(
            name, "-m", "celery", "-A", "meshadmin", "worker", "--pool", "solo",
            "-Q", "audit,housekeeping,replay", "-n", f"{name}@%h", "--without-gossip",
            "--without-mingle", "--without-heartbeat", "-l", "INFO",
        )  # fmt: skip

    def start_beat(self) -> subprocess.Popen[bytes]:
        """Celery beat with the database scheduler, looking for changed schedules every second."""
        return self._start(
            "beat", "-m", "celery", "-A", "meshadmin", "beat", "--max-interval", "1",
            "-s", str(self.tmp / "celerybeat-schedule"), "-l", "INFO",
        )  # fmt: skip

    async def start_web(self) -> str:
        port = free_port()
        self._start("web", "manage.py", "runserver", "--noreload", f"127.0.0.1:{port}")
        self.web_url = f"http://127.0.0.1:{port}"
        async with aiohttp.ClientSession() as session:
            deadline = time.monotonic() + 60
            while True:
                try:
                    async with session.get(self.web_url + "/admin/login/") as response:
                        if response.status == 200:
                            return self.web_url
                except aiohttp.ClientError:
                    pass
                assert time.monotonic() < deadline, f"runserver did not answer:\n{self.log('web')}"
                await asyncio.sleep(0.2)

    def kill(self, name: str) -> None:
        process = self.processes[name]
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)

    def log(self, name: str) -> str:
        path = self.tmp / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def logs(self) -> str:
        return "\n".join(f"--- {name}\n{self.log(name)[-4000:]}" for name in self.processes)

    def close(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.terminate()
        for process in self.processes.values():
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    # --- waiting -------------------------------------------------------------------------------

    async def wait_for(
        self, what: str, check: Callable[[], Any], timeout: float = 60.0, interval: float = 0.3
    ) -> Any:
        """``check()``'s first truthy value; fails with the processes' logs after ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            value = check()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"{what}: not within {timeout}s\n{self.logs()}")
            await asyncio.sleep(interval)


class AdminClient:
    """The web admin over HTTP as a browser would use it: log in, fill forms (with CSRF)."""

    def __init__(self, base_url: str, session: aiohttp.ClientSession) -> None:
        self.base_url = base_url
        self.session = session

    async def _token(self, path: str) -> str:
        async with self.session.get(self.base_url + path) as response:
            assert response.status == 200, await response.text()
            html = await response.text()
        match = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', html)
        assert match, html[:2000]
        return match.group(1)

    async def login(self, username: str = "sre", password: str = PASSWORD) -> None:
        token = await self._token("/admin/login/")
        form = {"username": username, "password": password, "csrfmiddlewaretoken": token,
                "next": "/admin/"}  # fmt: skip
        async with self.session.post(
            self.base_url + "/admin/login/", data=form, allow_redirects=False
        ) as response:
            assert response.status == 302, await response.text()

    async def submit(self, path: str, form: dict[str, str]) -> tuple[int, str]:
        """POST ``form`` to the admin page ``path``; (status, body) without following."""
        token = await self._token(path)
        async with self.session.post(
            self.base_url + path,
            data={**form, "csrfmiddlewaretoken": token},
            headers={"referer": self.base_url + path},
            allow_redirects=False,
        ) as response:
            return response.status, await response.text()

    async def page(self, path: str) -> str:
        async with self.session.get(self.base_url + path) as response:
            assert response.status == 200, await response.text()
            return await response.text()
