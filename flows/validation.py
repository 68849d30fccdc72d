"""validation_flow: the candidate must meet the spec's thresholds before it is registered."""

from __future__ import annotations

from prefect import flow

from tasks.evaluation import ValidationReport, check_thresholds_task
from tasks.settings import ModelSpec
from tasks.training import TrainResult


@flow(name="validation")
def validation_flow(spec: ModelSpec, train: TrainResult) -> ValidationReport:
    return check_thresholds_task(train.metrics, spec.thresholds)
