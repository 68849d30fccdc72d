"""`conveyor doctor`: every broken invariant between the registry, the model repository and
Triton, and the safe repairs.

The invariant (DESIGN, "After any failure"): the champion is served; every alias points at a
version whose files verify and that Triton serves READY; nothing is left behind by a release
that is no longer running (challenger alias, candidate models, repository versions or staged
uploads without a released registry version, stub processes of a dead embedded server).

"No longer running" is proved by the model's lease (`tasks.core.lease`): repairs happen only while
the doctor holds it, so nothing it removes can belong to a live release.
"""

from __future__ import annotations

from mlflow.exceptions import MlflowException

from tasks.core import lease, names
from tasks.core.settings import Settings
from tasks.core.storage import StorageError, Store, open_store, repository_versions, verify_dir
from tasks.ops.doctor.edge import edge_problems
from tasks.ops.doctor.problems import DoctorReport, Problem
from tasks.registry import approval_state, known_specs, mlflow_store, model_registry, tracking
from tasks.registry.registry_state import RegistryState, read_registry_state
from tasks.serving import edge_routes, replicas, triton_client, triton_server

STAGING_PREFIXES = (".staging", ".removing-")


def fleet(settings: Settings) -> list[str]:
    """Every model conveyor knows: registered, in the repository, or with a spec."""
    names = set(known_specs.fleet_specs(settings))
    names |= {m.name for m in mlflow_store.client(settings).search_registered_models()}
    files = open_store(settings.repository).list_files("")
    names |= {f.split("/")[0] for f in files if not f.startswith(".") and "/" in f}
    return sorted(names)


def serving_replicas(settings: Settings) -> list[replicas.Replica]:
    """The replicas that answer; none when the embedded server is down (it is not started here:
    the doctor examines before it repairs)."""
    if settings.embedded_triton and triton_server.status(settings) is None:
        return []
    return replicas.survey(settings).up


def server_problems(settings: Settings) -> list[Problem]:
    """The embedded Triton: dead while its state says it runs, or stubs of a dead server. A
    replica of the fleet: not answering (conveyor does not run them, their platform restarts
    them; the repair that follows serves the champion on it). The edge's certificate."""
    return triton_problems(settings) + edge_problems(settings)


def triton_problems(settings: Settings) -> list[Problem]:
    if not settings.embedded_triton:
        return [
            Problem(
                model=None,
                kind="replica-down",
                detail=f"{replica.name} does not answer",
                repair="none here: restart it, then `conveyor doctor --repair` serves champion "
                "and previous on it",
                key=replica.name,
            )
            for replica in replicas.survey(settings).down
        ]
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
        tag = model_registry.version_tag(settings, model, version, model_registry.TAG_RELEASE)
    except MlflowException:
        return False
    return tag is not None and (tag == "promoted" or tag.startswith("rolled back"))


def model_problems(
    settings: Settings,
    model: str,
    holding_lease: bool = False,
    state: RegistryState | None = None,
) -> list[Problem]:
    """`holding_lease`: the caller holds the model's lease, so no live release owns anything.
    `state`: the model's registry state as the caller read it (read here when not given)."""
    problems: list[Problem] = []
    store = open_store(settings.repository)
    state = state or read_registry_state(settings, model)
    aliases = {
        alias: state.version(alias)
        for alias in (model_registry.CHAMPION, model_registry.PREVIOUS, model_registry.CHALLENGER)
    }
    live = {v for a, v in aliases.items() if a != model_registry.CHALLENGER and v is not None}
    up = serving_replicas(settings)
    servable = set()
    for alias in (model_registry.CHAMPION, model_registry.PREVIOUS):
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
        servable.add((alias, version))
    served_by = {r.name: triton_client.loaded_versions(r.endpoint, model) for r in up}
    if not up:
        problems += [
            Problem(
                model=model,
                kind="not-served",
                detail=f"{alias} → v{version}, but Triton is down",
                repair="load champion and previous (their files verified first)",
            )
            for alias, version in sorted(servable)
        ]
    for replica, served in served_by.items():
        for alias, version in sorted(servable):
            if version not in served:
                problems.append(
                    Problem(
                        model=model,
                        kind="not-served",
                        detail=f"{alias} → v{version}, but {replica} serves {served or 'nothing'}",
                        repair="load champion and previous (their files verified first)",
                        key=replica,
                    )
                )
    busy = not holding_lease and lease.is_held(settings, model)
    for replica, served in served_by.items():
        stray = sorted(set(served) - live)
        if stray and not busy:
            # Callers reach the newest loaded version: one no alias names (a release killed
            # mid-swap) answers production traffic without having been promoted.
            problems.append(
                Problem(
                    model=model,
                    kind="unaliased-served",
                    detail=f"{replica} serves v{', v'.join(map(str, stray))}, which neither "
                    "champion nor previous names",
                    repair="serve champion and previous only",
                    key=replica,
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
    challenger = aliases[model_registry.CHALLENGER]
    waiting = approval_state.awaiting_in(state)
    suspended = None
    if waiting is not None and approval_state.can_still_resume(waiting):
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
    # Candidates are loaded from files sent in the request, so Triton's repository index does
    # not list them: ask each replica for each version's candidate name.
    for replica in up:
        control = triton_client.control_client(replica.endpoint)
        canary = names.canary_name(model)
        if control.is_ready(canary):
            leftovers.append(
                Problem(
                    model=model,
                    kind="orphan-candidate",
                    detail=f"{canary} (a canary) is loaded on {replica.name} with no release "
                    "running",
                    repair="unload it",
                    key=canary,
                )
            )
        for version in registered_versions(settings, model):
            name = names.candidate_name(model, version)
            if version == suspended:
                continue  # the candidate of a release waiting for its approval
            if control.is_ready(name):
                leftovers.append(
                    Problem(
                        model=model,
                        kind="orphan-candidate",
                        detail=f"{name} is loaded on {replica.name} with no release running",
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
    if model in edge_routes.open_routes(settings):
        # The edge answers a request whose canary is gone with the champion, one failed hop
        # later: harmless to callers, but a route only a live release may hold.
        leftovers.append(
            Problem(
                model=model,
                kind="stale-route",
                detail=f"the edge sends a share of {model}'s requests to its canary (a route "
                f"in {settings.edge_routes_dir}) with no release running",
                repair="remove the route (the edge sees it gone within a second)",
                key=model,
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


def report_lines(report: DoctorReport) -> list[str]:
    if not report.problems:
        return [f"clean: {', '.join(report.models) or 'no models'}"]
    return [p.line() + ("" if p.repaired else f" → {p.repair}") for p in report.problems]
