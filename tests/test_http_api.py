"""The native HTTP API: what it accepts, and the clear errors it gives for what it does not."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from urllib.parse import quote

import pytest

from runtime import CloudEvent
from tests.meshes import Client, event, running
from tests.sinks import RecordingSink

STRUCTURED = {"content-type": "application/cloudevents+json"}
BATCH = {"content-type": "application/cloudevents-batch+json"}


@pytest.fixture
async def mesh() -> AsyncIterator[Client]:
    async with running(max_payload_bytes=4096) as (_, client):
        yield client


@pytest.mark.parametrize("missing", ["id", "source", "type", "specversion"])
async def test_missing_required_attribute_is_named(mesh: Client, missing: str) -> None:
    body = event("e-1")
    del body[missing]
    status, reply = await mesh.request(
        "POST", "/v1/topics/orders/events", data=json.dumps(body), headers=STRUCTURED
    )
    assert status == 400
    assert reply["error"] == "invalid_cloudevent"
    assert f"missing required CloudEvents attribute(s) '{missing}'" in reply["message"]


async def test_missing_attribute_in_binary_mode_is_named(mesh: Client) -> None:
    status, reply = await mesh.publish_binary("orders", b"{}", id="1", source="/s")
    assert status == 400
    assert "'type'" in reply["message"]
    assert "binary mode" in reply["message"]


async def test_wrong_specversion(mesh: Client) -> None:
    status, reply = await mesh.request(
        "POST",
        "/v1/topics/orders/events",
        data=json.dumps(event("e-1", specversion="0.9")),
        headers=STRUCTURED,
    )
    assert status == 400
    assert "specversion" in reply["message"]
    assert "1.0" in reply["message"]


async def test_malformed_json(mesh: Client) -> None:
    status, reply = await mesh.request(
        "POST", "/v1/topics/orders/events", data=b'{"id": "1",', headers=STRUCTURED
    )
    assert status == 400
    assert reply["error"] == "invalid_cloudevent"
    assert reply["message"].startswith("the structured event is not valid JSON")


async def test_not_a_cloudevent_at_all(mesh: Client) -> None:
    status, reply = await mesh.request(
        "POST", "/v1/topics/orders/events", data=b"hello", headers={"content-type": "text/plain"}
    )
    assert status == 400
    assert "binary mode" in reply["message"]
    assert "'text/plain'" in reply["message"]


async def test_bad_time_attribute(mesh: Client) -> None:
    status, reply = await mesh.request(
        "POST",
        "/v1/topics/orders/events",
        data=json.dumps(event("e-1", time="yesterday")),
        headers=STRUCTURED,
    )
    assert status == 400
    assert "'time' = 'yesterday'" in reply["message"]


async def test_batch_with_one_bad_event_is_refused_whole(mesh: Client) -> None:
    sink = await RecordingSink().start()
    try:
        await mesh.subscribe(topic="orders", group="g", sink=sink.url)
        bad = event("e-2")
        del bad["source"]
        status, reply = await mesh.request(
            "POST",
            "/v1/topics/orders/events",
            data=json.dumps([event("e-1"), bad, event("e-3")]),
            headers=BATCH,
        )
        assert status == 400
        assert "event [1] of the batch" in reply["message"]
        assert "'source'" in reply["message"]
        await mesh.publish("orders", event("e-4"))
        await sink.wait_for(1)
        assert sink.ids() == ["e-4"]  # nothing of the refused batch was stored
    finally:
        await sink.stop()


async def test_batch_must_be_a_non_empty_array(mesh: Client) -> None:
    status, reply = await mesh.request(
        "POST", "/v1/topics/orders/events", data=b"{}", headers=BATCH
    )
    assert status == 400
    assert "JSON array" in reply["message"]
    status, reply = await mesh.request(
        "POST", "/v1/topics/orders/events", data=b"[]", headers=BATCH
    )
    assert status == 400
    assert "empty" in reply["message"]


@pytest.mark.parametrize("topic", ["orders..created", "orders.*", "orders.#", "-" * 300, "a b"])
async def test_invalid_topic_name(mesh: Client, topic: str) -> None:
    status, reply = await mesh.request(
        "POST",
        f"/v1/topics/{quote(topic, safe='')}/events",
        data=json.dumps(event("e-1")),
        headers=STRUCTURED,
    )
    assert status == 400
    assert reply["error"] == "invalid_topic"


async def test_reserved_topic_cannot_be_published_to(mesh: Client) -> None:
    status, reply = await mesh.request(
        "POST", "/v1/topics/_dlq.billing/events", data=json.dumps(event("1")), headers=STRUCTURED
    )
    assert status == 400
    assert "reserved" in reply["message"]


async def test_payload_over_limit_is_413(mesh: Client) -> None:
    big = event("e-1", data={"blob": "x" * 5000})
    status, reply = await mesh.request(
        "POST", "/v1/topics/orders/events", data=json.dumps(big), headers=STRUCTURED
    )
    assert status == 413
    assert reply["error"] == "payload_too_large"
    assert "limit is 4096 bytes" in reply["message"]
    assert "--max-payload-bytes" in reply["message"]


async def test_payload_over_limit_without_content_length_is_413(mesh: Client) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(10):
            yield b"x" * 1000

    status, reply = await mesh.request(
        "POST",
        "/v1/topics/orders/events",
        data=chunks(),
        headers={"ce-id": "1", "ce-source": "/s", "ce-type": "t", "ce-specversion": "1.0"},
    )
    assert status == 413
    assert "limit is 4096 bytes" in reply["message"]


async def test_unknown_subscription_is_404(mesh: Client) -> None:
    for method in ("GET", "DELETE"):
        status, reply = await mesh.request(method, "/v1/subscriptions/nope")
        assert status == 404
        assert reply["error"] == "subscription_not_found"
        assert "'nope'" in reply["message"]


async def test_subscription_lifecycle(mesh: Client) -> None:
    created = await mesh.subscribe(
        topic="orders.#", group="billing", sink="http://127.0.0.1:9/x", mode="broadcast"
    )
    assert created["mode"] == "broadcast"
    status, listed = await mesh.request("GET", "/v1/subscriptions")
    assert status == 200
    assert [s["id"] for s in listed["subscriptions"]] == [created["id"]]
    status, one = await mesh.request("GET", f"/v1/subscriptions/{created['id']}")
    assert one == created
    status, _ = await mesh.request("DELETE", f"/v1/subscriptions/{created['id']}")
    assert status == 200
    status, listed = await mesh.request("GET", "/v1/subscriptions")
    assert listed["subscriptions"] == []


@pytest.mark.parametrize(
    ("sink", "expected"),
    [
        ("ftp://example.com/x", "must be an http:// or https:// URL"),
        ("file:///etc/passwd", "must be an http:// or https:// URL"),
        ("http://169.254.169.254/latest/meta-data", "link-local"),
        ("http://[fe80::1]/x", "link-local"),
        ("http://metadata.google.internal/computeMetadata", "cloud metadata endpoint"),
        ("http://0.0.0.0:8080/x", "unspecified address"),
        ("http:///nohost", "has no host"),
    ],
)
async def test_refused_sink_urls(mesh: Client, sink: str, expected: str) -> None:
    status, reply = await mesh.request(
        "POST", "/v1/subscriptions", json={"topic": "orders", "group": "g", "sink": sink}
    )
    assert status == 400
    assert reply["error"] == "invalid_subscription"
    assert expected in reply["message"]
    assert sink in reply["message"]


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"filters": [{"regex": {"type": "x"}}]}, "filters[0]: unknown dialect 'regex'"),
        ({"filters": [{"any": [{"exact": {"type": 5}}]}]}, "filters[0].any[0].exact"),
        ({"filters": {"exact": {"type": "x"}}}, "filters"),
    ],
)
async def test_bad_filter_says_which_part(
    mesh: Client, body: dict[str, object], expected: str
) -> None:
    request = {"topic": "orders", "group": "g", "sink": "http://127.0.0.1:9/x", **body}
    status, reply = await mesh.request("POST", "/v1/subscriptions", json=request)
    assert status == 400
    assert reply["error"] == "invalid_filter"
    assert expected in reply["message"]


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"topic": "orders"}, "'group' is required"),
        ({"group": "g", "sink": "http://x/"}, "'topic' is required"),
        ({"topic": "orders", "group": "g", "sink": "http://x/", "mode": "fanout"}, "'mode'"),
        ({"topic": "orders", "group": "g", "sink": "http://x/", "colour": 1}, "'colour'"),
        (
            {"topic": "orders", "group": "g", "sink": "http://x/", "retry": {"max_attempts": 0}},
            "'max_attempts' must be an integer from 1 to 100",
        ),
        ({"topic": "orders..x", "group": "g", "sink": "http://x/"}, "orders..x"),
    ],
)
async def test_bad_subscription_bodies(
    mesh: Client, body: dict[str, object], expected: str
) -> None:
    status, reply = await mesh.request("POST", "/v1/subscriptions", json=body)
    assert status == 400
    assert expected in reply["message"]


async def test_subscription_body_must_be_json(mesh: Client) -> None:
    status, reply = await mesh.request("POST", "/v1/subscriptions", data=b"{nope")
    assert status == 400
    assert "not valid JSON" in reply["message"]


async def test_unknown_endpoint_and_method(mesh: Client) -> None:
    status, reply = await mesh.request("GET", "/v2/nothing")
    assert status == 404
    assert "GET /v2/nothing" in reply["message"]
    status, reply = await mesh.request("GET", "/v1/topics/orders/events")
    assert status == 405


async def test_topics_are_listed_created_and_deleted(mesh: Client) -> None:
    status, _ = await mesh.request("PUT", "/v1/topics/orders.created")
    assert status == 201
    await mesh.publish("payments.made", event("1"))
    status, reply = await mesh.request("GET", "/v1/topics")
    assert reply == {"topics": ["orders.created", "payments.made"]}
    status, _ = await mesh.request("DELETE", "/v1/topics/orders.created")
    assert status == 200
    status, reply = await mesh.request("DELETE", "/v1/topics/orders.created")
    assert status == 404


async def test_health_and_readiness(mesh: Client) -> None:
    assert await mesh.request("GET", "/healthz") == (200, {"status": "ok"})
    status, reply = await mesh.request("GET", "/readyz")
    assert (status, reply["status"]) == (200, "ready")


async def test_webhook_source_turns_any_request_into_an_event() -> None:
    async with running(webhook_topics={"github": "scm.github"}) as (_, mesh):
        sink = await RecordingSink().start()
        try:
            await mesh.subscribe(topic="scm.github", group="ci", sink=sink.url)
            await mesh.subscribe(topic="webhook.#", group="all", sink=sink.url)
            status, reply = await mesh.request(
                "POST",
                "/webhook/github?delivery=7&delivery=8",
                data=b'{"ref": "main"}',
                headers={"X-GitHub-Event": "push", "Authorization": "token secret"},
            )
            assert status == 202
            assert reply["topic"] == "scm.github"
            status, reply = await mesh.request("PUT", "/webhook/stripe", data=b"\xff\x00")
            assert (status, reply["topic"]) == (202, "webhook.stripe")
            await sink.wait_for(2)
            github = next(p for p in sink.pushes if p.attributes["source"] == "/webhook/github")
            assert github.attributes["type"] == "io.meshtap.webhook.request"
            data = json.loads(github.body)
            assert data["method"] == "POST"
            assert data["path"] == "/webhook/github"
            assert data["query"] == {"delivery": ["7", "8"]}
            assert data["headers"]["X-GitHub-Event"] == "push"
            assert "Authorization" not in data["headers"]  # mesh credentials never travel on
            assert data["body"] == '{"ref": "main"}'
            stripe = next(p for p in sink.pushes if p.attributes["source"] == "/webhook/stripe")
            assert json.loads(stripe.body)["body_base64"] == "/wA="
        finally:
            await sink.stop()


def test_cloudevent_is_frozen() -> None:
    e = CloudEvent({"id": "1"}, b"x")
    with pytest.raises(AttributeError):
        e.data = b"y"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("batch", "expected"),
    [
        ({"max_events": 0}, "'max_events' must be an integer from 1 to 1000"),
        ({"max_events": 5000}, "'max_events' must be an integer from 1 to 1000"),
        ({"max_wait_ms": -1}, "'max_wait_ms' must be an integer from 0 to 10000"),
        ({"size": 5}, "unknown batch field(s) 'size'"),
        ([5], "'batch' must be an object"),
    ],
)
async def test_bad_batch_policy(mesh: Client, batch: object, expected: str) -> None:
    body = {"topic": "orders", "group": "g", "sink": "http://127.0.0.1:9/x", "batch": batch}
    status, reply = await mesh.request("POST", "/v1/subscriptions", json=body)
    assert status == 400
    assert expected in reply["message"]
