"""Releases at size, from one run: `conveyor run` as a process on generated partitioned tables of
1M, 5M and 20M rows (date= partitions of 500,000 rows, each generated and written on its own),
for LightGBM multiclass (the shipped merchant-category spec) and XGBoost binary (the shipped
fraud spec with `family: xgboost`), `compute: local` beside `compute: dask` (a LocalCluster of 2
worker processes conveyor starts) where local is asked for (`--local-max`). One trial on the
search's sample, the shipped trees. Timed from outside (interpreter, imports, the ephemeral
Prefect API and Triton's start included); peak RSS sampled every 0.2 s for the `conveyor`
process alone and for each Dask worker process (`bench.score`'s sampler).

    .venv/bin/python -m bench.scale --out bench-results/scale.json
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import yaml
from pydantic import BaseModel

from bench.common import CONVEYOR, ROOT, isolated, write_results
from bench.score import Peaks
from tasks.core.spec import SPEC_DIR
from tasks.datasets.synthetic import generate

PIECE_ROWS = 500_000
# (spec, family): the shipped spec each table is released with.
CASES = [("merchant-category", "lightgbm"), ("fraud-detector", "xgboost")]


class ScaleRow(BaseModel):
    model: str
    family: str
    rows: int
    compute: str
    seconds: float | None  # None: the release failed (see `outcome`)
    flow_peak_mb: float
    worker_peak_mb: float | None
    outcome: str


def write_table(root: Path, spec: dict, rows: int) -> None:
    """`rows` rows of the spec's synthetic domain as date= pieces, one generated at a time."""
    d = spec["data"]
    for i in range(-(-rows // PIECE_ROWS)):
        n = min(PIECE_ROWS, rows - i * PIECE_ROWS)
        frame = generate(d["source"], n, 1000 + i, d.get("positive_rate", 0.02), 0.0)
        folder = root / f"date=2026-{1 + i // 28:02d}-{1 + i % 28:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        frame.to_parquet(folder / "part-0.parquet", index=False)


def release(env: dict[str, str], spec: Path) -> tuple[float | None, Peaks, str]:
    started = time.perf_counter()
    process = subprocess.Popen(
        [CONVEYOR, "run", "--spec", str(spec), "--force"],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    peaks = Peaks(process.pid)
    said, _ = process.communicate()
    seconds = time.perf_counter() - started
    peaks.stop()
    if process.returncode != 0:
        return None, peaks, " ".join(said.split())[-300:]
    return seconds, peaks, "released"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 5_000_000, 20_000_000])
    parser.add_argument("--local-max", type=int, default=5_000_000)
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results" / "scale.json")
    args = parser.parse_args()
    results: list[ScaleRow] = []
    with tempfile.TemporaryDirectory() as tmp, isolated(Path(tmp)) as env:
        base = Path(tmp)
        for model, family in CASES:
            raw = yaml.safe_load((SPEC_DIR / f"{model}.yaml").read_text())
            for rows in args.rows:
                table = base / f"table-{model}-{rows}"
                write_table(table, raw, rows)
                for compute in ("local", "dask"):
                    if compute == "local" and rows > args.local_max:
                        continue
                    spec = _spec(base, raw, model, family, compute, table)
                    seconds, peaks, outcome = release(env, spec)
                    row = ScaleRow(
                        model=model,
                        family=family,
                        rows=rows,
                        compute=compute,
                        seconds=None if seconds is None else round(seconds, 1),
                        flow_peak_mb=round(peaks.flow / 2**20, 1),
                        worker_peak_mb=round(peaks.worker / 2**20, 1)
                        if compute == "dask"
                        else None,
                        outcome=outcome,
                    )
                    print(row.model_dump_json(), flush=True)
                    results.append(row)
                shutil.rmtree(table)
    write_results(args.out, results)


def _spec(base: Path, raw: dict, model: str, family: str, compute: str, table: Path) -> Path:
    spec = yaml.safe_load(yaml.safe_dump(raw))
    spec["name"] = f"{model}-{compute}-{table.name.rsplit('-', 1)[1]}"
    spec["compute"] = compute
    spec["data"]["source"] = str(table)
    spec["search"].update(trials=1, parallel=1, max_rows=20_000)
    if spec["estimator"]["family"] != family:
        spec["estimator"]["family"] = family
        spec["estimator"]["params"] = {"n_estimators": 200}
        spec["search"]["space"] = {"max_depth": {"type": "int", "low": 4, "high": 8}}
    spec["serving"]["tuning"] = {"enabled": False}
    path = base / f"{spec['name']}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


if __name__ == "__main__":
    main()
