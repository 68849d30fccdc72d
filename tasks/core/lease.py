"""One release per model at a time: the model's lease, held by every flow that changes its aliases
or what Triton serves (release, rollback, doctor's repairs; retrain through its release).

Two locks, each for what the other cannot see:

- a host lock: `flock` on `<home>/locks/<model>.lock`. The kernel drops it the instant its holder
  dies, however it dies, so "the lock is free" proves no live holder on this state directory.
  It is all there is without a Prefect server: each ephemeral-mode process runs its own
  temporary API whose concurrency leases live in that process's memory, so a Prefect limit taken
  there would stay taken forever once its process was killed.
- with a Prefect server (`PREFECT_API_URL`), the global concurrency limit `conveyor-model-<name>`
  (one slot) on top, across hosts and workers. Its lease is renewed while the holder lives and
  expires `lease_duration_s` after it dies (Prefect's minimum is 60 s).

The holder writes who it is into the lock file (with its Prefect lease id), and tags its flow run
`conveyor.model:<name>`, so a second flow that finds the model busy can say which run holds it
and since when. A flow that gets the host lock finds there the lease of a holder that died on
this host (it would still hold the lock otherwise) and releases it at once, instead of making
every later flow wait out its expiry.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from uuid import UUID

from pydantic import BaseModel

from tasks.core import progress
from tasks.core.errors import ConveyorError
from tasks.core.settings import Settings

LIMIT_PREFIX = "conveyor-model-"
MODEL_TAG_PREFIX = "conveyor.model:"
POLL_S = 0.5


class LeaseHolder(BaseModel):
    model: str
    flow: str
    flow_run_id: str | None
    pid: int
    host: str
    since: datetime
    lease_id: str | None = None  # the Prefect server's lease, when there is one

    def describe(self) -> str:
        run = f"flow run {self.flow_run_id}" if self.flow_run_id else "(outside Prefect)"
        return (
            f"{self.flow} {run} (pid {self.pid} on {self.host}) since "
            f"{self.since:%Y-%m-%d %H:%M:%S} UTC"
        )


class ModelBusyError(ConveyorError):
    """Another conveyor flow holds the model's lease."""


def limit_name(model: str) -> str:
    return f"{LIMIT_PREFIX}{model}"


def lock_path(settings: Settings, model: str) -> Path:
    return settings.home / "locks" / f"{model}.lock"


def read_holder(settings: Settings, model: str) -> LeaseHolder | None:
    """Who wrote the lock file last; only meaningful while the lock is held."""
    try:
        text = lock_path(settings, model).read_text()
        return LeaseHolder.model_validate_json(text) if text.strip() else None
    except (OSError, ValueError):
        return None


def is_held(settings: Settings, model: str) -> bool:
    """Whether a live process on this host holds the model's lock (probes it without taking it)."""
    path = lock_path(settings, model)
    if not path.exists():
        return False
    with path.open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
    return False


def _busy(model: str, flow: str, waited_s: float, holder: LeaseHolder | None) -> ModelBusyError:
    who = holder.describe() if holder else _server_holder(model) or "another conveyor flow"
    waited = f" after waiting {waited_s:.0f} s" if waited_s else ""
    return ModelBusyError(
        f"{model} is busy{waited}: {who} holds its lease (one release per model at a time). "
        f"This {flow} changed nothing. Wait for that run to finish, or run again without "
        "--no-wait to queue behind it (bounded by CONVEYOR_LEASE_TIMEOUT_S)."
    )


def _server_holder(model: str) -> str | None:
    """The running flow run tagged with the model, as the Prefect server knows it, other than
    the one asking (which tags itself before it asks)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
        FlowRunFilterTags,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.runtime import flow_run

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                tags=FlowRunFilterTags(all_=[f"{MODEL_TAG_PREFIX}{model}"]),
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.RUNNING])),
            ),
            limit=10,
        )
    runs = [run for run in runs if str(run.id) != str(flow_run.id)]
    if not runs:
        return None
    run = runs[0]
    since = run.start_time or run.created
    return f"flow run {run.id} ({run.name}) since {since:%Y-%m-%d %H:%M:%S} UTC"


def _ensure_limit(model: str) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(limit_name(model))
        except ObjectNotFound:
            with contextlib.suppress(ObjectAlreadyExists):  # another flow created it first
                client.create_global_concurrency_limit(
                    GlobalConcurrencyLimitCreate(name=limit_name(model), limit=1)
                )


def _tag_flow_run(model: str) -> None:
    from prefect.runtime import flow_run

    if not flow_run.id:
        return
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        run = client.read_flow_run(flow_run.id)
        client.update_flow_run(run.id, tags=sorted({*run.tags, f"{MODEL_TAG_PREFIX}{model}"}))


def _log(message: str, *args: object) -> None:
    from tasks.core.logs import run_logger

    run_logger("conveyor.lease").info(message, *args)


@contextlib.contextmanager
def model_lease(settings: Settings, model: str, flow: str, wait: bool = True) -> Iterator[None]:
    """Hold `model`'s lease for the block. Waits up to `settings.lease_timeout_s` (or not at all
    with `wait=False`), then raises ModelBusyError naming the holder."""
    # Prefect is imported by the flows that take a lease, not by the commands that only look
    # at one (`is_held`, `read_holder`: status, doctor).
    from prefect.runtime import flow_run

    path = lock_path(settings, model)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    began = time.monotonic()
    deadline = began + (settings.lease_timeout_s if wait else 0.0)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    locked = False
    try:
        told = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                locked = True
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    waited = time.monotonic() - began
                    raise _busy(model, flow, waited, read_holder(settings, model)) from None
                if not told:
                    holder = read_holder(settings, model)
                    held_by = holder.describe() if holder else "its lease is held"
                    _log("%s is busy (%s); waiting", model, held_by)
                    progress.update(f"waiting: {model} is busy ({held_by})")
                    told = True
                time.sleep(POLL_S)
        stale = read_holder(settings, model)  # written by a holder now provably gone
        holder = LeaseHolder(
            model=model,
            flow=flow,
            flow_run_id=str(flow_run.id) if flow_run.id else None,
            pid=os.getpid(),
            host=socket.gethostname(),
            since=datetime.now(UTC),
        )
        with _server_lease(settings, holder, stale, deadline, began) as lease_id:
            holder.lease_id = lease_id
            os.ftruncate(fd, 0)
            os.pwrite(fd, holder.model_dump_json().encode(), 0)
            _log("%s: lease held by this %s", model, flow)
            yield
    finally:
        if locked:  # a flow that never got the lock must not erase its holder's record
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
        os.close(fd)  # releases the flock


@contextlib.contextmanager
def _server_lease(
    settings: Settings,
    holder: LeaseHolder,
    stale: LeaseHolder | None,
    deadline: float,
    began: float,
) -> Iterator[str | None]:
    """The Prefect global concurrency limit's slot, renewed while the block runs; yields the
    lease id (None without a server). Prefect's own leases API (the one `concurrency()` wraps)
    is used directly, so that the lease id can be written down for the stale-holder release."""
    from prefect.settings import PREFECT_API_URL

    if not PREFECT_API_URL.value():
        yield None
        return
    from prefect.concurrency._leases import maintain_concurrency_lease
    from prefect.concurrency._sync import release_concurrency_slots_with_lease

    model = holder.model
    _ensure_limit(model)
    _tag_flow_run(model)
    if stale is not None and stale.lease_id:
        with contextlib.suppress(Exception):  # it may have expired, or the server restarted
            release_concurrency_slots_with_lease(UUID(stale.lease_id))
            _log("%s: released the lease of %s, which died", model, stale.describe())
    lease_id = _acquire(model, holder, settings.lease_duration_s, deadline)
    if lease_id is None:
        # The holder is on another host or state directory: the server knows which run it is.
        raise _busy(model, holder.flow, time.monotonic() - began, None)
    try:
        with maintain_concurrency_lease(lease_id, settings.lease_duration_s):
            yield str(lease_id)
    finally:
        release_concurrency_slots_with_lease(lease_id)


def _acquire(
    model: str, holder: LeaseHolder, lease_duration_s: float, deadline: float
) -> UUID | None:
    """The limit's one slot, asked for until `deadline`; its lease id, or None once the deadline
    has passed. Each request is answered before the next is sent. Prefect's own timed acquire
    cancels its request at the timeout; if the server had already granted the slot, the lease id
    is lost. A server without the repossessor (the tests' API) keeps such a lease for good.
    Every later release of the model would then wait it out."""
    import httpx
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.objects import ConcurrencyLeaseHolder

    who = (
        ConcurrencyLeaseHolder(type="flow_run", id=UUID(holder.flow_run_id))
        if holder.flow_run_id
        else None
    )
    with get_client(sync_client=True) as client:
        while True:
            try:
                response = client.increment_concurrency_slots_with_lease(
                    names=[limit_name(model)],
                    slots=1,
                    mode="concurrency",
                    lease_duration=lease_duration_s,
                    holder=who,
                )
            except httpx.HTTPStatusError as exc:
                if exc.response.status_code != httpx.codes.LOCKED:
                    raise
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                retry_after = float(exc.response.headers.get("Retry-After", POLL_S))
                time.sleep(min(max(retry_after, POLL_S), left))
                continue
            granted = response.json()
            if not granted.get("limits"):  # deleted since `_ensure_limit`: nothing was held
                raise ConveyorError(
                    f"the Prefect concurrency limit {limit_name(model)} disappeared while "
                    f"{holder.flow} took it; run again (it is created when missing)"
                )
            return UUID(granted["lease_id"])
