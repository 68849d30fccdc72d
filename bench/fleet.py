"""A fleet of generated specs on the embedded default: `conveyor run --all` (in steps of 1, 10 and
N models, each step releasing only the new ones: the others are unchanged and skip), the embedded
Triton's memory with 1, 10 and N models served, `conveyor drift --all` (the nightly run: each
model's drift check and its outcome check) and `conveyor status`.

The specs are the three shipped ones, cycled, renamed and reseeded, made small (5,000 rows, one
trial, no serving sweep) so that the fleet's cost, not one model's training, is measured. One
`prefect server start` serves every command, as on a host with a server.

    .venv/bin/python -m bench.fleet --models 20
"""

from __future__ import annotations

import argparse
import os
import subprocess
import tempfile
import time
from pathlib import Path

import yaml
from pydantic import BaseModel

from bench.common import CONVEYOR, ROOT, isolated, write_results
from tests.servers import prefect_server

SHIPPED = ("fraud-detector", "credit-default", "churn")


class FleetRow(BaseModel):
    step: str  # what was measured
    models: int
    wall_s: float
    peak_rss_mb: float | None = None  # of the conveyor command (GNU time's maximum RSS)
    triton_rss_mb: float | None = None  # the embedded server and its python stubs, summed
    triton_processes: int | None = None
    outcome: str = ""
    # What a command that did not exit 0 said, its models' lines only (which one failed, why).
    detail: str = ""


def write_specs(directory: Path, count: int) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for n in range(count):
        base = SHIPPED[n % len(SHIPPED)]
        raw = yaml.safe_load((ROOT / "deployments" / "models" / f"{base}.yaml").read_text())
        raw["name"] = f"fleet-{n:02d}-{base}"
        raw["data"] |= {"rows": 5_000, "seed": 100 + n}
        raw["search"] |= {"trials": 1, "parallel": 1}
        raw["serving"]["tuning"] = {"enabled": False}
        raw["smoke"] |= {"rows": 300, "latency_requests": 50, "load_requests": 200}
        if raw["estimator"]["family"] == "random_forest":
            raw["estimator"]["params"]["n_estimators"] = 30
            raw["search"]["space"] = {"max_depth": {"type": "int", "low": 6, "high": 12}}
        path = directory / f"{raw['name']}.yaml"
        path.write_text(yaml.safe_dump(raw))
        paths.append(path)
    return paths


def timed(args: list[str], env: dict[str, str]) -> tuple[float, float, int, str, str]:
    """Wall seconds, peak RSS (MB, GNU time's maximum resident set), exit code, and what it
    said, counted (models released, unchanged, failed, drifted; status rows)."""
    started = time.monotonic()
    done = subprocess.run(
        ["/usr/bin/time", "-f", "MAXRSS %M", CONVEYOR, *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    wall = time.monotonic() - started
    lines = (done.stdout + done.stderr).strip().splitlines()
    peak = next((int(x.split()[1]) for x in lines if x.startswith("MAXRSS ")), 0) / 1024
    # One line per model (`<model>: …`, or a JSON row); the summary table repeats the outcomes.
    said = [x for x in lines if x.startswith(("fleet-", '{"model":'))]
    counts = {
        what: sum(marker in line for line in said)
        for what, marker in (
            ("released", " is champion ("),
            ("unchanged", ": unchanged: "),
            ("failed", " failed:"),
            ("drifted", ": drift (share"),
            ("no drift", ": no drift (share"),
            ("rows", '{"model":'),
        )
    }
    summary = ", ".join(f"{n} {what}" for what, n in counts.items() if n)
    failed = " ".join(x for x in said if "failed" in x)[:1000] if done.returncode else ""
    return wall, peak, done.returncode, summary, failed


def triton_memory(home: Path) -> tuple[float, int]:
    """RSS of the embedded server's whole process group (the stubs are in it), in MB."""
    from tasks.core.settings import Settings
    from tasks.serving import triton_server

    state = triton_server.read_state(Settings(home=home))
    assert state is not None, "the embedded Triton is not running"
    group = os.getpgid(state.pid)
    total, count = 0, 0
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if os.getpgid(int(proc.name)) != group:
                continue
            status = (proc / "status").read_text()
        except (OSError, ProcessLookupError):
            continue
        rss = next((line for line in status.splitlines() if line.startswith("VmRSS:")), None)
        if rss:
            total += int(rss.split()[1])
            count += 1
    return total / 1024, count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=20)
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results" / "fleet.json")
    args = parser.parse_args()
    rows: list[FleetRow] = []
    with tempfile.TemporaryDirectory() as tmp_name, isolated(Path(tmp_name)) as env:
        tmp = Path(tmp_name)
        specs = write_specs(tmp / "all", args.models)
        home = Path(env["CONVEYOR_HOME"])
        with prefect_server(tmp / "prefect-server") as api:
            env = {**env, "PREFECT_API_URL": api}
            steps = sorted({1, min(10, args.models), args.models})
            fleet = tmp / "fleet"
            fleet.mkdir()
            released = 0
            for size in steps:
                for spec in specs[released:size]:
                    (fleet / spec.name).write_text(spec.read_text())
                wall, peak, code, last, failed = timed(
                    ["run", "--all"], {**env, "CONVEYOR_SPEC_DIR": str(fleet)}
                )
                memory, processes = triton_memory(home)
                rows.append(
                    FleetRow(
                        step=f"run --all: {size - released} new, {released} unchanged",
                        models=size,
                        wall_s=wall,
                        peak_rss_mb=peak,
                        triton_rss_mb=memory,
                        triton_processes=processes,
                        outcome=f"exit {code}; {last}",
                        detail=failed,
                    )
                )
                print(rows[-1].model_dump_json(), flush=True)
                released = size
            fleet_env = {**env, "CONVEYOR_SPEC_DIR": str(fleet)}
            for step, command in (
                ("run --all, every model unchanged", ["run", "--all"]),
                ("drift --all (nightly check)", ["drift", "--all"]),
                ("status", ["status", "--json"]),
            ):
                wall, peak, code, last, failed = timed(command, fleet_env)
                rows.append(
                    FleetRow(
                        step=step,
                        models=args.models,
                        wall_s=wall,
                        peak_rss_mb=peak,
                        outcome=f"exit {code}; {last}",
                        detail=failed,
                    )
                )
                print(rows[-1].model_dump_json(), flush=True)
    write_results(args.out, rows)


if __name__ == "__main__":
    main()
