"""A runtime instance: store + dispatcher + HTTP listener (+ gRPC API, OTLP receiver), with an
orderly start and drain."""

from __future__ import annotations

import logging
import uuid
from typing import Any

from aiohttp import web
from opentelemetry.trace import TracerProvider

from runtime._capture import CaptureConfig, CaptureSink, NullCapture, open_capture
from runtime._config import RuntimeConfig
from runtime._delivery import DeliverySettings, Dispatcher
from runtime._errors import CannotListen, StoreUnavailable
from runtime._grpc_api import GrpcApi
from runtime._http_api import build_app
from runtime._mesh import Mesh
from runtime._metrics import RuntimeMetrics
from runtime._otlp import OtlpReceiver
from runtime._push import CloudEventsContract, PushContract, Pusher
from runtime._replies import ReplyRouter
from runtime._streams import STREAM_PROTOCOL, StreamHub
from runtime._tracing import MeshTracing
from runtime.stores import Store, open_store

log = logging.getLogger("meshtap.runtime")


def push_contracts() -> dict[str, PushContract]:
    from runtime._eventmesh import EventMeshContract

    return {"cloudevents": CloudEventsContract(), "eventmesh": EventMeshContract()}


def _bound_port(site: web.TCPSite) -> int:
    """The port actually bound (the configured one may be 0 = any free port)."""
    server: Any = site._server
    port: int = server.sockets[0].getsockname()[1]
    return port


class Runtime:
    """One runtime instance. Many instances on one Redis form one mesh.

    Spans are made by `tracer_provider` if given, else by the capture plugin's provider, else by
    the global one (`runtime._tracing`); the choice is made at `start`, once capture started.
    """

    def __init__(
        self,
        config: RuntimeConfig,
        *,
        store: Store | None = None,
        capture: CaptureSink | None = None,
        tracer_provider: TracerProvider | None = None,
    ) -> None:
        self.config = config
        self.tracing = MeshTracing(tracer_provider)
        self._tracer_provider = tracer_provider
        self.store = store or open_store(config.store)
        self.metrics = RuntimeMetrics()
        # A unique consumer name per process start: a restarted instance must not inherit the
        # pending events of its previous life by name; they are reclaimed after claim_idle_ms.
        consumer = f"{config.instance}-{uuid.uuid4().hex[:6]}"
        self.streams = StreamHub(consumer)
        self.pusher = Pusher(push_contracts(), channels={STREAM_PROTOCOL: self.streams})
        self.capture = capture or open_capture(
            CaptureConfig(
                url=config.capture,
                spool_dir=config.capture_spool_dir,
                redact_fields=config.redact_fields,
                redact_extensions=config.redact_extensions,
                redaction_key=config.redaction_key,
                max_buffered=config.capture_max_buffered,
                span_sample_ratio=config.span_sample_ratio,
                otlp_export=config.otlp_export,
                instance=config.instance,
            )
        )
        capture_metrics = getattr(self.capture, "collector", lambda: None)()
        if capture_metrics is not None:
            self.metrics.registry.register(capture_metrics)
        self.dispatcher = Dispatcher(
            self.store,
            self.pusher,
            self.metrics,
            consumer=consumer,
            instance=config.instance,
            settings=DeliverySettings(
                claim_idle_ms=config.claim_idle_ms,
                max_in_flight=config.max_in_flight,
                retention_ms=int(config.retention_s * 1000),
            ),
            capture=self.capture,
            tracing=self.tracing,
        )
        self.mesh = Mesh(
            self.store,
            self.dispatcher,
            self.metrics,
            self.capture,
            instance=config.instance,
            tracing=self.tracing,
        )
        self.replies = ReplyRouter(self.mesh, consumer)
        self.grpc: GrpcApi | None = None
        self._runner: web.AppRunner | None = None
        self.http_port: int | None = None
        self.otlp: OtlpReceiver | None = None

    @property
    def http_url(self) -> str:
        return f"http://{self.config.host}:{self.http_port}"

    async def start(self) -> None:
        await self.capture.start()  # CaptureNotReady says what to run; nothing else started yet
        self.tracing.use(self._tracer_provider or self.capture.tracer_provider())
        try:
            await self._start()
        except BaseException:
            await self.stop(drain_timeout_s=0)
            raise

    async def _start(self) -> None:
        try:
            await self.store.connect()
        except StoreUnavailable as e:
            log.warning(
                "starting without the store for now (readyz says 503 until it is back): %s", e
            )
        await self.pusher.start()
        await self.dispatcher.start()
        app = build_app(self.mesh, self.config)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(
            self._runner, self.config.host, self.config.http_port, reuse_address=True
        )
        try:
            await site.start()
        except OSError as e:
            raise CannotListen(
                f"cannot listen on {self.config.host}:{self.config.http_port}: "
                f"{e.strerror or e}; pick another port with --http-port (MESHTAP_HTTP_PORT)"
            ) from e
        self.http_port = _bound_port(site)
        self.tracing.set_server(self.config.host, self.http_port)
        log.info(
            "runtime %s listening on %s (store %s)",
            self.config.instance,
            self.http_url,
            self.store.url,
        )
        if self.config.grpc_port:
            await self.start_grpc(self.config.grpc_port)
        await self._start_otlp()

    async def start_grpc(self, port: int) -> None:
        """Start the gRPC API on `port` (0 = any free port: tests, embedding)."""
        self.grpc = GrpcApi(self.mesh, self.config, self.streams, self.replies, port=port)
        await self.grpc.start()

    @property
    def grpc_target(self) -> str:
        """`host:port` of the gRPC API (for grpc channels)."""
        return f"{self.config.host}:{self.grpc.port if self.grpc else self.config.grpc_port}"

    async def _start_otlp(self) -> None:
        config = self.config
        if not (config.otlp_http_port or config.otlp_grpc_port):
            return
        if isinstance(self.capture, NullCapture):
            log.info("OTLP receiver off: nothing would keep the spans with --capture none")
            return
        self.otlp = OtlpReceiver(
            self.capture,
            host=config.host,
            http_port=config.otlp_http_port,
            grpc_port=config.otlp_grpc_port,
            max_payload_bytes=config.max_payload_bytes,
        )
        await self.otlp.start()

    async def stop(self, drain_timeout_s: float | None = None) -> None:
        """Stop accepting requests, drain in-flight deliveries, close everything."""
        timeout = self.config.drain_timeout_s if drain_timeout_s is None else drain_timeout_s
        if self.otlp is not None:
            await self.otlp.stop()
            self.otlp = None
        if self.grpc is not None:
            await self.grpc.stop()
            self.grpc = None
        if self._runner is not None:
            await self._runner.shutdown()
        await self.dispatcher.drain(timeout)
        await self.replies.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        await self.pusher.close()
        await self.capture.close()
        await self.store.close()
