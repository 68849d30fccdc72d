"""scikit-learn's ridge regression: a regressor for small tables, where trees overfit."""

from __future__ import annotations

from typing import Any

from tasks.core.families.family import Family, Params, linear_shap
from tasks.core.model_task import Task


def build(task: Task, params: Params, seed: int, n_jobs: int) -> Any:
    from sklearn import linear_model

    return linear_model.Ridge(**params)


FAMILY = Family(
    name="ridge",
    tasks=frozenset({Task.regression}),
    build=build,
    library="sklearn",
    explanation="linear SHAP: coefficient x (value - holdout mean)",
    contributions=linear_shap,
    scaled=True,
    search_space={"alpha": {"type": "float", "low": 0.01, "high": 1000.0, "log": True}},
)
