"""TLS and mTLS on the HTTP and gRPC listeners, verified TLS and signatures on webhook pushes,
and the SSRF guard on sinks. Certificates are made at test time (tests/certs.py)."""

from __future__ import annotations

import asyncio
import json
import ssl
import time
from pathlib import Path

import aiohttp
import grpc  # type: ignore[import-untyped]
import pytest

from runtime._auth import TokenFile
from runtime._config import RuntimeConfig
from runtime._errors import InsecureSetup, InvalidSubscription
from runtime._netguard import SinkPolicy, sign_push, sink_policy, verify_push_signature
from runtime._server import Runtime
from runtime.client import AsyncMeshClient, PermissionDenied, new_event
from tests.certs import Pki
from tests.meshes import event, running
from tests.sinks import RecordingSink

STRUCTURED = {"content-type": "application/cloudevents+json"}


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return Pki(tmp_path)


def tls_settings(pki: Pki, *, mtls: bool = False) -> dict[str, str]:
    settings = {"tls_cert": str(pki.server_cert), "tls_key": str(pki.server_key)}
    if mtls:
        settings["tls_client_ca"] = str(pki.ca)
    return settings


async def post_event(
    url: str, topic: str, context: ssl.SSLContext | bool, headers: dict[str, str] | None = None
) -> int:
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{url}/v1/topics/{topic}/events",
            data=json.dumps(event("1")),
            headers={**STRUCTURED, **(headers or {})},
            ssl=context,
        ) as response,
    ):
        return response.status


async def test_https_listener_serves_only_tls(pki: Pki) -> None:
    async with running(**tls_settings(pki)) as (rt, _):
        assert rt.http_url.startswith("https://127.0.0.1:")
        assert await post_event(rt.http_url, "orders.created", pki.client_context()) == 200
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            await post_event(rt.http_url, "orders.created", True)  # CA not trusted
        with pytest.raises(aiohttp.ClientError):
            await post_event(rt.http_url.replace("https", "http"), "orders.created", False)


async def test_mtls_certificate_names_the_client_and_its_rights(pki: Pki, tmp_path: Path) -> None:
    tokens = tmp_path / "tokens.json"
    TokenFile(tokens).add("shop", publish=["orders.#"])
    async with running(auth_tokens=str(tokens), **tls_settings(pki, mtls=True)) as (rt, _):
        shop = pki.client_context("shop")
        assert await post_event(rt.http_url, "orders.created", shop) == 200
        assert await post_event(rt.http_url, "payments.done", shop) == 403
        assert await post_event(rt.http_url, "orders.created", pki.client_context("nobody")) == 401
        with pytest.raises(aiohttp.ClientError):  # no certificate: the handshake fails
            await post_event(rt.http_url, "orders.created", pki.client_context())


async def test_grpc_over_tls_and_mtls(pki: Pki, tmp_path: Path) -> None:
    tokens = tmp_path / "tokens.json"
    TokenFile(tokens).add("shop", publish=["orders.#"])
    settings = tls_settings(pki, mtls=True)
    async with running(auth_tokens=str(tokens), grpc=True, **settings) as (rt, _):
        cert, key = pki.issue("shop")
        async with AsyncMeshClient(
            rt.grpc_target, tls_ca=str(pki.ca), tls_cert=str(cert), tls_key=str(key)
        ) as client:
            await client.publish("orders.created", new_event("t", {"n": 1}))
            with pytest.raises(PermissionDenied):
                await client.publish("payments.x", new_event("t", {"n": 1}))
        # Without a client certificate the TLS handshake is refused.
        credentials = grpc.ssl_channel_credentials(root_certificates=pki.ca.read_bytes())
        async with grpc.aio.secure_channel(rt.grpc_target, credentials) as channel:
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(channel.channel_ready(), 3)


async def test_tls_misconfiguration_is_explained(pki: Pki) -> None:
    runtime = Runtime(RuntimeConfig(http_port=0, grpc_port=0, tls_cert=str(pki.server_cert)))
    with pytest.raises(InsecureSetup, match="both --tls-cert and --tls-key"):
        await runtime.start()
    runtime = Runtime(
        RuntimeConfig(http_port=0, grpc_port=0, tls_cert="/nope.crt", tls_key="/nope.key")
    )
    with pytest.raises(InsecureSetup, match="cannot load the TLS files"):
        await runtime.start()


# -- webhook pushes ------------------------------------------------------------------------


async def _metric(client: object, name: str) -> float:
    _, text = await client.request("GET", "/metrics")  # type: ignore[attr-defined]
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + "{")
    )


async def test_https_sinks_are_verified_unless_their_ca_is_configured(pki: Pki) -> None:
    sink = await RecordingSink(ssl_context=pki.server_context()).start()
    try:
        async with running() as (_, client):
            await client.subscribe(topic="orders.#", group="untrusted", sink=sink.url)
            await client.publish("orders.created", event("1"))
            deadline = time.monotonic() + 20
            while await _metric(client, "meshtap_delivery_failures_total") < 1:
                assert time.monotonic() < deadline, "the push to an untrusted sink never failed"
                await asyncio.sleep(0.1)
            assert sink.pushes == []  # the TLS handshake failed before any request
        async with running(sink_ca_bundle=str(pki.ca)) as (_, client):
            await client.subscribe(topic="orders.#", group="trusted", sink=sink.url)
            await client.publish("orders.created", event("2"))
            pushes = await sink.wait_for(1, timeout=20)
            assert pushes[0].id == "2"
    finally:
        await sink.stop()


async def test_pushes_carry_a_verifiable_hmac_signature() -> None:
    key = "whsec-test-key"
    sink = await RecordingSink().start()
    try:
        async with running(webhook_signing_key=key) as (_, client):
            await client.subscribe(topic="orders.#", group="billing", sink=sink.url)
            await client.publish("orders.created", event("1"))
            (push,) = await sink.wait_for(1, timeout=20)
    finally:
        await sink.stop()
    header = push.headers["Meshtap-Signature"]
    assert header.startswith("t=")
    assert verify_push_signature(key, header, push.body)
    assert not verify_push_signature(key, header, push.body + b" ")  # tampered body
    assert not verify_push_signature("other-key", header, push.body)
    old = sign_push(key, push.body, int(time.time()) - 3600)
    assert not verify_push_signature(key, old, push.body)  # replayed an hour later
    assert not verify_push_signature(key, "garbage", push.body)


# -- SSRF guard ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "refused"),
    [
        ("http://127.0.0.1:8080/x", "127.0.0.0/8"),
        ("http://[::1]:8080/x", "::1/128"),
        ("http://169.254.169.254/latest", "169.254.0.0/16"),
        ("http://[::ffff:127.0.0.1]/x", "127.0.0.0/8"),
        ("http://100.100.100.200/x", "100.100.100.200/32"),
        ("http://10.1.2.3/x", "10.0.0.0/8"),  # blocked by --sink-block
        ("http://10.9.9.9/x", None),  # ...but exempted by --sink-allow
        ("http://192.168.1.20/x", None),
        ("https://billing.internal/x", None),  # names are checked when resolved
    ],
)
def test_sink_policy(url: str, refused: str | None) -> None:
    policy = sink_policy(
        RuntimeConfig(
            host="0.0.0.0",
            sink_blocked_networks=("10.0.0.0/8",),
            sink_allowed_networks=("10.9.0.0/16",),
        )
    )
    if refused is None:
        policy.check_url(url)
    else:
        with pytest.raises(InvalidSubscription, match=f"blocked network {refused}") as error:
            policy.check_url(url)
        assert "--sink-allow" in str(error.value)


def test_loopback_sinks_are_allowed_when_the_runtime_listens_on_loopback() -> None:
    sink_policy(RuntimeConfig(host="127.0.0.1")).check_url("http://127.0.0.1:9/x")
    with pytest.raises(InsecureSetup, match="not a network"):
        sink_policy(RuntimeConfig(sink_blocked_networks=("10.0.0.0/33",)))


async def test_public_runtime_refuses_loopback_sinks_at_subscribe_and_at_resolve() -> None:
    sink = await RecordingSink().start()
    try:
        async with running(host="0.0.0.0", allow_anonymous=True) as (rt, client):
            client.base_url = client.base_url.replace("0.0.0.0", "127.0.0.1")
            status, reply = await client.request(
                "POST",
                "/v1/subscriptions",
                json={"topic": "orders.#", "group": "g", "sink": sink.url},
            )
            assert status == 400
            assert "blocked network 127.0.0.0/8" in reply["message"]
            # A name that resolves to loopback passes the subscribe check, but no push leaves.
            by_name = sink.url.replace("127.0.0.1", "localhost")
            await client.subscribe(topic="orders.#", group="g", sink=by_name)
            await client.publish("orders.created", event("1"))
            deadline = time.monotonic() + 20
            while await _metric(client, "meshtap_delivery_failures_total") < 1:
                assert time.monotonic() < deadline, "the push to a loopback name never failed"
                await asyncio.sleep(0.1)
            assert sink.pushes == []
            assert isinstance(rt.sink_policy, SinkPolicy)
    finally:
        await sink.stop()


def test_security_names_are_exported() -> None:
    import runtime

    exported = set(runtime.__all__)
    assert {
        "Forbidden",
        "InsecureSetup",
        "Principal",
        "RateLimited",
        "SIGNATURE_HEADER",
        "SinkPolicy",
        "TokenFile",
        "Unauthenticated",
        "sign_push",
        "verify_push_signature",
    } <= exported
    assert all(getattr(runtime, name) is not None for name in exported)
