"""Estimators from the spec: one scikit-learn Pipeline over the served `features` tensor, with the
estimator the task's kind builds for the family (`tasks.modeling.kinds`)."""

from __future__ import annotations

import hashlib
from datetime import datetime

import numpy as np
import pandas as pd
from prefect import get_run_logger, task
from prefect.artifacts import create_table_artifact
from pydantic import BaseModel
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from tasks.core.attempts import RESUMABLE
from tasks.core.families import FAMILIES
from tasks.core.families.family import Params
from tasks.core.model_task import Task
from tasks.core.orchestration import root_flow_run
from tasks.core.settings import Settings
from tasks.core.spec import FeatureType, ModelSpec
from tasks.datasets.data import (
    DataError,
    DatasetRef,
    PartitionedSplit,
    SplitResult,
    load_dataset,
    split,
    stratify_on,
    to_features,
    to_target,
)
from tasks.modeling import distributed, explain
from tasks.modeling.evaluation import close_figures, operating_threshold
from tasks.modeling.kinds import kind_of
from tasks.modeling.scores import Metrics
from tasks.registry import tracking, ui_links

# The imputer of nullable features keeps the dtype it was fitted on.
SKOPS_TRUSTED_IMPUTER = ["numpy.dtype"]


def skops_trusted(spec: ModelSpec) -> list[str]:
    imputed = any(f.nullable and f.type is not FeatureType.category for f in spec.features)
    trusted = list(FAMILIES[spec.estimator.family].trusted_types)
    return trusted + (SKOPS_TRUSTED_IMPUTER if imputed else [])


def build_pipeline(spec: ModelSpec, params: Params | None = None, n_jobs: int = -1) -> Pipeline:
    """Categories arrive as their index; they are one-hot encoded inside the Pipeline (and so
    inside the ONNX graph), so clients send the same tensor whatever the estimator. A nullable
    feature's missing value arrives as NaN and is imputed (the training median) inside the graph
    too; an unknown or missing category (index -1) encodes as all zeros."""
    params = spec.estimator.params | (params or {})
    categorical = [i for i, f in enumerate(spec.features) if f.type is FeatureType.category]
    nullable = [i for i, f in enumerate(spec.features) if f.nullable and i not in categorical]
    numeric = [i for i in range(len(spec.features)) if i not in categorical + nullable]
    categories = [
        [float(i) for i in range(len(spec.features[i].categories or []))] for i in categorical
    ]
    family = FAMILIES[spec.estimator.family]
    # Trees do not care about scale; linear models do.
    numeric_step = StandardScaler() if family.scaled else "passthrough"
    transformers: list[tuple[str, object, list[int]]] = [("numeric", numeric_step, numeric)]
    if nullable:
        # Imputed rather than left to the estimator: linear models cannot take NaN, and one
        # graph for every family keeps ONNX parity simple.
        imputer = SimpleImputer(strategy="median")
        scaled = Pipeline([("impute", imputer), ("scale", StandardScaler())])
        transformers.append(
            ("nullable", imputer if numeric_step == "passthrough" else scaled, nullable)
        )
    if categorical:
        encoder = OneHotEncoder(
            categories=categories, handle_unknown="ignore", sparse_output=False, dtype=np.float32
        )
        transformers.insert(0, ("categorical", encoder, categorical))
    return Pipeline(
        [
            ("features", ColumnTransformer(transformers)),
            ("estimator", family.build(spec.task, params, spec.data.seed, n_jobs)),
        ]
    )


def fit(
    spec: ModelSpec, features: np.ndarray, target: np.ndarray, params: Params | None = None
) -> Pipeline:
    if spec.task is not Task.regression:
        missing = sorted(set(range(spec.n_classes)) - set(np.unique(target).tolist()))
        if missing:
            names = [spec.class_names[i] for i in missing]
            raise DataError(
                f"the training split of {spec.target.name!r} has no row of class(es) {names}; "
                "a classifier needs examples of every class in target.classes: add data, or "
                "remove the class from the spec"
            )
    return for_serving(spec, build_pipeline(spec, params).fit(features, target))


def for_serving(spec: ModelSpec, model: Pipeline) -> Pipeline:
    """A fitted Pipeline made to answer as its ONNX graph does, and a row at a time."""
    FAMILIES[spec.estimator.family].served_precision(model[-1])
    # Trained on every core, but served a row at a time: with n_jobs=-1 each predict pays joblib's
    # dispatch (about 50 ms per batch-1 call on 2 cores), which anyone serving this MLflow model
    # directly (`mlflow models serve`, a pickle behind FastAPI) would inherit.
    if "n_jobs" in model[-1].get_params():
        model[-1].set_params(n_jobs=1)
    return model


class TrialSummary(BaseModel):
    number: int
    params: Params
    score: float
    fit_rows: int  # what the trial fit on: part of the training split, sampled to search.max_rows
    run_id: str
    started_at: datetime
    finished_at: datetime


class SearchSummary(BaseModel):
    metric: str
    best: TrialSummary
    trials: list[TrialSummary]


class TrainResult(BaseModel):
    """A trained candidate: where it is logged and what it was trained and judged on."""

    model: str
    candidate: tracking.CandidateRun
    metrics: Metrics
    train: DatasetRef
    holdout: DatasetRef
    lineage: dict[str, str]
    search: SearchSummary
    importance: explain.Importance | None = None
    # `compute: dask`: where every row of both sides is (`train` and `holdout` are samples).
    partitioned: PartitionedSplit | None = None

    @property
    def run_id(self) -> str:
        return self.candidate.run_id


def spec_fingerprint(spec: ModelSpec) -> str:
    return hashlib.sha256(spec.model_dump_json().encode()).hexdigest()


# The operating threshold is chosen on out-of-fold scores of the training split: the holdout
# then reports precision, recall and F1 at a threshold it had no part in choosing (chosen on the
# holdout, those figures are optimistic). Three folds: three extra fits, on two thirds of the
# (capped) split each.
THRESHOLD_FOLDS = 3
THRESHOLD_SOURCE = f"out-of-fold scores of the training split ({THRESHOLD_FOLDS} folds)"


def threshold_on_training(
    spec: ModelSpec, train: pd.DataFrame, params: Params | None = None
) -> float | None:
    """A binary model's operating threshold from out-of-fold scores on `train` (sampled to
    search.max_rows, as the trials are: the threshold needs the score distribution, not every
    row). Other tasks have none: a multiclass label is the likeliest class."""
    if not kind_of(spec).thresholded:
        return None
    cap = spec.search.max_rows
    if cap is not None and len(train) > cap:
        train, _ = split(train, stratify_on(spec), 1 - cap / len(train), spec.search.seed)
    features, target = to_features(train, spec), to_target(train, spec)
    smallest = int(np.bincount(target).min()) if len(np.unique(target)) > 1 else 0
    if smallest < THRESHOLD_FOLDS:
        raise DataError(
            f"the training split has {smallest} row(s) of its rarest class; choosing the "
            f"operating threshold needs at least {THRESHOLD_FOLDS} (one per fold). Add data."
        )
    folds = StratifiedKFold(THRESHOLD_FOLDS, shuffle=True, random_state=spec.search.seed)
    scores = cross_val_predict(
        build_pipeline(spec, params), features, target, cv=folds, method="predict_proba"
    )[:, 1]
    return operating_threshold(target, scores, spec.evaluation)


def refit_and_score(
    spec: ModelSpec, train: pd.DataFrame, holdout: pd.DataFrame, params: Params
) -> tuple[Pipeline, float | None, Metrics, np.ndarray]:
    """The candidate refit on all of `train`, its threshold (binary, from `train` alone), and its
    holdout metrics; the holdout's scores for the plots."""
    kind = kind_of(spec)
    model = fit(spec, to_features(train, spec), to_target(train, spec), params)
    threshold = threshold_on_training(spec, train, params)
    scores = kind.scores(model, to_features(holdout, spec))
    metrics = kind.evaluate(spec, to_target(holdout, spec), scores, threshold)
    return model, threshold, metrics, scores


def _refit_on_cluster(
    spec: ModelSpec,
    settings: Settings,
    split: PartitionedSplit,
    sample: pd.DataFrame,
    params: Params,
) -> tuple[Pipeline, float | None, Metrics]:
    """`refit_and_score` on a Dask cluster: refit on every training row, holdout metrics on
    every holdout row; the threshold from the training sample's out-of-fold scores, as a local
    release takes it from at most `search.max_rows` rows."""
    model = distributed.fit(spec, settings, split, build_pipeline(spec, params), sample, params)
    model = for_serving(spec, model)
    threshold = threshold_on_training(spec, sample, params)
    target, scores = distributed.holdout_scores(spec, settings, split, model)
    return model, threshold, kind_of(spec).evaluate(spec, target, scores, threshold)


def cluster_lineage(split: PartitionedSplit, sample_rows: int) -> dict[str, str]:
    """What a `compute: dask` release read, for its run's tags and its model card."""
    return {
        tracking.TAG_COMPUTE: "dask",
        tracking.TAG_MANIFEST: split.manifest,
        tracking.TAG_ROWS: f"{split.train_rows} training, {split.holdout_rows} holdout in "
        f"{len(split.pieces)} pieces; {sample_rows} holdout rows sampled for the gates",
    }


def train_candidate(
    spec: ModelSpec,
    settings: Settings,
    data: SplitResult,
    run: tracking.CandidateRun,
    search: SearchSummary,
    flow_run_id: str,
) -> TrainResult:
    """Refit with the chosen parameters on the whole training split, score it on the holdout,
    and complete its MLflow run."""
    train = load_dataset(data.train.uri)
    params = search.best.params
    holdout = load_dataset(data.holdout.uri)
    features, target = to_features(holdout, spec), to_target(holdout, spec)
    if data.partitioned is None:
        model, threshold, metrics, scores = refit_and_score(spec, train, holdout, params)
    else:  # `train` and `holdout` are samples; the refit and the metrics read every row
        model, threshold, metrics = _refit_on_cluster(
            spec, settings, data.partitioned, train, params
        )
        # The plots from the holdout sample: a curve of every row is millions of points in
        # this process for a picture that a sample draws the same.
        scores = kind_of(spec).scores(model, features)
    lineage = {
        tracking.TAG_DATA: data.train.sha256,
        tracking.TAG_SOURCE: data.source_sha256,
        tracking.TAG_HOLDOUT: data.holdout.sha256,
        tracking.TAG_HOLDOUT_URI: data.holdout.uri,
        tracking.TAG_TRAIN_URI: data.train.uri,
        **({tracking.TAG_READ_FROM: data.read_from} if data.read_from else {}),
        tracking.TAG_CODE: tracking.code_version(),
        tracking.TAG_FLOW_RUN: flow_run_id,
        tracking.TAG_SPEC: spec_fingerprint(spec),
        tracking.TAG_TASK: spec.task.value,
    }
    if data.partitioned is not None:
        lineage |= cluster_lineage(data.partitioned, data.holdout.rows)
    if threshold is not None:
        lineage[tracking.TAG_THRESHOLD] = f"{threshold:.6f}"
        lineage[tracking.TAG_THRESHOLD_SOURCE] = THRESHOLD_SOURCE
    plots = kind_of(spec).figures(spec, target, scores, threshold)
    # Global importance is part of every version's record (the model card shows it).
    importance = explain.global_importance(spec, model, features, spec.data.seed)
    plots["importance.png"] = explain.importance_figure(importance)
    candidate = tracking.log_candidate(
        settings,
        spec,
        run,
        model,
        spec.estimator.params | params,
        metrics.scalars() | {f"search_best_{search.metric}": search.best.score},
        features[:100],
        tags=lineage,
        trusted_types=skops_trusted(spec),
        figures=plots,
        inputs={"training": (train, data.train), "holdout": (holdout, data.holdout)},
    )
    close_figures(plots)
    tracking.log_run_artifact(
        settings,
        candidate.run_id,
        explain.IMPORTANCE_ARTIFACT,
        importance.model_dump_json(indent=1).encode(),
    )
    return TrainResult(
        model=spec.name,
        candidate=candidate,
        metrics=metrics,
        train=data.train,
        holdout=data.holdout,
        lineage=lineage,
        search=search,
        importance=importance,
        partitioned=data.partitioned,
    )


@task(name="train-candidate", cache_policy=RESUMABLE, persist_result=True)
def train_candidate_task(
    spec: ModelSpec,
    settings: Settings,
    data: SplitResult,
    run: tracking.CandidateRun,
    search: SearchSummary,
) -> TrainResult:
    logger = get_run_logger()
    result = train_candidate(spec, settings, data, run, search, root_flow_run())
    m = result.metrics
    create_table_artifact(
        key=f"evaluation-{spec.name}",
        table=[{"metric": k, "value": round(v, 6)} for k, v in m.scalars().items()],
        description=f"Holdout metrics of MLflow run [{result.run_id}]"
        f"({ui_links.run_url(settings, result.run_id, result.candidate.experiment_id)})",
    )
    logger.info(
        "trained %s %s on %d rows (data %s…): %s; MLflow run %s",
        spec.task.value,
        spec.estimator.family,
        data.partitioned.train_rows if data.partitioned else data.train.rows,
        data.train.sha256[:12],
        m.headline(),
        result.run_id,
    )
    return result
