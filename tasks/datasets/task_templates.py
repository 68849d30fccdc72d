"""The parts of the spec `conveyor init` writes that depend on the model's task: the target, the
quality floors, the family for the data's size and its search space, the metric, the gates and
the comparison margin. One entry per task in `TEMPLATES`; everything else in the spec is the same
for every task (`tasks.datasets.schema_gen`)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import yaml

from tasks.core.cluster import Compute
from tasks.core.families import FAMILIES
from tasks.core.model_task import Task
from tasks.datasets.target_inference import TargetInference

# Families by the number of rows: a linear model where trees would overfit, trees beyond.
SMALL_DATA_ROWS = 5_000
LARGE_DATA_ROWS = 50_000


def choose_family(
    rows: int, has_nulls: bool, task: Task = Task.binary, compute: Compute = "local"
) -> tuple[str, str]:
    """A family of the table for the data's size (`conveyor init` offers these three kinds, and
    LightGBM on a cluster; any other family is one word in the written spec, its search space
    from the table)."""
    if compute == "dask":
        return "lightgbm", f"{rows:,} rows on a Dask cluster: LightGBM trains on its workers"
    linear = "ridge" if task is Task.regression else "logistic_regression"
    if rows < SMALL_DATA_ROWS:
        return linear, f"{rows:,} rows: a linear model, trees would overfit"
    if has_nulls or rows >= LARGE_DATA_ROWS:
        why = "nulls and " if has_nulls else ""
        return "hist_gradient_boosting", f"{why}{rows:,} rows: gradient-boosted trees"
    return "random_forest", f"{rows:,} rows: a random forest, robust with few settings"


def block(lines: list[str], indent: int = 4) -> str:
    pad = " " * indent
    return "\n".join(pad + line for line in lines) if lines else pad + "{}"


@dataclass
class TaskText:
    """The task's lines of the spec, each a ready YAML fragment (comments say why)."""

    task_line: str
    target: str
    quality: str
    metric: str
    metric_why: str
    evaluation: str
    thresholds: str
    margin: str


def _binary(t: TargetInference, rows: int) -> TaskText:
    rate = t.positive_rate
    metric = "pr_auc" if rate < 0.1 else "roc_auc"
    pr_floor = round(rate + (1 - rate) / 4, 3)
    return TaskText(
        task_line=f"task: binary                 # {t.why}",
        target=f"  classes: {json.dumps(t.classes)}          # {rate:.2%} of rows are the second",
        quality=f"  min_positive_rate: {rate / 4:.4g}  # a quarter of the rate seen ({rate:.2%})",
        metric=metric,
        metric_why="a rare positive class" if metric == "pr_auc" else "classes balanced enough",
        evaluation="\n".join(
            [
                "evaluation:",
                "  operating_point: best_f1   # or target_precision, with target_precision below",
                "  target_precision: 0.9",
            ]
        ),
        thresholds="\n".join(
            [
                "  roc_auc: 0.6",
                f"  pr_auc: {pr_floor}             # a quarter of the way from chance to 1",
            ]
        ),
        margin="0.01",
    )


def _multiclass(t: TargetInference, rows: int) -> TaskText:
    shares = [n / rows for n in t.counts]
    k = len(shares)
    balanced = min(shares) >= max(shares) / 2
    metric = "accuracy" if balanced else "f1_macro"
    majority = max(shares)
    return TaskText(
        task_line=f"task: multiclass             # {t.why}",
        target=f"  classes: {json.dumps(t.classes)}   # rows each: {t.counts}",
        quality=f"  min_class_rows: {max(10, min(t.counts) // 4)}   # a quarter of the rarest",
        metric=metric,
        metric_why="classes of similar size" if balanced else "every class counts alike",
        evaluation="",
        thresholds="\n".join(
            [
                f"  accuracy: {round(majority + (1 - majority) / 4, 3)}   # a quarter of the way "
                f"from always answering the largest class ({majority:.1%}) to 1",
                f"  f1_macro: {round(1 / k + (1 - 1 / k) / 4, 3)}   # a quarter of the way from "
                f"chance (1/{k}) to 1",
            ]
        ),
        margin="0.01",
    )


def _regression(t: TargetInference, rows: int) -> TaskText:
    std = t.std or 1.0
    return TaskText(
        task_line=f"task: regression             # {t.why}",
        target=f"  min: {t.low!r}   # the range seen, widened; the data contract refuses values "
        f"outside\n  max: {t.high!r}",
        quality="",
        metric="rmse",
        metric_why="errors in the target's units, large ones weigh most",
        evaluation="evaluation:\n  error_quantile: 0.9        # |error| at its 90th percentile",
        thresholds="\n".join(
            [
                f"  rmse: {std:.4g}          # the error of always predicting the mean: beat it",
                "  r2: 0.1                   # explains at least a tenth of the variance",
            ]
        ),
        margin=f"{std / 100:.3g}     # a hundredth of the target's spread, in its units",
    )


TEMPLATES: dict[Task, Callable[[TargetInference, int], TaskText]] = {
    Task.binary: _binary,
    Task.multiclass: _multiclass,
    Task.regression: _regression,
}


def _yaml_lines(values: dict[str, Any]) -> list[str]:
    """One `key: value` line each, values in YAML's flow style (`{type: int, low: 1, high: 9}`)."""

    def flow(value: Any) -> str:
        text = yaml.safe_dump(value, default_flow_style=True, sort_keys=False, width=200)
        return text.strip().removesuffix("...").strip()

    return [f"{key}: {flow(value)}" for key, value in values.items()]


def fixed_params(task: Task, family: str) -> str:
    return block(_yaml_lines(FAMILIES[family].fixed_params(task)))


def search_space(family: str) -> str:
    return block(_yaml_lines(FAMILIES[family].search_space))
