"""The committed protobuf modules are what `make protos` makes, and the .proto alone is enough
for an EventMesh-style client: one generated from it in a separate process publishes,
subscribes over a stream and answers a request-reply, the way EventMesh's SDK does."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.meshes import ROOT, running
from tests.servers import RedisServer
from tests.sinks import RecordingSink

PROTO_DIR = ROOT / "runtime" / "_proto"


def _protoc(out: Path, *extra: str) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{PROTO_DIR}",
            f"--python_out={out}",
            *extra,
            str(PROTO_DIR / "eventmesh.proto"),
        ],
        check=True,
        cwd=ROOT,
    )


def test_generated_modules_are_up_to_date(tmp_path: Path) -> None:
    _protoc(tmp_path, f"--pyi_out={tmp_path}")
    for name in ("eventmesh_pb2.py", "eventmesh_pb2.pyi"):
        fresh = (tmp_path / name).read_text()
        committed = (PROTO_DIR / name).read_text()
        assert committed == fresh, f"runtime/_proto/{name} is stale: run `make protos`"


# The client below knows nothing of Meshtap: only the .proto's generated code and grpc, and the
# attributes EventMesh's Java SDK sets (EventMeshCloudEventBuilder / SubStreamHandler).
CLIENT = textwrap.dedent(
    """
    import asyncio, json, sys
    import grpc
    import eventmesh_pb2 as pb
    import eventmesh_pb2_grpc as rpc

    target = sys.argv[1]
    V = pb.CloudEvent.CloudEventAttributeValue

    def common(**extra):
        attrs = {"env": "env", "idc": "idc", "ip": "127.0.0.1", "pid": "42", "sys": "1234",
                 "language": "JAVA", "username": "eventmesh", "passwd": "pass",
                 "protocoltype": "cloudevents", "protocolversion": "1.0"}
        attrs.update(extra)
        return {k: V(ce_string=v) for k, v in attrs.items()}

    def message(event_id, topic, text, **extra):
        return pb.CloudEvent(
            id=event_id, source="/", spec_version="1.0", type="org.apache.eventmesh",
            attributes=common(subject=topic, seqnum="1" + event_id, uniqueid="u" + event_id,
                              ttl="8000", producergroup="producer", **extra),
            text_data=text)

    async def main():
        out = {}
        async with grpc.aio.insecure_channel(target) as channel:
            publisher = rpc.PublisherServiceStub(channel)
            consumer = rpc.ConsumerServiceStub(channel)
            heartbeat = rpc.HeartbeatServiceStub(channel)
            items = [{"topic": "TEST-TOPIC-GRPC", "mode": "CLUSTERING", "type": "ASYNC"}]
            subscription = pb.CloudEvent(
                id="s", source="/", spec_version="1.0", type="org.apache.eventmesh",
                attributes=common(consumergroup="EventMeshTest-consumerGroup",
                                  datacontenttype="application/json"),
                text_data=json.dumps(items))
            queue = asyncio.Queue()
            await queue.put(subscription)

            async def outgoing():
                while (item := await queue.get()) is not None:
                    yield item

            stream = consumer.subscribeStream(outgoing())
            first = await stream.read()
            out["subscribed"] = first.attributes["statuscode"].ce_string
            reply = await publisher.publish(message("e1", "TEST-TOPIC-GRPC", "hello"))
            out["publish"] = reply.attributes["statuscode"].ce_string
            got = await stream.read()
            out["received"] = [got.id, got.text_data, got.attributes["subject"].ce_string,
                               "passwd" in got.attributes]

            # Request-reply: the subscriber answers the way SubStreamHandler does - the
            # request's attributes, then its own, marked as a subscription reply.
            request = asyncio.ensure_future(
                publisher.requestReply(message("r1", "TEST-TOPIC-GRPC", "ping")))
            asked = await stream.read()
            answer = pb.CloudEvent(id="a1", source="/", spec_version="1.0",
                                   type="org.apache.eventmesh", text_data="pong")
            for name, value in asked.attributes.items():
                answer.attributes[name].CopyFrom(value)
            answer.attributes["submessagetype"].CopyFrom(V(ce_string="subscription_reply"))
            await queue.put(answer)
            answered = await request
            out["reply"] = [answered.id, answered.text_data]

            beat = pb.CloudEvent(
                id="h", source="/", spec_version="1.0", type="org.apache.eventmesh",
                attributes=common(clienttype="2", consumergroup="EventMeshTest-consumerGroup"),
                text_data=json.dumps([{"topic": "TEST-TOPIC-GRPC", "url": ""}]))
            out["heartbeat"] = (await heartbeat.heartbeat(beat)).attributes["statuscode"].ce_string
            await queue.put(None)
            stream.cancel()
        print(json.dumps(out))

    asyncio.run(main())
    """
)


async def _run_client(target: str, tmp_path: Path) -> dict[str, object]:
    _protoc(tmp_path, f"--grpc_python_out={tmp_path}")
    (tmp_path / "client.py").write_text(CLIENT)
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(tmp_path / "client.py"),
        target,
        cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, stderr.decode()
    return json.loads(stdout.decode().strip().splitlines()[-1])  # type: ignore[no-any-return]


def _expected(result: dict[str, object]) -> None:
    assert result == {
        "subscribed": "0",
        "publish": "0",
        "received": ["e1", "hello", "TEST-TOPIC-GRPC", False],
        "reply": ["a1", "pong"],
        "heartbeat": "0",
    }


async def test_an_eventmesh_client_from_the_proto_alone(tmp_path: Path) -> None:
    async with running(grpc=True) as (runtime, _):
        _expected(await _run_client(runtime.grpc_target, tmp_path))


@pytest.mark.redis
async def test_an_eventmesh_client_from_the_proto_alone_on_redis(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    sink = await RecordingSink().start()
    try:
        async with running(redis_server.url, grpc=True) as (runtime, client):
            # A webhook subscriber of another group sees the gRPC-published events too.
            await client.subscribe(topic="TEST-TOPIC-GRPC", group="audit", sink=sink.url)
            _expected(await _run_client(runtime.grpc_target, tmp_path))
            await sink.wait_for(2)
        assert sorted(sink.ids()) == ["e1", "r1"]
    finally:
        await sink.stop()
