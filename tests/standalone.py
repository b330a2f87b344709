"""`python manage.py standalone` as a child process on free ports, for tests."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from tests.meshes import ROOT, free_port

BANNER_END = re.compile("Stop: Ctrl-C")
ADMIN = re.compile(r"Django admin:\s+(http://\S+)/admin/")


class Standalone:
    """One `manage.py standalone` child with its output collected by a reader thread."""

    def __init__(self, var_dir: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.ports = {
            "--http-port": free_port(),
            "--grpc-port": free_port(),
            "--otlp-http-port": free_port(),
            "--otlp-grpc-port": free_port(),
        }
        command = [sys.executable, "manage.py", "standalone", "--port", str(self.port), *args]
        for flag, port in self.ports.items():
            command += [flag, str(port)]
        self.process = subprocess.Popen(
            command,
            cwd=ROOT,
            env={
                **os.environ,
                "MESHTAP_VAR_DIR": str(var_dir),
                "PYTHONUNBUFFERED": "1",
                **(env or {}),
            },
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self._lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self._lines)

    def wait_for(self, pattern: re.Pattern[str], timeout: float) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = pattern.search(self.output)
            if match:
                return match
            if self.process.poll() is not None:
                break
            time.sleep(0.2)
        raise AssertionError(f"no {pattern.pattern!r} within {timeout}s:\n{self.output}")

    def interrupt(self, timeout: float = 60.0) -> int:
        self.process.send_signal(signal.SIGINT)
        try:
            return self.process.wait(timeout)
        finally:
            self._reader.join(5)

    def kill(self) -> None:
        """Make sure the child is gone and its pipe closed (after a failure too)."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self._reader.join(5)
        if self.process.stdout is not None:
            self.process.stdout.close()

    @property
    def admin_url(self) -> str:
        match = ADMIN.search(self.output)
        assert match is not None, self.output
        return match.group(1)
