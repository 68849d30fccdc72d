"""`conveyor doctor`: every broken invariant between the registry, the model repository and
Triton, examined by the table of checks (`tasks.ops.doctor.CHECKS`).

The invariant (DESIGN, "After any failure"): the champion is served; every alias points at a
version whose files verify and that Triton serves READY; nothing is left behind by a release
that is no longer running (challenger alias, candidate models, repository versions or staged
uploads without a released registry version, stub processes of a dead embedded server)."""

from __future__ import annotations

from tasks.core.settings import Settings
from tasks.core.storage import open_store
from tasks.ops.doctor import CHECKS
from tasks.ops.doctor.problems import DoctorReport, Problem
from tasks.ops.doctor.scene import look
from tasks.registry import known_specs, mlflow_store
from tasks.registry.registry_state import RegistryState


def fleet(settings: Settings) -> list[str]:
    """Every model conveyor knows: registered, in the repository, or with a spec."""
    names = set(known_specs.fleet_specs(settings))
    names |= {m.name for m in mlflow_store.client(settings).search_registered_models()}
    files = open_store(settings.repository).list_files("")
    names |= {f.split("/")[0] for f in files if not f.startswith(".") and "/" in f}
    return sorted(names)


def server_problems(settings: Settings, before_release: bool = False) -> list[Problem]:
    """The servers' checks: the embedded Triton or the replicas, and the edge's certificate
    (`before_release`: only those a release runs before it starts)."""
    return [
        problem
        for check in CHECKS
        if check.scope == "server" and (check.before_release or not before_release)
        for problem in check.detect(settings)
    ]


def triton_problems(settings: Settings) -> list[Problem]:
    """The server checks a release runs before it starts."""
    return server_problems(settings, before_release=True)


def model_problems(
    settings: Settings,
    model: str,
    holding_lease: bool = False,
    state: RegistryState | None = None,
) -> list[Problem]:
    """`holding_lease`: the caller holds the model's lease, so no live release owns anything.
    `state`: the model's registry state as the caller read it (read here when not given). While
    a release runs, its leftovers are its own: they are not judged."""
    scene = look(settings, model, holding_lease, state)
    return [
        problem
        for check in CHECKS
        if check.scope == "model" and not (check.leftover and scene.busy)
        for problem in check.detect(scene)
    ]


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
