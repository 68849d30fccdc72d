"""Two models released at once, then the nightly drift check fanning out over both: on `make
stack`'s topology with two workers on the cpu pool (Prefect server on PostgreSQL, as production
runs it, and the same stack with its Prefect server on SQLite), against the embedded default
(two `conveyor run` processes on one state directory, then `conveyor drift --all`).

    .venv/bin/python -m bench.stack

Each setup releases the shipped fraud spec and a renamed copy of it (same size: 50,000 rows,
the spec's search) at the same moment; wall time is from asking for both to both finished.
While they run, a client asks the Prefect API for flow runs every 0.5 s: its latency is what
the UI and the workers feel of the database.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import yaml
from pydantic import BaseModel

from bench.common import CONVEYOR, ROOT, isolated, write_results
from infra.stack import ENV_FILE, STATE_FILE, read_env_file, stop_pid
from tasks.core.spec import DEFAULT_SPEC

RESULT = ROOT / "bench-results" / "stack.json"
PYTHON = str(Path(CONVEYOR).parent / "python")
PREFECT = str(Path(CONVEYOR).parent / "prefect")
MODELS = ("fraud-detector", "fraud-detector-b")
FINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
SETUPS = ("embedded", "postgresql", "sqlite")


class StackRow(BaseModel):
    setup: str
    models: int
    workers: int
    wall_s: float
    release_s: list[float]  # each release, from its start to its end
    outcomes: list[str]
    api_p50_ms: float | None
    api_p99_ms: float | None
    database_locked: int  # "database is locked" lines in the server's and workers' logs
    # The nightly drift check over the released models, from asking for it to its end.
    drift_s: float | None = None
    drift_outcome: str = ""


def _specs(directory: Path) -> list[Path]:
    paths = []
    for name in MODELS:
        raw = yaml.safe_load(DEFAULT_SPEC.read_text())
        raw["name"] = name
        path = directory / f"{name}.yaml"
        path.write_text(yaml.safe_dump(raw))
        paths.append(path)
    return paths


def _clean() -> dict[str, str]:
    prefixes = ("CONVEYOR_", "PREFECT_", "MLFLOW_", "AWS_", "TRITON_")
    return {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}


def _run(command: list[str], env: dict[str, str], timeout_s: float = 600) -> str:
    done = subprocess.run(
        command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout_s
    )
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stdout}{done.stderr}")
    return done.stdout


def embedded(directory: Path) -> StackRow:
    specs = _specs(directory)
    with isolated(directory) as env:
        started = time.monotonic()
        logs = [(directory / f"{spec.stem}.log").open("w+") for spec in specs]
        processes = [
            subprocess.Popen(
                [CONVEYOR, "run", "--spec", str(spec)],
                env=env,
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            for spec, log in zip(specs, logs, strict=True)
        ]
        ends: dict[int, float] = {}
        while len(ends) < len(processes) and time.monotonic() - started < 1800:
            for n, process in enumerate(processes):
                if n not in ends and process.poll() is not None:
                    ends[n] = time.monotonic() - started
            time.sleep(0.5)
        outcomes = []
        for process, log in zip(processes, logs, strict=True):
            outcomes.append(
                "COMPLETED" if process.returncode == 0 else f"exit {process.returncode}"
            )
            if process.returncode != 0:
                log.seek(0)
                print(log.read()[-3000:], file=sys.stderr)
            log.close()
        wall = time.monotonic() - started
        began = time.monotonic()
        checked = subprocess.run(
            [CONVEYOR, "drift", "--all"],
            env={**env, "CONVEYOR_SPEC_DIR": str(directory)},
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=1800,
        )
        drift_s = time.monotonic() - began
    return StackRow(
        setup="embedded (two `conveyor run`, ephemeral Prefect, SQLite MLflow)",
        models=len(specs),
        workers=0,
        wall_s=round(wall, 1),
        release_s=[round(ends[n], 1) for n in sorted(ends)],
        outcomes=outcomes,
        api_p50_ms=None,
        api_p99_ms=None,
        database_locked=0,
        drift_s=round(drift_s, 1),
        drift_outcome="COMPLETED" if checked.returncode == 0 else f"exit {checked.returncode}",
    )


class _Prober(threading.Thread):
    """The Prefect API's latency for a flow-run query, every 0.5 s until stopped."""

    def __init__(self, api: str, auth: tuple[str, str]) -> None:
        super().__init__(daemon=True)
        self.api, self.auth, self.samples, self.done = api, auth, [], threading.Event()

    def run(self) -> None:
        with httpx.Client(auth=self.auth, timeout=30) as client:
            while not self.done.is_set():
                began = time.perf_counter()
                client.post(f"{self.api}/flow_runs/filter", json={"limit": 50})
                self.samples.append((time.perf_counter() - began) * 1000)
                self.done.wait(0.5)


def _final(api: str, auth: tuple[str, str], run_id: str, deadline: float) -> dict[str, object]:
    while time.monotonic() < deadline:
        response = httpx.get(f"{api}/flow_runs/{run_id}", auth=auth, timeout=30)
        run: dict[str, object] = response.json()
        if run["state"]["type"] in FINAL:  # type: ignore[index]
            return run
        time.sleep(1)
    raise SystemExit(f"flow run {run_id} did not finish")


def on_stack(directory: Path, database: str) -> StackRow:
    root = directory / "stack"
    root.mkdir(mode=0o711)
    root.chmod(0o711)  # PostgreSQL's own user must reach it when this runs as root
    up = [PYTHON, "-m", "infra.stack", "up", "--dir", str(root), "--free-ports"]
    if database == "sqlite":
        url = f"sqlite+aiosqlite:///{root / 'prefect-sqlite.db'}"
        up.append(f"--prefect-setting=PREFECT_API_DATABASE_CONNECTION_URL={url}")
    _run(up, _clean())
    try:
        stack_env = read_env_file(root / ENV_FILE)
        # What an operator's shell has after `source .stack/conveyor.env`.
        env = {**_clean(), **stack_env, "PREFECT_HOME": str(directory / "client")}
        _run(["make", "-s", "deploy"], env)
        # Two workers with one flow run each instead of the stack's one with four: each model
        # on a worker of its own. They carry the stack's marker, so `down` stops them too.
        state = json.loads((root / STATE_FILE).read_text())
        stop_pid(state["pids"]["worker-cpu"], grace_s=20)
        workers = []
        for n in range(2):
            log = (root / "logs" / f"bench-worker-{n}.log").open("ab")
            worker_env = {**env, "CONVEYOR_STACK_DIR": str(root)}
            workers.append(
                subprocess.Popen(
                    [PREFECT, "worker", "start", "--pool", "cpu", "--limit", "1"],
                    env={**worker_env, "PREFECT_HOME": str(directory / f"worker-{n}")},
                    cwd=ROOT,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
        time.sleep(10)  # both workers polling before the runs are asked for
        auth = tuple(stack_env["PREFECT_API_AUTH_STRING"].split(":", 1))
        api = stack_env["PREFECT_API_URL"]
        prober = _Prober(api, auth)  # type: ignore[arg-type]
        prober.start()
        started = time.monotonic()
        ids = []
        for spec in _specs(directory):
            output = _run(
                [PREFECT, "deployment", "run", "release/release", "--param", f"spec_path={spec}"],
                env,
            )
            ids.append(
                next(ln.split(":")[-1].strip() for ln in output.splitlines() if "UUID" in ln)
            )
        runs: dict[str, dict[str, object]] = {}
        while len(runs) < len(ids) and time.monotonic() - started < 1800:
            for run_id in ids:
                run = httpx.get(f"{api}/flow_runs/{run_id}", auth=auth, timeout=30).json()
                if run["state"]["type"] in FINAL:
                    runs.setdefault(run_id, run)
            time.sleep(1)
        wall = time.monotonic() - started
        prober.done.set()
        prober.join()
        # The nightly check as its schedule runs it: the fleet-drift deployment on a worker.
        began = time.monotonic()
        output = _run(
            [
                PREFECT, "deployment", "run", "fleet-drift-check/nightly-drift",
                "--param", f"spec_dir={directory}",
            ],
            env,
        )  # fmt: skip
        drift_id = next(ln.split(":")[-1].strip() for ln in output.splitlines() if "UUID" in ln)
        drift = _final(api, auth, drift_id, began + 1800)  # type: ignore[arg-type]
        drift_s = time.monotonic() - began
        for worker in workers:
            stop_pid(worker.pid, grace_s=20)
        logs = [p.read_text(errors="replace") for p in (root / "logs").glob("*.log")]
        samples = sorted(prober.samples)
        return StackRow(
            setup=f"make stack, Prefect server on {database}, two cpu workers",
            models=len(ids),
            workers=2,
            wall_s=round(wall, 1),
            release_s=[round(float(str(r.get("total_run_time", 0))), 1) for r in runs.values()],
            outcomes=[str(r["state"]["type"]) for r in runs.values()],  # type: ignore[index]
            api_p50_ms=round(statistics.median(samples), 1),
            api_p99_ms=round(samples[int(0.99 * (len(samples) - 1))], 1),
            database_locked=sum(text.count("database is locked") for text in logs),
            drift_s=round(drift_s, 1),
            drift_outcome=str(drift["state"]["type"]),  # type: ignore[index]
        )
    finally:
        subprocess.run([PYTHON, "-m", "infra.stack", "down", "--dir", str(root)], check=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--setups", nargs="+", default=list(SETUPS), choices=SETUPS)
    args = parser.parse_args()
    rows = []
    for setup in args.setups:
        with tempfile.TemporaryDirectory(prefix=f"bench-stack-{setup}-") as tmp:
            directory = Path(tmp)
            directory.chmod(0o711)
            rows.append(embedded(directory) if setup == "embedded" else on_stack(directory, setup))
            print(rows[-1].model_dump_json())
    write_results(RESULT, rows)


if __name__ == "__main__":
    main()
