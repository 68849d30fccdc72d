"""validation_flow: thresholds, then champion vs challenger on the challenger's holdout."""

from __future__ import annotations

from prefect import flow

from tasks.evaluation import ValidationReport, require_valid
from tasks.settings import Settings
from tasks.spec import ModelSpec
from tasks.training import TrainResult
from tasks.validation import validate_task


@flow(name="validation")
def validation_flow(spec: ModelSpec, settings: Settings, train: TrainResult) -> ValidationReport:
    report = validate_task(settings, spec, train)
    require_valid(report)
    return report
