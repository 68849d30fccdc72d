"""The stack's Dask cluster, as compose describes it: `dask scheduler` (its dashboard beside it)
and one `dask worker` process that runs compose's number of worker processes, with the
workers' environment (conveyor's settings and S3 credentials), from the same virtual
environment as everything else."""

from __future__ import annotations

import re

from infra.stack.compose import BIN, HOST, ROOT, StackError, compose
from infra.stack.processes import http_ok, port_open, spawn, wait_until
from infra.stack.state import Stack

SCHEDULER = "dask-scheduler"
WORKERS = "dask-worker"
NWORKERS = re.compile(r"--nworkers\W+(\d+)")


def worker_processes() -> int:
    """compose's `--nworkers` for the dask-worker service."""
    found = NWORKERS.search(" ".join(map(str, compose()["services"][WORKERS]["command"])))
    if found is None:
        raise StackError(f"compose's {WORKERS} does not say --nworkers")
    return int(found.group(1))


def dashboard(stack: Stack) -> str:
    return f"{stack.url(SCHEDULER, 8787)}/status"


def start_scheduler(stack: Stack) -> str:
    port = stack.port(SCHEDULER, 8786)
    command = [str(BIN / "dask"), "scheduler", "--host", HOST, "--port", str(port)]
    command += ["--dashboard-address", stack.address(SCHEDULER, 8787)]
    directory = stack.root / SCHEDULER
    directory.mkdir(exist_ok=True)
    spawn(stack, SCHEDULER, command, stack.process_environment(), directory)
    wait_until(stack, SCHEDULER, port_open(port), 60)
    wait_until(stack, SCHEDULER, http_ok(dashboard(stack)), 60)
    return f"tcp://{HOST}:{port}, dashboard {dashboard(stack)}"


def start_workers(stack: Stack) -> str:
    n = worker_processes()
    address = f"tcp://{stack.address(SCHEDULER, 8786)}"
    command = [str(BIN / "dask"), "worker", address, "--nworkers", str(n), "--nthreads", "1"]
    # Worker processes spill and keep their scratch space in the stack's directory.
    command += ["--local-directory", str(stack.root / WORKERS)]
    env = stack.process_environment(**stack.worker_environment())
    spawn(stack, WORKERS, command, env, ROOT)
    wait_until(stack, WORKERS, lambda: _workers_up(address) >= n, 120)
    return f"{n} worker processes on {address}"


def _workers_up(address: str) -> int:
    """How many workers the scheduler has (0 while it cannot be asked)."""
    from distributed import Client

    try:
        with Client(address, timeout=5) as client:
            return len(client.scheduler_info(n_workers=-1)["workers"])
    except (OSError, TimeoutError):
        return 0
