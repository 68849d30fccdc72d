"""Hyperparameter search: Optuna ask/tell, each trial a Prefect task and a nested MLflow run."""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Literal, Protocol

import optuna
from prefect import task
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from tasks.core.attempts import RESUMABLE
from tasks.core.families.family import Params
from tasks.core.logs import run_logger
from tasks.core.model_task import direction
from tasks.core.settings import Settings
from tasks.core.spec import ModelSpec
from tasks.core.spec_sections import Dimension
from tasks.datasets.data import (
    SplitResult,
    load_dataset,
    split,
    stratify_on,
    to_features,
    to_target,
)
from tasks.modeling.kinds import kind_of
from tasks.modeling.training import SearchSummary, TrialSummary, build_pipeline
from tasks.registry import tracking

RunnerKind = Literal["threads", "dask"]


def suggest(trial: optuna.Trial, space: dict[str, Dimension]) -> Params:
    params: Params = {}
    for name, dim in space.items():
        if dim.type == "categorical":
            params[name] = trial.suggest_categorical(name, dim.choices or [])  # type: ignore[arg-type]
        elif dim.type == "int":
            params[name] = trial.suggest_int(
                name, int(dim.low or 0), int(dim.high or 0), log=dim.log
            )
        else:
            params[name] = trial.suggest_float(
                name, float(dim.low or 0), float(dim.high or 0), log=dim.log
            )
    return params


def run_trial(
    spec: ModelSpec,
    settings: Settings,
    data: SplitResult,
    parent_run_id: str,
    number: int,
    params: Params,
    n_jobs: int,
) -> TrialSummary:
    """Fit on part of the training split and score on the rest: the holdout stays untouched,
    since it judges the final model and the champion comparison."""
    started = datetime.now(UTC)
    frame = load_dataset(data.train.uri)
    cap = spec.search.max_rows
    if cap is not None and len(frame) > cap:
        # Trials only rank configurations: a sample ranks them at a fraction of the cost on large
        # data, and the candidate is refit on every training row.
        frame, _ = split(frame, stratify_on(spec), 1 - cap / len(frame), spec.search.seed)
    fit_part, check_part = split(
        frame, stratify_on(spec), spec.search.validation_fraction, spec.search.seed
    )
    model = build_pipeline(spec, params, n_jobs=n_jobs).fit(
        to_features(fit_part, spec), to_target(fit_part, spec)
    )
    kind = kind_of(spec)
    scores = kind.scores(model, to_features(check_part, spec))
    score = kind.point(spec, spec.search.metric, to_target(check_part, spec), scores)
    logged = {**params, "fit_rows": len(fit_part)}
    run_id = tracking.log_trial(
        settings, spec.name, parent_run_id, number, logged, {spec.search.metric: score}
    )
    run_logger("conveyor.search").info(
        "trial %d: %s = %.4f with %s", number, spec.search.metric, score, params
    )
    return TrialSummary(
        number=number,
        params=params,
        score=score,
        fit_rows=len(fit_part),
        run_id=run_id,
        started_at=started,
        finished_at=datetime.now(UTC),
    )


# The trial as a Prefect task: its own run in the UI, its result kept for a resume.
trial_task = task(name="trial", cache_policy=RESUMABLE, persist_result=True)(run_trial)


class Pending(Protocol):
    def result(self) -> TrialSummary: ...


def run_search(
    spec: ModelSpec,
    settings: Settings,
    data: SplitResult,
    parent_run_id: str,
    submit: Callable[..., Pending] | None = None,
) -> SearchSummary:
    """Ask `parallel` configurations at a time, run them as concurrent tasks on the calling
    flow's task runner, tell Optuna the scores. With an empty space: one trial of the fixed
    parameters, so every candidate has a scored trial. `submit` (default: the trial task's)
    takes `run_trial`'s arguments and returns something with `.result()`."""
    submit = submit or trial_task.submit
    search = spec.search
    # Optuna announces every study at INFO on its own stderr handler; the trials are in the
    # flow's logs and MLflow already.
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    higher = direction(spec.task, search.metric) == "higher"
    study = optuna.create_study(
        direction="maximize" if higher else "minimize",
        sampler=optuna.samplers.TPESampler(seed=search.seed),
    )
    total = search.trials if search.space else 1
    # Cores shared between concurrent trials: each fit gets its slice, not all of them.
    n_jobs = max(1, (os.cpu_count() or 1) // search.parallel)
    results: list[TrialSummary] = []
    while len(results) < total:
        batch = [study.ask() for _ in range(min(search.parallel, total - len(results)))]
        futures = [
            submit(spec, settings, data, parent_run_id, t.number, suggest(t, search.space), n_jobs)
            for t in batch
        ]
        for trial, future in zip(batch, futures, strict=True):
            result = future.result()
            study.tell(trial, result.score)
            results.append(result)
    best = (max if higher else min)(results, key=lambda r: r.score)
    return SearchSummary(metric=search.metric, best=best, trials=results)


def task_runner(kind: RunnerKind, workers: int, dask_address: str | None = None) -> TaskRunner[Any]:
    """Threads by default; Dask (a local cluster, or an existing one at `dask_address`) to scale
    the trials out across processes or machines."""
    if kind == "threads":
        return ThreadPoolTaskRunner(max_workers=workers)
    from prefect_dask import DaskTaskRunner

    if dask_address:
        return DaskTaskRunner(address=dask_address)
    return DaskTaskRunner(cluster_kwargs={"n_workers": workers, "threads_per_worker": 1})


@task(name="open-candidate-run", cache_policy=RESUMABLE, persist_result=True)
def open_candidate_task(settings: Settings, spec: ModelSpec) -> tracking.CandidateRun:
    return tracking.open_run(settings, spec.name, f"{tracking.CANDIDATE_RUN}{spec.name}", {})


@task(name="fail-candidate-run")
def fail_candidate_task(settings: Settings, run: tracking.CandidateRun) -> None:
    tracking.close_run(settings, run.run_id, "FAILED")
