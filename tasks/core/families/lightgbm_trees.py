"""LightGBM's gradient-boosted trees, converted by onnxmltools, thresholds snapped to float32."""

from __future__ import annotations

import functools
import re
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
    import lightgbm

    cls = lightgbm.LGBMRegressor if task is Task.regression else lightgbm.LGBMClassifier
    # verbose=-1: LightGBM prints its own progress lines to stdout, past Prefect's logger.
    return cls(random_state=seed, n_jobs=n_jobs, verbose=-1, **params)


def fit_distributed(task: Task, params: Params, seed: int, client: Any, x: Any, y: Any) -> Any:
    """LightGBM's Dask estimators (data-parallel training across the workers), returned as the
    plain LightGBM estimator (`to_local`)."""
    import logging

    import lightgbm

    # Its client-side notes ("Finding random open ports") through logging, not print.
    lightgbm.register_logger(logging.getLogger("lightgbm"))
    dask = lightgbm.DaskLGBMRegressor if task is Task.regression else lightgbm.DaskLGBMClassifier
    model = dask(client=client, random_state=seed, verbose=-1, **params)
    return model.fit(x, y).to_local()


def contributions(estimator: Any, encoded: np.ndarray, k: int, background: np.ndarray) -> Any:
    """LightGBM's own exact tree SHAP (`pred_contrib`), in margin units."""
    raw = estimator.booster_.predict(encoded, pred_contrib=True)
    return split_contributions(raw, len(encoded), k)


@functools.cache
def converters() -> Opsets:
    """onnxmltools' LightGBM converter, registered once per process."""
    import lightgbm
    from onnxmltools.convert.lightgbm.operator_converters.LightGbm import convert_lightgbm

    register_converters(
        lightgbm.LGBMClassifier,
        lightgbm.LGBMRegressor,
        "LightGbm",
        convert_lightgbm,
        regressor_options={"split": None},
    )
    return BOOSTER_OPSET


def _float32_below(value: float) -> float:
    """The largest float32 not above `value`: for any float32 x, x <= value iff x <= this."""
    snapped = np.float32(value)
    if float(snapped) > value:
        snapped = np.nextafter(snapped, np.float32(-np.inf))
    return float(snapped)


def snap_to_served_precision(estimator: Any) -> None:
    """Make a fitted LightGBM model decide on float32 inputs exactly as its ONNX graph does.

    LightGBM keeps split thresholds as float64; ONNX's TreeEnsemble holds them as float32, and
    rounding a threshold up past a float32 feature value flips that row's branch (a 3-class model
    answered one holdout row in 5,000 with probabilities 0.023 apart). Served features are FP32,
    and no FP32 value lies between a threshold and the largest FP32 below it, so replacing each
    threshold by that value leaves every answer to an FP32 input unchanged, here and in ONNX.
    (XGBoost already splits in float32; scikit-learn's trees convert exactly.)"""
    import lightgbm

    text = estimator.booster_.model_to_string()

    def snap(match: re.Match[str]) -> str:
        values = (repr(_float32_below(float(v))) for v in match.group(1).split())
        return "threshold=" + " ".join(values)

    snapped = re.sub(r"^threshold=(.*)$", snap, text, flags=re.MULTILINE)
    # The header's byte offsets of each tree no longer hold; without them LightGBM reads the
    # trees one after another.
    snapped = re.sub(r"^tree_sizes=.*\n", "", snapped, flags=re.MULTILINE)
    estimator._Booster = lightgbm.Booster(model_str=snapped)


FAMILY = Family(
    name="lightgbm",
    tasks=ALL_TASKS,
    build=build,
    rounds="n_estimators",
    library="lightgbm",
    explanation="LightGBM's native tree SHAP (pred_contrib)",
    contributions=contributions,
    trusted_types=(
        "collections.OrderedDict",
        "lightgbm.basic.Booster",
        "lightgbm.sklearn.LGBMClassifier",
        "lightgbm.sklearn.LGBMRegressor",
    ),
    requirements=("lightgbm",),
    onnx_converters=converters,
    served_precision=snap_to_served_precision,
    distributed=fit_distributed,
    search_space={
        "learning_rate": {"type": "float", "low": 0.03, "high": 0.3, "log": True},
        "num_leaves": {"type": "int", "low": 8, "high": 64},
        "min_child_samples": {"type": "int", "low": 10, "high": 60},
    },
    classifier_params={"n_estimators": 150},
    regressor_params={"n_estimators": 150},
)
