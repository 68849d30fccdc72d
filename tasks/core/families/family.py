"""What an estimator family is to conveyor: everything the line needs to know about one library's
estimators, as one value. `tasks.core.families.FAMILIES` holds one per family; no stage asks
which family it holds, it asks the family.

Each field is what one stage reads: training builds the estimator (`build`, `scaled`), MLflow
stores it (`trusted_types`, `requirements`), ONNX export converts it (`onnx_converters`) and makes
it decide like its graph (`served_precision`), explanations take its contributions
(`contributions`, `link`, `explanation`), and `conveyor init` writes its search space and fixed
parameters. A family's library is imported inside these functions, never at import: a spec loads,
and a read-only command answers, without importing any family's library."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from tasks.core.model_task import Task

Params = dict[str, int | float | str | bool | None]
# (estimator, encoded rows (n, m), outputs k, background rows encoded) → values (n, k, m), base
# (n, k): each encoded column's additive contribution and the base value, in the family's link.
Contributions = Callable[[Any, np.ndarray, int, np.ndarray], tuple[np.ndarray, np.ndarray]]
# The opsets a converted graph uses ({domain: version}), or None for skl2onnx's own choice.
Opsets = dict[str, int] | None
# (task, params, seed, Dask client, encoded rows (dask array), target (dask array)) → the fitted
# estimator as the family's own single-process class (what skops stores and ONNX converts).
DistributedFit = Callable[[Task, Params, int, Any, Any, Any], Any]

ALL_TASKS = frozenset(Task)
CLASSIFICATION = frozenset({Task.binary, Task.multiclass})
# onnxmltools' tree converters emit the `ai.onnx.ml` domain's TreeEnsemble of version 3 and refuse
# a newer one; opset 17 is what skl2onnx's other operators need and onnxruntime serves.
BOOSTER_OPSET: dict[str, int] = {"": 17, "ai.onnx.ml": 3}


def skl2onnx_native() -> Opsets:
    """scikit-learn's own estimators: skl2onnx converts them as they are."""
    return None


def register_converters(
    classifier: type,
    regressor: type,
    prefix: str,
    convert: Callable[..., None],
    classifier_parser: Callable[..., Any] | None = None,
    regressor_options: dict[str, Any] | None = None,
) -> None:
    """Teach skl2onnx a library's classifier and regressor, so a Pipeline holding one converts
    like any scikit-learn one: its shape calculators, `convert`, and the classifier options the
    served contract sets (ZipMap off)."""
    from skl2onnx import update_registered_converter
    from skl2onnx.common.shape_calculator import (
        calculate_linear_classifier_output_shapes,
        calculate_linear_regressor_output_shapes,
    )

    update_registered_converter(
        classifier,
        f"{prefix}{classifier.__name__}",
        calculate_linear_classifier_output_shapes,
        convert,
        parser=classifier_parser,
        options={"nocl": [True, False], "zipmap": [True, False, "columns"]},
    )
    update_registered_converter(
        regressor,
        f"{prefix}{regressor.__name__}",
        calculate_linear_regressor_output_shapes,
        convert,
        options=regressor_options,
    )


def unchanged(estimator: Any) -> None:
    """A fitted estimator whose float32 answers already equal its graph's."""


@dataclass(frozen=True)
class Family:
    name: str
    # The tasks it can learn; a spec naming it for another task is refused with the alternatives.
    tasks: frozenset[Task]
    # The unfitted estimator for a task: (task, params, seed, n_jobs).
    build: Callable[[Task, Params, int, int], Any]
    # The top-level module its estimators come from (how a fitted Pipeline's family is known).
    library: str
    # What a reviewer reads in the model card: how contributions are computed.
    explanation: str
    contributions: Contributions
    # Types skops must be told to trust when MLflow saves the fitted model (pickle stays out).
    trusted_types: tuple[str, ...] = ()
    # Pip distributions a loaded model needs beyond scikit-learn's (pinned at the installed
    # version when MLflow records the model).
    requirements: tuple[str, ...] = ()
    # The parameter that sets how many trees it grows (None: not an ensemble). What a quick fit
    # (tests, a smoke release) turns down.
    rounds: str | None = None
    # Numeric features standardised before the estimator (linear models; trees ignore scale).
    scaled: bool = False
    # "margin": contributions add up to log-odds (or per-class margins); "probability": to the
    # class probabilities themselves (a forest averages its trees' class shares).
    link: Literal["margin", "probability"] = "margin"
    # Registers the family's converters with skl2onnx (once), and returns the opsets to use.
    onnx_converters: Callable[[], Opsets] = skl2onnx_native
    # Makes a fitted estimator decide on float32 inputs exactly as its ONNX graph does.
    served_precision: Callable[[Any], None] = unchanged
    # Fits on a Dask cluster over data no process holds whole (`compute: dask`); None: the
    # family trains in one process only, and a spec asking for `dask` is refused.
    distributed: DistributedFit | None = None
    # What `conveyor init` writes: the search space (Optuna dimensions, the spec's `search.space`)
    # and fixed parameters for classifiers and for regressors.
    search_space: dict[str, dict[str, Any]] = field(default_factory=dict)
    classifier_params: Params = field(default_factory=dict)
    regressor_params: Params = field(default_factory=dict)

    def fixed_params(self, task: Task) -> Params:
        return self.regressor_params if task is Task.regression else self.classifier_params


def shap_tree(estimator: Any, encoded: np.ndarray, k: int, background: np.ndarray) -> Any:
    """shap's TreeExplainer (path-dependent: no background data needed) for scikit-learn's
    tree ensembles."""
    import shap

    explainer = shap.TreeExplainer(estimator)
    values = np.asarray(explainer.shap_values(encoded, check_additivity=False), dtype=np.float64)
    expected = np.atleast_1d(np.asarray(explainer.expected_value, dtype=np.float64))
    # shap: (n, m) for one output, (n, m, k) for one per class; here always (n, k, m).
    values = values[:, None, :] if values.ndim == 2 else values.transpose(0, 2, 1)
    return values, np.broadcast_to(expected, (len(encoded), len(expected)))


def linear_shap(estimator: Any, encoded: np.ndarray, k: int, background: np.ndarray) -> Any:
    """coefficient x (value - background mean): what shap's LinearExplainer computes for
    independent features, exact for a linear model's margin."""
    coef = np.atleast_2d(estimator.coef_).astype(np.float64)  # (k, m)
    intercept = np.atleast_1d(estimator.intercept_).astype(np.float64)
    mean = background.mean(axis=0)
    values = (encoded - mean)[:, None, :] * coef[None, :, :]
    base = intercept + coef @ mean
    return values, np.broadcast_to(base, (len(encoded), len(base)))


def split_contributions(raw: Any, rows: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """A library's native contributions, one column per feature and the base value last, as
    (n, k, m) values and (n, k) base."""
    raw = np.asarray(raw, dtype=np.float64).reshape(rows, k, -1)
    return raw[:, :, :-1], raw[:, :, -1]
