"""`conveyor doctor`: every broken invariant between the registry, the model repository and
Triton, and the safe repairs.

The invariant (DESIGN, "After any failure"): the champion is served; every alias points at a
version whose files verify and that Triton serves READY; nothing is left behind by a release
that is no longer running (challenger alias, candidate models, repository versions or staged
uploads without a released registry version, stub processes of a dead embedded server).

"No longer running" is proved by the model's lease (`tasks.lease`): repairs happen only while
the doctor holds it, so nothing it removes can belong to a live release.
"""

from __future__ import annotations

from typing import Literal

from mlflow.exceptions import MlflowException
from prefect import get_run_logger, task
from pydantic import BaseModel

from tasks import (
    approval,
    known_specs,
    lease,
    mlflow_store,
    registry,
    tracking,
    triton,
    triton_server,
)
from tasks.errors import ConveyorError
from tasks.settings import Settings
from tasks.spec import ModelSpec, SpecError
from tasks.storage import StorageError, Store, open_store, repository_versions, verify_dir

Kind = Literal[
    "triton-down",
    "stray-stubs",
    "alias-unservable",
    "not-served",
    "unaliased-served",
    "dangling-challenger",
    "orphan-candidate",
    "orphan-version",
    "staged-upload",
    "stale-run",
    "release-running",
]
# Leftovers of an in-flight release are only problems once nobody holds the model's lease.
LEFTOVERS = {
    "dangling-challenger",
    "orphan-candidate",
    "orphan-version",
    "staged-upload",
    "stale-run",
}
STAGING_PREFIXES = (".staging", ".removing-")


class Problem(BaseModel):
    model: str | None
    kind: Kind
    detail: str
    repair: str  # what --repair does about it
    key: str | None = None  # the repository key or Triton model name it concerns
    repaired: bool = False

    def line(self) -> str:
        done = " [repaired]" if self.repaired else ""
        return f"{self.model or '(server)'}: {self.kind}: {self.detail}{done}"


class DoctorReport(BaseModel):
    models: list[str]
    problems: list[Problem]

    @property
    def clean(self) -> bool:
        # A live release is not a broken invariant; its leftovers are not judged while it runs.
        return all(p.repaired or p.kind == "release-running" for p in self.problems)


class DoctorError(ConveyorError):
    """`conveyor doctor` found problems it did not (or could not) repair."""


def fleet(settings: Settings) -> list[str]:
    """Every model conveyor knows: registered, in the repository, or with a spec."""
    names = set(known_specs.fleet_specs(settings))
    names |= {m.name for m in mlflow_store.client(settings).search_registered_models()}
    files = open_store(settings.repository).list_files("")
    names |= {f.split("/")[0] for f in files if not f.startswith(".") and "/" in f}
    return sorted(names)


def server_problems(settings: Settings) -> list[Problem]:
    """The embedded Triton: dead while its state says it runs, or stubs of a dead server."""
    if not settings.embedded_triton:
        return []
    state = triton_server.read_state(settings)
    if state is None or triton_server.status(settings) is not None:
        return []
    problems = [
        Problem(
            model=None,
            kind="triton-down",
            detail=f"the embedded Triton (pid {state.pid}) is not running",
            repair="restart it cleanly and load what its repository says it served",
        )
    ]
    stubs = triton_server.stray_stubs(state.pid)
    if stubs:
        problems.append(
            Problem(
                model=None,
                kind="stray-stubs",
                detail=f"{len(stubs)} python-backend stub(s) of the dead server still run "
                f"(pids {', '.join(map(str, stubs))})",
                repair="kill the dead server's process group",
            )
        )
    return problems


def _went_live(settings: Settings, model: str, version: int) -> bool:
    """Whether a version was once released (promoted, maybe rolled back since): its files are
    retention's business, not an orphan. A version with no registry record, a failed release,
    or none at all (its release died before promotion) is an orphan."""
    try:
        tag = registry.version_tag(settings, model, version, registry.TAG_RELEASE)
    except MlflowException:
        return False
    return tag is not None and (tag == "promoted" or tag.startswith("rolled back"))


def model_problems(settings: Settings, model: str, holding_lease: bool = False) -> list[Problem]:
    """`holding_lease`: the caller holds the model's lease, so no live release owns anything."""
    problems: list[Problem] = []
    store = open_store(settings.repository)
    aliases = {
        alias: registry.alias_version(settings, model, alias)
        for alias in (registry.CHAMPION, registry.PREVIOUS, registry.CHALLENGER)
    }
    live = {v for a, v in aliases.items() if a != registry.CHALLENGER and v is not None}
    running = triton_server.status(settings) is not None or not settings.embedded_triton
    endpoint = triton_server.endpoint(settings) if running else None
    served = triton.loaded_versions(endpoint, model) if endpoint else []
    for alias in (registry.CHAMPION, registry.PREVIOUS):
        version = aliases[alias]
        if version is None:
            continue
        try:
            verify_dir(store, f"{model}/{version}")
        except StorageError as exc:
            problems.append(
                Problem(
                    model=model,
                    kind="alias-unservable",
                    detail=f"{alias} → v{version}, whose files do not verify: {exc}",
                    repair="none is safe: republish it (`conveyor run --resume`) or roll back",
                )
            )
            continue
        if version not in served:
            where = f"Triton serves {served or 'nothing'}" if running else "Triton is down"
            problems.append(
                Problem(
                    model=model,
                    kind="not-served",
                    detail=f"{alias} → v{version}, but {where}",
                    repair="load champion and previous (their files verified first)",
                )
            )
    busy = not holding_lease and lease.is_held(settings, model)
    stray = sorted(set(served) - live)
    if stray and not busy:
        # Callers reach the newest loaded version: one no alias names (a release killed
        # mid-swap) answers production traffic without having been promoted.
        problems.append(
            Problem(
                model=model,
                kind="unaliased-served",
                detail=f"Triton serves v{', v'.join(map(str, stray))}, which neither champion "
                "nor previous names",
                repair="serve champion and previous only",
            )
        )
    if busy:
        holder = lease.read_holder(settings, model)
        problems.append(
            Problem(
                model=model,
                kind="release-running",
                detail=holder.describe() if holder else "its lease is held",
                repair="none: leftovers of a live release are not touched",
            )
        )
    leftovers: list[Problem] = []
    challenger = aliases[registry.CHALLENGER]
    waiting = approval.awaiting(settings, model) if challenger is not None else None
    suspended = None
    if waiting is not None and approval.can_still_resume(waiting):
        # Suspended for its reviewer: its challenger, candidate and files are a live
        # release's, though no process holds the lease while it waits.
        suspended = waiting.version
        live |= {waiting.version}
        challenger = None
    elif waiting is not None:
        leftovers.append(
            Problem(
                model=model,
                kind="dangling-challenger",
                detail=f"challenger → v{challenger}, whose release waited for approval in flow "
                f"run {waiting.flow_run_id} and can no longer resume (no answer by "
                f"{waiting.until:%Y-%m-%d %H:%M} UTC, or the run ended)",
                repair="record it rejected by nobody, remove the alias (tagged failed)",
            )
        )
        challenger = None
    if challenger is not None:
        leftovers.append(
            Problem(
                model=model,
                kind="dangling-challenger",
                detail=f"challenger → v{challenger} with no release running",
                repair="remove the alias; the version keeps its record, tagged failed",
            )
        )
    if endpoint is not None:
        # Candidates are loaded from files sent in the request, so Triton's repository index
        # does not list them: ask for each version's candidate name.
        control = triton.control_client(endpoint)
        for version in registered_versions(settings, model):
            name = triton.candidate_name(model, version)
            if version == suspended:
                continue  # the candidate of a release waiting for its approval
            if control.is_ready(name):
                leftovers.append(
                    Problem(
                        model=model,
                        kind="orphan-candidate",
                        detail=f"{name} is loaded with no release running",
                        repair="unload it",
                        key=name,
                    )
                )
    for version in repository_versions(store, model):
        if version not in live and not _went_live(settings, model, version):
            leftovers.append(
                Problem(
                    model=model,
                    kind="orphan-version",
                    detail=f"{settings.repository}/{model}/{version} belongs to no version that "
                    "went live (failed, or its release died before promotion)",
                    repair="delete its files",
                    key=f"{model}/{version}",
                )
            )
    for run_id, run_name in tracking.running_runs(settings, model):
        # A release's MLflow runs end FINISHED or FAILED; one still RUNNING with no release
        # holding the model belongs to a killed process (a drift check holds no lease: its runs
        # are not counted).
        leftovers.append(
            Problem(
                model=model,
                kind="stale-run",
                detail=f"MLflow run {run_id} ({run_name}) is RUNNING with no release running",
                repair="mark it KILLED",
                key=run_id,
            )
        )
    for staged in _staged(store, model):
        leftovers.append(
            Problem(
                model=model,
                kind="staged-upload",
                detail=f"{settings.repository}/{staged} is an unfinished upload",
                repair="delete it",
                key=staged,
            )
        )
    return problems + ([] if busy else leftovers)


def registered_versions(settings: Settings, model: str) -> list[int]:
    found = mlflow_store.client(settings).search_model_versions(f"name='{model}'")
    return sorted(int(v.version) for v in found)


def _staged(store: Store, model: str) -> list[str]:
    staged = {
        f"{model}/{head}"
        for head in {f.split("/")[0] for f in store.list_files(model)}
        if head.startswith(STAGING_PREFIXES)
    }
    # S3 stages under the repository's own `.staging/` prefix, named after the version's key.
    staged |= {
        f".staging/{head}"
        for head in {f.split("/")[0] for f in store.list_files(".staging")}
        if head.startswith(f"{model}-")
    }
    return sorted(staged)


def examine(settings: Settings, models: list[str]) -> DoctorReport:
    problems = server_problems(settings)
    triton_down = any(p.kind == "triton-down" for p in problems)
    for model in models:
        if triton_down:
            # The server comes back first; what it serves is judged after that repair.
            continue
        problems += model_problems(settings, model)
    return DoctorReport(models=models, problems=problems)


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
    (`tasks.known_specs`). `keep_runs`: leave the candidate's RUNNING MLflow run alone (a resumed
    release carries on in it); the rest of a killed release's runs are closed all the same."""
    store = open_store(settings.repository)
    kept = (
        {i for i, name in tracking.running_runs(settings, model)
         if name.startswith(tracking.CANDIDATE_RUN)}
        if keep_runs else set()
    )  # fmt: skip
    unserved = [p for p in problems if p.kind in {"not-served", "unaliased-served"}]
    if unserved:
        try:
            triton.restore_serving(settings, spec or known_specs.spec_of(settings, model))
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
            version = registry.alias_version(settings, model, registry.CHALLENGER)
            if version is not None:
                ref = registry.version_ref(settings, model, version)
                if approval.awaiting(settings, model) is not None:
                    approval.record_expired(settings, ref)
                registry.retire_candidate(settings, ref, "its release is no longer running")
        elif problem.kind == "orphan-candidate" and problem.key:
            triton.unload_model(triton_server.endpoint(settings), problem.key)
        elif problem.kind == "orphan-version" and serving_stuck:
            problem.repair = "none yet: kept while Triton may still serve it (see above)"
            continue
        elif problem.kind in {"orphan-version", "staged-upload"} and problem.key:
            store.remove_dir(problem.key)
        elif problem.kind == "stale-run" and problem.key and problem.key not in kept:
            tracking.close_run(settings, problem.key, "KILLED")
        else:
            continue
        problem.repaired = True


def _repair_server(settings: Settings, problems: list[Problem]) -> None:
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


def repair_leftovers(settings: Settings, spec: ModelSpec, resuming: bool = False) -> list[Problem]:
    """What a release runs before it starts, holding the model's lease: a crashed release's
    leftovers are provably dead (it would hold the lease otherwise), so they go, and the
    champion is served again if it was not. `resuming`: the crashed release is being resumed,
    and its candidate's MLflow run is reused rather than closed. `LeftoversError` when a
    version no alias names would still be served."""
    problems = server_problems(settings)
    _repair_server(settings, problems)
    mine = model_problems(settings, spec.name, holding_lease=True)
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
    settings: Settings, spec: ModelSpec, resuming: bool = False
) -> list[Problem]:
    problems = repair_leftovers(settings, spec, resuming)
    for problem in problems:
        get_run_logger().warning("before this release: %s (%s)", problem.line(), problem.repair)
    return problems


def report_lines(report: DoctorReport) -> list[str]:
    if not report.problems:
        return [f"clean: {', '.join(report.models) or 'no models'}"]
    return [p.line() + ("" if p.repaired else f" → {p.repair}") for p in report.problems]
