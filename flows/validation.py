"""validation_flow: thresholds, then champion vs challenger on the challenger's holdout."""

from __future__ import annotations

from prefect import flow

from tasks.core.settings import Settings
from tasks.core.spec import ModelSpec
from tasks.modeling.evaluation import ValidationReport, require_valid
from tasks.modeling.training import TrainResult
from tasks.modeling.validation import validate_task


@flow(name="validation")
def validation_flow(spec: ModelSpec, settings: Settings, train: TrainResult) -> ValidationReport:
    report = validate_task(settings, spec, train)
    require_valid(report)
    return report
