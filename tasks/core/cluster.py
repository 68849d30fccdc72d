"""Where work that outgrows one process runs: `local` (this process, piece after piece) or `dask`
(a Dask cluster: the scheduler at `CONVEYOR_DASK_ADDRESS`, or, when it is unset, a
`distributed.LocalCluster` of worker processes that conveyor starts and stops itself).

Both run a plain function over a list of items and yield each result as it completes, so the
caller's progress and error handling are the same either way and nothing but the results
comes back to the caller's process. Dask retries an item whose worker died on another worker
(`distributed.scheduler.allowed-failures`), so a killed worker costs that item's work, not the
run."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from tasks.core.errors import ConveyorError, ServiceUnavailableError
from tasks.core.settings import Settings
from tasks.core.spec_sections import COMPUTES, Compute

__all__ = ["COMPUTES", "ClusterError", "Compute", "connected", "out_of_memory", "runner"]

T = TypeVar("T")
Runner = Callable[..., Iterator[Any]]


class ClusterError(ServiceUnavailableError):
    """The Dask cluster cannot be reached, or it lost the work."""


def _local(function: Callable[..., T], items: list[Any], *shared: Any) -> Iterator[T]:
    for item in items:
        yield function(item, *shared)


@contextmanager
def runner(settings: Settings, compute: Compute, workers: int = 2) -> Iterator[Runner]:
    """`run(function, items, *shared)`: `function(item, *shared)` for every item, each result
    yielded as it completes (in order for `local`). `shared` values are sent to the workers once,
    not once per item. An item's own error is raised as it was (the first one ends the run)."""
    if compute == "local":
        yield _local
        return
    if compute not in COMPUTES:
        raise ConveyorError(f"compute {compute!r} is not one of {list(COMPUTES)}")
    with connected(settings, workers) as client:
        yield _on(client)


def _on(client: Any) -> Runner:
    from concurrent.futures import CancelledError

    from distributed import as_completed
    from distributed.comm import CommClosedError
    from distributed.scheduler import KilledWorker

    def run(function: Callable[..., T], items: list[Any], *shared: Any) -> Iterator[T]:
        if not items:
            return
        done = 0
        try:
            # Each shared value as a task of its own, not scattered data: a worker that dies
            # holding it costs a recomputation, where scattered data would be lost for good and
            # every item that needs it cancelled.
            sent = [client.submit(_value, value, pure=False) for value in shared]
            futures = client.map(function, items, *[[s] * len(items) for s in sent], pure=False)
            item_of = {future.key: item for future, item in zip(futures, items, strict=True)}
            try:
                for future in as_completed(futures):
                    try:
                        result = future.result()
                    except KilledWorker as exc:
                        raise ClusterError(
                            _killed(client, _said(item_of[future.key]), exc)
                        ) from None
                    done += 1
                    yield result
            finally:  # a run left early (an error, a refusal) leaves nothing running behind it
                client.cancel([future for future in futures if not future.done()])
        except (CommClosedError, CancelledError, OSError, TimeoutError) as exc:
            raise ClusterError(
                f"the Dask cluster went away after {done} of {len(items)} items "
                f"({type(exc).__name__}); start it again and rerun (finished work is kept)"
            ) from None

    return run


def _value(value: T) -> T:
    return value


def _killed(client: Any, said: str, exc: Any) -> str:
    """Why every worker that took an item died: out of memory when a nanny says so."""
    worker = exc.last_worker
    memory = out_of_memory(client, {worker.address}, getattr(worker, "memory_limit", None))
    if memory:
        return (
            f"{said} ran the Dask workers out of memory: {memory}, on each of "
            f"{exc.allowed_failures + 1} workers that took it. Give the workers more memory "
            "(`dask worker --memory-limit`) or write the table in smaller pieces, then rerun "
            "to continue (finished work is kept)"
        )
    return (
        f"Dask workers died running {said}: each of the {exc.allowed_failures + 1} workers "
        "that took it was lost, not for memory (no nanny stopped one over its limit): a crash "
        "in a library, or a killed process. See the workers' logs, then rerun to continue"
    )


def out_of_memory(client: Any, workers: set[str], limit: int | None = None) -> str | None:
    """What a nanny said when it stopped one of `workers` for memory (`worker-restart-memory`),
    or None when none was: the scheduler keeps the event; a lost worker's logs go with it.
    `limit`: the worker's memory limit where the caller knows it (a gone worker's is gone)."""
    try:
        events = client.get_events("worker-restart-memory")
        if limit is None:  # the limit of the workers still there: conveyor's are all alike
            limits = {w.get("memory_limit") for w in client.scheduler_info()["workers"].values()}
            limit = limits.pop() if len(limits) == 1 else None
    except Exception:  # an old or a gone scheduler: the caller's own words stand
        return None
    for _, event in reversed(events):
        if event.get("worker") in workers:
            held = f"worker {event['worker']} held {event['rss'] / 2**20:,.0f} MB"
            return held + (f" of its {limit / 2**20:,.0f} MB limit" if limit else " over its limit")
    return None


def _said(item: Any) -> str:
    """An item as a person would name it: a piece by its key and its size on disk."""
    name = str(getattr(item, "key", None) or getattr(item, "uri", None) or item)[:200]
    size = getattr(item, "size", None)
    return f"{name} ({size / 2**20:,.1f} MB on disk)" if isinstance(size, int) else name


@contextmanager
def connected(settings: Settings, workers: int = 2) -> Iterator[Any]:
    from distributed import Client, LocalCluster

    # The scheduler's and client's comings and goings (INFO) would bury the run's own log.
    logging.getLogger("distributed").setLevel(logging.WARNING)
    address = settings.dask_address
    if address:
        try:
            client = Client(address, timeout=settings.dask_timeout_s)
        except (OSError, TimeoutError) as exc:
            raise ClusterError(
                f"cannot reach the Dask scheduler at {address} ({type(exc).__name__}: "
                f"{str(exc)[:200]}): start it (`make stack` starts one) or unset "
                "CONVEYOR_DASK_ADDRESS to let conveyor start a local cluster of its own"
            ) from None
        with client:
            yield client
        return
    # Worker processes, one thread each: onnxruntime and the boosters use the cores themselves.
    with (
        LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            silence_logs=logging.ERROR,
        ) as cluster,
        Client(cluster) as client,
    ):
        client.run(_quiet_stdout)
        yield client


def _quiet_stdout() -> None:
    """On a worker conveyor started: its stdout is the user's console, where libraries' own
    prints (LightGBM's network set-up, XGBoost's ranks) would interleave with the stages. Errors
    still reach stderr and the task's result."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.close(devnull)
