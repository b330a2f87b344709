"""The Python client examples in README.md run as written against a real runtime, and print
what their comments say they print."""

from __future__ import annotations

import asyncio
import os
import re
import sys

from tests.meshes import ROOT, running

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
