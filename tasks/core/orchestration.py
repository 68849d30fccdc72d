"""How conveyor's flows run their subflows on Prefect."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache


@contextmanager
def subflows_without_heartbeats() -> Iterator[None]:
    """Subflows started inside this block send no heartbeats. Prefect 3.8's heartbeat thread
    sleeps in one-second steps and every flow run joins it when it ends: ~1 s per subflow,
    ~6 s of a release. The root flow run keeps its own heartbeats, which are what detect a lost
    worker; a subflow cannot outlive it."""
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        yield


@cache
def _root_of(flow_run_id: str) -> str:
    # Prefect walks the parent chain through its API on every read; a chain never changes.
    from prefect.runtime import flow_run

    return str(flow_run.root_flow_run_id or flow_run_id)


def root_flow_run() -> str:
    """The Prefect flow run a step belongs to (the release, not its subflow); "" outside one."""
    from prefect.runtime import flow_run

    current = flow_run.id
    return _root_of(str(current)) if current else ""
