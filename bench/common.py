"""What every benchmark shares: a state directory of its own, and Triton stopped at the end."""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel

ROOT = Path(__file__).resolve().parent.parent
CONVEYOR = str(Path(sys.executable).parent / "conveyor")
# Which machine wrote each results file, and when: BENCHMARKS.md says it per section.
MACHINES = "machines.json"


@contextmanager
def isolated(tmp: Path, home: Path | None = None) -> Iterator[dict[str, str]]:
    """An environment with its own CONVEYOR_HOME (`home`, default under `tmp`) and PREFECT_HOME
    under `tmp` (the caller's own settings must not leak in); the embedded Triton it starts is
    stopped on the way out."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CONVEYOR_", "PREFECT_"))}
    env.update(CONVEYOR_HOME=str(home or tmp / "state"), PREFECT_HOME=str(tmp / "prefect"))
    # Tools the benchmarks start (`mlflow models serve` starts `uvicorn`) come from this venv.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    try:
        yield env
    finally:
        subprocess.run([CONVEYOR, "triton", "down"], env=env, cwd=ROOT, check=False)


def write_results(path: Path, rows: Sequence[BaseModel]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps([r.model_dump() for r in rows], indent=2))
    machines = path.parent / MACHINES
    recorded = json.loads(machines.read_text()) if machines.exists() else {}
    recorded[path.name] = {
        "machine": machine(),
        "written": f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
    }
    machines.write_text(json.dumps(recorded, indent=2, sort_keys=True) + "\n")


def machine() -> str:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor() or "unknown CPU",
    )
    memory_kb = next(
        int(line.split()[1])
        for line in Path("/proc/meminfo").read_text().splitlines()
        if line.startswith("MemTotal")
    )
    return (
        f"{os.cpu_count()} cores of {cpu}, {memory_kb / 2**20:.0f} GiB memory, "
        f"{platform.system()} {platform.release()}, Python {platform.python_version()}"
    )


def add_state_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--state",
        type=Path,
        default=None,
        help="use the champion in this state directory (bench.pipeline --keep-state) instead of "
        "releasing one",
    )


def run_snippet(code: str, args: list[str], env: dict[str, str]) -> tuple[dict[str, Any], float]:
    """Run `code` in a fresh interpreter (its imports and peak memory its own); returns the JSON
    object its last line prints and the process's wall seconds."""
    import time

    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", code, *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"benchmark step failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1]), elapsed
