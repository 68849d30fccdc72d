"""training_flow: source snapshot → data contract → split → fitted candidate logged to MLflow."""

from __future__ import annotations

from prefect import flow

from tasks.data import snapshot_task, split_task
from tasks.quality import validate_data_task
from tasks.settings import ModelSpec, Settings
from tasks.training import TrainResult, train_candidate_task


@flow(name="training")
def training_flow(spec: ModelSpec, settings: Settings) -> TrainResult:
    data = snapshot_task(spec, settings)
    validate_data_task(settings, spec, data)
    parts = split_task(spec, settings, data)
    return train_candidate_task(spec, settings, parts)
