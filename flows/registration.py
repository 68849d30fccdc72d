"""registration_flow: a new registered version (or the existing one for this run), lineage and
verdict tags, alias `challenger`."""

from __future__ import annotations

from prefect import flow

from tasks.core.settings import Settings
from tasks.core.spec import ModelSpec
from tasks.modeling.evaluation import ValidationReport
from tasks.modeling.training import TrainResult
from tasks.registry import tracking
from tasks.registry.model_registry import ModelRef
from tasks.registry.registry_tasks import register_challenger_task


@flow(name="registration")
def registration_flow(
    spec: ModelSpec, settings: Settings, train: TrainResult, validation: ValidationReport
) -> ModelRef:
    tags = {k: v for k, v in train.lineage.items() if k not in tracking.RUN_ONLY_TAGS}
    tags |= validation.tags()
    return register_challenger_task(settings, spec.name, train.candidate, tags)
