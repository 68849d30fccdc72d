"""`conveyor doctor --repair` and the clean-up a release runs before it starts: the safe
repairs of what `tasks.ops.doctor.checks` finds, each under the model's lease."""

from __future__ import annotations

from prefect import get_run_logger, task

from tasks.core import lease
from tasks.core.settings import Settings
from tasks.core.spec import ModelSpec
from tasks.ops.doctor import CHECKS
from tasks.ops.doctor.check import Mend
from tasks.ops.doctor.checks import examine, model_problems, triton_problems
from tasks.ops.doctor.problems import DoctorError, DoctorReport, Problem
from tasks.registry import tracking
from tasks.registry.registry_state import RegistryState


def _repair(mend: Mend, scope: str, problems: list[Problem]) -> None:
    """Each check of `scope` repairs the problems it found, in the table's order."""
    for check in CHECKS:
        mine = [p for p in problems if p.kind in check.kinds]
        if check.scope == scope and check.repair is not None and mine:
            check.repair(mend, mine)


def _repair_model(
    settings: Settings,
    model: str,
    problems: list[Problem],
    keep_runs: bool = False,
    spec: ModelSpec | None = None,
) -> None:
    """Repair `model`'s problems in place (the caller holds its lease). Serving first: Triton is
    back on champion and previous before any file it might still be serving is deleted, and
    while it cannot be put back no such file is deleted. `spec`: the model's spec when the
    caller has it (a release); otherwise the fleet's or the one recorded with the champion
    (`tasks.registry.known_specs`). `keep_runs`: leave the candidate's RUNNING MLflow run alone
    (a resumed release carries on in it); the rest of a killed release's runs are closed all the
    same."""
    kept = (
        {i for i, name in tracking.running_runs(settings, model)
         if name.startswith(tracking.CANDIDATE_RUN)}
        if keep_runs else set()
    )  # fmt: skip
    _repair(Mend(settings, model, spec, kept), "model", problems)


def _repair_server(settings: Settings, problems: list[Problem]) -> None:
    """What conveyor can mend on a server: the embedded one it runs, the edge's certificate it
    made. A replica of a fleet is restarted by its platform; the model repairs then serve the
    champion on it."""
    _repair(Mend(settings, None), "server", problems)


def check_and_repair(settings: Settings, models: list[str], fix: bool) -> DoctorReport:
    """Examine; with `fix`, repair what is safe (each model under its lease, so nothing a live
    release owns is touched) and report what was done and what is still wrong."""
    report = examine(settings, models)
    if not fix or report.clean:
        return report
    done = [p for p in report.problems if p.model is None]
    _repair_server(settings, done)
    for model in models:
        try:
            with lease.model_lease(settings, model, "doctor", wait=False):
                # Examined again under the lease: a release may have ended meanwhile.
                mine = model_problems(settings, model, holding_lease=True)
                _repair_model(settings, model, mine)
        except lease.ModelBusyError:
            continue  # a live release: its state is its own
        done += [p for p in mine if p.repaired]
    remaining = examine(settings, models)
    return DoctorReport(models=models, problems=done + remaining.problems)


class LeftoversError(DoctorError):
    """What a crashed release left could not all be cleared, so this one does not start."""


# Leftovers a release must not start over: something no alias names would go on answering.
BLOCKING = {"unaliased-served", "orphan-candidate"}


def repair_leftovers(
    settings: Settings,
    spec: ModelSpec,
    resuming: bool = False,
    state: RegistryState | None = None,
) -> list[Problem]:
    """What a release runs before it starts, holding the model's lease: a crashed release's
    leftovers are provably dead (it would hold the lease otherwise), so they go, and the
    champion is served again if it was not. `resuming`: the crashed release is being resumed,
    and its candidate's MLflow run is reused rather than closed. `state`: the registry state
    the release read under the lease. `LeftoversError` when a version no alias names would
    still be served."""
    # The servers this release needs; the edge's certificate is doctor's (one renewal at a
    # time, not one per model releasing).
    problems = triton_problems(settings)
    _repair_server(settings, problems)
    mine = model_problems(settings, spec.name, holding_lease=True, state=state)
    _repair_model(settings, spec.name, mine, keep_runs=resuming, spec=spec)
    stuck = [p for p in mine if p.kind in BLOCKING and not p.repaired]
    if stuck:
        raise LeftoversError(
            f"a crashed release of {spec.name} left Triton in a state this release cannot clear: "
            + "; ".join(f"{p.detail} ({p.repair})" for p in stuck)
            + f". Nothing was trained; `conveyor doctor {spec.name}` shows the whole state."
        )
    # A candidate run kept for the resume was not a problem.
    return problems + [p for p in mine if p.repaired or p.kind != "stale-run"]


@task(name="repair-leftovers")
def repair_leftovers_task(
    settings: Settings,
    spec: ModelSpec,
    resuming: bool = False,
    state: RegistryState | None = None,
) -> list[Problem]:
    problems = repair_leftovers(settings, spec, resuming, state)
    for problem in problems:
        get_run_logger().warning("before this release: %s (%s)", problem.line(), problem.repair)
    return problems
