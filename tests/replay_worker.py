"""A replay worker as a real child process, for the SIGKILL-mid-replay test.

``python -m tests.replay_worker JOB.json``: the job file names the capture store, the spec, the
target and the replay id; the checkpoint goes to ``JOB.json.checkpoint`` (a ``FileJobStore``).
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from replay import FileJobStore, HttpTarget, ReplaySpec, run_replay
from tracing.clickhouse import ClickHouse


async def main(path: str, job: dict[str, Any]) -> None:
    client = ClickHouse.open(job["clickhouse"])
    target = HttpTarget(job["target"])
    try:
        result = await run_replay(
            client,
            ReplaySpec.from_json(job["spec"]),
            target,
            replay_id=job["replay_id"],
            job=FileJobStore(path + ".checkpoint"),
            reconcile=client,
            tick_s=0.1,
        )
        print(json.dumps(result.to_json()), flush=True)
    finally:
        await target.close()
        client.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], json.loads(Path(sys.argv[1]).read_text())))
