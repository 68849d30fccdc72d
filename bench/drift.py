"""Drift check time and peak memory against current-batch size.

One champion trained on `--reference` synthetic rows; then, for each size, a fresh process runs
`tasks.ops.drift.check_drift` (the function the nightly flow runs: load the newest batch, sample,
score both sides with the champion's ONNX file, Evidently, HTML report to MLflow) on a drifted
batch of that size. Peak memory is that process's maximum RSS, imports included.

    .venv/bin/python -m bench.drift --out bench-results/drift.json
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
from pathlib import Path

import yaml
from pydantic import BaseModel

from bench.common import CONVEYOR, ROOT, add_state_argument, isolated, run_snippet, write_results
from tasks.core.spec import DEFAULT_SPEC

_CHECK = """
import json, resource, sys, time
from tasks.ops.drift import check_drift
from tasks.core.settings import Settings
from tasks.core.spec import load_spec
started = time.perf_counter()
report = check_drift(Settings(), load_spec(sys.argv[1]))
print(json.dumps({"seconds": time.perf_counter() - started, "share": report.drift_share,
                  "compared": report.compared_rows, "current": report.current_rows,
                  "reference": report.reference_rows, "columns": report.drifted_columns,
                  "prediction_score": report.prediction.score,
                  "column_scores": {c.column: c.score for c in report.columns},
                  "peak_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"""


class DriftRow(BaseModel):
    current_rows: int
    reference_rows: int
    compared_rows: int
    seconds: float  # check_drift only, imports excluded
    process_seconds: float  # the whole process, imports included
    peak_rss_mb: float
    drift_share: float
    drifted_columns: list[str]
    prediction_score: float
    column_scores: dict[str, float]
    unsampled: bool  # the extra run of the largest size with sampling off


def spec_file(directory: Path, rows: int, drift: float, max_rows: int) -> Path:
    raw = yaml.safe_load(DEFAULT_SPEC.read_text())
    raw["data"].update(rows=rows, drift=drift)
    raw["drift"]["max_rows"] = max_rows
    # A small search: the benchmark is about the drift check, not training.
    raw["search"].update(trials=1, parallel=1)
    raw["estimator"]["params"]["n_estimators"] = 30
    raw["serving"]["tuning"] = {"enabled": False}
    path = directory / f"spec-{rows}-{drift}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def run_check(spec: Path, env: dict[str, str], unsampled: bool = False) -> DriftRow:
    result, elapsed = run_snippet(_CHECK, [str(spec)], env)
    return DriftRow(
        current_rows=result["current"],
        reference_rows=result["reference"],
        compared_rows=result["compared"],
        seconds=result["seconds"],
        process_seconds=elapsed,
        peak_rss_mb=result["peak_kb"] / 1024,
        drift_share=result["share"],
        drifted_columns=result["columns"],
        prediction_score=result["prediction_score"],
        column_scores=result["column_scores"],
        unsampled=unsampled,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument(
        "--reference", type=int, default=100_000, help="training rows (without --state)"
    )
    parser.add_argument("--max-rows", type=int, default=100_000)
    parser.add_argument(
        "--unsampled",
        action="store_true",
        help="also run the largest size with no sampling, to compare scores and verdicts",
    )
    add_state_argument(parser)
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results" / "drift.json")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp, isolated(Path(tmp), args.state) as env:
        base = Path(tmp)
        if not args.state:
            # The reference is the champion's training split, not the holdout.
            holdout = float(yaml.safe_load(DEFAULT_SPEC.read_text())["data"]["holdout_fraction"])
            release = spec_file(base, round(args.reference / (1 - holdout)), 0.0, args.max_rows)
            subprocess.run([CONVEYOR, "run", "--spec", str(release)], env=env, cwd=ROOT, check=True)
        checks = [(size, args.max_rows, False) for size in sorted(args.sizes)]
        if args.unsampled:
            checks.append((max(args.sizes), max(args.sizes), True))
        for size, max_rows, unsampled in checks:
            row = run_check(spec_file(base, size, 1.0, max_rows), env, unsampled=unsampled)
            print(row.model_dump_json(), flush=True)
            rows.append(row)
    write_results(args.out, rows)


if __name__ == "__main__":
    main()
