"""scikit-learn's random forests: robust with few settings, probabilities averaged over trees."""

from __future__ import annotations

from typing import Any

from tasks.core.families.family import ALL_TASKS, Family, Params, shap_tree
from tasks.core.model_task import Task


def build(task: Task, params: Params, seed: int, n_jobs: int) -> Any:
    from sklearn import ensemble

    if task is Task.regression:
        return ensemble.RandomForestRegressor(random_state=seed, n_jobs=n_jobs, **params)
    return ensemble.RandomForestClassifier(random_state=seed, n_jobs=n_jobs, **params)


FAMILY = Family(
    name="random_forest",
    tasks=ALL_TASKS,
    build=build,
    rounds="n_estimators",
    library="sklearn",
    explanation="shap TreeExplainer (path-dependent)",
    contributions=shap_tree,
    trusted_types=("sklearn.tree._tree.Tree",),
    link="probability",
    search_space={
        "n_estimators": {"type": "int", "low": 50, "high": 300},
        "max_depth": {"type": "int", "low": 4, "high": 16},
        "min_samples_leaf": {"type": "int", "low": 1, "high": 20},
    },
    # Rare classes weigh as much as common ones in every tree's bootstrap sample.
    classifier_params={"class_weight": "balanced_subsample"},
)
