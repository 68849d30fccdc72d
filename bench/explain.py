"""Reason codes and the fairness gate of the credit model, from one run: the shipped
credit-default spec released on a fresh state directory, then

- reason codes (`tasks.modeling.reason_codes.reason_table`, the work behind `conveyor explain`)
  on 1,000 and 10,000 generated applications, in-process, best of three: rows per second;
- `conveyor explain credit-default --rows FILE` on 1,000 rows as a process, timed from outside
  (interpreter, imports, the ephemeral Prefect API and the MLflow model load included);
- the fairness evaluation of the release (per-segment intervals and disparities over the 7,500
  holdout rows, the spec's 500 resamples) and the global importance, in-process.

    .venv/bin/python -m bench.explain --out bench-results/explain.json
"""

from __future__ import annotations

import argparse
import os
import subprocess
import tempfile
import time
from pathlib import Path

from pydantic import BaseModel

from bench.common import CONVEYOR, ROOT, isolated, write_results

SPEC = ROOT / "deployments/models/credit-default.yaml"


class Timing(BaseModel):
    what: str
    rows: int
    seconds: float
    rows_per_s: float


def best_of(runs: int, work: object) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        work()  # type: ignore[operator]
        times.append(time.perf_counter() - started)
    return min(times)


def measure(env: dict[str, str], tmp: Path) -> list[Timing]:
    # Imported here: the settings below read the isolated environment.
    os.environ.update(env)
    from tasks.core.settings import Settings
    from tasks.core.spec import load_spec
    from tasks.datasets.data import load_dataset, to_features, to_target
    from tasks.datasets.synthetic import generate_credit
    from tasks.modeling import disparity, explain, fairness
    from tasks.modeling.kinds import kind_of
    from tasks.modeling.reason_codes import reason_table
    from tasks.registry import model_registry, tracking

    settings, spec = Settings(), load_spec(SPEC)
    ref = model_registry.version_ref(settings, spec.name, 1)
    model = tracking.load_model(settings, ref.model_uri)
    holdout = load_dataset(tracking.run_tags(settings, ref.run_id)[tracking.TAG_HOLDOUT_URI])
    background = to_features(holdout, spec)[:2000]
    rows: list[Timing] = []
    for n in (1_000, 10_000):
        frame = generate_credit(n, 123, 0.12).drop(columns=["defaulted"])
        seconds = best_of(3, lambda f=frame: reason_table(spec, model, f, background, 4))
        rows.append(Timing(what="reason codes", rows=n, seconds=seconds, rows_per_s=n / seconds))
    file = tmp / "applications.csv"
    generate_credit(1_000, 7, 0.12).drop(columns=["defaulted"]).to_csv(file, index=False)
    started = time.perf_counter()
    subprocess.run(
        [CONVEYOR, "explain", spec.name, "--rows", str(file)], env=env, cwd=ROOT, check=True
    )
    seconds = time.perf_counter() - started
    rows.append(
        Timing(
            what="conveyor explain (process)", rows=1000, seconds=seconds, rows_per_s=1000 / seconds
        )
    )
    features, target = to_features(holdout, spec), to_target(holdout, spec)
    scores = kind_of(spec).scores(model, features)
    threshold = float(tracking.run_tags(settings, ref.run_id)[tracking.TAG_THRESHOLD])
    decided = disparity.predictions(spec, scores, threshold)
    seconds = best_of(3, lambda: fairness.evaluate(spec, holdout, target, decided))
    rows.append(
        Timing(
            what=f"fairness evaluation ({spec.segments.resamples} resamples)",
            rows=len(holdout),
            seconds=seconds,
            rows_per_s=len(holdout) / seconds,
        )
    )
    sample = spec.explanations.sample_rows
    seconds = best_of(3, lambda: explain.global_importance(spec, model, features))
    rows.append(
        Timing(what="global importance", rows=sample, seconds=seconds, rows_per_s=sample / seconds)
    )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results/explain.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as name, isolated(Path(name)) as env:
        subprocess.run([CONVEYOR, "run", "--spec", str(SPEC)], env=env, cwd=ROOT, check=True)
        rows = measure(env, Path(name))
    write_results(args.out, rows)
    for row in rows:
        print(f"{row.what}: {row.rows} rows in {row.seconds:.3f} s, {row.rows_per_s:,.0f} rows/s")


if __name__ == "__main__":
    main()
