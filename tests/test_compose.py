"""docker-compose.yml (server mode) is valid for Compose, has the services the README promises,
and every service's command names something this project (or its image) really has."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from tests.meshes import ROOT
from tests.servers import find_binary

COMPOSE_FILE = ROOT / "docker-compose.yml"
# Images whose commands are theirs, not ours.
THIRD_PARTY = {"redis", "clickhouse"}
EXPECTED = {"redis", "clickhouse", "migrate", "runtime", "web", "worker", "beat"}


def resolved_config() -> dict[str, Any]:
    """What `docker-compose config` makes of the file (anchors, merges and defaults applied)."""
    compose = find_binary("docker-compose", "docker-compose")
    result = subprocess.run(
        [compose, "-f", str(COMPOSE_FILE), "config"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    config: dict[str, Any] = yaml.safe_load(result.stdout)
    return config


def test_compose_config_is_valid() -> None:
    compose = find_binary("docker-compose", "docker-compose")
    result = subprocess.run(
        [compose, "-f", str(COMPOSE_FILE), "config", "-q"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr


def test_compose_has_every_part_with_healthchecks_and_volumes() -> None:
    services = resolved_config()["services"]
    assert set(services) == EXPECTED
    assert services["runtime"]["deploy"]["replicas"] == 2
    for name in ("redis", "clickhouse", "runtime", "web", "worker"):
        assert "healthcheck" in services[name], name
    for name in ("redis", "clickhouse", "migrate", "web", "worker", "beat"):
        assert services[name].get("volumes"), name
    assert services["clickhouse"]["image"].startswith("clickhouse/clickhouse-server:")
    assert services["runtime"]["depends_on"]["migrate"]["condition"] == (
        "service_completed_successfully"
    )


def _commands(command: list[str] | str) -> list[list[str]]:
    """The commands a service runs: `sh -c "a && b"` is its parts."""
    if isinstance(command, str):
        command = command.split()
    if command[:2] == ["sh", "-c"]:
        return [part.split() for part in command[2].split("&&")]
    return [command]


def _check(argv: list[str], django_commands: set[str]) -> None:
    program, *args = argv
    if program == "python" and args[:1] == ["manage.py"]:
        assert args[1] in django_commands, f"no management command {args[1]!r}: {argv}"
    elif program == "python" and args[:1] == ["-m"]:
        module = args[1]
        assert importlib.util.find_spec(module) is not None, f"no module {module!r}: {argv}"
        if module == "celery":
            app = args[args.index("-A") + 1]
            assert importlib.util.find_spec(f"{app}.celery") is not None, argv
    elif program == "gunicorn":
        assert shutil.which("gunicorn", path=str(Path(sys.executable).parent))
        module, _, attribute = args[0].partition(":")
        # In a child: loading the WSGI app sets Django up, which this process must not do.
        subprocess.run(
            [sys.executable, "-c", f"import {module}; assert callable({module}.{attribute})"],
            cwd=ROOT,
            timeout=120,
            check=True,
        )
    else:
        raise AssertionError(f"unknown program {program!r} in a Meshtap service: {argv}")


def management_commands() -> set[str]:
    """The project's `manage.py` commands, as a fresh process sees them."""
    result = subprocess.run(
        [sys.executable, "manage.py", "help", "--commands"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
        cwd=ROOT,
    )
    return set(result.stdout.split())


def test_every_service_command_exists_in_the_project() -> None:
    django_commands = management_commands()
    services = resolved_config()["services"]
    checked = 0
    for name, service in services.items():
        if name in THIRD_PARTY:
            continue
        for argv in _commands(service["command"]):
            _check(argv, django_commands)
            checked += 1
        for argv in _commands(service.get("healthcheck", {}).get("test", ["CMD", "true"])[1:]):
            if argv[:2] in (["python", "manage.py"], ["python", "-m"]):
                _check(argv, django_commands)
    assert checked >= 8  # migrate's four steps, runtime, web, worker, beat
