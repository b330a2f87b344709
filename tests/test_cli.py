"""`python -m runtime` as a user runs it: flags, environment, start-up text, errors, signals."""

from __future__ import annotations

import signal
import subprocess
import sys

import aiohttp
import pytest

from runtime._config import OPTIONS, RuntimeConfig, config_from_args, options_markdown
from tests.meshes import ROOT, Client, RuntimeProcess, event
from tests.sinks import RecordingSink


def test_defaults_follow_eventmesh() -> None:
    config = config_from_args([], environ={})
    assert (config.host, config.http_port, config.store) == ("127.0.0.1", 10105, "memory://")
    assert config.max_payload_bytes == 1_048_576


def test_flags_win_over_environment() -> None:
    environ = {"MESHTAP_HTTP_PORT": "2000", "MESHTAP_STORE": "redis://10.0.0.1:6379/0"}
    config = config_from_args(["--http-port", "3000"], environ=environ)
    assert config.http_port == 3000
    assert config.store == "redis://10.0.0.1:6379/0"


def test_webhook_routes_from_flags_and_env() -> None:
    config = config_from_args(
        ["--webhook-topic", "github=scm.github", "--webhook-topic", "stripe=pay.stripe"],
        environ={},
    )
    assert dict(config.webhook_topics) == {"github": "scm.github", "stripe": "pay.stripe"}
    config = config_from_args([], environ={"MESHTAP_WEBHOOK_TOPICS": "a=x.a,b=x.b"})
    assert dict(config.webhook_topics) == {"a": "x.a", "b": "x.b"}


def test_every_option_has_a_config_field_and_env_name() -> None:
    fields = set(RuntimeConfig.__dataclass_fields__)
    for option in OPTIONS:
        assert option.field in fields
        assert option.env == "MESHTAP_" + option.field.upper()


@pytest.mark.parametrize(
    ("argv", "environ", "expected"),
    [
        (["--http-port", "abc"], {}, "invalid int value: 'abc'"),
        ([], {"MESHTAP_HTTP_PORT": "abc"}, "MESHTAP_HTTP_PORT='abc' is not a valid int"),
        (["--webhook-topic", "nope"], {}, "--webhook-topic expects NAME=TOPIC"),
    ],
)
def test_bad_configuration_is_explained(
    argv: list[str], environ: dict[str, str], expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        config_from_args(argv, environ=environ)
    assert exit_info.value.code == 2
    assert expected in capsys.readouterr().err


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "runtime", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_help_lists_every_flag_with_its_environment_variable() -> None:
    result = _run("--help")
    assert result.returncode == 0
    for option in OPTIONS:
        assert option.flag in result.stdout
        assert option.env in result.stdout


def test_unknown_store_scheme_names_the_known_ones() -> None:
    result = _run("--store", "kafka://broker:9092", "--http-port", "0")
    assert result.returncode == 2
    assert "unknown store URL 'kafka://broker:9092'" in result.stderr
    assert "memory://" in result.stderr
    assert "redis://" in result.stderr


async def test_runs_on_embedded_defaults_and_stops_cleanly_on_ctrl_c() -> None:
    process = RuntimeProcess([])
    sink = await RecordingSink().start()
    try:
        await process.start()
        async with aiohttp.ClientSession() as session:
            client = Client(process.url, session)
            await client.subscribe(topic="orders.#", group="billing", sink=sink.url)
            await client.publish("orders.created", event("e-1"))
            await sink.wait_for(1)
        process.signal(signal.SIGINT)
        assert await process.wait(timeout=15) == 0
        output = process.output()
        assert f"Meshtap runtime is up: {process.url}" in output
        assert "store: memory://" in output
        assert "curl -s -X POST" in output  # tells the user what to do next
        assert "stopped cleanly" in output
    finally:
        process.kill()
        await sink.stop()


def test_readme_configuration_table_matches_the_code() -> None:
    readme = (ROOT / "README.md").read_text()
    start = readme.index("<!-- config-table:start -->") + len("<!-- config-table:start -->")
    end = readme.index("<!-- config-table:end -->")
    assert readme[start:end].strip() == options_markdown(), (
        "README.md's configuration table is stale; regenerate it with "
        "`python -c 'from runtime._config import options_markdown; print(options_markdown())'`"
    )
