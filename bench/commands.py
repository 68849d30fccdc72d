"""How long a command takes to answer, as a user sees it: each a fresh process timed from outside
(interpreter and imports included), on the embedded default (no Prefect server, MLflow on
SQLite) with five released models. Read-only commands and input checks start no Prefect API
(#42); the median of `--repeat` runs is recorded, and every command must exit as stated.

The five specs are bench.fleet's (the shipped ones, renamed and made small), released once with
`conveyor run --all`; the bad arguments are refused before anything heavy is imported.

    .venv/bin/python -m bench.commands --out bench-results/commands.json
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pydantic import BaseModel

from bench.common import CONVEYOR, ROOT, isolated, write_results
from bench.fleet import write_specs

MODELS = 5

# What any command that reads the registry pays before conveyor's own work: importing MLflow,
# opening its SQLAlchemy store on the embedded SQLite file, one query.
FLOOR = (
    "import os, sys; from mlflow import MlflowClient; "
    "MlflowClient('sqlite:///' + os.environ['CONVEYOR_HOME'] + '/mlflow.db')"
    ".search_registered_models()"
)


class CommandTiming(BaseModel):
    command: str  # as typed, with the bench's paths shortened
    kind: str  # "read", "refusal", "help" or "floor" (not conveyor: what reading MLflow costs)
    exit_code: int
    median_s: float
    runs_s: list[float]
    target_s: float


def commands(specs: list[Path], tmp: Path) -> list[tuple[str, list[str], str, int, float]]:
    """(shown, argv, kind, expected exit code, target seconds) of each command timed."""
    first = specs[0].stem
    duplicated = tmp / "twice.yaml"
    duplicated.write_text(specs[0].read_text() + "name: twice\n")
    rows = tmp / "absent.csv"
    data = tmp / "data.csv"
    data.write_text("a,b,y\n1,2,0\n3,4,1\n")
    return [
        ("MLflow alone: import, SQLite store, one query (the floor)", ["python", "-c", FLOOR],
         "floor", 0, 2.0),
        ("conveyor --help", ["--help"], "help", 0, 1.0),
        ("conveyor run --help", ["run", "--help"], "help", 0, 1.0),
        (f"conveyor status ({MODELS} models)", ["status"], "read", 0, 2.0),
        ("conveyor status --json", ["status", "--json"], "read", 0, 2.0),
        (f"conveyor history {first}", ["history", first], "read", 0, 2.0),
        (f"conveyor doctor ({MODELS} models)", ["doctor"], "read", 0, 2.0),
        ("conveyor triton status", ["triton", "status"], "read", 0, 2.0),
        ("conveyor run --spec absent.yaml", ["run", "--spec", str(tmp / "absent.yaml")],
         "refusal", 2, 1.0),
        ("conveyor run --spec twice.yaml (a key written twice)",
         ["run", "--spec", str(duplicated)], "refusal", 2, 1.0),
        ("conveyor init --name 'Not A Name'",
         ["init", "--from", str(data), "--target", "y", "--name", "Not A Name"],
         "refusal", 2, 1.0),
        (f"conveyor explain {first} --rows absent.csv",
         ["explain", first, "--rows", str(rows)], "refusal", 2, 1.0),
    ]  # fmt: skip


def timed(argv: list[str], env: dict[str, str], expected: int, repeat: int) -> list[float]:
    """Wall seconds of each run of `conveyor *argv` (argv[0] == "python": a bare interpreter)."""
    runs = []
    for _ in range(repeat):
        started = time.perf_counter()
        command = [sys.executable, *argv[1:]] if argv[0] == "python" else [CONVEYOR, *argv]
        done = subprocess.run(
            command, env=env, cwd=ROOT, capture_output=True, text=True, check=False
        )
        runs.append(time.perf_counter() - started)
        if done.returncode != expected:
            raise RuntimeError(
                f"conveyor {' '.join(argv)} exited {done.returncode}, not {expected}:\n"
                f"{(done.stdout + done.stderr)[-2000:]}"
            )
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results/commands.json")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as name, isolated(Path(name)) as env:
        tmp = Path(name)
        specs = write_specs(tmp / "specs", MODELS)
        env["CONVEYOR_SPEC_DIR"] = str(tmp / "specs")
        subprocess.run([CONVEYOR, "run", "--all"], env=env, cwd=ROOT, check=True)
        rows = []
        for shown, argv, kind, expected, target in commands(specs, tmp):
            runs = timed(argv, env, expected, args.repeat)
            rows.append(
                CommandTiming(
                    command=shown,
                    kind=kind,
                    exit_code=expected,
                    median_s=statistics.median(runs),
                    runs_s=runs,
                    target_s=target,
                )
            )
            print(f"{shown}: {statistics.median(runs):.2f} s (target {target:.0f} s)")
    write_results(args.out, rows)


if __name__ == "__main__":
    main()
