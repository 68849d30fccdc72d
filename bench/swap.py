"""p99 latency during a zero-downtime swap against steady state, over several releases.

Each release after the first swaps its version in while probe clients (`smoke.swap_probe_clients`,
HTTP and gRPC, unversioned) keep sending; the SwapReport's numbers are logged to the version's
MLflow run (`swap_*`), which is where this reads them.

    .venv/bin/python -m bench.swap --releases 4
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
from pathlib import Path

import yaml
from mlflow import MlflowClient
from pydantic import BaseModel

from bench.common import CONVEYOR, ROOT, isolated, write_results
from tasks.core.spec import DEFAULT_SPEC
from tests.servers import prefect_server


class SwapRow(BaseModel):
    version: int
    load_seconds: float
    steady_p99_ms: float
    during_p99_ms: float
    p99_ratio: float
    errors: int


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--releases", type=int, default=4)
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results" / "swap.json")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp_name, isolated(Path(tmp_name)) as env:
        tmp = Path(tmp_name)
        raw = yaml.safe_load(DEFAULT_SPEC.read_text())
        # The swap is what is measured: the spec's estimator and serving configuration, trained
        # on less data with its fixed parameters.
        raw["data"]["rows"] = 20_000
        raw["search"]["space"] = {}
        raw["serving"]["tuning"] = {"enabled": False}
        spec = tmp / "spec.yaml"
        spec.write_text(yaml.safe_dump(raw))
        # One Prefect server for every release instead of an ephemeral API per process.
        with prefect_server(tmp / "prefect-server") as api:
            for _ in range(args.releases):
                subprocess.run(
                    # Forced: each release rebuilds the same data and spec, to measure a swap.
                    [CONVEYOR, "run", "--spec", str(spec), "--force"],
                    env={**env, "PREFECT_API_URL": api},
                    cwd=ROOT,
                    check=True,
                    capture_output=True,
                )
        client = MlflowClient(f"sqlite:///{tmp / 'state' / 'mlflow.db'}")
        for version in client.search_model_versions(f"name='{raw['name']}'"):
            metrics = client.get_run(version.run_id).data.metrics
            if "swap_p99_ratio" not in metrics:
                continue  # the first release: nothing was served before it
            row = SwapRow(
                version=int(version.version),
                load_seconds=metrics["swap_load_seconds"],
                steady_p99_ms=metrics["swap_steady_p99_ms"],
                during_p99_ms=metrics["swap_during_p99_ms"],
                p99_ratio=metrics["swap_p99_ratio"],
                errors=int(metrics["swap_errors"]),
            )
            print(row.model_dump_json(), flush=True)
            rows.append(row)
    rows.sort(key=lambda r: r.version)
    write_results(args.out, rows)


if __name__ == "__main__":
    main()
