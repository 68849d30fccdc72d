"""scikit-learn's histogram gradient boosting: trees for large tables and missing values."""

from __future__ import annotations

from typing import Any

from tasks.core.families.family import ALL_TASKS, Family, Params, shap_tree
from tasks.core.model_task import Task


def build(task: Task, params: Params, seed: int, n_jobs: int) -> Any:
    from sklearn import ensemble

    if task is Task.regression:
        return ensemble.HistGradientBoostingRegressor(random_state=seed, **params)
    return ensemble.HistGradientBoostingClassifier(random_state=seed, **params)


# A fixed number of rounds, no early stopping: its internal validation split would take rows the
# search already set apart, and a release must be reproducible from its parameters.
FIXED: dict[str, int | bool] = {"max_iter": 200, "early_stopping": False}

FAMILY = Family(
    name="hist_gradient_boosting",
    tasks=ALL_TASKS,
    build=build,
    rounds="max_iter",
    library="sklearn",
    explanation="shap TreeExplainer (path-dependent)",
    contributions=shap_tree,
    trusted_types=("sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",),
    search_space={
        "learning_rate": {"type": "float", "low": 0.03, "high": 0.3, "log": True},
        "max_leaf_nodes": {"type": "int", "low": 8, "high": 64},
        "min_samples_leaf": {"type": "int", "low": 10, "high": 100},
    },
    classifier_params=dict(FIXED),
    regressor_params=dict(FIXED),
)
