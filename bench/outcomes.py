"""Outcome check time, peak memory and interval width on a large labelled batch.

One fraud champion trained on 50,000 synthetic rows; then a fresh process per configuration runs
`tasks.ops.outcomes.check_outcomes` (what the nightly flow runs: the labelled batch generated,
sampled to `outcomes.max_rows`, scored through the champion's ONNX file, the bootstrap interval,
and the CBPE estimate on the unlabelled batch of the same size) on 1,000,000 labelled rows,
sampled (the default 200,000) and unsampled. Peak memory is that process's maximum RSS, imports
included. The sampling's cost is the interval's width.

    .venv/bin/python -m bench.outcomes --out bench-results/outcomes.json
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
from pathlib import Path

import yaml
from pydantic import BaseModel

from bench.common import CONVEYOR, ROOT, isolated, run_snippet, write_results
from tasks.core.spec import DEFAULT_SPEC

_CHECK = """
import json, resource, sys, time
from tasks.ops.outcomes import check_outcomes
from tasks.core.settings import Settings
from tasks.core.spec import load_spec
started = time.perf_counter()
report = check_outcomes(Settings(), load_spec(sys.argv[1]))
r = report.realised
print(json.dumps({"seconds": time.perf_counter() - started, "rows": report.rows,
                  "metric": report.metric, "value": r.value, "low": r.low, "high": r.high,
                  "verdict": report.verdict, "estimated": report.estimated.value,
                  "peak_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"""


class OutcomeRow(BaseModel):
    labelled_rows: int
    checked_rows: int
    seconds: float  # check_outcomes only, imports excluded
    process_seconds: float
    peak_rss_mb: float
    metric: str
    value: float
    interval_width: float
    estimated: float
    verdict: str


def spec_file(directory: Path, rows: int, max_rows: int) -> Path:
    raw = yaml.safe_load(DEFAULT_SPEC.read_text())
    raw["data"]["rows"] = rows
    raw["outcomes"]["max_rows"] = max_rows
    raw["drift"]["max_rows"] = max_rows
    raw["search"].update(trials=1, parallel=1)
    raw["estimator"]["params"]["n_estimators"] = 30
    raw["serving"]["tuning"] = {"enabled": False}
    path = directory / f"spec-{rows}-{max_rows}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def run_check(spec: Path, env: dict[str, str], labelled: int) -> OutcomeRow:
    result, elapsed = run_snippet(_CHECK, [str(spec)], env)
    return OutcomeRow(
        labelled_rows=labelled,
        checked_rows=result["rows"],
        seconds=result["seconds"],
        process_seconds=elapsed,
        peak_rss_mb=result["peak_kb"] / 1024,
        metric=result["metric"],
        value=result["value"],
        interval_width=result["high"] - result["low"],
        estimated=result["estimated"],
        verdict=result["verdict"],
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results" / "outcomes.json")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp, isolated(Path(tmp)) as env:
        base = Path(tmp)
        release = spec_file(base, 50_000, 200_000)
        subprocess.run([CONVEYOR, "run", "--spec", str(release)], env=env, cwd=ROOT, check=True)
        for max_rows in (200_000, args.rows):
            row = run_check(spec_file(base, args.rows, max_rows), env, args.rows)
            print(row.model_dump_json(), flush=True)
            rows.append(row)
    write_results(args.out, rows)


if __name__ == "__main__":
    main()
