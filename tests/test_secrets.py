"""Secrets never reach logs or the capture store: API tokens, JWTs and forged credentials sent
on every API path, with every logger at DEBUG. (Redaction of configured event fields and
extensions before capture is covered by tests/test_recorder.py::
test_redacted_values_appear_in_no_stored_row, which greps every stored row.)"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import jwt
import pytest

from runtime._auth import TokenFile
from tests.meshes import event, running
from tests.sinks import RecordingSink
from tests.test_recorder import Store, one_string, store
from tracing import ClickHouseCapture

__all__ = ["store"]  # the fixture (chDB and clickhouse-server)

pytestmark = pytest.mark.clickhouse

JWT_SECRET = "jwt-signing-secret-never-logged-0123456789"


async def test_credentials_appear_in_no_log_line_and_no_stored_row(
    store: Store, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    tokens = tmp_path / "tokens.json"
    token = TokenFile(tokens).add("shop", publish=["orders.#", "webhook.#"], subscribe=["#"])
    signed = jwt.encode(
        {"sub": "svc", "exp": int(time.time()) + 60, "publish": ["orders.#"]}, JWT_SECRET
    )
    forged = token[:-6] + "forged"
    secrets = [token.split("_", 2)[2], signed, JWT_SECRET, forged.split("_", 2)[2]]
    sink = await RecordingSink().start()
    capture = ClickHouseCapture(store.config())
    try:
        async with running(capture=capture, auth_tokens=str(tokens), jwt_secret=JWT_SECRET) as (
            _,
            client,
        ):
            auth = {"Authorization": f"Bearer {token}"}
            status, _ = await client.request(
                "POST",
                "/v1/subscriptions",
                json={"topic": "#", "group": "g", "sink": sink.url},
                headers=auth,
            )
            assert status == 201
            for credentials in (auth, {"Authorization": f"Bearer {signed}"}):
                status, _ = await client.request(
                    "POST",
                    "/v1/topics/orders.created/events",
                    data=json.dumps(event(f"e-{len(credentials)}-{status}")),
                    headers={"content-type": "application/cloudevents+json", **credentials},
                )
                assert status == 200
            status, _ = await client.request(
                "POST", "/eventmesh/publish/orders.em", data=b"{}", headers={"token": token}
            )
            assert status == 200
            status, _ = await client.request(
                "POST", "/webhook/github", data=b"{}", headers={**auth, "token": token}
            )
            assert status == 202
            for bad in (forged, "not-a-token", signed + "x"):
                status, _ = await client.request(
                    "POST",
                    "/v1/topics/orders.created/events",
                    data=b"{}",
                    headers={"Authorization": f"Bearer {bad}"},
                )
                assert status == 401
            await sink.wait_for(4, timeout=20)
    finally:
        await sink.stop()
    logged = caplog.text
    assert "denied" in logged  # the refusals were logged ...
    text, data = one_string(store)
    pushed = b"".join(p.body + repr(p.headers).encode() for p in sink.pushes)
    for secret in secrets:  # ... without any secret, and nothing stored or pushed has one
        assert secret not in logged
        assert secret not in text
        assert secret.encode() not in data
        assert secret.encode() not in pushed
