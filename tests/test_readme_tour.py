"""README.md's five-minute tour runs as written against `manage.py standalone --demo` (what
`make run` starts): every shell block, in order, in one shell, on this test's free ports. The
subscriber block (it serves forever) runs in the background, as "in another shell" says. Each
`# {"key"...` comment under a command shows the start of what it prints; that must be printed."""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

from tests.meshes import ROOT, free_port
from tests.standalone import BANNER_END, Standalone

SECTION = re.compile(r"^## A five-minute tour\n(.*?)^## ", re.S | re.M)
BLOCK = re.compile(r"```sh\n(.*?)```", re.S)
SHOWN = re.compile(r'^# (\{"\w+")', re.M)
MARK = "=== tour block {} ==="


def tour_blocks() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    section = SECTION.search(readme)
    assert section is not None, "README.md has no '## A five-minute tour' section"
    blocks = BLOCK.findall(section.group(1))
    assert len(blocks) >= 6, "the tour lost its steps"
    return blocks


def on_ports(text: str, runtime_port: int, admin_port: int, sink_port: int) -> str:
    return (
        text.replace("127.0.0.1:10105", f"127.0.0.1:{runtime_port}")
        .replace("127.0.0.1:8000", f"127.0.0.1:{admin_port}")
        .replace("127.0.0.1:9999", f"127.0.0.1:{sink_port}")
        .replace('("127.0.0.1", 9999)', f'("127.0.0.1", {sink_port})')
    )


def test_readme_tour_runs_as_written(tmp_path: Path) -> None:
    blocks = tour_blocks()
    subscriber_blocks = [b for b in blocks if "serve_forever" in b]
    assert len(subscriber_blocks) == 1
    commands = [b for b in blocks if "serve_forever" not in b]
    assert any("/api/replays" in b and "/diff" in b for b in commands), "the tour must diff"

    stack = Standalone(tmp_path / "var", "--demo", "--demo-rate", "4")
    sink_port = free_port()
    subscriber: subprocess.Popen[str] | None = None
    received = ""
    try:
        stack.wait_for(BANNER_END, timeout=120)
        runtime_port = stack.ports["--http-port"]

        def here(text: str) -> str:
            return on_ports(text, runtime_port, stack.port, sink_port)

        subscriber = subprocess.Popen(
            ["bash", "-c", here(subscriber_blocks[0])],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        # The tour replays the demo's last two minutes: let it record some first.
        time.sleep(15)
        script = "set -euo pipefail\n" + "\n".join(
            f"echo '{MARK.format(n)}'\n{here(block)}" for n, block in enumerate(commands)
        )
        result = subprocess.run(
            ["bash", "-c", script],
            env={"PATH": "/usr/bin:/bin:/usr/local/bin"},
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
        outputs = re.split(r"=== tour block \d+ ===\n", result.stdout)[1:]
        assert len(outputs) == len(commands)
        for block, output in zip(commands, outputs, strict=True):
            for shown in SHOWN.findall(block):
                assert shown in output, f"block:\n{block}\nprinted:\n{output}"
        # What the tour says it shows.
        assert '"status": "completed"' in result.stdout, result.stdout
        assert '"differing"' in result.stdout or '"matched"' in result.stdout
        assert "shipping-service" in result.stdout
        assert "order-service" in result.stdout
        assert stack.interrupt() == 0, stack.output
    finally:
        stack.kill()
        if subscriber is not None:
            subscriber.kill()
            received, _ = subscriber.communicate(timeout=10)
    assert "order-42" in received, received
