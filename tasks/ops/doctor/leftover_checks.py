"""What a release that is no longer running left behind: a challenger alias, candidate or canary
models still loaded, repository versions and staged uploads of no released version, MLflow
runs still RUNNING, a canary route at the edge. None is judged while a release of the model runs
(`DoctorCheck.leftover`); each goes, under the model's lease, when repaired.

"No longer running" is proved by the model's lease (`tasks.core.lease`): repairs happen only while
the doctor holds it, so nothing it removes can belong to a live release."""

from __future__ import annotations

from collections.abc import Callable

from mlflow.exceptions import MlflowException

from tasks.core import names
from tasks.core.settings import Settings
from tasks.core.storage import open_store, repository_versions
from tasks.ops.doctor.check import DoctorCheck, Mend
from tasks.ops.doctor.problems import Problem
from tasks.ops.doctor.scene import ModelScene, serving_replicas
from tasks.registry import approval_state, model_registry, tracking
from tasks.serving import edge_routes, triton_client

STAGING_PREFIXES = (".staging", ".removing-")


def challenger(scene: ModelScene) -> list[Problem]:
    version, waiting = scene.aliases[model_registry.CHALLENGER], scene.waiting
    if waiting is not None and scene.resumable:
        # Suspended for its reviewer: its challenger, candidate and files are a live
        # release's, though no process holds the lease while it waits.
        return []
    if waiting is not None:
        detail = (
            f"challenger → v{version}, whose release waited for approval in flow run "
            f"{waiting.flow_run_id} and can no longer resume (no answer by "
            f"{waiting.until:%Y-%m-%d %H:%M} UTC, or the run ended)"
        )
        repair = "record it rejected by nobody, remove the alias (tagged failed)"
    elif version is not None:
        detail = f"challenger → v{version} with no release running"
        repair = "remove the alias; the version keeps its record, tagged failed"
    else:
        return []
    return [Problem(model=scene.model, kind="dangling-challenger", detail=detail, repair=repair)]


def retire_challenger(mend: Mend, problems: list[Problem]) -> None:
    # Imported by the repair alone: examining (`conveyor doctor`) stays free of Prefect.
    from tasks.registry import approval

    settings, model = mend.settings, mend.model or ""
    version = model_registry.alias_version(settings, model, model_registry.CHALLENGER)
    if version is not None:
        ref = model_registry.version_ref(settings, model, version)
        if approval_state.awaiting(settings, model) is not None:
            approval.record_expired(settings, ref)
        model_registry.retire_candidate(settings, ref, "its release is no longer running")
    for problem in problems:
        problem.repaired = True


def candidates(scene: ModelScene) -> list[Problem]:
    """Candidates are loaded from files sent in the request, so Triton's repository index does
    not list them: each replica is asked for each version's candidate name, and the canary's."""
    found = []
    for replica in scene.up:
        control = triton_client.control_client(replica.endpoint)
        canary = names.canary_name(scene.model)
        if control.is_ready(canary):
            found.append((canary, f"{canary} (a canary) is loaded on {replica.name}"))
        for version in scene.registered:
            name = names.candidate_name(scene.model, version)
            if version != scene.suspended and control.is_ready(name):
                found.append((name, f"{name} is loaded on {replica.name}"))
    return [
        Problem(
            model=scene.model,
            kind="orphan-candidate",
            detail=f"{said} with no release running",
            repair="unload it",
            key=name,
        )
        for name, said in found
    ]


def unload(mend: Mend, problems: list[Problem]) -> None:
    for problem in problems:
        if problem.key:
            for replica in serving_replicas(mend.settings):
                triton_client.unload_model(replica.endpoint, problem.key)
            problem.repaired = True


def _went_live(settings: Settings, model: str, version: int) -> bool:
    """Whether a version was once released (promoted, maybe rolled back since): its files are
    retention's business, not an orphan. A version with no registry record, a failed release,
    or none at all (its release died before promotion) is an orphan."""
    try:
        tag = model_registry.version_tag(settings, model, version, model_registry.TAG_RELEASE)
    except MlflowException:
        return False
    return tag is not None and (tag == "promoted" or tag.startswith("rolled back"))


def versions(scene: ModelScene) -> list[Problem]:
    settings, model = scene.settings, scene.model
    return [
        Problem(
            model=model,
            kind="orphan-version",
            detail=f"{settings.repository}/{model}/{version} belongs to no version that went "
            "live (failed, or its release died before promotion)",
            repair="delete its files",
            key=f"{model}/{version}",
        )
        for version in repository_versions(scene.store, model)
        if version not in scene.live and not _went_live(settings, model, version)
    ]


def delete_files(mend: Mend, problems: list[Problem]) -> None:
    """Unless Triton may still serve them: a loaded version whose files no longer verify could
    not be loaded again after a restart."""
    for problem in problems:
        if mend.serving_stuck and problem.kind == "orphan-version":
            problem.repair = "none yet: kept while Triton may still serve it (see above)"
        elif problem.key:
            open_store(mend.settings.repository).remove_dir(problem.key)
            problem.repaired = True


def runs(scene: ModelScene) -> list[Problem]:
    # A release's MLflow runs end FINISHED or FAILED; one still RUNNING with no release holding
    # the model belongs to a killed process (a drift check holds no lease: its runs are not
    # counted).
    return [
        Problem(
            model=scene.model,
            kind="stale-run",
            detail=f"MLflow run {run_id} ({run_name}) is RUNNING with no release running",
            repair="mark it KILLED",
            key=run_id,
        )
        for run_id, run_name in tracking.running_runs(scene.settings, scene.model)
    ]


def close_runs(mend: Mend, problems: list[Problem]) -> None:
    for problem in problems:
        if problem.key and problem.key not in mend.kept_runs:
            tracking.close_run(mend.settings, problem.key, "KILLED")
            problem.repaired = True


def route(scene: ModelScene) -> list[Problem]:
    if scene.model not in edge_routes.open_routes(scene.settings):
        return []
    # The edge answers a request whose canary is gone with the champion, one failed hop later:
    # harmless to callers, but a route only a live release may hold.
    return [
        Problem(
            model=scene.model,
            kind="stale-route",
            detail=f"the edge sends a share of {scene.model}'s requests to its canary (a route "
            f"in {scene.settings.edge_routes_dir}) with no release running",
            repair="remove the route (the edge sees it gone within a second)",
            key=scene.model,
        )
    ]


def close_route(mend: Mend, problems: list[Problem]) -> None:
    edge_routes.close_route(mend.settings, mend.model or "")
    for problem in problems:
        problem.repaired = True


def staged(scene: ModelScene) -> list[Problem]:
    store, model = scene.store, scene.model
    found = {
        f"{model}/{head}"
        for head in {f.split("/")[0] for f in store.list_files(model)}
        if head.startswith(STAGING_PREFIXES)
    }
    # S3 stages under the repository's own `.staging/` prefix, named after the version's key.
    found |= {
        f".staging/{head}"
        for head in {f.split("/")[0] for f in store.list_files(".staging")}
        if head.startswith(f"{model}-")
    }
    return [
        Problem(
            model=model,
            kind="staged-upload",
            detail=f"{scene.settings.repository}/{key} is an unfinished upload",
            repair="delete it",
            key=key,
        )
        for key in sorted(found)
    ]


def check(
    name: str,
    kind: str,
    detect: Callable[[ModelScene], list[Problem]],
    repair: Callable[[Mend, list[Problem]], None],
) -> DoctorCheck:
    return DoctorCheck(name, (kind,), "model", detect, repair, leftover=True)


CHALLENGER = check("challenger", "dangling-challenger", challenger, retire_challenger)
CANDIDATES = check("candidates", "orphan-candidate", candidates, unload)
VERSIONS = check("versions", "orphan-version", versions, delete_files)
RUNS = check("runs", "stale-run", runs, close_runs)
ROUTE = check("route", "stale-route", route, close_route)
STAGED = check("staged", "staged-upload", staged, delete_files)
