"""Runs whose process died are Crashed, not Running forever.

A conveyor command tags every flow run it starts with its pid and host. A run still Running
whose process on this host is gone was killed (SIGKILL, OOM, a closed laptop): the next conveyor
flow marks it Crashed, so `--resume last`, the lease's "who holds it" and the Prefect UI all see
it for what it is. Runs on a Prefect server with workers are covered by Prefect's own zombie
detection (heartbeats and the automation `make deploy` creates), which needs no pid.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from uuid import UUID

from prefect import get_run_logger, task

PID_TAG = "conveyor.pid:"
HOST_TAG = "conveyor.host:"
CLI_TAG = "conveyor.cli"


def process_tags() -> list[str]:
    """Tags for the flow runs this process starts (`with prefect.tags(*process_tags())`)."""
    return [CLI_TAG, f"{PID_TAG}{os.getpid()}", f"{HOST_TAG}{socket.gethostname()}"]


def _tag_value(tags: list[str], prefix: str) -> str | None:
    return next((t.removeprefix(prefix) for t in tags if t.startswith(prefix)), None)


def process_alive(pid: int) -> bool:
    """Whether `pid` may still be the conveyor process that tagged the run. Conservative: any
    Python process with that pid counts (a live run must never be marked Crashed; a recycled
    pid of another program does not)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"conveyor" in cmdline or b"python" in cmdline


def dead_runs() -> list[tuple[UUID, str, int]]:
    """(flow run id, name, pid) of Running runs started on this host by a process now gone."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
        FlowRunFilterTags,
    )
    from prefect.client.schemas.objects import StateType

    host = socket.gethostname()
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                tags=FlowRunFilterTags(all_=[CLI_TAG]),
                state=FlowRunFilterState(
                    type=FlowRunFilterStateType(any_=[StateType.RUNNING, StateType.PENDING])
                ),
            )
        )
    found = []
    for run in runs:
        pid = _tag_value(run.tags, PID_TAG)
        if _tag_value(run.tags, HOST_TAG) != host or pid is None or not pid.isdigit():
            continue
        if int(pid) != os.getpid() and not process_alive(int(pid)):
            found.append((run.id, run.name, int(pid)))
    return found


def mark_crashed(runs: list[tuple[UUID, str, int]]) -> None:
    from prefect.client.orchestration import get_client
    from prefect.states import Crashed

    with get_client(sync_client=True) as client:
        for run_id, _, pid in runs:
            state = Crashed(message=f"its process (pid {pid} on {socket.gethostname()}) is gone")
            client.set_flow_run_state(run_id, state, force=True)


@task(name="mark-crashed-runs")
def mark_crashed_task() -> int:
    runs = dead_runs()
    mark_crashed(runs)
    for run_id, name, pid in runs:
        get_run_logger().warning(
            "flow run %s (%s): process %d is gone, marked Crashed", run_id, name, pid
        )
    return len(runs)
