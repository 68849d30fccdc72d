"""training_flow: source snapshot → data contract → split → parallel search → refit candidate."""

from __future__ import annotations

from prefect import flow

from tasks.core.settings import Settings
from tasks.core.spec import ModelSpec
from tasks.datasets.data import DatasetRef
from tasks.datasets.release_data import snapshot_task, split_task, validate_data_task
from tasks.modeling.search import fail_candidate_task, open_candidate_task, run_search
from tasks.modeling.training import TrainResult, train_candidate_task


@flow(name="training")
def training_flow(
    spec: ModelSpec, settings: Settings, data: DatasetRef | None = None, validated: bool = False
) -> TrainResult:
    """Trials run on this flow's task runner: call `training_flow.with_options(task_runner=...)`
    (see `tasks.modeling.search.task_runner`) to run them on threads or a Dask cluster. `data`: a
    snapshot already taken (the release takes it to compare with the champion first);
    `validated`: its data contract already passed (the release checks it in its data stage)."""
    data = data or snapshot_task(spec, settings)
    if not validated:
        validate_data_task(settings, spec, data)
    parts = split_task(spec, settings, data)
    run = open_candidate_task(settings, spec)
    try:
        search = run_search(spec, settings, parts, run.run_id)
        return train_candidate_task(spec, settings, parts, run, search)
    except Exception:
        fail_candidate_task(settings, run)
        raise
