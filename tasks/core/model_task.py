"""What kind of model a spec describes, as plain data every floor may read: the task, the metrics
each task is judged by (and which way is better) and the outputs it serves. The estimator
families that can learn each task are `tasks.core.families`; the arithmetic behind these names
is `tasks.modeling.kinds`, the one place the line dispatches on the task."""

from __future__ import annotations

from enum import StrEnum
from typing import Literal


class Task(StrEnum):
    binary = "binary"
    multiclass = "multiclass"
    regression = "regression"


Direction = Literal["higher", "lower"]

# Every metric a task reports, gates on and compares champions by. Thresholds on a "higher" metric
# are floors, on a "lower" one ceilings; the champion/challenger difference is taken so that a
# positive difference is always an improvement.
METRICS: dict[Task, dict[str, Direction]] = {
    Task.binary: {"roc_auc": "higher", "pr_auc": "higher", "f1": "higher", "brier": "lower"},
    Task.multiclass: {
        "accuracy": "higher",
        "f1_macro": "higher",
        "f1_weighted": "higher",
        "log_loss": "lower",
    },
    Task.regression: {
        "rmse": "lower",
        "mae": "lower",
        "r2": "higher",
        "abs_error_quantile": "lower",
    },
}
# What the search optimises and the champion is compared on when the spec names nothing.
DEFAULT_METRIC: dict[Task, str] = {
    Task.binary: "pr_auc",
    Task.multiclass: "f1_macro",
    Task.regression: "rmse",
}
# Metrics that need an operating threshold chosen first; the search, the comparison and the
# per-segment intervals work on scores only.
THRESHOLD_METRICS = {"f1"}


def score_metrics(task: Task) -> list[str]:
    """The task's metrics that scores alone decide (what may be searched, compared, resampled)."""
    return [m for m in METRICS[task] if m not in THRESHOLD_METRICS]


# Disparity between segments, the fairness gate's figures (`tasks.modeling.fairness`): each is a
# limit of one kind ("min": the figure must stay above it, "max": below) for the tasks it exists
# for. Selection rate is the share of a segment given the favourable decision (a binary model's
# non-adverse class); equalised odds compares true and false positive rates (per class,
# one-vs-rest, for a multiclass model); the error gap is the spread of mean absolute error.
DISPARITIES: dict[str, tuple[Literal["min", "max"], set[Task]]] = {
    "selection_rate_ratio": ("min", {Task.binary}),
    "selection_rate_difference": ("max", {Task.binary}),
    "equalized_odds_difference": ("max", {Task.binary, Task.multiclass}),
    "error_gap": ("max", {Task.regression}),
}

# The served outputs: a classifier answers its class index and one probability per class; a
# regressor its prediction. Names are the Triton tensor names of both renderings.
# The served tensors (DESIGN.md: the Triton I/O contract).
INPUT = "features"
LABEL = "label"
PROBABILITIES = "probabilities"
PREDICTION = "prediction"


def outputs(task: Task) -> list[str]:
    return [PREDICTION] if task is Task.regression else [LABEL, PROBABILITIES]


def direction(task: Task, metric: str) -> Direction:
    return METRICS[task][metric]
