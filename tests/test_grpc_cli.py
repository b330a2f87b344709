"""`python -m runtime` with the gRPC API: it says where gRPC listens, serves it, and names the
flag when the port is taken."""

from __future__ import annotations

import signal
import socket

import pytest

from runtime.client import AsyncMeshClient, new_event
from tests.meshes import RuntimeProcess, free_port


async def test_the_cli_serves_grpc_and_says_where() -> None:
    port = free_port()
    process = RuntimeProcess(["--grpc-port", str(port)])
    try:
        await process.start()
        async with AsyncMeshClient(f"127.0.0.1:{port}") as client:
            subscription = await client.subscribe("orders.#", group="billing")
            await client.publish("orders.created", new_event("order.created", id="cli-1"))
            delivery = await subscription.next(10)
            await delivery.ack()
            await subscription.close()
        process.signal(signal.SIGTERM)
        assert await process.wait(timeout=15) == 0
        output = process.output()
    finally:
        process.kill()
    assert delivery.event.id == "cli-1"
    assert f"gRPC (EventMesh-compatible): 127.0.0.1:{port}" in output


async def test_a_taken_grpc_port_names_the_flag() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        process = RuntimeProcess(["--grpc-port", str(port)])
        try:
            # start() fails with the process's output when it exits early.
            with pytest.raises(AssertionError, match="runtime exited early") as caught:
                await process.start(timeout=10)
        finally:
            process.kill()
    assert f"cannot listen for gRPC on 127.0.0.1:{port}" in str(caught.value)
    assert "--grpc-port (MESHTAP_GRPC_PORT)" in str(caught.value)
