"""Holdout metrics and the threshold gate."""

from __future__ import annotations

from typing import Any

import numpy as np
from pydantic import BaseModel
from sklearn.metrics import (
    average_precision_score,
    brier_score_loss,
    f1_score,
    precision_recall_curve,
    precision_score,
    recall_score,
    roc_auc_score,
)

from tasks.core.errors import ConveyorError
from tasks.core.spec import EvaluationSpec, Thresholds, ValidationSpec


class GateError(ConveyorError):
    """A model missed a threshold from its spec."""

    gate = "model_validation"


class ModelMetrics(BaseModel):
    """Holdout metrics. Threshold-free (ROC AUC, PR AUC, Brier) and at the operating threshold."""

    roc_auc: float
    pr_auc: float
    brier: float
    threshold: float
    precision: float
    recall: float
    f1: float
    positive_rate: float
    rows: int


def operating_threshold(target: np.ndarray, scores: np.ndarray, spec: EvaluationSpec) -> float:
    """The score above which a transaction is flagged: best F1, or the lowest threshold that
    reaches the target precision (the most fraud caught at that precision)."""
    precision, recall, thresholds = precision_recall_curve(target, scores)
    precision, recall = precision[:-1], recall[:-1]  # the last point has no threshold
    if spec.operating_point == "best_f1":
        f1 = np.divide(2 * precision * recall, precision + recall, where=(precision + recall) > 0)
        return float(thresholds[int(np.argmax(f1))])
    reaching = np.flatnonzero(precision >= spec.target_precision)
    if reaching.size == 0:
        raise GateError(
            f"no threshold reaches precision {spec.target_precision} on the training split's "
            f"out-of-fold scores (best {precision.max():.3f}); lower "
            "evaluation.target_precision or improve the model"
        )
    return float(thresholds[reaching[0]])


def compute_metrics(target: np.ndarray, scores: np.ndarray, threshold: float) -> ModelMetrics:
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


def figures(target: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, Any]:
    """ROC, precision-recall, confusion matrix at the threshold, and calibration plots."""
    import matplotlib

    matplotlib.use("Agg")  # no display on workers
    from sklearn.calibration import CalibrationDisplay
    from sklearn.metrics import ConfusionMatrixDisplay, PrecisionRecallDisplay, RocCurveDisplay

    plots = {
        "roc.png": RocCurveDisplay.from_predictions(target, scores),
        "precision_recall.png": PrecisionRecallDisplay.from_predictions(target, scores),
        "confusion_matrix.png": ConfusionMatrixDisplay.from_predictions(
            target, (scores >= threshold).astype(int)
        ),
        "calibration.png": CalibrationDisplay.from_predictions(target, scores, n_bins=10),
    }
    return {name: display.figure_ for name, display in plots.items()}


def close_figures(plots: dict[str, Any]) -> None:
    """pyplot keeps every figure alive until closed: a long-lived worker would grow."""
    import matplotlib.pyplot as plt

    for figure in plots.values():
        plt.close(figure)


def threshold_failures(metrics: ModelMetrics, thresholds: Thresholds) -> list[str]:
    failures = []
    for name, minimum in thresholds.model_dump().items():
        value = getattr(metrics, name)
        if value < minimum:
            failures.append(f"{name} {value:.4f} < {minimum:.4f}")
    return failures


class Comparison(BaseModel):
    """Challenger vs champion on the same holdout rows, with a paired bootstrap interval."""

    metric: str
    champion_version: int
    challenger: float
    champion: float
    difference: float
    ci_low: float
    ci_high: float
    confidence: float
    resamples: int
    rule: str
    margin: float
    passed: bool

    def summary(self) -> str:
        return (
            f"{self.metric}: challenger {self.challenger:.4f} vs champion v{self.champion_version} "
            f"{self.champion:.4f}, difference {self.difference:+.4f} "
            f"[{self.confidence:.0%} CI {self.ci_low:+.4f}, {self.ci_high:+.4f}], "
            f"rule {self.rule} (margin {self.margin})"
        )


class ValidationReport(BaseModel):
    metrics: ModelMetrics
    thresholds: Thresholds
    threshold_failures: list[str]
    comparison: Comparison | None

    @property
    def passed(self) -> bool:
        comparison_ok = self.comparison is None or self.comparison.passed
        return not self.threshold_failures and comparison_ok

    @property
    def verdict(self) -> str:
        if self.passed:
            return "passed"
        reasons = list(self.threshold_failures)
        if self.comparison is not None and not self.comparison.passed:
            reasons.append(f"not {self.comparison.rule.replace('_', '-')} to the champion")
        return "rejected: " + "; ".join(reasons)

    def tags(self) -> dict[str, str]:
        tags = {"conveyor.validation": self.verdict}
        if self.comparison is not None:
            c = self.comparison
            tags |= {
                "conveyor.validation.champion_version": str(c.champion_version),
                "conveyor.validation.difference": f"{c.difference:.6f}",
                "conveyor.validation.ci": f"[{c.ci_low:.6f}, {c.ci_high:.6f}]",
            }
        return tags

    def markdown(self) -> str:
        lines = [
            f"# Validation: {self.verdict}",
            "",
            "| metric | value | threshold |",
            "|---|---|---|",
        ]
        for name, minimum in self.thresholds.model_dump().items():
            lines.append(f"| {name} | {getattr(self.metrics, name):.4f} | ≥ {minimum} |")
        lines.append("")
        lines.append(
            self.comparison.summary() if self.comparison else "No champion yet: thresholds decide."
        )
        return "\n".join(lines)


METRICS = {"roc_auc": roc_auc_score, "pr_auc": average_precision_score}


CHUNK = 100  # resamples scored at once: bounds memory to CHUNK x rows weights


def weighted_metric(
    metric: str, target: np.ndarray, scores: np.ndarray, weights: np.ndarray
) -> np.ndarray:
    """`metric` under each row of `weights` (sample counts), computed as sklearn does with
    `sample_weight`: tied scores form one threshold; ROC AUC by trapezoids, average precision as
    the sum of precision times recall increments. One sort serves every resample."""
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


def paired_bootstrap(
    target: np.ndarray,
    challenger: np.ndarray,
    champion: np.ndarray,
    metric: str,
    resamples: int,
    confidence: float,
    seed: int,
) -> tuple[float, float, float]:
    """(difference, CI low, CI high) of metric(challenger) - metric(champion).

    Both models are scored on the same resampled rows (paired). Resampling is stratified by class:
    with a rare positive class an unstratified resample can hold too few positives for the metric.
    A resample is a vector of counts (multinomial within each class), i.e. sample weights.
    """
    rng = np.random.default_rng(seed)
    positives, negatives = np.flatnonzero(target == 1), np.flatnonzero(target != 1)
    differences = []
    for start in range(0, resamples, CHUNK):
        size = min(CHUNK, resamples - start)
        weights = np.zeros((size, len(target)))
        for rows in (positives, negatives):
            weights[:, rows] = rng.multinomial(len(rows), np.full(len(rows), 1 / len(rows)), size)
        differences.append(
            weighted_metric(metric, target, challenger, weights)
            - weighted_metric(metric, target, champion, weights)
        )
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(np.concatenate(differences), [tail, 100 - tail])
    score = METRICS[metric]
    point = score(target, challenger) - score(target, champion)
    return float(point), float(low), float(high)


def compare(
    target: np.ndarray,
    challenger: np.ndarray,
    champion: np.ndarray,
    champion_version: int,
    spec: ValidationSpec,
) -> Comparison:
    difference, low, high = paired_bootstrap(
        target, challenger, champion, spec.metric, spec.resamples, spec.confidence, spec.seed
    )
    bound = -spec.margin if spec.rule == "non_inferior" else 0.0
    score = METRICS[spec.metric]
    return Comparison(
        metric=spec.metric,
        champion_version=champion_version,
        challenger=float(score(target, challenger)),
        champion=float(score(target, champion)),
        difference=difference,
        ci_low=low,
        ci_high=high,
        confidence=spec.confidence,
        resamples=spec.resamples,
        rule=spec.rule,
        margin=spec.margin,
        passed=low > bound,
    )


def require_valid(report: ValidationReport) -> None:
    if report.passed:
        return
    details = list(report.threshold_failures)
    if report.comparison is not None and not report.comparison.passed:
        details.append(report.comparison.summary())
    raise GateError(
        f"challenger rejected: {'; '.join(details)}. Nothing was registered and the champion "
        "is unchanged."
    )
