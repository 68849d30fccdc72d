"""`conveyor doctor --repair` and the clean-up a release runs before it starts: the safe
repairs of what `tasks.ops.doctor.checks` finds, each under the model's lease."""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task

from tasks.core import lease
from tasks.core.settings import Settings
from tasks.core.spec import ModelSpec, SpecError
from tasks.core.storage import open_store
from tasks.ops.doctor.checks import examine, model_problems, serving_replicas, triton_problems
from tasks.ops.doctor.edge import edge_address
from tasks.ops.doctor.problems import DoctorError, DoctorReport, Problem
from tasks.registry import approval, approval_state, known_specs, model_registry, tracking
from tasks.registry.registry_state import RegistryState
from tasks.serving import edge_certificate, edge_routes, rollout, triton_client, triton_server


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
    store = open_store(settings.repository)
    kept = (
        {i for i, name in tracking.running_runs(settings, model)
         if name.startswith(tracking.CANDIDATE_RUN)}
        if keep_runs else set()
    )  # fmt: skip
    unserved = [p for p in problems if p.kind in {"not-served", "unaliased-served"}]
    if unserved:
        try:
            # Every replica that answers, however many: a restarted one is brought to the champion.
            rollout.restore_serving(
                settings,
                spec or known_specs.spec_of(settings, model),
                targets=serving_replicas(settings) or None,
            )
        except SpecError as exc:
            for problem in unserved:
                problem.repair = f"none: {exc}"
        else:
            for problem in unserved:
                problem.repaired = True
    # A version Triton still serves keeps its files: deleting them would leave a loaded version
    # whose files no longer verify (and a restart could not load it again).
    serving_stuck = any(not p.repaired for p in unserved)
    for problem in problems:
        if problem.kind == "dangling-challenger":
            version = model_registry.alias_version(settings, model, model_registry.CHALLENGER)
            if version is not None:
                ref = model_registry.version_ref(settings, model, version)
                if approval_state.awaiting(settings, model) is not None:
                    approval.record_expired(settings, ref)
                model_registry.retire_candidate(settings, ref, "its release is no longer running")
        elif problem.kind == "orphan-candidate" and problem.key:
            for replica in serving_replicas(settings):
                triton_client.unload_model(replica.endpoint, problem.key)
        elif problem.kind == "orphan-version" and serving_stuck:
            problem.repair = "none yet: kept while Triton may still serve it (see above)"
            continue
        elif problem.kind in {"orphan-version", "staged-upload"} and problem.key:
            store.remove_dir(problem.key)
        elif problem.kind == "stale-run" and problem.key and problem.key not in kept:
            tracking.close_run(settings, problem.key, "KILLED")
        elif problem.kind == "stale-route":
            edge_routes.close_route(settings, model)
        else:
            continue
        problem.repaired = True


# What conveyor can mend on a server: the embedded one it runs. A replica of a fleet is
# restarted by its platform; the model repairs then serve the champion on it.
SERVER_REPAIRS = {"triton-down", "stray-stubs"}


def _repair_server(settings: Settings, problems: list[Problem]) -> None:
    for problem in problems:
        address = edge_address(settings)
        if problem.kind == "edge-certificate" and problem.key and address:
            # The edge conveyor made (its CA's key is in `key`): a new certificate, a reload.
            edge_certificate.renew(Path(problem.key), address)
            problem.repaired = True
    problems = [p for p in problems if p.kind in SERVER_REPAIRS]
    if problems:
        # A clean restart: the dead group (stubs included) is ended, the repository reloaded.
        triton_server.ensure_running(settings)
        for problem in problems:
            problem.repaired = True


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
