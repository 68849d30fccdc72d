"""The servers behind the models: the embedded Triton conveyor runs (dead while its state says
it runs, or stubs of a dead server left behind), and the replicas of a fleet (not answering:
their platform restarts them; the model repairs then serve the champion on them)."""

from __future__ import annotations

from tasks.core.settings import Settings
from tasks.ops.doctor.check import DoctorCheck, Mend
from tasks.ops.doctor.problems import Problem
from tasks.serving import replicas, triton_server


def embedded_problems(settings: Settings) -> list[Problem]:
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


def restart(mend: Mend, problems: list[Problem]) -> None:
    # A clean restart: the dead group (stubs included) is ended, the repository reloaded.
    triton_server.ensure_running(mend.settings)
    for problem in problems:
        problem.repaired = True


def replica_problems(settings: Settings) -> list[Problem]:
    if settings.embedded_triton:
        return []
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


EMBEDDED = DoctorCheck(
    "embedded-triton", ("triton-down", "stray-stubs"), "server", embedded_problems, restart
)
REPLICAS = DoctorCheck("replicas", ("replica-down",), "server", replica_problems)
