"""The model gate: the binary operating threshold, the holdout thresholds, and the champion vs
challenger comparison by a paired, seeded bootstrap on any metric of the task."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
from pydantic import BaseModel
from sklearn.metrics import precision_recall_curve

from tasks.core.errors import ConveyorError
from tasks.core.gates.gate import GateReport
from tasks.core.model_task import Task, direction
from tasks.core.spec import EvaluationSpec, ModelSpec, Thresholds
from tasks.modeling.fairness import FairnessReport
from tasks.modeling.kinds import kind_of
from tasks.modeling.scores import Metrics
from tasks.registry import model_registry


class GateError(ConveyorError):
    """A model missed a threshold from its spec."""

    gate = "model_validation"


class FairnessError(GateError):
    """A model passed its thresholds but failed a fairness gate (a segment or a disparity)."""

    gate = "fairness"


class ModelGateError(GateError):
    """A model passed the gates before it but failed one of the table's (`tasks.core.gates`)."""

    def __init__(self, message: str, gate: str) -> None:
        super().__init__(message)
        self.gate = gate

    def __reduce__(self) -> tuple[type, tuple[str, str]]:
        # Pickled with its gate (a failed task's state carries the exception across processes).
        return type(self), (str(self), self.gate)


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


def close_figures(plots: dict[str, Any]) -> None:
    """pyplot keeps every figure alive until closed: a long-lived worker would grow."""
    import matplotlib.pyplot as plt

    for figure in plots.values():
        plt.close(figure)


def threshold_failures(metrics: Metrics, thresholds: Thresholds) -> list[str]:
    """Each gate the metrics miss: a floor on a metric where higher is better, a ceiling where
    lower is, a floor on each named class's recall."""
    failures = []
    for name, limit in thresholds.limits().items():
        value = getattr(metrics, name)
        if direction(Task(metrics.task), name) == "higher" and value < limit:
            failures.append(f"{name} {value:.4f} < {limit:.4f}")
        elif direction(Task(metrics.task), name) == "lower" and value > limit:
            failures.append(f"{name} {value:.4f} > {limit:.4f}")
    recall = getattr(metrics, "per_class_recall", {})
    for name, floor in thresholds.per_class_recall.items():
        if recall.get(name, 0.0) < floor:
            failures.append(f"recall of class {name} {recall.get(name, 0.0):.4f} < {floor:.4f}")
    return failures


class Comparison(BaseModel):
    """Challenger vs champion on the same holdout rows, with a paired bootstrap interval of
    challenger - champion. For a metric where lower is better (log loss, RMSE, …) an improvement
    is a negative difference, and the rule reads the interval's upper bound."""

    metric: str
    higher_is_better: bool = True
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
        better = "higher" if self.higher_is_better else "lower"
        return (
            f"{self.metric} ({better} is better): challenger {self.challenger:.4f} vs champion "
            f"v{self.champion_version} {self.champion:.4f}, difference {self.difference:+.4f} "
            f"[{self.confidence:.0%} CI {self.ci_low:+.4f}, {self.ci_high:+.4f}], "
            f"rule {self.rule} (margin {self.margin})"
        )


class ValidationReport(BaseModel):
    metrics: Metrics
    thresholds: Thresholds
    threshold_failures: list[str]
    comparison: Comparison | None
    fairness: FairnessReport | None = None
    champion: int | None = None  # the version the challenger was judged beside, if any
    gates: list[GateReport] = []  # the table's gates the spec sets, in the table's order

    @property
    def performance_passed(self) -> bool:
        comparison_ok = self.comparison is None or self.comparison.passed
        return not self.threshold_failures and comparison_ok

    @property
    def passed(self) -> bool:
        fair = self.fairness is None or self.fairness.passed
        return self.performance_passed and fair and all(g.passed for g in self.gates)

    @property
    def verdict(self) -> str:
        if self.passed:
            return "passed"
        reasons = list(self.threshold_failures)
        if self.comparison is not None and not self.comparison.passed:
            reasons.append(f"not {self.comparison.rule.replace('_', '-')} to the champion")
        if self.fairness is not None and not self.fairness.passed:
            reasons.append(f"{len(self.fairness.failures)} fairness gate(s) failed")
        reasons += [f"the {g.gate} gate failed" for g in self.gates if not g.passed]
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
            "| metric | value | gate |",
            "|---|---|---|",
        ]
        task = Task(self.metrics.task)
        for name, limit in self.thresholds.limits().items():
            sign = "≥" if direction(task, name) == "higher" else "≤"
            lines.append(f"| {name} | {getattr(self.metrics, name):.4f} | {sign} {limit} |")
        recall = getattr(self.metrics, "per_class_recall", {})
        for name, floor in self.thresholds.per_class_recall.items():
            lines.append(f"| recall of {name} | {recall.get(name, 0.0):.4f} | ≥ {floor} |")
        lines.append("")
        lines.append(
            self.comparison.summary() if self.comparison else "No champion yet: thresholds decide."
        )
        if self.fairness is not None:
            lines += ["", self.fairness.markdown().replace("# ", "## ", 1)]
        for gate in self.gates:
            lines += ["", *gate.lines]
        return "\n".join(lines)


CHUNK = 100  # resamples scored at once: bounds memory to CHUNK x rows weights


def resample_weights(spec: ModelSpec, target: np.ndarray, resamples: int) -> Iterator[np.ndarray]:
    """The release's bootstrap, as chunks of weights (at most CHUNK resamples x rows each): a
    resample is a vector of counts (multinomial within each stratum). A classifier's are
    stratified by class: with a rare class an unstratified resample can hold too few of it for
    a metric. Seeded by `validation.seed`: every call yields the same resamples, so two models
    scored on them are paired."""
    rng = np.random.default_rng(spec.validation.seed)
    strata = kind_of(spec).strata(target)
    for start in range(0, resamples, CHUNK):
        size = min(CHUNK, resamples - start)
        weights = np.zeros((size, len(target)))
        for rows in strata:
            weights[:, rows] = rng.multinomial(len(rows), np.full(len(rows), 1 / len(rows)), size)
        yield weights


def paired_bootstrap(
    spec: ModelSpec,
    metric: str,
    target: np.ndarray,
    challenger: np.ndarray,
    champion: np.ndarray,
) -> tuple[float, float, float]:
    """(difference, CI low, CI high) of metric(challenger) - metric(champion), with the spec's
    validation resamples, confidence and seed: both models scored on the same resampled rows
    (`resample_weights`), in one vectorised pass per chunk by the task's kind."""
    kind, v = kind_of(spec), spec.validation
    differences = [
        kind.weighted(spec, metric, target, challenger, weights)
        - kind.weighted(spec, metric, target, champion, weights)
        for weights in resample_weights(spec, target, v.resamples)
    ]
    tail = (1 - v.confidence) / 2 * 100
    low, high = np.percentile(np.concatenate(differences), [tail, 100 - tail])
    point = kind.point(spec, metric, target, challenger) - kind.point(
        spec, metric, target, champion
    )
    return float(point), float(low), float(high)


def compare(
    spec: ModelSpec,
    target: np.ndarray,
    challenger: np.ndarray,
    champion: np.ndarray,
    champion_version: int,
) -> Comparison:
    """non_inferior: the interval rules out a loss larger than `margin`; superior: it rules out
    any loss. Read on the bound in the metric's bad direction."""
    v, kind = spec.validation, kind_of(spec)
    difference, low, high = paired_bootstrap(spec, v.metric, target, challenger, champion)
    higher = direction(spec.task, v.metric) == "higher"
    allowed = v.margin if v.rule == "non_inferior" else 0.0
    passed = low > -allowed if higher else high < allowed
    return Comparison(
        metric=v.metric,
        higher_is_better=higher,
        champion_version=champion_version,
        challenger=kind.point(spec, v.metric, target, challenger),
        champion=kind.point(spec, v.metric, target, champion),
        difference=difference,
        ci_low=low,
        ci_high=high,
        confidence=v.confidence,
        resamples=v.resamples,
        rule=v.rule,
        margin=v.margin,
        passed=passed,
    )


def require_valid(report: ValidationReport) -> None:
    """Raise at the first gate that failed (thresholds and the champion, then fairness), naming
    every failure of both."""
    if report.passed:
        return
    details = list(report.threshold_failures)
    if report.comparison is not None and not report.comparison.passed:
        details.append(report.comparison.summary())
    if report.fairness is not None:
        details += [f"fairness: {failure}" for failure in report.fairness.failures]
    failed_gates = [gate for gate in report.gates if not gate.passed]
    details += [failure for gate in failed_gates for failure in gate.failures]
    message = (
        f"challenger rejected: {'; '.join(details)}. Nothing was registered and "
        f"{model_registry.what_stays(report.champion)}."
    )
    if not report.performance_passed:
        raise GateError(message)
    if report.fairness is not None and not report.fairness.passed:
        raise FairnessError(message)
    raise ModelGateError(message, failed_gates[0].gate)
