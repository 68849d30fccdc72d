"""training_flow: data → split → fitted candidate logged to MLflow."""

from __future__ import annotations

from prefect import flow

from tasks.data import prepare_data_task
from tasks.settings import ModelSpec, Settings
from tasks.training import TrainResult, train_candidate_task


@flow(name="training", log_prints=False)
def training_flow(spec: ModelSpec, settings: Settings) -> TrainResult:
    data = prepare_data_task(spec, settings)
    return train_candidate_task(spec, settings, data)
