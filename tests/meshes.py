"""Helpers to run real runtime instances in tests: in-process, or as a `python -m runtime` child."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from runtime._capture import CaptureSink
from runtime._config import RuntimeConfig
from runtime._server import Runtime

ROOT = Path(__file__).resolve().parent.parent


STORE_KINDS = ("memory", "redis", "nats")
SERVER_STORE_KINDS = ("redis", "nats")


async def wait_until(predicate: Callable[[], bool], timeout: float = 10.0, what: str = "") -> None:
    """Poll `predicate` until true; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or 'condition'}")
        await asyncio.sleep(0.02)


def store_url(request: pytest.FixtureRequest, kind: str) -> str:
    """The URL of a store of `kind` for this test: memory, or the session's Redis/NATS server
    (emptied first). Parametrise with `store_params()` so each param carries its marker."""
    if kind == "memory":
        return "memory://"
    server = request.getfixturevalue(f"{kind}_server")
    return str(server.url)


def store_params(*kinds: str) -> list[Any]:
    """pytest params for `kinds` (default: every store), each with its service marker."""
    return [
        kind if kind == "memory" else pytest.param(kind, marks=getattr(pytest.mark, kind))
        for kind in kinds or STORE_KINDS
    ]


def event(event_id: str, **extra: Any) -> dict[str, Any]:
    """A structured-mode CloudEvent as JSON (for batch and structured publishes)."""
    return {
        "specversion": "1.0",
        "id": event_id,
        "source": "/tests",
        "type": "test.event",
        "datacontenttype": "application/json",
        "data": {"n": event_id},
        **extra,
    }


class Client:
    """A thin HTTP client for the runtime's native API."""

    def __init__(self, base_url: str, session: aiohttp.ClientSession) -> None:
        self.base_url = base_url
        self.session = session

    async def request(self, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
        async with self.session.request(method, self.base_url + path, **kwargs) as response:
            text = await response.text()
            try:
                return response.status, json.loads(text)
            except ValueError:
                return response.status, text

    async def subscribe(self, **body: Any) -> dict[str, Any]:
        status, reply = await self.request("POST", "/v1/subscriptions", json=body)
        assert status == 201, reply
        return reply  # type: ignore[no-any-return]

    async def publish(self, topic: str, *events: dict[str, Any]) -> list[str]:
        if len(events) == 1:
            headers = {"content-type": "application/cloudevents+json"}
            body = json.dumps(events[0])
        else:
            headers = {"content-type": "application/cloudevents-batch+json"}
            body = json.dumps(list(events))
        status, reply = await self.request(
            "POST", f"/v1/topics/{topic}/events", data=body, headers=headers
        )
        assert status == 200, reply
        return reply["accepted"]  # type: ignore[no-any-return]

    async def publish_binary(
        self, topic: str, data: bytes, *, content_type: str = "application/json", **attributes: str
    ) -> tuple[int, Any]:
        headers = {"ce-specversion": "1.0", "content-type": content_type}
        headers.update({f"ce-{k}": v for k, v in attributes.items()})
        return await self.request("POST", f"/v1/topics/{topic}/events", data=data, headers=headers)


@asynccontextmanager
async def running(
    store: str = "memory://", *, capture: CaptureSink | None = None, **overrides: Any
) -> AsyncIterator[tuple[Runtime, Client]]:
    """A runtime on a free port with fast crash recovery, and a client for it.

    The OTLP receiver and the gRPC API are off unless a test asks (fixed default ports would
    clash); `grpc=True` starts the gRPC API on a free port (`runtime.grpc_target`).
    `tracer_provider` (an override) goes to the Runtime, not to its config.
    """
    settings: dict[str, Any] = {
        "http_port": 0,
        "store": store,
        "claim_idle_ms": 2_000,
        "otlp_http_port": 0,
        "otlp_grpc_port": 0,
        "grpc_port": 0,
    }
    tracer_provider = overrides.pop("tracer_provider", None)
    grpc = overrides.pop("grpc", False)
    settings.update(overrides)
    runtime = Runtime(RuntimeConfig(**settings), capture=capture, tracer_provider=tracer_provider)
    await runtime.start()
    if grpc:  # the gRPC API on a port the OS picks (127.0.0.1:0)
        await runtime.start_grpc(0)
    try:
        async with aiohttp.ClientSession() as session:
            yield runtime, Client(runtime.http_url, session)
    finally:
        await runtime.stop(drain_timeout_s=5.0)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclasses.dataclass
class RuntimeProcess:
    """`python -m runtime` as a child process, for SIGTERM/SIGKILL tests."""

    args: list[str]
    port: int = dataclasses.field(default_factory=free_port)
    #: how the runtime is started: `python -m runtime`, or the installed `meshtap-runtime`
    program: list[str] = dataclasses.field(
        default_factory=lambda: [sys.executable, "-m", "runtime"]
    )
    process: subprocess.Popen[bytes] | None = None
    _output: str | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self, timeout: float = 20.0) -> RuntimeProcess:
        # The OTLP receiver's fixed default ports would clash between processes; tests that
        # want it pass --otlp-*-port.
        env = {
            "MESHTAP_OTLP_HTTP_PORT": "0",
            "MESHTAP_OTLP_GRPC_PORT": "0",
            "MESHTAP_GRPC_PORT": "0",
            **os.environ,
            "PYTHONUNBUFFERED": "1",
        }
        self.process = subprocess.Popen(
            [*self.program, "--http-port", str(self.port), *self.args],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession() as session:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise AssertionError(f"runtime exited early:\n{self.output()}")
                try:
                    async with session.get(self.url + "/readyz") as response:
                        if response.status == 200:
                            return self
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.1)
        self.kill()
        raise AssertionError(f"runtime not ready within {timeout}s:\n{self.output()}")

    def signal(self, sig: signal.Signals) -> None:
        assert self.process is not None
        self.process.send_signal(sig)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.output()  # collect and close the pipe

    async def wait(self, timeout: float = 30.0) -> int:
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while self.process.poll() is None:
            if time.monotonic() > deadline:
                raise AssertionError(f"runtime did not exit within {timeout}s")
            await asyncio.sleep(0.05)
        return self.process.returncode

    def output(self) -> str:
        """Everything the process printed (once it has exited)."""
        if self._output is not None:
            return self._output
        if self.process is None or self.process.stdout is None:
            return ""
        if self.process.poll() is None:
            return "(still running)"
        self._output = self.process.stdout.read().decode(errors="replace")
        self.process.stdout.close()
        return self._output
