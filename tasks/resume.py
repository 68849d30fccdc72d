"""Resuming an interrupted release: which steps' results may be reused, and from which run.

A release is one *attempt*: the flow run that started it, or, when it was started with
`resume_from`, the attempt of that run. Steps that are expensive and whose results are references
to things that stay (a data snapshot, MLflow runs, an ONNX artifact, a measured serving
configuration) are cached on their inputs and conveyor's code *within one attempt*; their
results are persisted (`Settings.results`), so a new process finds them. Steps that act on
shared state (the champion comparison, registration, publishing, loading, smoke test,
swap, promotion) always run again: what they act on may have changed while the release was down.

Keys never cross attempts: the same data and spec released twice trains twice, and a finished
release is never resumed into a second promotion of itself.
"""

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
from prefect.client.schemas.filters import FlowFilter, FlowFilterName
from prefect.client.schemas.objects import FlowRun
from prefect.client.schemas.sorting import FlowRunSort
from prefect.context import TaskRunContext
from prefect.exceptions import ObjectNotFound
from prefect.utilities.hashing import hash_objects
from pydantic import BaseModel

from tasks.errors import ConveyorError
from tasks.settings import Settings
from tasks.tracking import root_flow_run

RELEASE_FLOW = "release"
LAST = "last"


class ResumeError(ConveyorError):
    """The release to resume does not exist, is not a release of this model, or finished."""


def _read(run_id: str) -> FlowRun:
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


def _attempt(run: FlowRun) -> str:
    resumed = run.parameters.get("resume_from")
    return attempt_of(str(resumed)) if resumed else str(run.id)


def _forced(run: FlowRun) -> bool:
    """Whether the release `run` continues was asked with `force`: by its own parameters, or by
    those of the run it resumed (a resume of a resume of a forced release is forced too)."""
    if run.parameters.get("force"):
        return True
    resumed = run.parameters.get("resume_from")
    return _forced(_read(str(resumed))) if resumed else False


class ResumePoint(BaseModel):
    """The release attempt to continue, and the options it was started with."""

    attempt: str
    force: bool


@cache
def attempt_of(run_id: str) -> str:
    """The attempt a flow run belongs to: its own id, or that of the run it resumed."""
    return _attempt(_read(run_id))


def current_attempt() -> str | None:
    root = root_flow_run()
    return attempt_of(root) if root else None


@cache
def code_fingerprint() -> str:
    """Every module the steps are made of: a task wrapper's own source does not change when the
    plain function it calls does, and a git commit does not cover uncommitted edits."""
    packages = [Path(__file__).resolve().parent, Path(__file__).resolve().parent.parent / "flows"]
    sources = sorted(path for package in packages for path in package.glob("*.py"))
    return hash_objects(*[(path.name, path.read_bytes()) for path in sources])


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


def _same_spec(run: FlowRun, spec_path: str) -> bool:
    return Path(str(run.parameters.get("spec_path", ""))).resolve() == Path(spec_path).resolve()


def releases(spec_path: str) -> list[FlowRun]:
    """The release flow runs of this spec on the current Prefect API, newest first."""
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=[RELEASE_FLOW])),
            sort=FlowRunSort.EXPECTED_START_TIME_DESC,
            limit=200,
        )
    return [run for run in runs if _same_spec(run, spec_path)]


def last_release(spec_path: str) -> str:
    """The newest release of this spec; `ResumeError` when there is none."""
    runs = releases(spec_path)
    if not runs:
        raise ResumeError(
            f"no release of {spec_path} on this Prefect API: there is nothing to resume; start "
            "one with `conveyor run`"
        )
    return str(runs[0].id)


def check_resumable(run_id: str, spec_path: str) -> ResumePoint:
    """The attempt to continue and its options; `ResumeError` unless `run_id` is an unfinished
    release of `spec_path`."""
    run = _read(run_id)
    with get_client(sync_client=True) as client:
        flow_name = client.read_flow(run.flow_id).name
    if flow_name != RELEASE_FLOW:
        raise ResumeError(f"flow run {run_id} is a {flow_name!r} run, not a release")
    if not _same_spec(run, spec_path):
        raise ResumeError(
            f"flow run {run_id} released {run.parameters.get('spec_path')}, not {spec_path}: "
            "resume it with the spec it started with"
        )
    if run.state is not None and run.state.is_running():
        raise ResumeError(
            f"release {run_id} is still running (its process is alive); wait for it, or stop "
            "it (Prefect UI: Cancel) before resuming"
        )
    if run.state is not None and run.state.is_completed():
        raise ResumeError(
            f"release {run_id} completed: there is nothing to resume; start a new release with "
            "`conveyor run`"
        )
    return ResumePoint(attempt=_attempt(run), force=_forced(run))


@task(name="check-resume")
def resume_task(run_id: str, spec_path: str) -> ResumePoint:
    point = check_resumable(run_id, spec_path)
    get_run_logger().info(
        "resuming release attempt %s%s: the steps it finished are reused, the rest run again",
        point.attempt,
        " (started with force: released even if unchanged)" if point.force else "",
    )
    return point
