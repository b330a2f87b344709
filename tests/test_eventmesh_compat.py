"""EventMesh-compatible HTTP: EventMesh clients and webhook subscribers work against Meshtap.

Each test runs a real runtime (memory store) and real HTTP subscribers; requests are shaped the
way EventMesh's curl examples and its Java SDK send them (docs/eventmesh-compat-notes.md).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import parse_qsl

import pytest
from aiohttp import web

from runtime._eventmesh import EventMeshContract
from runtime._push import Outcome
from tests.meshes import Client, running
from tests.sinks import Behaviour, Push, RecordingSink

TOPIC = "TEST-TOPIC-HTTP-ASYNC"
LIMIT = 4096
TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
BODY_ERROR = "eventMesh protocol[body] error: "
SDK_HEADERS = {  # what EventMeshHttpProducer/Consumer send besides `code`
    "env": "dev",
    "idc": "idc1",
    "ip": "127.0.0.1",
    "pid": "4242",
    "sys": "1234",
    "username": "eventmesh",
    "passwd": "secret",
    "language": "JAVA",
    "version": "1.0",
}

SinkFactory = Callable[..., Awaitable[RecordingSink]]
Reply = tuple[int, Any, dict[str, str]]


@pytest.fixture
async def mesh() -> AsyncIterator[Client]:
    async with running(max_payload_bytes=LIMIT) as (_, client):
        yield client


@pytest.fixture
async def new_sink() -> AsyncIterator[SinkFactory]:
    started: list[RecordingSink] = []

    async def make(respond: Behaviour | None = None) -> RecordingSink:
        sink = await RecordingSink(respond=respond).start()
        started.append(sink)
        return sink

    yield make
    for sink in started:
        await sink.stop()


def answer(code: int) -> Behaviour:
    """A subscriber that replies like EventMesh's example webhook: `{"retCode": code}`."""
    return lambda push: web.json_response({"retCode": code})


async def call(mesh: Client, method: str, path: str, **kwargs: Any) -> Reply:
    async with mesh.session.request(method, mesh.base_url + path, **kwargs) as response:
        text = await response.text()
        headers = {k.lower(): v for k, v in response.headers.items()}
        try:
            return response.status, json.loads(text), headers
        except ValueError:
            return response.status, text, headers


async def sdk(mesh: Client, code: str, form: dict[str, str], **headers: str) -> Reply:
    """A request as the Java SDK sends it: form-encoded POST to `/` with a `code` header."""
    return await call(
        mesh, "POST", "/", data=form, headers={**SDK_HEADERS, "code": code, **headers}
    )


async def em_subscribe(
    mesh: Client, url: str, group: str, *topics: str, mode: str = "CLUSTERING"
) -> dict[str, Any]:
    body = {
        "url": url,
        "consumerGroup": group,
        "topic": [{"topic": t, "mode": mode, "type": "ASYNC"} for t in topics],
    }
    status, reply = await mesh.request("POST", "/eventmesh/subscribe/local", json=body)
    assert status == 200, reply
    assert reply["retCode"] == 0, reply
    return reply  # type: ignore[no-any-return]


async def em_publish(mesh: Client, topic: str, body: bytes, **headers: str) -> dict[str, Any]:
    status, reply = await mesh.request(
        "POST",
        f"/eventmesh/publish/{topic}",
        data=body,
        headers={"Content-Type": "application/json", **headers},
    )
    assert status == 200, reply
    assert reply["retCode"] == 0, reply
    return reply  # type: ignore[no-any-return]


def lower(headers: dict[str, str]) -> dict[str, str]:
    return {k.lower(): v for k, v in headers.items()}


def form_of(push: Push) -> dict[str, str]:
    """The fields of an EventMesh webhook push, in the order they were sent."""
    assert lower(push.headers)["content-type"] == "application/x-www-form-urlencoded; charset=UTF-8"
    pairs = parse_qsl(push.body.decode(), keep_blank_values=True, strict_parsing=True)
    return dict(pairs)


async def subscriptions(mesh: Client) -> list[dict[str, Any]]:
    status, reply = await mesh.request("GET", "/v1/subscriptions")
    assert status == 200
    return reply["subscriptions"]  # type: ignore[no-any-return]


# -- publish ----------------------------------------------------------------------------------


async def test_curl_publish_reaches_native_and_eventmesh_subscribers(
    mesh: Client, new_sink: SinkFactory
) -> None:
    native = await new_sink()
    webhook = await new_sink(answer(1))
    await mesh.subscribe(topic=TOPIC, group="native", sink=native.url)
    await em_subscribe(mesh, webhook.url, "em-group", TOPIC)

    raw = b'{"name":"admin",  "pass":"12345678"}'
    status, reply, headers = await call(
        mesh,
        "POST",
        f"/eventmesh/publish/{TOPIC}",
        data=raw,
        headers={
            "Content-Type": "application/json",
            "username": "alice",
            "passwd": "secret",
            "token": "tok",
            "traceparent": TRACEPARENT,
        },
    )
    assert status == 200
    assert reply["retCode"] == 0
    event_id = reply["data"]["id"]
    assert reply["retMsg"] == f"successSendResult[topic={TOPIC}, messageId={event_id}]"
    assert headers["uri"] == f"/eventmesh/publish/{TOPIC}"
    assert headers["eventmeshcluster"] == "meshtap"
    assert {"eventmeship", "eventmeshenv", "eventmeshidc"} <= headers.keys()

    (native_push,) = await native.wait_for(1)
    assert native_push.body == raw  # byte for byte, spaces included
    assert lower(native_push.headers)["content-type"] == "application/json"
    attributes = native_push.attributes
    assert attributes["id"] == event_id
    assert attributes["subject"] == TOPIC
    assert attributes["source"] == "/eventmesh/http"
    assert attributes["type"] == "http_request"
    assert attributes["protocoltype"] == "http"
    assert attributes["traceparent"] == TRACEPARENT
    assert not {"username", "passwd", "token"} & attributes.keys()

    (push,) = await webhook.wait_for(1)
    pushed = lower(push.headers)
    assert pushed["code"] == "105"
    assert pushed["version"] == "1.0"
    assert pushed["language"] == "PYTHON"
    assert {"eventmeshcluster", "eventmeship", "eventmeshenv", "eventmeshidc"} <= pushed.keys()
    form = form_of(push)
    assert list(form) == ["content", "bizseqno", "uniqueId", "randomNo", "topic", "extFields"]
    assert form["content"] == raw.decode()  # the body, not a CloudEvent
    assert form["topic"] == TOPIC
    assert form["uniqueId"] == form["bizseqno"] == event_id
    assert form["randomNo"].isdigit()
    assert len(form["randomNo"]) >= 17  # epoch milliseconds + 4 random digits
    extensions = json.loads(form["extFields"])
    assert extensions["protocoltype"] == "http"
    assert extensions["traceparent"] == TRACEPARENT
    # Published over HTTP: the attributes travel as headers too, as EventMesh sends them.
    assert pushed["id"] == event_id
    assert pushed["subject"] == TOPIC
    assert pushed["specversion"] == "1.0"
    assert pushed["protocoltype"] == "http"
    for credential in ("username", "passwd", "token"):
        assert credential not in pushed
        assert credential not in extensions


async def test_publish_keeps_content_type_ids_and_identity_headers(
    mesh: Client, new_sink: SinkFactory
) -> None:
    native = await new_sink()
    await mesh.subscribe(topic="orders.created", group="native", sink=native.url)
    raw = '{"name": "Zoë"}'.encode()
    reply = await em_publish(
        mesh,
        "orders.created",
        raw,
        **{
            "Content-Type": "application/json; charset=utf-8",
            "uniqueid": "u-1",
            "bizseqno": "b-1",
            "producergroup": "shop",
            "source": "/shop",
            "type": "order.created",
        },
    )
    assert reply["data"] == {"topic": "orders.created", "id": "u-1"}
    (push,) = await native.wait_for(1)
    assert push.body == raw
    assert lower(push.headers)["content-type"] == "application/json; charset=utf-8"
    attributes = push.attributes
    assert attributes["id"] == "u-1"
    assert attributes["uniqueid"] == "u-1"
    assert attributes["bizseqno"] == "b-1"
    assert attributes["producergroup"] == "shop"
    assert attributes["source"] == "/shop"
    assert attributes["type"] == "order.created"


async def test_sdk_publish_of_a_cloudevent_keeps_every_attribute(
    mesh: Client, new_sink: SinkFactory
) -> None:
    native = await new_sink()
    webhook = await new_sink(answer(0))
    await mesh.subscribe(topic=TOPIC, group="native", sink=native.url)
    await em_subscribe(mesh, webhook.url, "em-group", TOPIC)
    cloudevent = {
        "specversion": "1.0",
        "id": "sdk-1",
        "source": "/orders-service",
        "type": "order.created",
        "subject": TOPIC,
        "time": "2026-01-31T12:00:00Z",
        "datacontenttype": "application/json",
        "tenant": "acme",
        "data": {"order": 42},
    }
    status, reply, headers = await sdk(
        mesh,
        "104",
        {"producergroup": "shop", "content": json.dumps(cloudevent)},
        protocoltype="cloudevents",
        protocoldesc="http",
        protocolversion="1.0",
    )
    assert status == 200
    assert set(reply) == {"retCode", "retMsg", "resTime"}  # exactly the SDK's EventMeshRetObj
    assert reply["retCode"] == 0
    assert reply["retMsg"] == f"successSendResult[topic={TOPIC}, messageId=sdk-1]"
    assert abs(reply["resTime"] - time.time() * 1000) < 60_000
    assert headers["code"] == "104"

    (push,) = await native.wait_for(1)
    attributes = push.attributes
    for name in ("id", "source", "type", "subject", "time", "tenant"):
        assert attributes[name] == cloudevent[name], name
    assert attributes["producergroup"] == "shop"
    assert json.loads(push.body) == {"order": 42}
    assert lower(push.headers)["content-type"] == "application/json"

    (hook,) = await webhook.wait_for(1)
    content = json.loads(form_of(hook)["content"])  # a native event: the whole CloudEvent
    assert content["id"] == "sdk-1"
    assert content["tenant"] == "acme"
    assert content["data"] == {"order": 42}
    assert "id" not in lower(hook.headers)  # attributes as headers only for HTTP-published events


async def test_sdk_publish_of_an_eventmesh_message(mesh: Client, new_sink: SinkFactory) -> None:
    native = await new_sink()
    webhook = await new_sink(answer(1))
    await mesh.subscribe(topic=TOPIC, group="native", sink=native.url)
    await em_subscribe(mesh, webhook.url, "em-group", TOPIC)
    status, reply, _ = await sdk(
        mesh,
        "104",
        {
            "topic": TOPIC,
            "content": "hello mesh",
            "uniqueid": "m-1",
            "bizseqno": "b-9",
            "ttl": "4000",
            "producergroup": "shop",
            "extFields": json.dumps({"Region": "eu"}),
        },
        protocoltype="eventmeshmessage",
    )
    assert (status, reply["retCode"]) == (200, 0), reply
    (push,) = await native.wait_for(1)
    assert push.body == b"hello mesh"
    assert lower(push.headers)["content-type"] == "text/plain"
    assert push.attributes["id"] == "m-1"
    assert push.attributes["protocoltype"] == "eventmeshmessage"
    assert push.attributes["region"] == "eu"
    (hook,) = await webhook.wait_for(1)
    form = form_of(hook)
    assert form["content"] == "hello mesh"
    assert (form["uniqueId"], form["bizseqno"]) == ("m-1", "b-9")
    assert json.loads(form["extFields"])["ttl"] == "4000"


# -- the SDK's subscribe / heartbeat / unsubscribe ------------------------------------------


async def test_sdk_subscribe_heartbeat_and_unsubscribe(mesh: Client, new_sink: SinkFactory) -> None:
    webhook = await new_sink(answer(1))
    items = [{"topic": TOPIC, "mode": "CLUSTERING", "type": "ASYNC"}]
    form = {"topic": json.dumps(items), "consumerGroup": "sdk-group", "url": webhook.url}
    status, reply, headers = await sdk(mesh, "206", form)
    assert (status, reply["retCode"], reply["retMsg"]) == (200, 0, "success")
    assert "resTime" in reply
    assert headers["code"] == "206"

    heartbeat = {
        "consumerGroup": "sdk-group",
        "clientType": "SUB",
        "heartbeatEntities": json.dumps([{"topic": TOPIC, "url": webhook.url}]),
    }
    status, reply, _ = await sdk(mesh, "203", heartbeat)
    assert (status, reply["retCode"]) == (200, 0)

    await em_publish(mesh, TOPIC, b'{"n": 1}')
    await webhook.wait_for(1)

    form = {"topic": json.dumps([TOPIC]), "consumerGroup": "sdk-group", "url": webhook.url}
    status, reply, _ = await sdk(mesh, "207", form)
    assert (status, reply["retCode"]) == (200, 0)
    assert await subscriptions(mesh) == []
    await em_publish(mesh, TOPIC, b'{"n": 2}')
    await asyncio.sleep(1.0)
    assert len(webhook.pushes) == 1


# -- the subscriber's retCode -------------------------------------------------------------


async def test_retcode_2_retries_then_1_acknowledges(mesh: Client, new_sink: SinkFactory) -> None:
    answers = iter([2, 1])
    webhook = await new_sink(lambda push: web.json_response({"retCode": next(answers)}))
    dlq = await new_sink()
    await mesh.subscribe(topic="_dlq.em-group", group="ops", sink=dlq.url)
    await em_subscribe(mesh, webhook.url, "em-group", TOPIC)
    await em_publish(mesh, TOPIC, b'{"n": 1}')
    first, second = await webhook.wait_for(2, timeout=10)
    assert second.received_at - first.received_at >= 1.4  # EventMesh's ~3 s, jittered
    assert form_of(first)["uniqueId"] == form_of(second)["uniqueId"]  # stable for dedup
    await asyncio.sleep(0.5)
    assert len(webhook.pushes) == 2
    assert dlq.pushes == []


async def test_retcode_3_dead_letters_at_once(mesh: Client, new_sink: SinkFactory) -> None:
    webhook = await new_sink(answer(3))
    dlq = await new_sink()
    await mesh.subscribe(topic="_dlq.em-group", group="ops", sink=dlq.url)
    await em_subscribe(mesh, webhook.url, "em-group", TOPIC)
    raw = b'{"order": 7}'
    await em_publish(mesh, TOPIC, raw)
    (letter,) = await dlq.wait_for(1)
    assert len(webhook.pushes) == 1
    assert letter.attributes["deadletterreason"] == "subscriber answered retCode 3 (FAIL)"
    assert letter.attributes["deadlettergroup"] == "em-group"
    assert letter.attributes["deadlettertopic"] == TOPIC
    assert letter.attributes["deadletterattempts"] == "1"
    assert letter.body == raw


@pytest.mark.parametrize(
    ("status", "body", "outcome"),
    [
        (200, b'{"retCode": 0}', Outcome.ACKED),
        (200, b'{"retCode": 1}', Outcome.ACKED),
        (200, b'{"retCode": 2}', Outcome.RETRY),
        (200, b'{"retCode": 5}', Outcome.RETRY),
        (200, b'{"retCode": 3}', Outcome.REJECTED),
        (200, b'{"retCode": 4}', Outcome.REJECTED),
        (201, b'{"retCode": "2"}', Outcome.RETRY),
        (200, b"", Outcome.ACKED),
        (204, b"", Outcome.ACKED),
        (200, b"OK", Outcome.ACKED),
        (200, b'{"retCode": true}', Outcome.ACKED),
        (410, b"", Outcome.REJECTED),
        (415, b"", Outcome.REJECTED),
        (429, b"", Outcome.RETRY),
        (404, b"", Outcome.RETRY),
        (500, b"db down", Outcome.RETRY),
    ],
)
def test_subscriber_answers_are_judged_like_eventmesh(
    status: int, body: bytes, outcome: Outcome
) -> None:
    judged, reason = EventMeshContract().judge(status, body)
    assert judged is outcome
    assert (reason == "") is (outcome is Outcome.ACKED)


# -- subscriptions -----------------------------------------------------------------------


@pytest.mark.parametrize("key", ["topic", "topics"])
async def test_unsubscribe_stops_delivery(mesh: Client, new_sink: SinkFactory, key: str) -> None:
    webhook = await new_sink(answer(1))
    other = await new_sink(answer(1))
    await em_subscribe(mesh, webhook.url, "em-group", TOPIC)
    await em_subscribe(mesh, other.url, "other-group", TOPIC)
    await em_publish(mesh, TOPIC, b'{"n": "before"}')
    await webhook.wait_for(1)
    body = {"url": webhook.url, "consumerGroup": "em-group", key: [TOPIC]}
    status, reply = await mesh.request("POST", "/eventmesh/unsubscribe/local", json=body)
    assert (status, reply["retCode"], reply["retMsg"]) == (200, 0, "success")
    await em_publish(mesh, TOPIC, b'{"n": "after"}')
    await other.wait_for(2)  # the other group still gets everything
    await asyncio.sleep(0.5)
    assert len(webhook.pushes) == 1


async def test_unsubscribe_of_nothing_succeeds(mesh: Client) -> None:
    body = {"url": "http://127.0.0.1:9/none", "consumerGroup": "nobody", "topic": ["none"]}
    status, reply = await mesh.request("POST", "/eventmesh/unsubscribe/local", json=body)
    assert (status, reply["retCode"]) == (200, 0)


async def test_subscribe_is_idempotent(mesh: Client, new_sink: SinkFactory) -> None:
    webhook = await new_sink(answer(1))
    first = await em_subscribe(mesh, webhook.url, "em-group", TOPIC)
    again = await em_subscribe(mesh, webhook.url, "em-group", TOPIC)
    broadcast = await em_subscribe(mesh, webhook.url, "em-group", TOPIC, mode="BROADCASTING")
    ids = first["data"]["subscriptions"]
    assert again["data"]["subscriptions"] == ids == broadcast["data"]["subscriptions"]
    assert first["data"]["unchanged"] == []
    assert again["data"]["unchanged"] == broadcast["data"]["unchanged"] == ids
    (stored,) = await subscriptions(mesh)
    assert stored["id"] == ids[0]
    assert stored["protocol"] == "eventmesh"
    assert stored["mode"] == "clustering"  # the first subscription wins, as in EventMesh
    assert stored["retry"] == {
        "max_attempts": 4,
        "initial_backoff_ms": 3000,
        "max_backoff_ms": 3000,
    }
    assert stored["timeout_ms"] == 5000
    await em_publish(mesh, TOPIC, b'{"n": 1}')
    await webhook.wait_for(1)
    await asyncio.sleep(0.5)
    assert len(webhook.pushes) == 1


async def test_broadcasting_and_patterns(mesh: Client, new_sink: SinkFactory) -> None:
    a, b = await new_sink(answer(1)), await new_sink(answer(1))
    for sink in (a, b):
        await em_subscribe(mesh, sink.url, "screens", "news.*", mode="BROADCASTING")
    await em_publish(mesh, "news.sport", b'{"goal": 1}')
    await a.wait_for(1)
    await b.wait_for(1)
    assert form_of(a.pushes[0])["topic"] == "news.sport"


async def test_subscription_query_lists_eventmesh_subscriptions(
    mesh: Client, new_sink: SinkFactory
) -> None:
    a, b, native = await new_sink(), await new_sink(), await new_sink()
    await em_subscribe(mesh, a.url, "em-group", TOPIC)
    await em_subscribe(mesh, b.url, "em-group", TOPIC)
    await mesh.subscribe(topic="native.topic", group="native", sink=native.url)
    await em_publish(mesh, TOPIC, b"{}")
    status, reply = await mesh.request("GET", "/eventmesh/subscrition/query")
    assert status == 200
    (conf,) = reply["subsrciption"]
    assert conf["consumerGroup"] == "em-group"
    assert conf["topic"] == TOPIC
    assert conf["subscriptionItem"] == {"topic": TOPIC, "mode": "CLUSTERING", "type": "ASYNC"}
    assert sorted(conf["urls"]) == sorted([a.url, b.url])
    assert TOPIC in reply["localTopicSet"]


# -- topics -----------------------------------------------------------------------------------


async def test_topic_create_and_delete(mesh: Client) -> None:
    status, reply = await mesh.request(
        "POST", "/eventmesh/topic/create", json={"topic": "t-one; t-two"}
    )
    assert status == 200
    assert reply["retCode"] == 0
    assert reply["retMessage"] == "success"  # EventMesh's key on this endpoint
    assert reply["data"] == {"created": ["t-one", "t-two"], "existing": []}
    status, reply = await mesh.request("POST", "/eventmesh/topic/create", json={"topic": "t-one"})
    assert reply["data"] == {"created": [], "existing": ["t-one"]}
    _, topics = await mesh.request("GET", "/v1/topics")
    assert {"t-one", "t-two"} <= set(topics["topics"])

    status, reply = await mesh.request("POST", "/eventmesh/topic/delete", json={"topic": "t-one"})
    assert (status, reply["retCode"], reply["retMessage"]) == (200, 0, "success")
    status, reply = await mesh.request(
        "POST", "/eventmesh/topic/delete", json={"topic": "t-one;t-two"}
    )
    assert (status, reply["retCode"]) == (200, 100)
    assert reply["retMsg"].startswith("operate fail: topic(s) 't-one' do not exist")
    assert "nothing was deleted" in reply["retMsg"]
    _, topics = await mesh.request("GET", "/v1/topics")
    assert "t-two" in topics["topics"]
    assert "t-one" not in topics["topics"]


# -- bad input: right retCode, and a message that says what to do ---------------------------

ITEM = {"topic": TOPIC, "mode": "CLUSTERING", "type": "ASYNC"}
URL = "http://127.0.0.1:8088/sub"


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"consumerGroup": "g", "topic": [ITEM]}, "'url' is required, e.g. {\"url\": "),
        ({"url": URL, "topic": [ITEM]}, "'consumerGroup' is required, e.g. "),
        ({"url": URL, "consumerGroup": "g"}, "'topic' is required, e.g. "),
        ({"url": URL, "consumerGroup": "g", "topic": []}, "'topic' must be a non-empty list"),
        (
            {"url": URL, "consumerGroup": "g", "topic": [{**ITEM, "mode": "CLUSTER"}]},
            "topic[0].mode must be 'CLUSTERING' or 'BROADCASTING', got \"CLUSTER\"",
        ),
        (
            {"url": URL, "consumerGroup": "g", "topic": [{**ITEM, "type": "ONEWAY"}]},
            "topic[0].type must be 'ASYNC' or 'SYNC', got \"ONEWAY\"",
        ),
        (
            {"url": URL, "consumerGroup": "g", "topic": [{**ITEM, "topic": "orders/eu"}]},
            "topic[0]: invalid topic pattern 'orders/eu'",
        ),
        (
            {"url": "http://169.254.169.254/latest", "consumerGroup": "g", "topic": [ITEM]},
            "invalid URL: sink 'http://169.254.169.254/latest' is refused: 169.254.169.254 is "
            "a link-local address",
        ),
        (
            {"url": "ftp://files/sub", "consumerGroup": "g", "topic": [ITEM]},
            "must be an http:// or https:// URL",
        ),
        ({"url": URL, "consumerGroup": "a b", "topic": [ITEM]}, "invalid consumer group 'a b'"),
        ([ITEM], "the body must be a JSON object, got a JSON array; send a JSON object like"),
        ("not json", "the body must be a JSON object, got a JSON string"),
    ],
)
async def test_bad_subscribe_is_refused_with_retcode_7(
    mesh: Client, body: Any, expected: str
) -> None:
    status, reply = await mesh.request("POST", "/eventmesh/subscribe/local", json=body)
    assert status == 200
    assert reply["retCode"] == 7
    assert reply["retMsg"].startswith(BODY_ERROR)
    assert expected in reply["retMsg"]
    assert await subscriptions(mesh) == []


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b'{"url": ', "the body is not valid JSON"),
        (b"", "the body is empty; send a JSON object like"),
    ],
)
async def test_unparsable_subscribe_body(mesh: Client, data: bytes, expected: str) -> None:
    status, reply = await mesh.request(
        "POST",
        "/eventmesh/subscribe/local",
        data=data,
        headers={"Content-Type": "application/json"},
    )
    assert (status, reply["retCode"]) == (200, 7)
    assert expected in reply["retMsg"]


@pytest.mark.parametrize(
    ("path", "data", "code", "expected"),
    [
        ("/eventmesh/publish/orders:eu", b"{}", 7, "invalid topic 'orders:eu'"),
        ("/eventmesh/publish/orders%2Feu", b"{}", 7, "contains '/'"),
        ("/eventmesh/publish", b"{}", 7, "the topic goes in the path"),
        ("/eventmesh/publish/", b"{}", 7, "the topic goes in the path"),
        ("/eventmesh/publish/_dlq.billing", b"{}", 7, "reserved for the runtime"),
        ("/eventmesh/publish/orders", b"", 7, "the body is empty"),
        ("/eventmesh/publish/orders", b"x" * (LIMIT + 1), 8, f"the limit is {LIMIT} bytes"),
    ],
)
async def test_bad_publish(mesh: Client, path: str, data: bytes, code: int, expected: str) -> None:
    status, reply = await mesh.request(
        "POST", path, data=data, headers={"Content-Type": "application/json"}
    )
    assert (status, reply["retCode"]) == (200, code), reply
    assert expected in reply["retMsg"]
    prefix = BODY_ERROR if code == 7 else "event size exceeds the limit: "
    assert reply["retMsg"].startswith(prefix)
    _, topics = await mesh.request("GET", "/v1/topics")
    assert topics["topics"] == []
    _, metrics = await mesh.request("GET", "/metrics")
    reason = "invalid" if code == 7 else "too_large"
    assert f'meshtap_publish_rejected_total{{reason="{reason}"}} 1.0' in metrics


async def test_bad_unsubscribe_and_topic_bodies(mesh: Client) -> None:
    status, reply = await mesh.request(
        "POST", "/eventmesh/unsubscribe/local", json={"url": URL, "consumerGroup": "g"}
    )
    assert (status, reply["retCode"]) == (200, 7)
    assert "'topic' is required: the topic names to unsubscribe from" in reply["retMsg"]
    status, reply = await mesh.request("POST", "/eventmesh/topic/create", json={})
    assert (status, reply["retCode"]) == (200, 7)
    assert "'topic' must be topic names separated by ';'" in reply["retMsg"]
    status, reply = await mesh.request("POST", "/eventmesh/topic/create", json={"topic": "a b:c"})
    assert (status, reply["retCode"]) == (200, 7)
    assert "invalid topic 'ab:c'" in reply["retMsg"]


CE = {"specversion": "1.0", "id": "1", "source": "/s", "type": "t", "subject": TOPIC}


@pytest.mark.parametrize(
    ("headers", "form", "http_status", "code", "expected"),
    [
        ({"code": ""}, {}, 400, 2, "header 'code' is missing; e.g. header 'code: 104' to publish"),
        ({"code": "999"}, {}, 400, 2, "'999', which is not a request code Meshtap serves"),
        ({"code": "abc"}, {}, 400, 2, "'abc', which is not a request code"),
        ({"code": "203", "version": "3.0"}, {}, 400, 6, "header 'version' is '3.0'"),
        ({"code": "101"}, {}, 200, 3, "request-reply over HTTP is not supported by Meshtap yet"),
        ({"code": "102"}, {}, 200, 10, "batch publish (code 102) is not supported"),
        ({"code": "104"}, {"content": "{}"}, 200, 6, "header 'protocoltype' is required"),
        (
            {"code": "104", "protocoltype": "openmessage"},
            {"content": "{}"},
            200,
            6,
            "protocoltype 'openmessage' is not supported",
        ),
        (
            {"code": "104", "protocoltype": "cloudevents"},
            {"content": json.dumps({k: v for k, v in CE.items() if k != "type"})},
            200,
            7,
            "missing required CloudEvents attribute(s) 'type'",
        ),
        (
            {"code": "104", "protocoltype": "cloudevents"},
            {"content": json.dumps({k: v for k, v in CE.items() if k != "subject"})},
            200,
            7,
            "has no 'subject'; the EventMesh SDK carries the topic there",
        ),
        (
            {"code": "104", "protocoltype": "cloudevents"},
            {"content": "{oops"},
            200,
            7,
            "'content' is not valid JSON",
        ),
        (
            {"code": "104", "protocoltype": "cloudevents"},
            {"content": "x" * LIMIT},
            200,
            8,
            f"the limit is {LIMIT} bytes",
        ),
        (
            {"code": "104", "protocoltype": "eventmeshmessage"},
            {"content": "hi"},
            200,
            7,
            "'topic' is required, e.g. form fields topic=demo-topic&content=hello",
        ),
        (
            {"code": "206"},
            {"consumerGroup": "g", "topic": json.dumps([ITEM])},
            200,
            7,
            "'url' is required",
        ),
        (
            {"code": "206"},
            {"url": "http://[fe80::1]/sub", "consumerGroup": "g", "topic": json.dumps([ITEM])},
            200,
            7,
            "is a link-local address",
        ),
        ({"code": "207"}, {"url": URL, "consumerGroup": "g"}, 200, 7, "'topic' is required"),
    ],
)
async def test_bad_sdk_requests(
    mesh: Client,
    headers: dict[str, str],
    form: dict[str, str],
    http_status: int,
    code: int,
    expected: str,
) -> None:
    sent_headers = {k: v for k, v in {**SDK_HEADERS, **headers}.items() if v}
    status, reply, _ = await call(mesh, "POST", "/", data=form, headers=sent_headers)
    assert (status, reply["retCode"]) == (http_status, code), reply
    assert expected in reply["retMsg"]
    assert isinstance(reply["resTime"], int)
    assert await subscriptions(mesh) == []


async def test_unknown_eventmesh_endpoints_say_what_exists(mesh: Client) -> None:
    status, reply = await mesh.request("GET", "/eventmesh/topic/list")
    assert (status, reply["retCode"]) == (404, 2)
    assert "GET /v1/topics lists topics" in reply["retMsg"]
    assert "POST /eventmesh/publish/{topic}" in reply["retMsg"]
    status, reply = await mesh.request("GET", "/eventmesh/subscribe/local")
    assert (status, reply["retCode"]) == (405, 2)
    assert "use POST" in reply["retMsg"]
    status, reply = await mesh.request("POST", "/eventmesh/subscribe/remote", json={})
    assert (status, reply["retCode"]) == (200, 19)
    assert "not supported" in reply["retMsg"]
