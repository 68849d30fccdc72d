"""A full release on 100,000 rows with the spec's 8-trial search: with Prefect, as plain functions
without it, and killed at the smoke step then resumed.

Every run is a fresh process on the same spec, timed from the outside (interpreter start and
imports included), one after the other against one `prefect server start` (what deployments and
`make ui` use; a bare `conveyor run` also pays the ephemeral API's start, 10-17 s):

1. cold: `conveyor run` in an empty state directory; per-step times from the Prefect API;
2. plain: `python -m bench.plain`, the same steps as plain function calls (bench/plain.py);
3. killed: `conveyor run` in another empty state directory, SIGKILLed once its smoke test runs;
4. resumed: `conveyor run --resume last` there; which steps were reused, from the Prefect API.

    .venv/bin/python -m bench.pipeline --rows 100000 [--keep-state DIR]

`--keep-state DIR`: the killed and resumed release keep their state there (its champion, Triton
stopped) for the serving and drift benchmarks, so `make bench` trains the fraud model once.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from pydantic import BaseModel

from bench.common import CONVEYOR, ROOT
from tasks.core.spec import DEFAULT_SPEC
from tests.servers import clean_env, in_smoke_test, prefect_server


class PipelineResult(BaseModel):
    rows: int
    trials: int
    trial_rows: int | None  # search.max_rows: trials fit on at most this many rows
    cold_seconds: float
    cold_steps: dict[str, float]  # task → seconds, summed over its runs
    plain_seconds: float
    plain_steps: dict[str, float]
    killed_after_seconds: float
    resumed_seconds: float
    resumed_steps: dict[str, float]
    reused: list[str]  # steps whose results the resumed run took from the killed one


def timed(command: list[str], env: dict[str, str], log: Path) -> tuple[float, str]:
    started = time.perf_counter()
    done = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - started
    log.write_text(done.stdout + done.stderr)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:3])} failed, see {log}:\n{done.stderr[-3000:]}")
    return elapsed, done.stdout


def kill_at_smoke(command: list[str], env: dict[str, str], spec: str, log: Path) -> float:
    started = time.perf_counter()
    with log.open("wb") as out:
        process = subprocess.Popen(command, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
        while not in_smoke_test(spec):
            if process.poll() is not None:
                raise RuntimeError(f"the release ended before its smoke test, see {log}")
            time.sleep(0.2)
        process.kill()
        process.wait()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--keep-state", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results" / "pipeline.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        raw = yaml.safe_load(DEFAULT_SPEC.read_text())
        raw["data"]["rows"] = args.rows
        spec = str(tmp / "spec.yaml")
        Path(spec).write_text(yaml.safe_dump(raw))
        release = [CONVEYOR, "run", "--spec", spec]
        with prefect_server(tmp / "prefect") as api:
            # This process reads the runs back; Prefect reads its settings at import.
            os.environ["PREFECT_API_URL"] = api
            from tasks.core import pushgateway
            from tasks.ops.resume import last_release

            homes = {name: tmp / name for name in ("cold", "plain", "resumed")}
            if args.keep_state:
                # MLflow records absolute artifact paths: the state cannot be moved afterwards.
                shutil.rmtree(args.keep_state, ignore_errors=True)
                homes["resumed"] = args.keep_state.resolve()
            envs = {
                name: clean_env(CONVEYOR_HOME=str(home), PREFECT_API_URL=api)
                for name, home in homes.items()
            }
            envs["plain"].pop("PREFECT_API_URL")
            try:
                cold, _ = timed(release, envs["cold"], tmp / "cold.log")
                cold_steps = pushgateway.task_durations(last_release(spec))
                subprocess.run([CONVEYOR, "triton", "down"], env=envs["cold"], check=False)
                plain, out = timed(
                    [sys.executable, "-m", "bench.plain", spec], envs["plain"], tmp / "plain.log"
                )
                plain_steps = json.loads(out.strip().splitlines()[-1])
                subprocess.run([CONVEYOR, "triton", "down"], env=envs["plain"], check=False)
                killed = kill_at_smoke(release, envs["resumed"], spec, tmp / "killed.log")
                resumed, _ = timed(
                    [*release, "--resume", "last"], envs["resumed"], tmp / "resumed.log"
                )
                runs = pushgateway.task_runs(last_release(spec))
                resumed_steps = pushgateway.summed_durations(runs)
            finally:
                for env in envs.values():
                    subprocess.run([CONVEYOR, "triton", "down"], env=env, check=False)
            reused = sorted(
                {pushgateway.step_name(r) for r in runs if r.state and r.state.name == "Cached"}
            )
    result = PipelineResult(
        rows=args.rows,
        trials=int(raw["search"]["trials"]),
        trial_rows=raw["search"].get("max_rows"),
        cold_seconds=cold,
        cold_steps=cold_steps,
        plain_seconds=plain,
        plain_steps=plain_steps,
        killed_after_seconds=killed,
        resumed_seconds=resumed,
        resumed_steps=resumed_steps,
        reused=reused,
    )
    print(result.model_dump_json(), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(result.model_dump_json(indent=2))


if __name__ == "__main__":
    main()
