"""`python -m runtime`: run one runtime instance until SIGTERM/SIGINT, then drain and exit 0."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import sys
from collections.abc import Sequence

from runtime._capture import CaptureNotReady
from runtime._config import RuntimeConfig, config_from_args
from runtime._errors import CannotListen, InsecureSetup, InvalidRequest
from runtime._server import Runtime


def _otlp_line(runtime: Runtime) -> str:
    """Where applications send their own spans, when the OTLP receiver runs."""
    otlp = runtime.otlp
    if otlp is None:
        return ""
    host = runtime.config.host
    endpoints = []
    if otlp.http_port:
        endpoints.append(f"OTEL_EXPORTER_OTLP_ENDPOINT=http://{host}:{otlp.http_port} (OTLP/HTTP)")
    if otlp.grpc_port:
        endpoints.append(f"http://{host}:{otlp.grpc_port} (OTLP/gRPC)")
    return "Applications' own spans: " + " or ".join(endpoints) + "\n"


def _grpc_line(runtime: Runtime) -> str:
    if runtime.grpc is None:
        return ""
    return (
        f"gRPC (EventMesh-compatible): {runtime.grpc_target}  - from Python: "
        f"MESHTAP_GRPC_TARGET={runtime.grpc_target}, then `from runtime.client import MeshClient`\n"
    )


def _next_steps(runtime: Runtime) -> str:
    url = runtime.http_url
    return f"""
Meshtap runtime is up: {url}  (store: {runtime.store.url})

Try it:
  # 1. subscribe a webhook (any HTTP endpoint that answers 2xx)
  curl -s -X POST {url}/v1/subscriptions -H 'content-type: application/json' \\
       -d '{{"topic": "orders.#", "group": "billing", "sink": "http://127.0.0.1:9999/events"}}'
  # 2. publish a CloudEvent (binary mode)
  curl -s -X POST {url}/v1/topics/orders.created/events \\
       -H 'ce-id: 1' -H 'ce-source: /shop' -H 'ce-type: order.created' -H 'ce-specversion: 1.0' \\
       -H 'content-type: application/json' -d '{{"order": 42}}'
  # 3. watch it flow
  curl -s {url}/metrics | grep meshtap_events

{_grpc_line(runtime)}{_otlp_line(runtime)}Health: {url}/healthz  Readiness: {url}/readyz  \
Stop: Ctrl-C (drains in-flight deliveries)
"""


async def serve(config: RuntimeConfig) -> None:
    runtime = Runtime(config)
    await runtime.start()
    # Start-up objects (modules, config) live forever: keep them out of every later full
    # collection, which otherwise shows up as tail latency under load.
    gc.freeze()
    # Nearly everything the runtime allocates per event (records, span links, parsed events)
    # dies within one request; collecting the young generation every 700 net allocations (the
    # default) cost 6 us of CPU per event with capture off and 10 us with it on (measured with
    # gc.callbacks under bench/capture_throughput.py). Every 20,000 it is about 2 us; a
    # young collection then walks at most that many objects (a millisecond or two).
    gc.set_threshold(20_000, 10, 10)
    print(_next_steps(runtime), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    logging.getLogger("meshtap.runtime").info("draining (up to %.0f s) ...", config.drain_timeout_s)
    await runtime.stop()
    logging.getLogger("meshtap.runtime").info("stopped cleanly")


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["tokens"]:
        from runtime._tokens_cli import main as tokens_main

        return tokens_main(args[1:])
    config = config_from_args(args)
    logging.basicConfig(
        level=config.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        asyncio.run(serve(config))
    except (ValueError, CaptureNotReady, CannotListen, InsecureSetup, InvalidRequest) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
