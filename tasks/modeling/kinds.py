"""The one place the line dispatches on the model's task. Each task (binary, multiclass,
regression) is a `ModelKind`: what the model's "scores" are (the positive class's probability,
the class probabilities, or the predicted value), how they are judged, resampled, plotted and
compared with what Triton serves. Every stage asks `kind_of(spec)` and calls the same methods;
no stage copies the line per task. (Which estimator learns the task is the family's:
`tasks.core.families`.)"""

from __future__ import annotations

from typing import Any, ClassVar, Protocol

import numpy as np

from tasks.core.model_task import LABEL, PREDICTION, PROBABILITIES, Task, direction
from tasks.core.spec import ModelSpec
from tasks.modeling import scores as sc


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
