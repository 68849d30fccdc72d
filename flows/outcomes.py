"""outcome_check_flow: the champion's realised performance on the newest labelled batch (and its
estimate before labels); emits `conveyor.performance.degraded` on degradation, which the retrain
deployment answers as it answers drift."""

from __future__ import annotations

from prefect import flow

from tasks.core.progress import stage
from tasks.core.settings import Settings
from tasks.core.spec import DEFAULT_SPEC
from tasks.ops import metrics
from tasks.ops.outcomes import (
    OutcomeReport,
    check_outcomes_task,
    emit_degraded_task,
    record_outcomes,
)
from tasks.registry import known_specs


@flow(name="outcome-check")
def outcome_check_flow(spec_path: str = str(DEFAULT_SPEC)) -> OutcomeReport:
    """Check the model described by `spec_path` against its outcomes."""
    settings = Settings()
    spec_path, spec = known_specs.resolve(settings, spec_path)  # a fleet name, from the form
    with (
        metrics.observed(settings, spec.name, "outcome-check") as obs,
        stage(f"outcomes {spec.name}") as step,
    ):
        report = check_outcomes_task(settings, spec)
        record_outcomes(obs, report)
        emit_degraded_task(report, spec_path)
        step.figure = report.verdict + ("; event emitted" if report.degraded else "")
    return report
