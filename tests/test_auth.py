"""Authentication and authorisation of the runtime's APIs: tokens, JWT, ACLs, rate limits."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import grpc  # type: ignore[import-untyped]
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExportResult

from runtime._auth import TokenBuckets, TokenFile, pattern_allows
from runtime._config import RuntimeConfig
from runtime._errors import InsecureSetup, RateLimited
from runtime._grpc_api import PACKAGE
from runtime._grpc_codec import PbCloudEvent
from runtime._server import Runtime
from runtime.client import AsyncMeshClient, AuthenticationFailed, PermissionDenied, new_event
from tests.grpc_stubs import Api, pb_event, subscription
from tests.meshes import ROOT, event, free_port, running
from tests.test_capture_hooks import ListCapture
from tests.test_otlp_receiver import app_spans, export_grpc, export_http, receiver_ports

STRUCTURED = {"content-type": "application/cloudevents+json"}
__all__ = ["app_spans"]  # the fixture, shared with tests/test_otlp_receiver.py


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def tokens(tmp_path: Path) -> tuple[str, dict[str, str]]:
    """A tokens file with three clients: a publisher, a subscriber and a replayer."""
    path = tmp_path / "tokens.json"
    file = TokenFile(path)
    issued = {
        "shop": file.add("shop", publish=["orders.#"]),
        "billing": file.add("billing", subscribe=["orders.*"]),
        "replayer": file.add("replayer", replay=["orders.#"]),
        "root": file.add("root", publish=["#"], subscribe=["#"], admin=True),
    }
    return str(path), issued


async def publish(client: Any, topic: str, token: str | None, **extra: Any) -> tuple[int, Any]:
    headers = {**STRUCTURED, **(bearer(token) if token else {})}
    return await client.request(  # type: ignore[no-any-return]
        "POST", f"/v1/topics/{topic}/events", data=json.dumps(event("1", **extra)), headers=headers
    )


# -- the tokens file and the CLI --------------------------------------------------------------


def test_tokens_file_keeps_salted_hashes_only(tokens: tuple[str, dict[str, str]]) -> None:
    path, issued = tokens
    text = Path(path).read_text()
    for token in issued.values():
        secret = token.split("_", 2)[2]
        assert token not in text
        assert secret not in text
    records = TokenFile(path).load()
    assert records["shop"].publish == ("orders.#",)
    assert records["billing"].subscribe == ("orders.*",)
    assert len({r.salt for r in records.values()}) == 4  # one salt per client
    assert Path(path).stat().st_mode & 0o077 == 0  # readable by its owner only


def test_cli_adds_a_client_prints_the_token_once_and_lists_no_secret(tmp_path: Path) -> None:
    path = tmp_path / "t.json"

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "runtime", "tokens", "--file", str(path), *args],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=ROOT,
            check=False,
        )

    added = run("add", "shop", "--publish", "orders.#", "--subscribe", "orders.*")
    assert added.returncode == 0, added.stderr
    token = added.stdout.strip()
    assert token.startswith("mtk_")
    assert "shown only now" in added.stderr
    listed = run("list")
    assert "shop" in listed.stdout
    assert "publish=orders.#" in listed.stdout
    assert token.split("_", 2)[2] not in listed.stdout + path.read_text()
    bad = run("add", "x", "--publish", "orders..#")
    assert bad.returncode == 2
    assert "publish right 'orders..#'" in bad.stderr
    assert run("remove", "shop").returncode == 0
    assert run("remove", "shop").returncode == 1


@pytest.mark.parametrize(
    ("grant", "wanted", "allowed"),
    [
        ("orders.#", "orders.created", True),
        ("orders.#", "orders.eu.*", True),
        ("orders.#", "orders.#", True),
        ("orders.*", "orders.created", True),
        ("orders.*", "orders.*", True),
        ("orders.*", "orders.#", False),  # '#' may be several segments
        ("orders.*", "orders.eu.created", False),
        ("orders.created", "orders.*", False),
        ("#", "payments.x", True),
        ("#", "_dlq.billing", False),  # internal topics only by name
        ("_dlq.billing", "_dlq.billing", True),
        ("*.created", "orders.created", True),
        ("*.created", "#", False),
    ],
)
def test_rights_cover_topics_and_patterns(grant: str, wanted: str, allowed: bool) -> None:
    assert pattern_allows(grant, wanted) is allowed


def test_token_bucket_refuses_with_the_wait() -> None:
    buckets = TokenBuckets(rate=2, burst=2)
    buckets.take("a", now=100.0)
    buckets.take("a", now=100.0)
    with pytest.raises(RateLimited) as refused:
        buckets.take("a", now=100.0)
    assert refused.value.retry_after_s == 1
    assert "2 requests/s" in str(refused.value)
    buckets.take("b", now=100.0)  # per client
    buckets.take("a", now=100.6)  # refilled


# -- start-up ------------------------------------------------------------------------------


async def test_open_mesh_on_a_public_interface_refuses_to_start() -> None:
    runtime = Runtime(RuntimeConfig(host="0.0.0.0", http_port=0, grpc_port=0))
    with pytest.raises(InsecureSetup, match=r"--auth-tokens FILE .*--allow-anonymous"):
        await runtime.start()


def test_cli_says_what_to_set_for_a_public_interface() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "runtime", "--host", "0.0.0.0", "--http-port", "0"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        check=False,
        env={"MESHTAP_GRPC_PORT": "0", "MESHTAP_OTLP_HTTP_PORT": "0", "PATH": "/usr/bin"},
    )
    assert result.returncode == 2
    assert "MESHTAP_AUTH_TOKENS" in result.stderr
    assert "MESHTAP_ALLOW_ANONYMOUS" in result.stderr


async def test_allow_anonymous_opens_a_public_interface_explicitly() -> None:
    async with running(host="0.0.0.0", allow_anonymous=True) as (_, client):
        client.base_url = client.base_url.replace("0.0.0.0", "127.0.0.1")
        assert (await publish(client, "orders.created", None))[0] == 200


# -- HTTP ----------------------------------------------------------------------------------


async def test_http_requires_a_valid_token(
    tokens: tuple[str, dict[str, str]], caplog: pytest.LogCaptureFixture
) -> None:
    path, issued = tokens
    caplog.set_level(logging.INFO)
    async with running(auth_tokens=path) as (_, client):
        status, reply = await publish(client, "orders.created", None)
        assert status == 401
        assert reply["error"] == "unauthenticated"
        assert "Authorization: Bearer" in reply["message"]
        forged = issued["shop"][:-4] + "AAAA"
        status, reply = await publish(client, "orders.created", forged)
        assert status == 401
        assert "unknown or wrong" in reply["message"]
        assert forged not in reply["message"]
        assert (await client.request("GET", "/healthz"))[0] == 200  # probes stay open
        assert (await publish(client, "orders.created", issued["shop"]))[0] == 200
        _, metrics = await client.request("GET", "/metrics", headers=bearer(issued["root"]))
        assert 'meshtap_auth_denied_total{reason="unauthenticated"} 2.0' in metrics
    logged = caplog.text
    assert "denied" in logged
    for token in issued.values():  # secrets never logged, not even the forged one's secret
        assert token.split("_", 2)[2] not in logged
    assert forged.split("_", 2)[2] not in logged


async def test_http_rights_per_topic_and_right(tokens: tuple[str, dict[str, str]]) -> None:
    path, issued = tokens
    async with running(auth_tokens=path) as (_, client):
        status, reply = await publish(client, "payments.done", issued["shop"])
        assert status == 403
        assert reply["error"] == "forbidden"
        assert "'shop' may not publish 'payments.done'" in reply["message"]
        assert "--publish 'payments.done'" in reply["message"]
        # Subscribing needs the subscribe right on the whole pattern.
        sub = {"topic": "orders.#", "group": "billing", "sink": "http://127.0.0.1:9/x"}
        status, reply = await client.request(
            "POST", "/v1/subscriptions", json=sub, headers=bearer(issued["billing"])
        )
        assert status == 403
        assert "may not subscribe 'orders.#'" in reply["message"]
        sub["topic"] = "orders.*"
        status, created = await client.request(
            "POST", "/v1/subscriptions", json=sub, headers=bearer(issued["billing"])
        )
        assert status == 201
        status, reply = await client.request(
            "POST", "/v1/subscriptions", json=sub, headers=bearer(issued["shop"])
        )
        assert status == 403
        # Others' subscriptions are invisible and cannot be removed.
        _, listed = await client.request("GET", "/v1/subscriptions", headers=bearer(issued["shop"]))
        assert listed["subscriptions"] == []
        status, _ = await client.request(
            "DELETE", f"/v1/subscriptions/{created['id']}", headers=bearer(issued["shop"])
        )
        assert status == 403
        # Deleting topics is for admins.
        status, reply = await client.request(
            "DELETE", "/v1/topics/orders.created", headers=bearer(issued["shop"])
        )
        assert status == 403
        assert "admin" in reply["message"]
        _, metrics = await client.request("GET", "/metrics", headers=bearer(issued["root"]))
        assert 'meshtap_auth_denied_total{reason="forbidden"} 5.0' in metrics


async def test_replayed_events_need_the_replay_right(tokens: tuple[str, dict[str, str]]) -> None:
    path, issued = tokens
    async with running(auth_tokens=path) as (_, client):
        status, reply = await publish(client, "orders.created", issued["shop"], replayid="r1")
        assert status == 403
        assert "may not replay 'orders.created'" in reply["message"]
        assert (await publish(client, "orders.created", issued["replayer"], replayid="r1"))[
            0
        ] == 200
        status, _ = await publish(client, "orders.created", issued["replayer"])
        assert status == 403  # the replay right is not a publish right


async def test_eventmesh_routes_answer_acl_refusals_with_their_retcode(
    tokens: tuple[str, dict[str, str]],
) -> None:
    path, issued = tokens
    async with running(auth_tokens=path) as (_, client):
        status, reply = await client.request("POST", "/eventmesh/publish/orders.created", data=b"x")
        assert status == 401
        assert reply["retCode"] == 17
        assert "no credentials" in reply["retMsg"]
        status, reply = await client.request(
            "POST", "/eventmesh/publish/payments.done", data=b"x", headers=bearer(issued["shop"])
        )
        assert status == 403
        assert reply["retCode"] == 17
        assert "may not publish 'payments.done'" in reply["retMsg"]
        status, reply = await client.request(
            "POST",
            "/eventmesh/publish/orders.created",
            data=b"x",
            headers={"token": issued["shop"]},
        )
        assert status == 200
        assert reply["retCode"] == 0
        status, reply = await client.request(
            "POST", "/", headers={"code": "104"}, data=b"topic=orders.created&content=x"
        )
        assert status == 401
        assert reply["retCode"] == 17
        assert "resTime" in reply


async def test_rate_limit_answers_429_with_retry_after(tokens: tuple[str, dict[str, str]]) -> None:
    path, issued = tokens
    async with running(auth_tokens=path, rate_limit=1, rate_burst=3) as (_, client):
        statuses = [(await publish(client, "orders.created", issued["shop"]))[0] for _ in range(4)]
        assert statuses == [200, 200, 200, 429]
        async with client.session.post(
            client.base_url + "/v1/topics/orders.created/events",
            data=json.dumps(event("2")),
            headers={**STRUCTURED, **bearer(issued["shop"])},
        ) as response:
            assert response.status == 429
            assert int(response.headers["Retry-After"]) >= 1
            assert "rate limit of 1 requests/s" in (await response.json())["message"]
        # Another client has its own bucket.
        assert (await publish(client, "orders.created", issued["root"]))[0] == 200
        status, reply = await client.request(
            "POST", "/eventmesh/publish/orders.x", data=b"x", headers=bearer(issued["shop"])
        )
        assert status == 429
        assert reply["retCode"] == 10


# -- JWT -----------------------------------------------------------------------------------


def _jwt_claims(**extra: Any) -> dict[str, Any]:
    return {"sub": "svc", "exp": int(time.time()) + 300, "publish": ["orders.#"], **extra}


async def test_hs256_jwt_carries_the_rights() -> None:
    secret = "s3cret-key-for-tests-only-0123456789abcdef"
    async with running(jwt_secret=secret) as (_, client):
        good = jwt.encode(_jwt_claims(), secret, algorithm="HS256")
        assert (await publish(client, "orders.created", good))[0] == 200
        status, reply = await publish(client, "payments.x", good)
        assert status == 403
        assert "'svc' may not publish" in reply["message"]
        expired = jwt.encode(_jwt_claims(exp=int(time.time()) - 10), secret, algorithm="HS256")
        status, reply = await publish(client, "orders.created", expired)
        assert status == 401
        assert "expired" in reply["message"]
        forged = jwt.encode(_jwt_claims(), "another-secret-of-enough-length-0123456789", "HS256")
        assert (await publish(client, "orders.created", forged))[0] == 401
        no_exp = jwt.encode({"sub": "svc", "publish": ["#"]}, secret, algorithm="HS256")
        status, reply = await publish(client, "orders.created", no_exp)
        assert status == 401
        assert "exp" in reply["message"]


async def test_rs256_jwt_is_verified_with_the_public_key(tmp_path: Path) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = tmp_path / "jwt.pub"
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    async with running(jwt_public_key=str(public)) as (_, client):
        token = jwt.encode(_jwt_claims(), key, algorithm="RS256")
        assert (await publish(client, "orders.created", token))[0] == 200
        other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        assert (await publish(client, "orders.created", jwt.encode(_jwt_claims(), other, "RS256")))[
            0
        ] == 401


# -- gRPC and the Python client --------------------------------------------------------------


async def test_grpc_answers_unauthenticated_and_permission_denied(
    tokens: tuple[str, dict[str, str]],
) -> None:
    path, issued = tokens
    async with running(auth_tokens=path, grpc=True) as (rt, _):
        async with AsyncMeshClient(rt.grpc_target) as anonymous:
            with pytest.raises(AuthenticationFailed, match="no credentials"):
                await anonymous.publish("orders.created", new_event("t", {"n": 1}))
        async with AsyncMeshClient(rt.grpc_target, token=issued["shop"]) as shop:
            await shop.publish("orders.created", new_event("t", {"n": 1}))
            with pytest.raises(PermissionDenied, match=r"may not publish .payments\.x."):
                await shop.publish("payments.x", new_event("t", {"n": 1}))
        async with AsyncMeshClient(rt.grpc_target, token=issued["billing"]) as billing:
            subscription = await billing.subscribe("orders.*", group="billing")
            await subscription.close()
            with pytest.raises(PermissionDenied):
                await billing.subscribe("payments.*", group="billing")


async def test_grpc_status_codes_on_the_wire(tokens: tuple[str, dict[str, str]]) -> None:
    """Raw calls (no SDK) see the gRPC status codes EventMesh clients switch on."""
    path, issued = tokens
    async with running(auth_tokens=path, grpc=True) as (rt, _):
        api = Api(rt.grpc_target)
        call = api.channel.unary_unary(
            f"/{PACKAGE}.PublisherService/publish",
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=PbCloudEvent.FromString,
        )
        try:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await call(pb_event("1", "orders.created", "x"), timeout=10)
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
            shop = (("authorization", f"Bearer {issued['shop']}"),)
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await call(pb_event("2", "payments.x", "x"), timeout=10, metadata=shop)
            assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert "may not publish 'payments.x'" in (refused.value.details() or "")
            reply = await call(pb_event("3", "orders.created", "x"), timeout=10, metadata=shop)
            assert reply.attributes["statuscode"].ce_string == "0"
            stream = api.stream()
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stream.open(subscription("g", "orders.*"))
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        finally:
            await api.close()


async def test_replay_target_sends_its_token_and_needs_the_replay_right(
    tokens: tuple[str, dict[str, str]],
) -> None:
    from replay import HttpTarget, TargetRejected

    path, issued = tokens
    replayed = [event("r-1", replayid="r-abc")]
    async with running(auth_tokens=path) as (rt, _):
        for token, refusal in (("", "401"), (issued["shop"], "may not replay")):
            target = HttpTarget(rt.http_url, token=token)
            try:
                with pytest.raises(TargetRejected, match=refusal):
                    await target.send("orders.created", replayed)
            finally:
                await target.close()
        target = HttpTarget(rt.http_url, token=issued["replayer"])
        try:
            await target.send("orders.created", replayed)
        finally:
            await target.close()


async def test_grpc_rate_limit_is_resource_exhausted_with_the_wait(
    tokens: tuple[str, dict[str, str]],
) -> None:
    path, issued = tokens
    async with running(auth_tokens=path, rate_limit=1, rate_burst=2, grpc=True) as (rt, _):
        api = Api(rt.grpc_target)
        call = api.channel.unary_unary(
            f"/{PACKAGE}.PublisherService/publish",
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=PbCloudEvent.FromString,
        )
        shop = (("authorization", f"Bearer {issued['shop']}"),)
        try:
            for n in range(2):
                await call(pb_event(f"{n}", "orders.created", "x"), timeout=10, metadata=shop)
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await call(pb_event("3", "orders.created", "x"), timeout=10, metadata=shop)
            assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "retry after 1 s" in (refused.value.details() or "")
        finally:
            await api.close()


async def test_otlp_receiver_takes_spans_only_from_authenticated_exporters(
    tokens: tuple[str, dict[str, str]], app_spans: list[ReadableSpan]
) -> None:

    path, issued = tokens
    capture = ListCapture()
    async with running(
        capture=capture,
        auth_tokens=path,
        otlp_http_port=free_port(),
        otlp_grpc_port=free_port(),
    ) as (rt, _):
        http_port, grpc_port = receiver_ports(rt)
        spans = app_spans
        assert await export_http(http_port, spans) == SpanExportResult.FAILURE
        assert await export_grpc(grpc_port, spans) == SpanExportResult.FAILURE
        assert capture.spans == []
        headers = {"authorization": f"Bearer {issued['shop']}"}
        assert await export_http(http_port, spans, headers=headers) == SpanExportResult.SUCCESS
        assert await export_grpc(grpc_port, spans, headers=headers) == SpanExportResult.SUCCESS
        assert len(capture.spans) == 2 * len(spans)
