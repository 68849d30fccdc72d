"""The one place the line dispatches on the model's task. Each task (binary, multiclass,
regression) is a `ModelKind`: which estimator a family builds for it, what the model's "scores"
are (the positive class's probability, the class probabilities, or the predicted value), how they
are judged, resampled, plotted and compared with what Triton serves. Every stage asks
`kind_of(spec)` and calls the same methods; no stage copies the line per task."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar, Protocol

import numpy as np

from tasks.core.model_task import LABEL, PREDICTION, PROBABILITIES, Task, direction
from tasks.core.spec import ModelSpec
from tasks.modeling import scores as sc

Params = dict[str, int | float | str | bool | None]
Factory = Callable[[Params, int, int], Any]


def _sklearn(kind: str, classifier: bool) -> Factory:
    def make(params: Params, seed: int, n_jobs: int) -> Any:
        from sklearn import ensemble, linear_model

        if kind == "random_forest":
            cls = ensemble.RandomForestClassifier if classifier else ensemble.RandomForestRegressor
            return cls(random_state=seed, n_jobs=n_jobs, **params)
        if kind == "hist_gradient_boosting":
            cls = (
                ensemble.HistGradientBoostingClassifier
                if classifier
                else ensemble.HistGradientBoostingRegressor
            )
            return cls(random_state=seed, **params)
        if kind == "logistic_regression":
            return linear_model.LogisticRegression(random_state=seed, max_iter=2000, **params)
        return linear_model.Ridge(**params)

    return make


def _xgboost(classifier: bool) -> Factory:
    def make(params: Params, seed: int, n_jobs: int) -> Any:
        # Imported when used: the CLI and every binary sklearn release skip its start-up cost.
        import xgboost

        cls = xgboost.XGBClassifier if classifier else xgboost.XGBRegressor
        return cls(random_state=seed, n_jobs=n_jobs, tree_method="hist", **params)

    return make


def _lightgbm(classifier: bool) -> Factory:
    def make(params: Params, seed: int, n_jobs: int) -> Any:
        import lightgbm

        cls = lightgbm.LGBMClassifier if classifier else lightgbm.LGBMRegressor
        # verbose=-1: LightGBM prints its own progress lines to stdout, past Prefect's logger.
        return cls(random_state=seed, n_jobs=n_jobs, verbose=-1, **params)

    return make


def _families(classifier: bool) -> dict[str, Factory]:
    sklearn_families = ["random_forest", "hist_gradient_boosting"] + (
        ["logistic_regression"] if classifier else ["ridge"]
    )
    return {name: _sklearn(name, classifier) for name in sklearn_families} | {
        "xgboost": _xgboost(classifier),
        "lightgbm": _lightgbm(classifier),
    }


# The types skops must be told to trust when MLflow saves each family (pickle stays out).
SKOPS_TRUSTED: dict[str, list[str]] = {
    "random_forest": ["sklearn.tree._tree.Tree"],
    "hist_gradient_boosting": ["sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor"],
    "logistic_regression": [],
    "ridge": [],
    "xgboost": [
        "xgboost.core.Booster",
        "xgboost.sklearn.XGBClassifier",
        "xgboost.sklearn.XGBRegressor",
    ],
    "lightgbm": [
        "collections.OrderedDict",
        "lightgbm.basic.Booster",
        "lightgbm.sklearn.LGBMClassifier",
        "lightgbm.sklearn.LGBMRegressor",
    ],
}


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
    if type(estimator).__module__.split(".")[0] != "lightgbm":
        return
    import re

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


class ModelKind(Protocol):
    task: Task
    # Binary models choose an operating threshold on out-of-fold scores before they are judged.
    thresholded: bool
    # What the served answer carries: the ONNX graph's outputs and Triton's tensors.
    outputs: list[str]
    # The column the drift check compares the model's answers in (beside the features), and
    # whether it holds classes (compared as a distribution over categories) or numbers.
    drift_column: str
    drift_categorical: bool

    def estimator(self, family: str, params: Params, seed: int, n_jobs: int) -> Any: ...
    def scores(self, model: Any, features: np.ndarray) -> np.ndarray: ...
    def served_scores(self, outputs: dict[str, np.ndarray]) -> np.ndarray: ...
    def evaluate(
        self, spec: ModelSpec, target: np.ndarray, scores: np.ndarray, threshold: float | None
    ) -> Any: ...
    def point(self, spec: ModelSpec, metric: str, target: np.ndarray, s: np.ndarray) -> float: ...
    def weighted(
        self, spec: ModelSpec, metric: str, target: np.ndarray, s: np.ndarray, w: np.ndarray
    ) -> np.ndarray: ...
    def strata(self, target: np.ndarray) -> list[np.ndarray]: ...
    def figures(
        self, spec: ModelSpec, target: np.ndarray, s: np.ndarray, threshold: float | None
    ) -> dict[str, Any]: ...
    def parity_scale(self, target: np.ndarray) -> float: ...
    def drift_values(self, outputs: dict[str, np.ndarray]) -> np.ndarray: ...


def _plots() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # no display on workers
    from sklearn import calibration, metrics

    return metrics, calibration


class _Classifier:
    thresholded: ClassVar[bool] = False
    outputs: ClassVar[list[str]] = [LABEL, PROBABILITIES]
    _factories: ClassVar[dict[str, Factory]] = _families(classifier=True)

    def estimator(self, family: str, params: Params, seed: int, n_jobs: int) -> Any:
        return self._factories[family](params, seed, n_jobs)

    def strata(self, target: np.ndarray) -> list[np.ndarray]:
        # Resampled within each class: a resample of a rare class's rows keeps its base rate.
        return [np.flatnonzero(target == c) for c in np.unique(target)]

    def parity_scale(self, target: np.ndarray) -> float:
        return 1.0  # probabilities: the tolerance is absolute

    drift_column: ClassVar[str] = "predicted_class"
    drift_categorical: ClassVar[bool] = True

    def drift_values(self, outputs: dict[str, np.ndarray]) -> np.ndarray:
        return outputs[LABEL].reshape(-1)  # the predicted class distribution


class Binary(_Classifier):
    task = Task.binary
    thresholded = True
    drift_column = "score"
    drift_categorical = False

    def scores(self, model: Any, features: np.ndarray) -> np.ndarray:
        return model.predict_proba(features)[:, 1]

    def served_scores(self, outputs: dict[str, np.ndarray]) -> np.ndarray:
        return outputs[PROBABILITIES][:, 1]

    def evaluate(
        self, spec: ModelSpec, target: np.ndarray, scores: np.ndarray, threshold: float | None
    ) -> sc.ModelMetrics:
        return sc.binary_metrics(target, scores, 0.5 if threshold is None else threshold)

    def point(self, spec: ModelSpec, metric: str, target: np.ndarray, s: np.ndarray) -> float:
        return sc.binary_point(metric, target, s)

    def weighted(
        self, spec: ModelSpec, metric: str, target: np.ndarray, s: np.ndarray, w: np.ndarray
    ) -> np.ndarray:
        return sc.weighted_metric(metric, target, s, w)

    def figures(
        self, spec: ModelSpec, target: np.ndarray, s: np.ndarray, threshold: float | None
    ) -> dict[str, Any]:
        """ROC, precision-recall, confusion matrix at the threshold, and calibration plots."""
        metrics, calibration = _plots()
        cut = 0.5 if threshold is None else threshold
        plots = {
            "roc.png": metrics.RocCurveDisplay.from_predictions(target, s),
            "precision_recall.png": metrics.PrecisionRecallDisplay.from_predictions(target, s),
            "confusion_matrix.png": metrics.ConfusionMatrixDisplay.from_predictions(
                target, (s >= cut).astype(int), display_labels=spec.class_names
            ),
            "calibration.png": calibration.CalibrationDisplay.from_predictions(
                target, s, n_bins=10
            ),
        }
        return {name: display.figure_ for name, display in plots.items()}

    def drift_values(self, outputs: dict[str, np.ndarray]) -> np.ndarray:
        # The score, not the label: a shift of scores below the threshold is caught too.
        return outputs[PROBABILITIES][:, 1].astype(np.float64)


class Multiclass(_Classifier):
    task = Task.multiclass

    def scores(self, model: Any, features: np.ndarray) -> np.ndarray:
        return model.predict_proba(features)

    def served_scores(self, outputs: dict[str, np.ndarray]) -> np.ndarray:
        return outputs[PROBABILITIES]

    def evaluate(
        self, spec: ModelSpec, target: np.ndarray, scores: np.ndarray, threshold: float | None
    ) -> sc.MulticlassMetrics:
        return sc.multiclass_metrics(target, scores, spec.class_names)

    def point(self, spec: ModelSpec, metric: str, target: np.ndarray, s: np.ndarray) -> float:
        return sc.multiclass_point(metric, target, s)

    def weighted(
        self, spec: ModelSpec, metric: str, target: np.ndarray, s: np.ndarray, w: np.ndarray
    ) -> np.ndarray:
        return sc.multiclass_weighted(metric, target, s, w)

    def figures(
        self, spec: ModelSpec, target: np.ndarray, s: np.ndarray, threshold: float | None
    ) -> dict[str, Any]:
        """The confusion matrix by class name, in counts and as each true class's shares."""
        metrics, _ = _plots()
        labels = list(range(spec.n_classes))
        plots = {}
        for filename, normalize in (("confusion_matrix.png", None), ("recall_matrix.png", "true")):
            display = metrics.ConfusionMatrixDisplay.from_predictions(
                target,
                s.argmax(axis=1),
                labels=labels,
                display_labels=spec.class_names,
                normalize=normalize,
                xticks_rotation="vertical",
                values_format=".2f" if normalize else "d",
            )
            plots[filename] = display.figure_
        return plots


class Regression:
    task = Task.regression
    thresholded = False
    drift_column = "prediction"
    drift_categorical = False
    outputs: ClassVar[list[str]] = [PREDICTION]
    _factories: ClassVar[dict[str, Factory]] = _families(classifier=False)

    def estimator(self, family: str, params: Params, seed: int, n_jobs: int) -> Any:
        return self._factories[family](params, seed, n_jobs)

    def scores(self, model: Any, features: np.ndarray) -> np.ndarray:
        return np.asarray(model.predict(features), dtype=np.float64).reshape(-1)

    def served_scores(self, outputs: dict[str, np.ndarray]) -> np.ndarray:
        return outputs[PREDICTION].reshape(-1).astype(np.float64)

    def evaluate(
        self, spec: ModelSpec, target: np.ndarray, scores: np.ndarray, threshold: float | None
    ) -> sc.RegressionMetrics:
        return sc.regression_metrics(target, scores, spec.evaluation.error_quantile)

    def point(self, spec: ModelSpec, metric: str, target: np.ndarray, s: np.ndarray) -> float:
        return sc.regression_point(metric, target, s, spec.evaluation.error_quantile)

    def weighted(
        self, spec: ModelSpec, metric: str, target: np.ndarray, s: np.ndarray, w: np.ndarray
    ) -> np.ndarray:
        return sc.regression_weighted(metric, target, s, w, spec.evaluation.error_quantile)

    def strata(self, target: np.ndarray) -> list[np.ndarray]:
        return [np.arange(len(target))]

    def figures(
        self, spec: ModelSpec, target: np.ndarray, s: np.ndarray, threshold: float | None
    ) -> dict[str, Any]:
        """Predicted against actual, and residuals against predicted (1,000 points drawn)."""
        metrics, _ = _plots()
        plots = {
            f"{kind}.png": metrics.PredictionErrorDisplay.from_predictions(
                target, s, kind=kind, subsample=1000, random_state=spec.data.seed
            )
            for kind in ("actual_vs_predicted", "residual_vs_predicted")
        }
        return {name: display.figure_ for name, display in plots.items()}

    def parity_scale(self, target: np.ndarray) -> float:
        # Float32 trees disagree with float64 ones near split points by a share of the target's
        # scale, not by an absolute amount: a claim in pounds and a rate in [0, 1] differ by 1e5.
        return float(np.std(target)) or 1.0

    def drift_values(self, outputs: dict[str, np.ndarray]) -> np.ndarray:
        return outputs[PREDICTION].reshape(-1).astype(np.float64)


KINDS: dict[Task, ModelKind] = {
    Task.binary: Binary(),
    Task.multiclass: Multiclass(),
    Task.regression: Regression(),
}


def kind_of(spec: ModelSpec) -> ModelKind:
    return KINDS[spec.task]


def improvement(spec: ModelSpec, metric: str, difference: float) -> float:
    """`difference` (challenger - champion) signed so that positive is better."""
    return difference if direction(spec.task, metric) == "higher" else -difference
