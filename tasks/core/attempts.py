"""A release attempt: the flow run that started a release (or, resumed, the one it resumed), and
the cache policy that lets an attempt reuse the results of its finished steps across processes
(`tasks.ops.resume` decides which interrupted release may be resumed)."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any
from uuid import UUID

from prefect import get_run_logger, task
from prefect.cache_policies import INPUTS, TASK_SOURCE, CachePolicy
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import FlowRun
from prefect.context import TaskRunContext
from prefect.exceptions import ObjectNotFound
from prefect.utilities.hashing import hash_objects

from tasks.core.errors import ConveyorError
from tasks.core.orchestration import root_flow_run
from tasks.core.settings import Settings

RELEASE_FLOW = "release"
LAST = "last"  # `--resume last`: the newest release of the spec


class ResumeError(ConveyorError):
    """The release to resume does not exist, is not a release of this model, or finished."""


def read_run(run_id: str) -> FlowRun:
    """A flow run by its id; `ResumeError` saying what to pass when there is none."""
    try:
        key = UUID(run_id)
    except ValueError:
        raise ResumeError(
            f"{run_id!r} is not a flow run id: pass the id of the interrupted release (the "
            f"Prefect UI shows it on the run's page) or {LAST!r}"
        ) from None
    with get_client(sync_client=True) as client:
        try:
            return client.read_flow_run(key)
        except ObjectNotFound:
            raise ResumeError(
                f"no flow run {run_id} on this Prefect API: resume against the server (or "
                "PREFECT_HOME) the interrupted release ran on"
            ) from None


def attempt_of_run(run: FlowRun) -> str:
    resumed = run.parameters.get("resume_from")
    return attempt_of(str(resumed)) if resumed else str(run.id)


@cache
def attempt_of(run_id: str) -> str:
    """The attempt a flow run belongs to: its own id, or that of the run it resumed."""
    return attempt_of_run(read_run(run_id))


def current_attempt() -> str | None:
    root = root_flow_run()
    return attempt_of(root) if root else None


@cache
def code_fingerprint() -> str:
    """Every module the steps are made of: a task wrapper's own source does not change when the
    plain function it calls does, and a git commit does not cover uncommitted edits."""
    root = Path(__file__).resolve().parents[2]
    sources = sorted(
        path for package in ("tasks", "flows") for path in (root / package).rglob("*.py")
    )
    return hash_objects(*[(str(path.relative_to(root)), path.read_bytes()) for path in sources])


@dataclass
class ReleaseAttempt(CachePolicy):
    """Inputs + task source + conveyor's code, scoped to the current release attempt."""

    def compute_key(
        self,
        task_ctx: TaskRunContext,
        inputs: dict[str, Any],
        flow_parameters: dict[str, Any],
        **kwargs: Any,
    ) -> str | None:
        attempt = current_attempt()
        if attempt is None:
            return None
        steps = (INPUTS + TASK_SOURCE).compute_key(task_ctx, inputs, flow_parameters, **kwargs)
        return hash_objects(attempt, code_fingerprint(), steps, raise_on_failure=True)


RESUMABLE = ReleaseAttempt()


def attempt_results(settings: Settings) -> str | Path:
    """Where this attempt's step results are kept: a folder of its own under a local results
    directory, so that a finished release's can go at once (`prune_results`); a storage block
    (several hosts) is used as it is."""
    base, attempt = settings.results, current_attempt()
    return base / attempt if isinstance(base, Path) and attempt else base


def prune_results(settings: Settings) -> Path | None:
    """Delete the results of the current attempt once it completed: a completed release can
    never be resumed. Returns the folder removed (None for a storage block, whose objects stay
    for its lifecycle rules)."""
    folder = attempt_results(settings)
    if not isinstance(folder, Path) or folder == settings.results:
        return None
    shutil.rmtree(folder, ignore_errors=True)
    return folder


@task(name="prune-results")
def prune_results_task(settings: Settings) -> None:
    try:
        removed = prune_results(settings)
    except Exception as exc:  # housekeeping after a live release: said, not raised
        get_run_logger().warning("the release's step results were not pruned: %s", exc)
        return
    if removed is not None:
        get_run_logger().info("pruned this release's step results (%s)", removed)
