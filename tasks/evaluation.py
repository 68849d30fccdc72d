"""Holdout metrics and the threshold gate."""

from __future__ import annotations

import numpy as np
from prefect import get_run_logger, task
from pydantic import BaseModel
from sklearn.metrics import average_precision_score, f1_score, roc_auc_score

from tasks.settings import ConveyorError, Thresholds


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


class ValidationReport(BaseModel):
    metrics: ModelMetrics
    thresholds: Thresholds
    failures: list[str]

    @property
    def passed(self) -> bool:
        return not self.failures


def check_thresholds(metrics: ModelMetrics, thresholds: Thresholds) -> ValidationReport:
    report = ValidationReport(
        metrics=metrics, thresholds=thresholds, failures=threshold_failures(metrics, thresholds)
    )
    if not report.passed:
        raise GateError(
            f"holdout metrics below the spec's thresholds: {'; '.join(report.failures)}. "
            "Nothing was registered; improve the model or revisit `thresholds` in the spec."
        )
    return report


@task(name="check-thresholds")
def check_thresholds_task(metrics: ModelMetrics, thresholds: Thresholds) -> ValidationReport:
    report = check_thresholds(metrics, thresholds)
    get_run_logger().info("holdout metrics meet the spec's thresholds %s", thresholds.model_dump())
    return report
