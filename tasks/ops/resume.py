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

from collections.abc import Callable
from pathlib import Path

from prefect import get_run_logger, task
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowFilter, FlowFilterName
from prefect.client.schemas.objects import FlowRun
from prefect.client.schemas.sorting import FlowRunSort
from pydantic import BaseModel

from tasks.core.attempts import RELEASE_FLOW, ResumeError, attempt_of_run, read_run
from tasks.core.settings import Settings
from tasks.core.spec import SpecError
from tasks.registry import known_specs


def _forced(run: FlowRun) -> bool:
    """Whether the release `run` continues was asked with `force`: by its own parameters, or by
    those of the run it resumed (a resume of a resume of a forced release is forced too)."""
    if run.parameters.get("force"):
        return True
    resumed = run.parameters.get("resume_from")
    return _forced(read_run(str(resumed))) if resumed else False


class ResumePoint(BaseModel):
    """The release attempt to continue, and the options it was started with."""

    attempt: str
    force: bool


def _same_spec(spec_path: str) -> Callable[[FlowRun], bool]:
    """Whether a release run released `spec_path`. A run started from the form names its model,
    one from the CLI gives the file: both are compared as files, with the fleet read once."""
    settings = Settings()
    fleet = known_specs.fleet_entries(settings)

    def resolved(reference: str) -> Path | None:
        try:
            return Path(known_specs.spec_file(settings, reference, fleet)).resolve()
        except SpecError:
            return None  # a model since removed from the fleet: not this spec

    wanted = Path(known_specs.spec_file(settings, spec_path, fleet)).resolve()
    return lambda run: resolved(str(run.parameters.get("spec_path", ""))) == wanted


def releases(spec_path: str) -> list[FlowRun]:
    """The release flow runs of this spec on the current Prefect API, newest first."""
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=[RELEASE_FLOW])),
            sort=FlowRunSort.EXPECTED_START_TIME_DESC,
            limit=200,
        )
    return list(filter(_same_spec(spec_path), runs))


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
    run = read_run(run_id)
    with get_client(sync_client=True) as client:
        flow_name = client.read_flow(run.flow_id).name
    if flow_name != RELEASE_FLOW:
        raise ResumeError(f"flow run {run_id} is a {flow_name!r} run, not a release")
    if not _same_spec(spec_path)(run):
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
    return ResumePoint(attempt=attempt_of_run(run), force=_forced(run))


@task(name="check-resume")
def resume_task(run_id: str, spec_path: str) -> ResumePoint:
    point = check_resumable(run_id, spec_path)
    get_run_logger().info(
        "resuming release attempt %s%s: the steps it finished are reused, the rest run again",
        point.attempt,
        " (started with force: released even if unchanged)" if point.force else "",
    )
    return point
