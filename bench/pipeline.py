"""A full release on 100,000 rows with the spec's 8-trial search: wall time, and where it goes.

The release runs in this process against Prefect's ephemeral API (as `conveyor run` does); the
per-task times come from the API afterwards (summed over calls: the search's trials run two at a
time, so their sum exceeds their wall time).

    .venv/bin/python -m bench.pipeline --rows 100000
"""

from __future__ import annotations

import argparse
import os
import subprocess
import tempfile
import time
from pathlib import Path

import yaml
from pydantic import BaseModel

from bench.common import CONVEYOR, ROOT
from tasks.settings import DEFAULT_SPEC


class PipelineResult(BaseModel):
    rows: int
    trials: int
    wall_seconds: float  # release_flow call, Prefect's temporary server start included
    tasks: dict[str, float]  # task name → seconds, summed over its runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results" / "pipeline.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        os.environ.update(CONVEYOR_HOME=str(tmp / "state"), PREFECT_HOME=str(tmp / "prefect"))
        raw = yaml.safe_load(DEFAULT_SPEC.read_text())
        raw["data"]["rows"] = args.rows
        spec = tmp / "spec.yaml"
        spec.write_text(yaml.safe_dump(raw))
        # Imported after the environment is set: Prefect reads PREFECT_HOME at import.
        from flows.release import release_flow
        from tasks import metrics

        try:
            started = time.perf_counter()
            state = release_flow(str(spec), return_state=True)
            wall = time.perf_counter() - started
            if not state.is_completed():
                raise RuntimeError(f"the release did not complete: {state.message}")
            run_id = str(state.state_details.flow_run_id)
            tasks = metrics.task_durations(run_id)
        finally:
            subprocess.run([CONVEYOR, "triton", "down"], check=False)
    result = PipelineResult(
        rows=args.rows, trials=int(raw["search"]["trials"]), wall_seconds=wall, tasks=tasks
    )
    print(result.model_dump_json(), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(result.model_dump_json(indent=2))


if __name__ == "__main__":
    main()
