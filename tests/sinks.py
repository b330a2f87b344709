"""A real HTTP subscriber for tests: records every push and answers as the test scripts it.

Runs an aiohttp server on a free loopback port in the test's event loop; no mocks involved.
"""

from __future__ import annotations

import asyncio
import random
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from urllib.parse import unquote

from aiohttp import web


@dataclass
class Push:
    headers: dict[str, str]
    body: bytes
    received_at: float
    path: str

    @property
    def attributes(self) -> dict[str, str]:
        return {
            k[3:].lower(): unquote(v)
            for k, v in self.headers.items()
            if k.lower().startswith("ce-")
        }

    @property
    def id(self) -> str:
        return self.attributes["id"]


Behaviour = Callable[[Push], Awaitable[web.StreamResponse] | web.StreamResponse]


@dataclass
class RecordingSink:
    """`respond` decides each answer (default 204). `pushes` lists every request received."""

    respond: Behaviour | None = None
    pushes: list[Push] = field(default_factory=list)
    concurrent: int = 0
    max_concurrent: int = 0
    _runner: web.AppRunner | None = None
    port: int = 0
    ssl_context: ssl.SSLContext | None = None
    """Serve HTTPS with this context (the URL says https)."""

    @property
    def url(self) -> str:
        scheme = "https" if self.ssl_context is not None else "http"
        return f"{scheme}://127.0.0.1:{self.port}/events"

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        push = Push(dict(request.headers), await request.read(), time.monotonic(), request.path)
        self.pushes.append(push)
        self.concurrent += 1
        self.max_concurrent = max(self.max_concurrent, self.concurrent)
        try:
            if self.respond is None:
                return web.Response(status=204)
            result = self.respond(push)
            if asyncio.iscoroutine(result) or isinstance(result, Awaitable):
                return await result
            return result
        finally:
            self.concurrent -= 1

    async def start(self) -> RecordingSink:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=self.ssl_context)
        await site.start()
        assert site._server is not None
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def ids(self) -> list[str]:
        return [p.id for p in self.pushes]

    async def wait_for(self, count: int, timeout: float = 10.0) -> list[Push]:
        """Wait until at least `count` pushes arrived; fail with what did arrive otherwise."""
        deadline = time.monotonic() + timeout
        while len(self.pushes) < count:
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"expected {count} pushes within {timeout}s, got {len(self.pushes)}: "
                    f"{self.ids()[:20]}"
                )
            await asyncio.sleep(0.01)
        return self.pushes


@dataclass
class KeyOverlapResponder:
    """A sink responder that answers after a short random pause and notes every partition key
    that was pushed while an earlier push of the same key was still unanswered (the ordering
    contract says: never). Pass ``respond=detector.respond`` to :class:`RecordingSink`."""

    overlaps: list[str] = field(default_factory=list)
    _in_flight: dict[str, int] = field(default_factory=dict)

    async def respond(self, push: Push) -> web.Response:
        key = push.attributes["partitionkey"]
        self._in_flight[key] = self._in_flight.get(key, 0) + 1
        if self._in_flight[key] > 1:
            self.overlaps.append(key)
        await asyncio.sleep(random.uniform(0, 0.01))
        self._in_flight[key] -= 1
        return web.Response(status=204)
