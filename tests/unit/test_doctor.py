"""Doctor's repairs that need no server: the embedded registry (a SQLite file) only."""

from __future__ import annotations

from tasks.core.settings import Settings
from tasks.ops.doctor import problems, repairs
from tasks.registry import tracking

MODEL = "fraud-detector"


def _stale(settings: Settings) -> list[problems.Problem]:
    return [
        problems.Problem(model=MODEL, kind="stale-run", detail=name, repair="mark it KILLED", key=i)
        for i, name in tracking.running_runs(settings, MODEL)
    ]


def test_a_resume_keeps_the_candidate_run_and_closes_what_it_will_not_reuse(
    settings: Settings,
) -> None:
    """A release killed while it logged a trial: the resume carries on in the candidate's run
    (its task result names it), but runs that trial again in a new run, so the old one is
    closed rather than left RUNNING for ever."""
    candidate = tracking.open_run(settings, MODEL, f"{tracking.CANDIDATE_RUN}{MODEL}", {})
    tracking.open_run(settings, MODEL, "trial-0", {}, parent_run_id=candidate.run_id)
    tracking.open_run(settings, MODEL, "data-validation", {})
    problems = _stale(settings)
    assert len(problems) == 3
    repairs._repair_model(settings, MODEL, problems, keep_runs=True)
    assert tracking.running_runs(settings, MODEL) == [(candidate.run_id, f"train-{MODEL}")]
    assert sorted(p.detail for p in problems if p.repaired) == ["data-validation", "trial-0"]
    # A fresh release reuses nothing: every run of the dead one is closed.
    repairs._repair_model(settings, MODEL, _stale(settings))
    assert tracking.running_runs(settings, MODEL) == []


def test_every_kind_belongs_to_one_check_and_a_fresh_state_is_clean(settings: Settings) -> None:
    """The table of checks: each problem kind is reported by one check (its repair is that
    check's), names are unique, and on a fresh state directory (no server, no registry) every
    check examines without error and finds nothing."""
    from tasks.ops.doctor import CHECKS, checks
    from tasks.ops.doctor.scene import look

    kinds = [kind for check in CHECKS for kind in check.kinds]
    assert len(kinds) == len(set(kinds))
    assert len({check.name for check in CHECKS}) == len(CHECKS)
    scene = look(settings, MODEL)
    for check in CHECKS:
        found = check.detect(settings if check.scope == "server" else scene)
        assert found == [], (check.name, found)
    report = checks.examine(settings, [MODEL])
    assert report.clean and checks.report_lines(report) == [f"clean: {MODEL}"]
