"""A release on a busy machine: the shipped fraud spec released on a fresh state directory by
`conveyor run` (the embedded default: Prefect's ephemeral API, SQLite MLflow, embedded Triton),
once on an idle machine and once while CPU-bound processes (one per core by default) spin
beside it. Before #42 the busy start-up of Prefect's ephemeral API (20 s, counted in sleeps)
failed releases with a traceback; the release must complete, and the ratio says what the
load costs.

    .venv/bin/python -m bench.busy --out bench-results/busy.json
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pydantic import BaseModel

from bench.common import CONVEYOR, ROOT, isolated, write_results

SPEC = ROOT / "deployments/models/fraud-detector.yaml"
BURN = "while True: pass"


class BusyRow(BaseModel):
    machine: str  # "idle" or "N CPU-bound processes"
    exit_code: int
    wall_s: float
    load_1m_after: float
    said: str  # the command's last line


def release(burners: int) -> BusyRow:
    spinning = [subprocess.Popen([sys.executable, "-c", BURN]) for _ in range(burners)]
    try:
        with tempfile.TemporaryDirectory() as name, isolated(Path(name)) as env:
            started = time.perf_counter()
            done = subprocess.run(
                [CONVEYOR, "run", "--spec", str(SPEC)],
                env=env,
                cwd=ROOT,
                capture_output=True,
                text=True,
                check=False,
            )
            wall = time.perf_counter() - started
            load = os.getloadavg()[0]
    finally:
        for process in spinning:
            process.kill()
            process.wait()
    lines = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    return BusyRow(
        machine="idle" if not burners else f"{burners} CPU-bound processes",
        exit_code=done.returncode,
        wall_s=wall,
        load_1m_after=load,
        said=lines[-1].strip() if lines else "",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results/busy.json")
    parser.add_argument("--burners", type=int, default=os.cpu_count() or 2)
    args = parser.parse_args()
    rows = [release(0), release(args.burners)]
    write_results(args.out, rows)
    for row in rows:
        print(
            f"{row.machine}: exit {row.exit_code} in {row.wall_s:.1f} s, load {row.load_1m_after}"
        )
    failed = [r for r in rows if r.exit_code != 0]
    if failed:
        raise SystemExit(f"a release failed: {failed[0].said}")


if __name__ == "__main__":
    main()
