"""The hyperparameter search on real task runners: threads, and a local Dask cluster of 2
workers. Concurrency is shown by overlapping trial intervals, not by durations."""

from __future__ import annotations

import asyncio
from itertools import combinations
from pathlib import Path

import pytest
from mlflow import MlflowClient
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
from prefect.client.schemas.sorting import ArtifactSort

from flows.training import training_flow
from tasks.core.settings import Settings
from tasks.core.spec import load_spec
from tasks.modeling.search import task_runner
from tasks.modeling.training import TrainResult, TrialSummary
from tests.conftest import write_spec

SPACE = {
    "max_depth": {"type": "int", "low": 6, "high": 14},
    "n_estimators": {"type": "int", "low": 40, "high": 80},
}


def overlapping(trials: list[TrialSummary]) -> list[tuple[int, int]]:
    return [
        (a.number, b.number)
        for a, b in combinations(trials, 2)
        if a.started_at < b.finished_at and b.started_at < a.finished_at
    ]


def train(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, runner: str, trials: int) -> TrainResult:
    monkeypatch.setenv("CONVEYOR_HOME", str(tmp_path / "state"))
    spec = load_spec(
        write_spec(
            tmp_path, **{"search.trials": trials, "search.parallel": 2, "search.space": SPACE}
        )
    )
    return training_flow.with_options(task_runner=task_runner(runner, 2))(spec, Settings())  # type: ignore[arg-type]


def test_threads_run_trials_concurrently_as_nested_runs(prefect_api, tmp_path, monkeypatch) -> None:
    result = train(tmp_path, monkeypatch, "threads", trials=4)
    trials = result.search.trials
    assert sorted(t.number for t in trials) == [0, 1, 2, 3]
    assert len({tuple(sorted(t.params.items())) for t in trials}) == 4
    assert overlapping(trials), [(t.started_at, t.finished_at) for t in trials]
    assert result.search.best.score == max(t.score for t in trials)

    client = MlflowClient(Settings().tracking_uri)
    children = client.search_runs(
        [result.candidate.experiment_id],
        f"tags.`mlflow.parentRunId` = '{result.run_id}'",
    )
    assert sorted(r.info.run_name for r in children) == [f"trial-{i}" for i in range(4)]
    parent = client.get_run(result.run_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.params["estimator.max_depth"] == str(result.search.best.params["max_depth"])

    # Lineage: both datasets logged as inputs under their content digest and source.
    inputs = {d.dataset.name: d for d in parent.inputs.dataset_inputs}
    for context, ref in (("training", result.train), ("holdout", result.holdout)):
        assert inputs[context].dataset.digest == ref.sha256[:36]
        assert {t.key: t.value for t in inputs[context].tags}["sha256"] == ref.sha256
        assert ref.uri in inputs[context].dataset.source
    plots = {a.path for a in client.list_artifacts(result.run_id, "evaluation")}
    assert plots == {
        f"evaluation/{name}.png"
        for name in ("roc", "precision_recall", "confusion_matrix", "calibration", "importance")
    } | {"evaluation/importance.json"}  # the global importance: its table beside its plot
    assert 0 < result.metrics.threshold < 1
    assert result.metrics.brier < 0.05

    async def evaluation_artifact() -> tuple[str, str]:
        async with get_client() as prefect:
            [artifact] = await prefect.read_artifacts(
                artifact_filter=ArtifactFilter(
                    key=ArtifactFilterKey(any_=["evaluation-fraud-detector"])
                ),
                limit=1,
                sort=ArtifactSort.CREATED_DESC,
            )
            return str(artifact.data), str(artifact.description)

    table, description = asyncio.run(evaluation_artifact())
    assert '"metric": "pr_auc"' in table
    assert result.run_id in description


def test_dask_cluster_of_two_workers_runs_the_search(prefect_api, tmp_path, monkeypatch) -> None:
    result = train(tmp_path, monkeypatch, "dask", trials=4)
    assert len(result.search.trials) == 4
    assert overlapping(result.search.trials)
    assert result.metrics.roc_auc > 0.85
