"""CatBoost's gradient-boosted oblivious trees, converted by CatBoost's own ONNX export.

Categorical features reach CatBoost one-hot encoded by the Pipeline, as they reach every family:
CatBoost's ONNX export takes numeric features only (its target statistics for categories are not
expressible as ONNX-ML operators), and the served contract sends a category as its index. So a
category is split on by its indicator columns, what CatBoost itself does for a category with
fewer values than `one_hot_max_size`."""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from tasks.core.families.family import (
    ALL_TASKS,
    Family,
    Opsets,
    Params,
    register_converters,
    split_contributions,
)
from tasks.core.model_task import Task


def build(task: Task, params: Params, seed: int, n_jobs: int) -> Any:
    import catboost

    cls = catboost.CatBoostRegressor if task is Task.regression else catboost.CatBoostClassifier
    # Silent and writing no `catboost_info/` folder into whatever directory the flow runs in.
    settings: Params = {"logging_level": "Silent", "allow_writing_files": False}
    return cls(random_seed=seed, thread_count=n_jobs, **(settings | params))


def contributions(estimator: Any, encoded: np.ndarray, k: int, background: np.ndarray) -> Any:
    """CatBoost's own exact SHAP values (`ShapValues`), in margin units (log-odds, or one raw
    value per class)."""
    import catboost

    pool = catboost.Pool(encoded)
    return split_contributions(
        estimator.get_feature_importance(pool, type="ShapValues"), len(encoded), k
    )


def _parse_classifier(scope: Any, model: Any, inputs: Any, custom_parsers: Any = None) -> Any:
    """skl2onnx does not know a CatBoostClassifier answers a label and probabilities: say so."""
    from skl2onnx._parse import _get_sklearn_operator_name
    from skl2onnx.common.data_types import Int64TensorType, guess_tensor_type

    operator = scope.declare_local_operator(_get_sklearn_operator_name(type(model)), model)
    operator.inputs = inputs
    operator.outputs.append(scope.declare_local_variable("label", Int64TensorType()))
    probabilities = guess_tensor_type(inputs[0].type)
    operator.outputs.append(scope.declare_local_variable("probabilities", probabilities))
    return operator.outputs


def _convert(scope: Any, operator: Any, container: Any) -> None:
    """CatBoost's own export of the fitted trees (one TreeEnsemble node, then a ZipMap for a
    classifier, which the served contract leaves out), placed inside the Pipeline's graph."""
    from catboost.utils import convert_to_onnx_object
    from onnx.helper import get_attribute_value

    exported = convert_to_onnx_object(operator.raw_operator)
    opsets = {d.domain: d.version for d in exported.opset_import}
    [ensemble] = [n for n in exported.graph.node if n.op_type.startswith("TreeEnsemble")]
    container.add_node(
        ensemble.op_type,
        [operator.inputs[0].full_name],
        [output.full_name for output in operator.outputs],
        op_domain=ensemble.domain,
        op_version=opsets.get(ensemble.domain),
        name=scope.get_unique_operator_name("CatBoost"),
        **{a.name: get_attribute_value(a) for a in ensemble.attribute},
    )


@functools.cache
def converters() -> Opsets:
    """CatBoost's own export as a skl2onnx converter, registered once per process."""
    import catboost

    register_converters(
        catboost.CatBoostClassifier,
        catboost.CatBoostRegressor,
        "CatBoost",
        _convert,
        classifier_parser=_parse_classifier,
    )
    # CatBoost exports ai.onnx.ml's TreeEnsemble of version 2; the Pipeline's own operators
    # take skl2onnx's opset 17, as the other boosting families'.
    return {"": 17, "ai.onnx.ml": 2}


FAMILY = Family(
    name="catboost",
    tasks=ALL_TASKS,
    build=build,
    library="catboost",
    explanation="CatBoost's native SHAP values (ShapValues)",
    contributions=contributions,
    trusted_types=("catboost.core.CatBoostClassifier", "catboost.core.CatBoostRegressor"),
    requirements=("catboost",),
    rounds="n_estimators",
    onnx_converters=converters,
    search_space={
        "learning_rate": {"type": "float", "low": 0.03, "high": 0.3, "log": True},
        "depth": {"type": "int", "low": 4, "high": 8},
        "l2_leaf_reg": {"type": "float", "low": 1.0, "high": 10.0, "log": True},
    },
    classifier_params={"n_estimators": 300},
    regressor_params={"n_estimators": 300},
)
