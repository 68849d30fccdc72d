"""The figures each task is judged by: one pydantic result per task, the point values from
scikit-learn, and the same metrics under bootstrap weights (a matrix of sample counts, one row per
resample) computed in one vectorised pass, so a 1,000-resample paired bootstrap costs a few
matrix products rather than 2,000 scikit-learn calls. Unit tests hold the weighted forms equal to
scikit-learn's `sample_weight` results."""

from __future__ import annotations

from typing import Annotated, Literal

import numpy as np
from pydantic import BaseModel, Field
from scipy import sparse
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    brier_score_loss,
    f1_score,
    mean_absolute_error,
    mean_squared_error,
    precision_score,
    r2_score,
    recall_score,
    roc_auc_score,
)

# Probabilities are clipped this far from 0 before a log: one confident miss would otherwise make
# the log loss infinite (scikit-learn clips at the dtype's epsilon likewise).
EPS = float(np.finfo(np.float64).eps)


class ModelMetrics(BaseModel):
    """Binary holdout metrics: threshold-free (ROC AUC, PR AUC, Brier) and at the operating
    threshold (precision, recall, F1)."""

    task: Literal["binary"] = "binary"
    roc_auc: float
    pr_auc: float
    brier: float
    threshold: float
    precision: float
    recall: float
    f1: float
    positive_rate: float
    rows: int

    def scalars(self) -> dict[str, float]:
        return self.model_dump(exclude={"task", "rows"})

    def headline(self) -> str:
        return f"ROC AUC {self.roc_auc:.4f}, PR AUC {self.pr_auc:.4f}, F1 {self.f1:.4f}"


class MulticlassMetrics(BaseModel):
    task: Literal["multiclass"] = "multiclass"
    accuracy: float
    f1_macro: float
    f1_weighted: float
    log_loss: float
    per_class_recall: dict[str, float]  # class name → recall
    rows: int

    def scalars(self) -> dict[str, float]:
        recall = {f"recall.{name}": value for name, value in self.per_class_recall.items()}
        return self.model_dump(exclude={"task", "rows", "per_class_recall"}) | recall

    def headline(self) -> str:
        return (
            f"accuracy {self.accuracy:.4f}, macro F1 {self.f1_macro:.4f}, "
            f"log loss {self.log_loss:.4f}"
        )


class RegressionMetrics(BaseModel):
    task: Literal["regression"] = "regression"
    rmse: float
    mae: float
    r2: float
    abs_error_quantile: float
    quantile: float  # which quantile of |error| `abs_error_quantile` is
    target_std: float  # the holdout target's spread, the scale the errors are read against
    rows: int

    def scalars(self) -> dict[str, float]:
        return self.model_dump(exclude={"task", "rows"})

    def headline(self) -> str:
        return (
            f"RMSE {self.rmse:.4g}, MAE {self.mae:.4g}, R² {self.r2:.4f}, "
            f"|error| p{self.quantile * 100:.0f} {self.abs_error_quantile:.4g}"
        )


Metrics = Annotated[
    ModelMetrics | MulticlassMetrics | RegressionMetrics, Field(discriminator="task")
]


# --- binary -------------------------------------------------------------------------------------


def binary_metrics(target: np.ndarray, scores: np.ndarray, threshold: float) -> ModelMetrics:
    flagged = scores >= threshold
    return ModelMetrics(
        roc_auc=float(roc_auc_score(target, scores)),
        pr_auc=float(average_precision_score(target, scores)),
        brier=float(brier_score_loss(target, scores)),
        threshold=threshold,
        precision=float(precision_score(target, flagged, zero_division=0)),
        recall=float(recall_score(target, flagged, zero_division=0)),
        f1=float(f1_score(target, flagged, zero_division=0)),
        positive_rate=float(np.mean(target)),
        rows=len(target),
    )


def binary_point(metric: str, target: np.ndarray, scores: np.ndarray) -> float:
    score = {"roc_auc": roc_auc_score, "pr_auc": average_precision_score}.get(metric)
    if score is not None:
        return float(score(target, scores))
    return float(brier_score_loss(target, scores))


def weighted_metric(
    metric: str, target: np.ndarray, scores: np.ndarray, weights: np.ndarray
) -> np.ndarray:
    """A binary `metric` under each row of `weights` (sample counts), computed as sklearn does
    with `sample_weight`: tied scores form one threshold; ROC AUC by trapezoids, average precision
    as the sum of precision times recall increments. One sort serves every resample."""
    if metric == "brier":
        return weights @ (scores - target) ** 2 / weights.sum(axis=1)
    order = np.argsort(-scores, kind="mergesort")
    ranked, positive = scores[order], target[order] == 1
    w = weights[:, order]
    tp = np.cumsum(w * positive, axis=1)
    fp = np.cumsum(w * ~positive, axis=1)
    ends = np.flatnonzero(np.r_[ranked[1:] != ranked[:-1], True])
    tp, fp = tp[:, ends], fp[:, ends]
    zero = np.zeros((len(w), 1))
    recall = np.hstack([zero, tp / tp[:, -1:]])
    if metric == "roc_auc":
        fpr = np.hstack([zero, fp / fp[:, -1:]])
        return np.sum(np.diff(fpr, axis=1) * (recall[:, 1:] + recall[:, :-1]) / 2, axis=1)
    flagged = tp + fp
    # No weight above a threshold: precision 0 as in sklearn (its recall increment is 0 anyway).
    precision = np.divide(tp, flagged, out=np.zeros_like(tp), where=flagged > 0)
    return np.sum(np.diff(recall, axis=1) * precision, axis=1)


# --- multiclass ---------------------------------------------------------------------------------


def multiclass_metrics(
    target: np.ndarray, proba: np.ndarray, class_names: list[str]
) -> MulticlassMetrics:
    labels = list(range(len(class_names)))
    predicted = proba.argmax(axis=1)
    recall = recall_score(target, predicted, labels=labels, average=None, zero_division=0)
    return MulticlassMetrics(
        accuracy=float(accuracy_score(target, predicted)),
        f1_macro=float(
            f1_score(target, predicted, labels=labels, average="macro", zero_division=0)
        ),
        f1_weighted=float(
            f1_score(target, predicted, labels=labels, average="weighted", zero_division=0)
        ),
        log_loss=multiclass_point("log_loss", target, proba),
        per_class_recall={name: float(r) for name, r in zip(class_names, recall, strict=True)},
        rows=len(target),
    )


def multiclass_point(metric: str, target: np.ndarray, proba: np.ndarray) -> float:
    return float(multiclass_weighted(metric, target, proba, np.ones((1, len(target))))[0])


def multiclass_weighted(
    metric: str, target: np.ndarray, proba: np.ndarray, weights: np.ndarray
) -> np.ndarray:
    """accuracy, macro/weighted F1 (over every class of the spec) or log loss under each row of
    `weights`, from one weighted confusion matrix per resample."""
    k = proba.shape[1]
    total = weights.sum(axis=1)
    if metric == "log_loss":
        picked = np.clip(proba[np.arange(len(target)), target], EPS, 1.0)
        return weights @ -np.log(picked) / total
    cells = target * k + proba.argmax(axis=1)
    onehot = sparse.csr_matrix(
        (np.ones(len(target)), (np.arange(len(target)), cells)), shape=(len(target), k * k)
    )
    # (cells x rows) @ (rows x resamples): one weighted confusion matrix per resample.
    confusion = np.asarray(onehot.T @ weights.T).T.reshape(-1, k, k)
    hits = np.einsum("rii->ri", confusion)
    if metric == "accuracy":
        return hits.sum(axis=1) / total
    actual, predicted = confusion.sum(axis=2), confusion.sum(axis=1)
    denominator = actual + predicted
    f1 = np.divide(2 * hits, denominator, out=np.zeros_like(hits), where=denominator > 0)
    if metric == "f1_macro":
        return f1.mean(axis=1)
    return (f1 * actual).sum(axis=1) / total  # f1_weighted: by each class's support


# --- regression ---------------------------------------------------------------------------------


def regression_metrics(
    target: np.ndarray, prediction: np.ndarray, quantile: float
) -> RegressionMetrics:
    error = np.abs(prediction - target)
    return RegressionMetrics(
        rmse=float(np.sqrt(mean_squared_error(target, prediction))),
        mae=float(mean_absolute_error(target, prediction)),
        r2=float(r2_score(target, prediction)),
        abs_error_quantile=float(np.quantile(error, quantile, method="inverted_cdf")),
        quantile=quantile,
        target_std=float(np.std(target)),
        rows=len(target),
    )


def regression_point(
    metric: str, target: np.ndarray, prediction: np.ndarray, quantile: float
) -> float:
    return float(getattr(regression_metrics(target, prediction, quantile), metric))


def regression_weighted(
    metric: str, target: np.ndarray, prediction: np.ndarray, weights: np.ndarray, quantile: float
) -> np.ndarray:
    """RMSE, MAE, R² or the `quantile` of |error| under each row of `weights`. The quantile is
    the inverted CDF (the smallest |error| whose weighted share reaches `quantile`), which is
    numpy's `method="inverted_cdf"` when every weight is 1."""
    total = weights.sum(axis=1)
    error = prediction - target
    if metric == "rmse":
        return np.sqrt(weights @ error**2 / total)
    if metric == "mae":
        return weights @ np.abs(error) / total
    if metric == "r2":
        mean = weights @ target / total
        spread = weights @ target**2 - total * mean**2
        return 1 - (weights @ error**2) / spread
    order = np.argsort(np.abs(error), kind="mergesort")
    reached = np.cumsum(weights[:, order], axis=1) >= quantile * total[:, None] * (1 - 1e-12)
    return np.abs(error)[order][reached.argmax(axis=1)]
