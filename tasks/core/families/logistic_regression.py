"""scikit-learn's logistic regression: a classifier for small tables, where trees overfit."""

from __future__ import annotations

from typing import Any

from tasks.core.families.family import CLASSIFICATION, Family, Params, linear_shap
from tasks.core.model_task import Task


def build(task: Task, params: Params, seed: int, n_jobs: int) -> Any:
    from sklearn import linear_model

    return linear_model.LogisticRegression(random_state=seed, max_iter=2000, **params)


FAMILY = Family(
    name="logistic_regression",
    tasks=CLASSIFICATION,
    build=build,
    library="sklearn",
    explanation="linear SHAP: coefficient x (value - holdout mean)",
    contributions=linear_shap,
    scaled=True,
    search_space={"C": {"type": "float", "low": 0.001, "high": 100.0, "log": True}},
    classifier_params={"class_weight": "balanced"},
)
