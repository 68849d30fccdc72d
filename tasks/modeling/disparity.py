"""The disparity figures between segments (`tasks.core.model_task.DISPARITIES`), two ways: as
fairlearn computes them (the point estimates a report states) and vectorised over bootstrap
weights (their intervals). At unit weights the two agree (`tests/unit/test_fairness.py`); the
vectorised form exists because a MetricFrame per resample costs about 100 ms on 2 cores, and a
gate takes hundreds of resamples."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
from pydantic import BaseModel

from tasks.core.model_task import Task
from tasks.core.spec import ModelSpec


class Predictions(BaseModel):
    """What a model decided for each holdout row, in the form each disparity needs: the
    favourable decision (binary), the predicted class (classifiers), the prediction (regression)."""

    model_config = {"arbitrary_types_allowed": True}

    scores: Any
    decided: Any  # binary: 1 where favourable; multiclass: class index; regression: prediction


def predictions(spec: ModelSpec, scores: np.ndarray, threshold: float | None) -> Predictions:
    if spec.task is Task.binary:
        flagged = scores >= (0.5 if threshold is None else threshold)
        predicted = flagged.astype(int)  # class index 1 where flagged
        favourable = (predicted != spec.adverse_index).astype(int)
        return Predictions(scores=scores, decided=favourable)
    if spec.task is Task.multiclass:
        return Predictions(scores=scores, decided=scores.argmax(axis=1))
    return Predictions(scores=scores, decided=scores)


def predicted_class(spec: ModelSpec, p: Predictions) -> np.ndarray:
    """A binary model's predicted class index, from its favourable decisions."""
    return p.decided if spec.adverse_index == 0 else 1 - p.decided


def group_mean(weights: np.ndarray, values: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Per resample, the weighted mean of `values` over `rows` (NaN where they weigh nothing)."""
    w = weights[:, rows]
    total = w.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (w @ values[rows]) / total


def samples(
    spec: ModelSpec,
    figure: str,
    target: np.ndarray,
    p: Predictions,
    groups: list[np.ndarray],
    weights: np.ndarray,
) -> np.ndarray:
    """The figure under each row of `weights` (one resample each), over the segments `groups`.
    At unit weights this is fairlearn's figure (held so by a test)."""
    if figure.startswith("selection_rate"):
        rates = np.stack([group_mean(weights, p.decided.astype(float), g) for g in groups], 1)
        if figure == "selection_rate_ratio":
            return rates.min(axis=1) / rates.max(axis=1)
        return rates.max(axis=1) - rates.min(axis=1)
    if figure == "error_gap":
        errors = np.abs(p.decided - target)
        mae = np.stack([group_mean(weights, errors, g) for g in groups], 1)
        return mae.max(axis=1) - mae.min(axis=1)
    # equalized_odds_difference: the larger of the spreads of TPR and FPR across segments; for a
    # multiclass model, one-vs-rest per class and the largest.
    if spec.task is Task.binary:
        pairs = [(target == 1, predicted_class(spec, p) == 1)]
    else:
        pairs = [(target == c, p.decided == c) for c in range(spec.n_classes)]
    worst = np.zeros(len(weights))
    for actual, said in pairs:
        for condition in (actual, ~actual):
            rates = np.stack(
                [group_mean(weights, said.astype(float), g[condition[g]]) for g in groups], 1
            )
            worst = np.maximum(worst, np.nanmax(rates, 1) - np.nanmin(rates, 1))
    return worst


def fairlearn_figure(
    spec: ModelSpec, figure: str, target: np.ndarray, p: Predictions, segment: np.ndarray
) -> float:
    """The figure as fairlearn computes it (the point estimate the report states)."""
    from fairlearn.metrics import MetricFrame, equalized_odds_difference, selection_rate
    from sklearn.metrics import mean_absolute_error

    if figure.startswith("selection_rate"):
        frame = MetricFrame(
            metrics=selection_rate,
            y_true=target,
            y_pred=p.decided,
            sensitive_features=segment,
            sample_params={"pos_label": 1},
        )
        return float(frame.ratio() if figure == "selection_rate_ratio" else frame.difference())
    if figure == "error_gap":
        frame = MetricFrame(
            metrics=mean_absolute_error,
            y_true=target,
            y_pred=p.decided,
            sensitive_features=segment,
        )
        return float(frame.difference())
    if spec.task is Task.binary:
        return float(
            equalized_odds_difference(target, predicted_class(spec, p), sensitive_features=segment)
        )
    return max(
        float(
            equalized_odds_difference(
                (target == c).astype(int), (p.decided == c).astype(int), sensitive_features=segment
            )
        )
        for c in range(spec.n_classes)
    )


def resample_weights(
    rng: np.random.Generator, strata: list[np.ndarray], n: int, resamples: int
) -> np.ndarray:
    weights = np.zeros((resamples, n))
    for rows in strata:
        if len(rows):
            weights[:, rows] = rng.multinomial(
                len(rows), np.full(len(rows), 1 / len(rows)), resamples
            )
    return weights


# Resamples drawn at once: a chunk of (CHUNK x rows) weights bounds the memory whatever the batch
# (500 resamples of 1,000,000 rows at once are 4 GB per array; 25 of them, 200 MB).
CHUNK = 25


def chunked_weights(
    rng: np.random.Generator, strata: list[np.ndarray], n: int, resamples: int
) -> Iterator[np.ndarray]:
    """`resamples` rows of resampling weights, CHUNK at a time."""
    for start in range(0, resamples, CHUNK):
        yield resample_weights(rng, strata, n, min(CHUNK, resamples - start))
