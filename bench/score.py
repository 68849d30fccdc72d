"""Batch scoring at size, from one run: the shipped fraud spec released on a fresh state directory
(30 trees, one trial), then `conveyor score fraud-detector` as a process on generated tables of
1M, 5M and 20M transactions (date= partitions of 250,000 rows), `--compute local` beside
`--compute dask` (a LocalCluster of 2 worker processes conveyor starts). Timed from outside
(interpreter, imports and the ephemeral Prefect API included); peak RSS sampled every 0.2 s for
the `conveyor` process alone and for each Dask worker process.

    .venv/bin/python -m bench.score --out bench-results/score.json
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import psutil
import yaml
from pydantic import BaseModel

from bench.common import CONVEYOR, ROOT, isolated, write_results
from tasks.core.spec import DEFAULT_SPEC
from tasks.datasets.synthetic import generate_transactions

PIECE_ROWS = 250_000


class ScoreRow(BaseModel):
    rows: int
    pieces: int
    compute: str
    seconds: float
    rows_per_s: float
    flow_peak_mb: float  # the conveyor process
    worker_peak_mb: float | None  # the largest Dask worker process (dask only)


def write_table(root: Path, rows: int) -> int:
    """`rows` generated transactions as date= partitions of PIECE_ROWS rows, one generated
    piece at a time (this process never holds the table)."""
    pieces = -(-rows // PIECE_ROWS)
    for i in range(pieces):
        n = min(PIECE_ROWS, rows - i * PIECE_ROWS)
        frame = generate_transactions(n, seed=100 + i, fraud_rate=0.02).drop(columns=["is_fraud"])
        folder = root / f"date=2026-{1 + i // 28:02d}-{1 + i % 28:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        frame.to_parquet(folder / "part-0.parquet", index=False)
    return pieces


class Peaks:
    """Peak RSS of a process and, separately, of its Dask worker descendants, sampled."""

    def __init__(self, pid: int) -> None:
        self.root = psutil.Process(pid)
        self.flow = 0
        self.worker = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.is_set():
            try:
                self.flow = max(self.flow, self.root.memory_info().rss)
                for child in self.root.children(recursive=True):
                    if "dask" in " ".join(child.cmdline()) or "spawn_main" in " ".join(
                        child.cmdline()
                    ):
                        self.worker = max(self.worker, child.memory_info().rss)
            except psutil.Error:
                pass
            time.sleep(0.2)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def score(env: dict[str, str], table: Path, out: Path, compute: str) -> tuple[float, Peaks]:
    command = [CONVEYOR, "score", "fraud-detector", "--input", str(table), "--output", str(out)]
    started = time.perf_counter()
    process = subprocess.Popen([*command, "--compute", compute], env=env, cwd=ROOT)
    peaks = Peaks(process.pid)
    if process.wait() != 0:
        raise SystemExit(f"conveyor score --compute {compute} failed")
    seconds = time.perf_counter() - started
    peaks.stop()
    return seconds, peaks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 5_000_000, 20_000_000])
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results" / "score.json")
    args = parser.parse_args()
    results: list[ScoreRow] = []
    with tempfile.TemporaryDirectory() as tmp, isolated(Path(tmp)) as env:
        base = Path(tmp)
        raw = yaml.safe_load(DEFAULT_SPEC.read_text())
        raw["data"]["rows"] = 20_000
        raw["search"].update(trials=1, parallel=1)
        raw["estimator"]["params"]["n_estimators"] = 30
        raw["serving"]["tuning"] = {"enabled": False}
        spec = base / "fraud-detector.yaml"
        spec.write_text(yaml.safe_dump(raw))
        subprocess.run([CONVEYOR, "run", "--spec", str(spec)], env=env, cwd=ROOT, check=True)
        for rows in args.rows:
            table = base / f"table-{rows}"
            pieces = write_table(table, rows)
            for compute in ("local", "dask"):
                out = base / f"scores-{rows}-{compute}"
                seconds, peaks = score(env, table, out, compute)
                row = ScoreRow(
                    rows=rows,
                    pieces=pieces,
                    compute=compute,
                    seconds=round(seconds, 2),
                    rows_per_s=round(rows / seconds),
                    flow_peak_mb=round(peaks.flow / 2**20, 1),
                    worker_peak_mb=round(peaks.worker / 2**20, 1) if compute == "dask" else None,
                )
                print(row.model_dump_json(), flush=True)
                results.append(row)
                shutil.rmtree(out)
            shutil.rmtree(table)
    write_results(args.out, results)


if __name__ == "__main__":
    main()
