"""drift_check_flow: the newest batch against the champion's training data; emits
`conveyor.drift.detected` when the drifted-column share crosses the spec's threshold."""

from __future__ import annotations

from prefect import flow

from tasks import metrics
from tasks.drift import DriftReport, check_drift_task, emit_drift_task
from tasks.settings import Settings
from tasks.spec import DEFAULT_SPEC, load_spec


@flow(name="drift-check")
def drift_check_flow(spec_path: str = str(DEFAULT_SPEC)) -> DriftReport:
    """Check the model described by `spec_path` for data and prediction drift."""
    settings = Settings()
    spec = load_spec(spec_path)
    with metrics.observed(settings, spec.name, "drift-check") as obs:
        report = check_drift_task(settings, spec)
        metrics.record_drift(obs, report)
        emit_drift_task(report, spec_path)
    return report
