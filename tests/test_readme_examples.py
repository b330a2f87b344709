"""The examples in README.md run as written against real processes (a runtime, Django's
manage.py, a ClickHouse server) and print what their comments say they print. The five-minute
tour runs against standalone mode in tests/test_readme_tour.py."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import subprocess
import sys
import textwrap
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from runtime import SIGNATURE_HEADER, sign_push
from tests.meshes import ROOT, Client, RuntimeProcess, event, free_port, running
from tests.servers import ClickHouseServer, NatsServer
from tests.test_replay_run import COUNT_ORIGINALS, N, Recorded, recorded, wait_until

__all__ = ["recorded"]  # the fixture, shared with tests/test_replay_run.py

PRINTED = re.compile(r"print\(.*\)\s+# (.+)$", re.M)


def python_examples() -> list[str]:
    blocks = fenced(readme_section("## Python client"), "python")
    assert len(blocks) >= 2
    return blocks


async def test_readme_client_examples_run_as_written() -> None:
    async with running(grpc=True) as (runtime, _):
        env = {**os.environ, "MESHTAP_GRPC_TARGET": runtime.grpc_target, "PYTHONPATH": str(ROOT)}
        for code in python_examples():
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-c",
                code,
                cwd=ROOT,
                env=env,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            stdout, stderr = await asyncio.wait_for(process.communicate(), 60)
            assert process.returncode == 0, f"{code}\n{stderr.decode()}"
            output = stdout.decode()
            for expected in PRINTED.findall(code):
                assert expected.strip() in output, (expected, output)


async def test_readme_bridge_examples_run_as_written() -> None:
    """The two runtimes of the Bridges section start with its flags (ports moved to free ones),
    and its curl commands print what the comments say."""
    start, commands = fenced(readme_section("## Bridges"), "sh")[:2]
    ports = {"10105": free_port(), "10106": free_port(), "10206": free_port()}
    for documented, port in ports.items():
        start, commands = (
            start.replace(documented, str(port)),
            commands.replace(documented, str(port)),
        )
    internal_line, dmz_line = (
        line for line in start.splitlines() if line.startswith("python -m runtime ")
    )
    internal = RuntimeProcess(shlex.split(internal_line)[3:], port=ports["10106"])
    dmz = RuntimeProcess(shlex.split(dmz_line)[3:], port=ports["10105"])
    try:
        await internal.start()
        await dmz.start()
        assert_shown(commands, run_shell(commands).stdout)
    finally:
        dmz.kill()
        internal.kill()


# --- the rest of the README: helpers shared by the tests below --------------------------------

FENCED = r"^[ ]*```{lang}\n(.*?)^[ ]*```"
SHOWN_OUTPUT = re.compile(r"^# (\{.*)$", re.M)


def readme_section(heading: str) -> str:
    """The text under `heading` (a whole heading line, e.g. '### TLS') up to the next heading of
    its level or above. Shell comments (`# ...`) inside blocks are not headings."""
    level = len(heading) - len(heading.lstrip("#"))
    pattern = rf"^{re.escape(heading)}\n(.*?)(?=^#{{2,{level}}} |\Z)"
    found = re.search(pattern, (ROOT / "README.md").read_text(), re.S | re.M)
    assert found is not None, f"README.md has no {heading!r} section"
    return found.group(1)


def fenced(section: str, lang: str) -> list[str]:
    """The `lang` code blocks of a section, dedented (some sit in list items)."""
    return [
        textwrap.dedent(block)
        for block in re.findall(FENCED.format(lang=lang), section, re.S | re.M)
    ]


def assert_shown(commands: str, output: str) -> None:
    """Each `# {...` comment under a command shows what it prints, `…` standing for the parts
    that vary: every other part must be printed (JSON's optional spaces aside: EventMesh
    replies are compact)."""
    printed = re.sub(r"\s+", "", output)
    for shown in SHOWN_OUTPUT.findall(commands):
        for part in shown.split("…"):
            assert re.sub(r"\s+", "", part).strip(",") in printed, (shown, output)


def shell_env(**extra: str) -> dict[str, str]:
    """The environment a reader has after `make venv`: `python` is this interpreter, and the
    project importable, plus `extra`."""
    path = f"{Path(sys.executable).parent}:{os.environ.get('PATH', '/usr/bin:/bin')}"
    return {**os.environ, "PATH": path, "PYTHONPATH": str(ROOT), **extra}


def run_shell(
    commands: str, *, cwd: Path = ROOT, stdin: str = "", env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run README commands as one `bash -euo pipefail` script; fail with what they printed.
    A new session has no terminal, so prompts (getpass) read `stdin`."""
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", commands],
        cwd=cwd, env=shell_env(**(env or {})), input=stdin, capture_output=True, text=True,
        timeout=240, check=False, start_new_session=True,
    )  # fmt: skip
    assert result.returncode == 0, f"{commands}\n{result.stdout}\n{result.stderr}"
    return result


async def test_readme_runtime_examples_run_as_written(tmp_path: Path) -> None:
    """One capturing runtime serves the HTTP API's subscription body, the EventMesh curls, the
    OTLP curl of Traces, the audit-result subscription and the metrics the KEDA example scales
    on."""
    otlp = free_port()
    runtime = RuntimeProcess(
        ["--capture", f"chdb://{tmp_path}/chdb", "--capture-spool-dir", str(tmp_path / "spool"),
         "--otlp-http-port", str(otlp)],
    )  # fmt: skip
    port = str(runtime.port)
    try:
        await runtime.start(timeout=90)
        async with aiohttp.ClientSession() as session:
            client = Client(runtime.url, session)
            # HTTP API: the subscription body, as shown.
            (body,) = fenced(readme_section("## HTTP API"), "json")
            subscription = json.loads(body)
            status, reply = await client.request("POST", "/v1/subscriptions", json=subscription)
            assert status == 201, reply
            for key in ("topic", "group", "mode", "sink", "filters"):
                assert reply[key] == subscription[key], (key, reply)

            (eventmesh,) = fenced(readme_section("### Apache EventMesh compatibility"), "sh")
            eventmesh = eventmesh.replace("127.0.0.1:10105", f"127.0.0.1:{port}")
            assert_shown(eventmesh, run_shell(eventmesh).stdout)

            # Traces: the curl (the line before it instruments the reader's own shop.py).
            (traces,) = fenced(readme_section("## Traces"), "sh")
            # (opentelemetry-instrument is not a dependency: the line is pinned instead. The
            # Python SDK's OTLP exporter is gRPC unless the protocol says http/protobuf.)
            instrument, otlp_curl = traces.split("\ncurl ", 1)
            otlp_curl = "curl " + otlp_curl
            protocol = "OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf "
            assert instrument.startswith(
                protocol + "OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4318"
            )
            otlp_curl = otlp_curl.replace("127.0.0.1:4318", f"127.0.0.1:{otlp}")
            assert_shown(otlp_curl, run_shell(otlp_curl).stdout)

            (audit_sub,) = (
                block
                for block in fenced(readme_section("## Celery workers and audits"), "sh")
                if "meshtap.audit.result" in block
            )
            audit_sub = audit_sub.replace("localhost:10105", f"localhost:{port}")
            assert '"group": "oncall"' in run_shell(audit_sub).stdout

            # KEDA scales on the backlog metrics: they exist for the billing group above.
            (keda,) = fenced(readme_section("### Backlog and autoscaling"), "yaml")
            queries = [t["metadata"]["query"] for t in yaml.safe_load(keda)["spec"]["triggers"]]
            metrics = {name for query in queries for name in re.findall(r"meshtap_\w+", query)}
            assert len(metrics) == 2, queries
            await client.publish("orders.eu.created", event("keda-1", type="order.created"))
            deadline = time.monotonic() + 30
            while True:
                _, text = await client.request("GET", "/metrics")
                lines = [line for line in str(text).splitlines() if 'group="billing"' in line]
                if all(any(line.startswith(m + "{") for line in lines) for m in metrics):
                    break
                assert time.monotonic() < deadline, (metrics, lines)
                await asyncio.sleep(0.5)
    finally:
        runtime.kill()


async def test_readme_authentication_example_runs_as_written(tmp_path: Path) -> None:
    """Security: the tokens commands in a fresh directory, a runtime started with the file (what
    `make run ARGS=...` passes through), the bearer-token publish accepted and one without
    refused."""
    (block,) = fenced(readme_section("### Turn authentication on: one setting"), "sh")
    tokens = "\n".join(line for line in block.splitlines() if " tokens " in line)
    assert tokens.count("\n") == 4, tokens
    (make_run,) = (line for line in block.splitlines() if line.startswith("make run"))
    assert 'ARGS="--auth-tokens var/tokens.json"' in make_run
    publish = block[block.index("curl ") :]
    result = run_shell(tokens, cwd=tmp_path)
    shop_token = result.stdout.splitlines()[0]
    assert shop_token.startswith("mtk_"), result.stdout
    assert "shop\t" in result.stdout
    assert "\tadmin=True" in result.stdout
    assert shop_token not in result.stdout.split("\n", 4)[-1], "list must not show secrets"
    runtime = RuntimeProcess(["--auth-tokens", str(tmp_path / "var" / "tokens.json")])
    try:
        await runtime.start(timeout=60)
        publish = publish.replace("127.0.0.1:10105", f"127.0.0.1:{runtime.port}")
        accepted = run_shell(publish, env={"SHOP_TOKEN": shop_token}).stdout
        assert json.loads(accepted) == {"topic": "orders.created", "accepted": ["1"]}
        refused = run_shell(publish, env={"SHOP_TOKEN": "mtk_nobody"}).stdout
        assert json.loads(refused)["error"] == "unauthenticated", refused
    finally:
        runtime.kill()


def test_readme_push_signature_example_runs_as_written() -> None:
    """Webhook pushes: the verifying handler accepts a push signed with KEY, refuses others."""
    (code,) = fenced(readme_section("### Webhook pushes"), "python")
    namespace: dict[str, Any] = {"KEY": "push-key"}
    exec(code, namespace)  # the README's own example
    body = b'{"order": 42}'
    namespace["handle"]({SIGNATURE_HEADER: sign_push("push-key", body)}, body)
    with pytest.raises(PermissionError, match="not from our mesh"):
        namespace["handle"]({SIGNATURE_HEADER: sign_push("other-key", body)}, body)
    with pytest.raises(PermissionError):
        namespace["handle"]({}, body)


def test_readme_admin_commands_run_as_written(tmp_path: Path) -> None:
    """Web admin: migrate and the meshtap_user commands (passwords typed at the prompt), then
    the audit created from the shell in Celery workers and audits."""
    (admin,) = fenced(readme_section("## Web admin"), "sh")
    setup = admin[: admin.index("MESHTAP_CLICKHOUSE_URL=")]  # then runserver: serves forever
    assert setup.count("meshtap_user") == 3
    (audit,) = (
        block
        for block in fenced(readme_section("## Celery workers and audits"), "sh")
        if "Audit(" in block
    )
    check = (
        "python manage.py shell -c 'from meshadmin.audits.models import Audit; from django.contrib"
        '.auth.models import User; a = Audit.objects.get(name="orders reach billing"); '
        'print(a.kind, a.parameters["groups"], sorted(u.username for u in User.objects.all()))'
        "'"
    )
    env = {"MESHTAP_VAR_DIR": str(tmp_path), "DJANGO_SETTINGS_MODULE": "meshadmin.settings"}
    # One process per line: each prompt reads its own stdin.
    for line in setup.splitlines():
        if line.strip():
            run_shell(line, stdin="pw-for-readme\npw-for-readme\n", env=env)
    result = run_shell(f"{audit}\n{check}", env=env)
    assert "delivery_completeness ['billing'] ['ana', 'quinn', 'root']" in result.stdout


@pytest.mark.clickhouse
def test_readme_migrate_clickhouse_commands_run_as_written(
    tmp_path: Path, clickhouse_server: ClickHouseServer
) -> None:
    """Capture: plan, apply, check (exit 0 once applied) against a real server."""
    (block,) = fenced(readme_section("## Capture"), "sh")
    block = block.replace("clickhouse://127.0.0.1:9000/meshtap", clickhouse_server.url)
    assert block.count(clickhouse_server.url) == 3
    run_shell(block, env={"MESHTAP_VAR_DIR": str(tmp_path)})


def test_readme_make_run_lines_start_standalone_with_their_flags() -> None:
    """Every `make run ...` in the README (the two commands, Security, TLS, NATS) is what the
    tour runs, `manage.py standalone` (with the demo by default), given the line's flags."""
    blocks = fenced((ROOT / "README.md").read_text(), "sh")
    lines = [
        line.split("  #")[0].strip()
        for block in blocks
        for line in block.replace("\\\n", " ").splitlines()
        if line.startswith("make run")
    ]
    assert len(lines) >= 5, lines
    for line in lines:
        result = run_shell(line.replace("make run", "make -n run", 1))
        expanded = " ".join(result.stdout.replace("\\\n", " ").split())
        assert "/python manage.py standalone --demo --capture " in expanded, (line, expanded)
        for flag in re.findall(r"--[\w-]+(?: [^-\s\"][^\s\"]*)?", line):
            assert flag in expanded, (line, flag, expanded)


SHOWN_LINE = re.compile(r"(?:[0-9a-f]*…|\d+(?:\.\d+)?)")


def assert_lines_shown(commands: str, output: str) -> None:
    """Comment lines that do not end in ':' (those introduce the next command) show lines the
    commands print; figures and `…` stand for what varies."""
    for comment in re.findall(r"^# (.*[^:])$", commands, re.M):
        parts = SHOWN_LINE.split(comment)
        variable = [
            r".*?" if "…" in v else r"\d[\d,]*(?:\.\d+)?" for v in SHOWN_LINE.findall(comment)
        ]
        pattern = "".join(
            re.escape(part) + (variable[n] if n < len(variable) else "")
            for n, part in enumerate(parts)
        )
        assert re.search(pattern, output), (comment, output)


@pytest.mark.clickhouse
async def test_readme_replay_commands_run_as_written(tmp_path: Path, recorded: Recorded) -> None:
    """Replay: the section's commands against a capturing runtime (its HTTP and gRPC API standing
    in for 127.0.0.1:10105 and staging), on a window recorded now, with gold customers' paid
    orders among the traffic; then replay_diff on the replay it made."""
    since = recorded.since.strftime("%Y-%m-%dT%H:%M:%SZ")
    await recorded.runtime.start_grpc(0)
    gold = [
        event(f"gold-{n}", type="order.paid", partitionkey=f"gold-{n}",
              data={"customer": {"tier": "gold"}})
        for n in range(40)
    ]  # fmt: skip
    await recorded.client.publish("orders.eu.created", *gold)
    until = (datetime.now(UTC) + timedelta(seconds=2)).strftime("%Y-%m-%dT%H:%M:%SZ")
    await wait_until(lambda: recorded.count(COUNT_ORIGINALS)[0] >= N + len(gold))
    await asyncio.sleep(2)  # until is in the past
    (block,) = fenced(readme_section("## Replay"), "sh")[:1]
    here = (
        block.replace("clickhouse://127.0.0.1:9000/meshtap", recorded.url)
        .replace("http://127.0.0.1:10105", recorded.runtime.http_url)
        .replace("http://staging:10105", recorded.runtime.http_url)
        .replace("grpc://staging:10205", f"grpc://{recorded.runtime.grpc_target}")
        .replace("2026-11-26T10:00:00Z", since)
        .replace("2026-11-26T10:05:00Z", until)
        .replace("2026-11-26T11:00:00Z", until)
    )
    env = {"MESHTAP_VAR_DIR": str(tmp_path), "COLUMNS": "200"}  # no wrapped lines
    output = (await asyncio.to_thread(run_shell, here, env=env)).stdout
    assert_lines_shown(here, output)
    assert "orders.eu.created -> replay.orders.eu.created: 40" in output

    # The outcome diff of the second replay (1x, into replay.orders.*). Its first line only:
    # the lines under it show a differing response, and nothing responds here.
    replay_id = re.findall(r"^replay (r-[0-9a-f]+) -> ", output, re.M)[1]
    (diff,) = fenced(readme_section("## Replay"), "sh")[1:]
    diff_command, shown = diff.splitlines()[:2]
    result = await asyncio.to_thread(
        run_shell,
        diff_command.replace("r-5c1f…", replay_id),
        env={**env, "MESHTAP_CLICKHOUSE_URL": recorded.url},
    )
    assert_lines_shown(shown.replace("r-5c1f…", replay_id), result.stdout)


def test_readme_production_admin_check_runs_as_written(tmp_path: Path) -> None:
    """Web admin in production: the exports and `check --deploy` pass clean, as the comment says."""
    (block,) = fenced(readme_section("### Web admin in production"), "sh")
    result = run_shell(block, env={"MESHTAP_VAR_DIR": str(tmp_path)})
    assert "System check identified no issues" in result.stdout, result.stdout


@pytest.mark.nats
async def test_readme_nats_runtime_line_runs_as_written(nats_server: NatsServer) -> None:
    """Server mode on NATS: the installed `meshtap-runtime --store nats://...` becomes ready on
    the test's nats-server (started with the README's `-js -sd DIR` by tests/servers.py)."""
    (block,) = fenced(readme_section("## Server mode and scaling out"), "sh")[1:]
    server_line, run_line = block.splitlines()
    assert server_line.startswith("nats-server -js -sd ")
    command = shlex.split(run_line.split("# or: ", 1)[1])
    assert command[:2] == [".venv/bin/meshtap-runtime", "--store"]
    store = command[2].replace("nats://127.0.0.1:4222", nats_server.url)
    program = [str(ROOT / command[0]), "--store", store]
    runtime = RuntimeProcess([], program=program)
    try:
        await runtime.start(timeout=60)
    finally:
        runtime.kill()
