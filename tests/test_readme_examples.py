"""The Python client examples in README.md run as written against a real runtime, and print
what their comments say they print."""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import sys

from tests.meshes import ROOT, RuntimeProcess, free_port, running

SECTION = re.compile(r"^## Python client\n(.*?)^## ", re.S | re.M)
BLOCK = re.compile(r"```python\n(.*?)```", re.S)
PRINTED = re.compile(r"print\(.*\)\s+# (.+)$", re.M)


def python_examples() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    section = SECTION.search(readme)
    assert section is not None, "README.md has no '## Python client' section"
    blocks = BLOCK.findall(section.group(1))
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


BRIDGES = re.compile(r"^## Bridges\n(.*?)^## ", re.S | re.M)
SHELL = re.compile(r"```sh\n(.*?)```", re.S)
EXPECTED = re.compile(r"^# (.+)$", re.M)


async def test_readme_bridge_examples_run_as_written() -> None:
    """The two runtimes of the Bridges section start with its flags (ports moved to free ones),
    and its curl commands print what the comments say."""
    section = BRIDGES.search((ROOT / "README.md").read_text())
    assert section is not None, "README.md has no '## Bridges' section"
    start, commands = SHELL.findall(section.group(1))[:2]
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
        process = await asyncio.create_subprocess_exec(
            "bash", "-euo", "pipefail", "-c", commands,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        stdout, stderr = await asyncio.wait_for(process.communicate(), 60)
        assert process.returncode == 0, stderr.decode()
        output = stdout.decode()
        for expected in EXPECTED.findall(commands):
            assert expected.rstrip("…").strip() in output, (expected, output)
    finally:
        dmz.kill()
        internal.kill()
