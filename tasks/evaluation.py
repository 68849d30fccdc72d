"""Holdout metrics and the threshold gate."""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel
from sklearn.metrics import average_precision_score, f1_score, roc_auc_score

from tasks.settings import ConveyorError, Thresholds, ValidationSpec


class GateError(ConveyorError):
    """A model missed a threshold from its spec."""


class ModelMetrics(BaseModel):
    roc_auc: float
    pr_auc: float
    f1: float
    positive_rate: float
    rows: int


def compute_metrics(target: np.ndarray, labels: np.ndarray, scores: np.ndarray) -> ModelMetrics:
    """`labels` are the model's own decisions (what Triton's `label` output returns)."""
    return ModelMetrics(
        roc_auc=float(roc_auc_score(target, scores)),
        pr_auc=float(average_precision_score(target, scores)),
        f1=float(f1_score(target, labels, zero_division=0)),
        positive_rate=float(np.mean(target)),
        rows=len(target),
    )


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
    """
    score = METRICS[metric]
    rng = np.random.default_rng(seed)
    positives, negatives = np.flatnonzero(target == 1), np.flatnonzero(target != 1)
    differences = np.empty(resamples)
    for i in range(resamples):
        rows = np.concatenate(
            [
                rng.choice(positives, len(positives), replace=True),
                rng.choice(negatives, len(negatives), replace=True),
            ]
        )
        y = target[rows]
        differences[i] = score(y, challenger[rows]) - score(y, champion[rows])
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(differences, [tail, 100 - tail])
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
