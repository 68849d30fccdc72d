"""registration_flow: a new registered version with lineage tags, alias `challenger`."""

from __future__ import annotations

from prefect import flow

from tasks.registry import ModelRef, register_challenger_task
from tasks.settings import ModelSpec, Settings
from tasks.training import TrainResult


@flow(name="registration")
def registration_flow(spec: ModelSpec, settings: Settings, train: TrainResult) -> ModelRef:
    return register_challenger_task(settings, spec.name, train.candidate, train.lineage)
