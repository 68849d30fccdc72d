"""The candidate on a Dask cluster (`compute: dask`): the refit on every training row and the
holdout scores of every holdout row, each piece read and encoded where it is worked on, so the
table never sits in the flow's process. What comes back is the fitted model (the family's own
single-process estimator, so MLflow, ONNX and Triton see what a local release gives them) and
the holdout's target and scores (a few numbers per row: the exact metrics need every row).

The Pipeline's feature step (imputation, one-hot encoding) is fitted in this process on the
training sample (`tasks.datasets.partitioned`): its categories come from the spec, and a nullable
feature's median is the sample's, which the model card says. The estimator is then fitted by the
family's Dask interface (`Family.distributed`) on the encoded rows of every training piece."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from sklearn.pipeline import Pipeline

from tasks.core.cluster import connected, runner
from tasks.core.families import FAMILIES
from tasks.core.families.family import Params
from tasks.core.model_task import Task
from tasks.core.settings import Settings
from tasks.core.spec import ModelSpec
from tasks.datasets.data import PartitionedSplit, SplitPiece, to_features, to_target
from tasks.datasets.partitioned import side
from tasks.modeling.kinds import kind_of


def _encoded(
    piece: SplitPiece, spec: ModelSpec, split: PartitionedSplit, step: Any
) -> tuple[np.ndarray, np.ndarray]:
    """One piece's training rows, encoded by the fitted feature step, and their target."""
    rows = side(piece, spec, split, holdout=False)
    encoded = np.asarray(step.transform(to_features(rows, spec)), dtype=np.float32)
    return encoded, to_target(rows, spec)


def fit(
    spec: ModelSpec,
    settings: Settings,
    split: PartitionedSplit,
    pipeline: Pipeline,
    sample: pd.DataFrame,
    params: Params,
) -> Pipeline:
    """`pipeline` (unfitted, from `training.build_pipeline`) fitted on every training row."""
    import dask
    import dask.array as da

    step = pipeline.steps[0][1].fit(to_features(sample, spec))
    width = np.asarray(step.transform(to_features(sample.iloc[:1], spec))).shape[1]
    target_type = np.float64 if spec.task is Task.regression else np.int64
    pieces = [piece for piece in split.pieces if piece.train_rows]
    with connected(settings) as client:
        parts = [dask.delayed(_encoded, nout=2)(piece, spec, split, step) for piece in pieces]
        x = da.concatenate(
            [
                da.from_delayed(encoded, (piece.train_rows, width), np.float32)
                for (encoded, _), piece in zip(parts, pieces, strict=True)
            ]
        )
        y = da.concatenate(
            [
                da.from_delayed(target, (piece.train_rows,), target_type)
                for (_, target), piece in zip(parts, pieces, strict=True)
            ]
        )
        # Read and encoded once, held by the workers for the boosting rounds.
        x, y = client.persist([x, y])
        family = FAMILIES[spec.estimator.family]
        assert family.distributed is not None  # the spec refuses a family without one
        estimator = family.distributed(
            spec.task, spec.estimator.params | params, spec.data.seed, client, x, y
        )
    return Pipeline([(pipeline.steps[0][0], step), (pipeline.steps[-1][0], estimator)])


def _scored(
    piece: SplitPiece, spec: ModelSpec, split: PartitionedSplit, model: Pipeline
) -> tuple[str, np.ndarray, np.ndarray]:
    rows = side(piece, spec, split, holdout=True)
    return piece.key, to_target(rows, spec), kind_of(spec).scores(model, to_features(rows, spec))


def holdout_scores(
    spec: ModelSpec, settings: Settings, split: PartitionedSplit, model: Pipeline
) -> tuple[np.ndarray, np.ndarray]:
    """The target and the model's scores on every holdout row, in piece order."""
    pieces = [piece for piece in split.pieces if piece.holdout_rows]
    with runner(settings, "dask") as run:
        found = sorted(run(_scored, pieces, spec, split, model), key=lambda part: part[0])
    return (
        np.concatenate([target for _, target, _ in found]),
        np.concatenate([scores for _, _, scores in found]),
    )
