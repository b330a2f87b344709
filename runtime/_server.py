"""A runtime instance: store + dispatcher + HTTP listener (+ gRPC API, OTLP receiver), with an
orderly start and drain."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import uuid
from pathlib import Path
from typing import Any

from aiohttp import web
from opentelemetry.trace import TracerProvider

from runtime._auth import Authenticator, auth_settings, check_exposure
from runtime._bridge_api import Bridges
from runtime._bridges import BRIDGE_PROTOCOL, BridgeChannel, parse_bridge_flag
from runtime._capture import CaptureConfig, CaptureSink, NullCapture, open_capture
from runtime._config import RuntimeConfig
from runtime._delivery import DeliverySettings, Dispatcher
from runtime._errors import CannotListen, InsecureSetup, StoreUnavailable
from runtime._grpc_api import GrpcApi
from runtime._http_api import build_app
from runtime._mesh import Mesh
from runtime._metrics import RuntimeMetrics
from runtime._netguard import sink_policy, sink_ssl_context
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


def _read(path: str, flag: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise InsecureSetup(f"{flag} {path!r} cannot be read: {e.strerror or e}") from None


def server_ssl_context(config: RuntimeConfig) -> ssl.SSLContext | None:
    """The HTTP listener's TLS context (mTLS when --tls-client-ca is set), or None."""
    if not (config.tls_cert or config.tls_key or config.tls_client_ca):
        return None
    if not (config.tls_cert and config.tls_key):
        raise InsecureSetup(
            "TLS needs both --tls-cert and --tls-key (MESHTAP_TLS_CERT, MESHTAP_TLS_KEY); "
            "--tls-client-ca alone cannot verify clients without a server certificate"
        )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(config.tls_cert, config.tls_key)
        if config.tls_client_ca:
            context.load_verify_locations(cafile=config.tls_client_ca)
            context.verify_mode = ssl.CERT_REQUIRED
    except (OSError, ssl.SSLError) as e:
        raise InsecureSetup(
            f"cannot load the TLS files (--tls-cert {config.tls_cert!r}, --tls-key "
            f"{config.tls_key!r}, --tls-client-ca {config.tls_client_ca!r}): {e}"
        ) from None
    return context


def grpc_server_credentials(config: RuntimeConfig) -> Any:
    """gRPC's TLS credentials from the same files, or None for a plaintext listener."""
    if server_ssl_context(config) is None:  # validates the files, with the same messages
        return None
    import grpc  # type: ignore[import-untyped]

    ca = _read(config.tls_client_ca, "--tls-client-ca") if config.tls_client_ca else None
    return grpc.ssl_server_credentials(
        [(_read(config.tls_key, "--tls-key"), _read(config.tls_cert, "--tls-cert"))],
        root_certificates=ca,
        require_client_auth=ca is not None,
    )


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
        self.mesh_name = config.mesh_name or config.instance
        self.bridge_channel = BridgeChannel(self.mesh_name)
        self.sink_policy = sink_policy(config)
        self.pusher = Pusher(
            push_contracts(),
            channels={STREAM_PROTOCOL: self.streams, BRIDGE_PROTOCOL: self.bridge_channel},
            ssl_context=sink_ssl_context(config),
            sink_policy=self.sink_policy,
            signing_key=config.webhook_signing_key,
        )
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
            mesh_name=self.mesh_name,
        )
        self.mesh.check_sink = self.sink_policy.check_url
        self.replies = ReplyRouter(self.mesh, consumer)
        self.auth: Authenticator | None = None
        self.grpc: GrpcApi | None = None
        self._runner: web.AppRunner | None = None
        self.http_port: int | None = None
        self.otlp: OtlpReceiver | None = None
        self._configure_task: asyncio.Task[None] | None = None

    @property
    def http_url(self) -> str:
        scheme = "https" if self.config.tls_cert else "http"
        return f"{scheme}://{self.config.host}:{self.http_port}"

    async def start(self) -> None:
        check_exposure(self.config)  # before anything starts: InsecureSetup says what to set
        self.auth = Authenticator(auth_settings(self.config))
        tls = server_ssl_context(self.config)
        await self.capture.start()  # CaptureNotReady says what to run; nothing else started yet
        self.tracing.use(self._tracer_provider or self.capture.tracer_provider())
        try:
            await self._start(tls)
        except BaseException:
            await self.stop(drain_timeout_s=0)
            raise

    async def _start(self, tls: ssl.SSLContext | None) -> None:
        try:
            await self.store.connect()
        except StoreUnavailable as e:
            log.warning(
                "starting without the store for now (readyz says 503 until it is back): %s", e
            )
        await self.pusher.start()
        await self.bridge_channel.start()
        await self.dispatcher.start()
        if self.config.bridges:
            self._configure_task = asyncio.create_task(self._configure_bridges())
        app = build_app(self.mesh, self.config, self.auth)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(
            self._runner,
            self.config.host,
            self.config.http_port,
            reuse_address=True,
            ssl_context=tls,
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

    async def _configure_bridges(self) -> None:
        """Store the `--bridge` bridges (replacing same-named ones), retrying while the store
        is down: the flags are the configuration, so they win over earlier API changes."""
        bridges = [parse_bridge_flag(spec) for spec in self.config.bridges]
        delay = 0.2
        while True:
            try:
                for bridge in bridges:
                    await Bridges(self.mesh).create(bridge, replace_existing=True)
                return
            except StoreUnavailable as e:
                log.warning("bridges from --bridge not stored yet: %s", e)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def start_grpc(self, port: int) -> None:
        """Start the gRPC API on `port` (0 = any free port: tests, embedding)."""
        self.grpc = GrpcApi(
            self.mesh,
            self.config,
            self.streams,
            self.replies,
            port=port,
            auth=self.auth,
            server_credentials=grpc_server_credentials(self.config),
        )
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
            auth=self.auth,
        )
        await self.otlp.start()

    async def stop(self, drain_timeout_s: float | None = None) -> None:
        """Stop accepting requests, drain in-flight deliveries, close everything."""
        timeout = self.config.drain_timeout_s if drain_timeout_s is None else drain_timeout_s
        if self._configure_task is not None:
            self._configure_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._configure_task
            self._configure_task = None
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
        await self.bridge_channel.close()
        await self.capture.close()
        await self.store.close()
