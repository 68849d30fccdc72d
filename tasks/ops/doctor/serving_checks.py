"""What production callers get (DESIGN, "After any failure"): the champion is served, every
alias points at a version whose files verify and that every replica serves READY, and nothing
no alias names answers in its place. And whether a release is running: its state is its own."""

from __future__ import annotations

from tasks.core import lease
from tasks.core.spec import SpecError
from tasks.ops.doctor.check import DoctorCheck, Mend
from tasks.ops.doctor.problems import Problem
from tasks.ops.doctor.scene import ModelScene, serving_replicas
from tasks.registry import known_specs

RESTORE = "load champion and previous (their files verified first)"


def unservable(scene: ModelScene) -> list[Problem]:
    return [
        Problem(
            model=scene.model,
            kind="alias-unservable",
            detail=f"{alias} → v{version}, whose files do not verify: {exc}",
            repair="none is safe: republish it (`conveyor run --resume`) or roll back",
        )
        for (alias, version), exc in sorted(scene.unverified.items())
    ]


def unserved(scene: ModelScene) -> list[Problem]:
    model, problems = scene.model, []
    if not scene.up:
        problems += [
            Problem(
                model=model,
                kind="not-served",
                detail=f"{alias} → v{version}, but Triton is down",
                repair=RESTORE,
            )
            for alias, version in scene.servable
        ]
    for replica, served in scene.served_by.items():
        for alias, version in scene.servable:
            if version not in served:
                problems.append(
                    Problem(
                        model=model,
                        kind="not-served",
                        detail=f"{alias} → v{version}, but {replica} serves {served or 'nothing'}",
                        repair=RESTORE,
                        key=replica,
                    )
                )
    for replica, served in scene.served_by.items():
        stray = sorted(set(served) - scene.aliased)
        if stray and not scene.busy:
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
    return problems


def restore(mend: Mend, problems: list[Problem]) -> None:
    """Every replica that answers, however many, back on champion and previous: a restarted one
    is brought to the champion. Until that succeeds, no file Triton may still serve is deleted
    (`Mend.serving_stuck`)."""
    assert mend.model is not None
    # Imported by the repair alone: examining (`conveyor doctor`) stays free of Prefect.
    from tasks.serving import rollout

    try:
        rollout.restore_serving(
            mend.settings,
            mend.spec or known_specs.spec_of(mend.settings, mend.model),
            targets=serving_replicas(mend.settings) or None,
        )
    except SpecError as exc:
        for problem in problems:
            problem.repair = f"none: {exc}"
    else:
        for problem in problems:
            problem.repaired = True
    mend.serving_stuck = any(not p.repaired for p in problems)


def running(scene: ModelScene) -> list[Problem]:
    if not scene.busy:
        return []
    holder = lease.read_holder(scene.settings, scene.model)
    return [
        Problem(
            model=scene.model,
            kind="release-running",
            detail=holder.describe() if holder else "its lease is held",
            repair="none: leftovers of a live release are not touched",
        )
    ]


ALIAS_FILES = DoctorCheck("alias-files", ("alias-unservable",), "model", unservable)
SERVING = DoctorCheck("serving", ("not-served", "unaliased-served"), "model", unserved, restore)
RELEASE_RUNNING = DoctorCheck("release-running", ("release-running",), "model", running)
