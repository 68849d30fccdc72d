"""XGBoost's gradient-boosted trees (the CPU build), converted by onnxmltools."""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from tasks.core.families.family import (
    ALL_TASKS,
    BOOSTER_OPSET,
    Family,
    Opsets,
    Params,
    register_converters,
    split_contributions,
)
from tasks.core.model_task import Task


def build(task: Task, params: Params, seed: int, n_jobs: int) -> Any:
    # Imported when used: the CLI and every sklearn release skip its start-up cost.
    import xgboost

    cls = xgboost.XGBRegressor if task is Task.regression else xgboost.XGBClassifier
    return cls(random_state=seed, n_jobs=n_jobs, tree_method="hist", **params)


def fit_distributed(task: Task, params: Params, seed: int, client: Any, x: Any, y: Any) -> Any:
    """`xgboost.dask` on the cluster's workers (one booster, trained together), returned as the
    plain XGBoost estimator its saved model loads into."""
    import tempfile
    from pathlib import Path

    import xgboost
    import xgboost.dask

    regression = task is Task.regression
    dask = xgboost.dask.DaskXGBRegressor if regression else xgboost.dask.DaskXGBClassifier
    model = dask(random_state=seed, tree_method="hist", **params)
    model.client = client
    model.fit(x, y)
    local = build(task, params, seed, 1)
    # The saved model carries the scikit-learn attributes (classes, objective) beside the trees.
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.ubj"
        model.save_model(path)
        local.load_model(path)
    return local


def contributions(estimator: Any, encoded: np.ndarray, k: int, background: np.ndarray) -> Any:
    """XGBoost's own exact tree SHAP (`pred_contribs`), in margin units."""
    import xgboost

    raw = estimator.get_booster().predict(xgboost.DMatrix(encoded), pred_contribs=True)
    return split_contributions(raw, len(encoded), k)


@functools.cache
def converters() -> Opsets:
    """onnxmltools' XGBoost converter, registered once per process."""
    import xgboost
    from onnxmltools.convert.xgboost.operator_converters.XGBoost import convert_xgboost

    register_converters(xgboost.XGBClassifier, xgboost.XGBRegressor, "XGBoost", convert_xgboost)
    return BOOSTER_OPSET


FAMILY = Family(
    name="xgboost",
    tasks=ALL_TASKS,
    build=build,
    rounds="n_estimators",
    library="xgboost",
    explanation="XGBoost's native tree SHAP (pred_contribs)",
    contributions=contributions,
    trusted_types=(
        "xgboost.core.Booster",
        "xgboost.sklearn.XGBClassifier",
        "xgboost.sklearn.XGBRegressor",
    ),
    # The same package as `xgboost` without the CUDA collective library it pulls.
    requirements=("xgboost-cpu",),
    onnx_converters=converters,
    distributed=fit_distributed,
    search_space={
        "learning_rate": {"type": "float", "low": 0.03, "high": 0.3, "log": True},
        "max_depth": {"type": "int", "low": 3, "high": 8},
        "min_child_weight": {"type": "float", "low": 1.0, "high": 20.0, "log": True},
    },
    classifier_params={"n_estimators": 200},
    regressor_params={"n_estimators": 200},
)
