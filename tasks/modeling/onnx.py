"""skl2onnx conversion to the served contract, and the parity proof against the sklearn model."""

from __future__ import annotations

import hashlib

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper
from pydantic import BaseModel
from skl2onnx import to_onnx
from skl2onnx.common.data_types import FloatTensorType
from sklearn.pipeline import Pipeline

from tasks.core.errors import ConveyorError
from tasks.core.families import family_of
from tasks.core.model_task import INPUT, LABEL, PREDICTION, PROBABILITIES
from tasks.core.spec import FeatureType, ModelSpec

# skl2onnx names a regressor's output `variable`; the served contract calls it `prediction`.
SKL2ONNX_REGRESSION_OUTPUT = "variable"


class ParityError(ConveyorError):
    """The ONNX model does not reproduce the sklearn model."""

    gate = "onnx_parity"


class ParityReport(BaseModel):
    """sklearn vs ONNX on the same rows. `max_abs_diff` is in the served values' units
    (probabilities, or the prediction); `scale` is what the tolerance is relative to (1 for
    probabilities, the holdout target's standard deviation for a regression).

    Each row may differ by `bound` (relative to `scale`): the spec's `tolerance` plus what
    float32 arithmetic alone can put between the graph and the float64 model (`rounding`, in
    served units; `rounding_bound`). A wrong conversion moves values by orders of magnitude
    more, on many rows; rounding never crosses the bound, however large the holdout."""

    rows: int
    max_abs_diff: float
    label_flips: int
    tolerance: float
    scale: float = 1.0
    rounding: float = 0.0
    rows_over: int = 0  # rows with a served value further than `bound` from the model's
    tie_flips: int = 0  # label flips on rows whose top two classes are within 2 x bound
    classifier: bool = True  # probabilities and labels compared; False: a prediction

    @classmethod
    def merged(cls, parts: list[ParityReport]) -> ParityReport:
        """One report for the rows of every part (each measured with the same bound)."""
        return parts[0].model_copy(
            update={
                "rows": sum(p.rows for p in parts),
                "max_abs_diff": max(p.max_abs_diff for p in parts),
                "label_flips": sum(p.label_flips for p in parts),
                "rows_over": sum(p.rows_over for p in parts),
                "tie_flips": sum(p.tie_flips for p in parts),
            }
        )

    @property
    def relative_diff(self) -> float:
        return self.max_abs_diff / self.scale

    @property
    def bound(self) -> float:
        return self.tolerance + self.rounding / self.scale

    @property
    def passed(self) -> bool:
        return self.rows_over == 0 and self.label_flips == self.tie_flips

    def summary(self) -> str:
        """One line for a table or the model card."""
        spread = " of the target's spread" if self.scale != 1 else ""
        ties = f" (at ties: {self.tie_flips})" if self.tie_flips else ""
        return (
            f"max |Δ| {self.relative_diff:.1e}{spread} on {self.rows} rows, allowed "
            f"{self.bound:.1e} (tolerance {self.tolerance:.0e} + float32 rounding "
            f"{self.rounding / self.scale:.1e}); {self.label_flips} label flips{ties}"
        )


# float32's unit roundoff: the largest relative error of one rounding.
UNIT_ROUNDOFF = 2.0**-24
# How far a score's error can move a served value through the ensemble's link: a sigmoid's
# slope is at most 1/4; one softmax output's summed slope over all scores, 2 p (1 - p), at most
# 1/2; no link (a forest's averaged probabilities, a regression), 1.
LINK_SLOPE = {"LOGISTIC": 0.25, "SOFTMAX": 0.5, "SOFTMAX_ZERO": 0.5}
TREE_ENSEMBLES = {"TreeEnsembleClassifier": "class", "TreeEnsembleRegressor": "target"}


def rounding_bound(model: onnx.ModelProto) -> float:
    """The most float32 arithmetic alone can move a served value of `model` (0 without trees).

    A tree ensemble's score is a sum, over its trees, of one leaf value each, computed in
    float32: summing T terms errs by at most T·u·Σ|term| (recursive summation), and Σ|term| is
    at most the sum of each tree's largest |leaf| (plus the base value). That bound grows with
    the number of trees and the size of their leaves, not with the rows checked: checking more
    rows finds a larger error, never one past it. Linear models and what follows the ensemble
    (a few float32 operations) are within the spec's own `tolerance`."""
    bound = 0.0
    for node in model.graph.node:
        prefix = TREE_ENSEMBLES.get(node.op_type)
        if prefix is None:
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        largest: dict[tuple[int, int], float] = {}
        for tree, output, weight in zip(
            attrs[f"{prefix}_treeids"],
            attrs[f"{prefix}_ids"],
            attrs[f"{prefix}_weights"],
            strict=True,
        ):
            largest[(output, tree)] = max(largest.get((output, tree), 0.0), abs(weight))
        base = list(attrs.get("base_values") or [])
        for output in {o for o, _ in largest}:
            leaves = [w for (o, _), w in largest.items() if o == output]
            offset = abs(base[output]) if output < len(base) else 0.0
            score = (len(leaves) + 1) * UNIT_ROUNDOFF * (sum(leaves) + offset)
            link = attrs.get("post_transform", b"NONE").decode()
            bound = max(bound, LINK_SLOPE.get(link, 1.0) * score)
    return bound


def _as_column(model: onnx.ModelProto, raw_name: str, name: str, dtype: int) -> onnx.ModelProto:
    """skl2onnx emits `label` as [N] (and a regressor's output under its own name); the contract
    (Triton with max_batch_size > 0) wants `name` as [N, 1].

    Reshaping inside the graph keeps both Triton renderings identical instead of relying on a
    `reshape` clause that only the onnxruntime backend would honour.
    """
    graph = model.graph
    raw = f"{name}_raw"
    for node in graph.node:
        node.output[:] = [raw if out == raw_name else out for out in node.output]
    shape_name = f"{name}_shape"
    graph.initializer.append(helper.make_tensor(shape_name, TensorProto.INT64, [2], [-1, 1]))
    graph.node.append(helper.make_node("Reshape", [raw, shape_name], [name], name=f"{name}_column"))
    for output in graph.output:
        if output.name == raw_name:
            output.CopyFrom(helper.make_tensor_value_info(name, dtype, [None, 1]))
    onnx.checker.check_model(model)
    return model


# A feature with no range in the spec is still bounded to finite FP32: infinity is no value.
FP32_MAX = float(np.finfo(np.float32).max)


def input_bounds(spec: ModelSpec) -> tuple[list[float], list[float]]:
    """Each feature's contract range, in tensor order: the spec's min/max, a category's indices,
    0/1 for a boolean, finite FP32 where the spec states none."""
    low, high = [], []
    for feature in spec.features:
        if feature.type is FeatureType.category:
            bounds = (0.0, float(len(feature.categories or []) - 1))
        elif feature.type is FeatureType.boolean:
            bounds = (0.0, 1.0)
        else:
            bounds = (
                -FP32_MAX if feature.min is None else feature.min,
                FP32_MAX if feature.max is None else feature.max,
            )
        low.append(bounds[0])
        high.append(bounds[1])
    return low, high


def _clip_inputs(model: onnx.ModelProto, low: list[float], high: list[float]) -> onnx.ModelProto:
    """Clip `features` to the contract's range inside the graph, before any model node.

    Why clip rather than refuse: the production rendering (`onnxruntime_onnx`) runs the graph
    and nothing else, so a refusal could only live in the python backend and the two renderings
    would answer differently; inside the graph both answer alike. The model never saw a value
    outside the range (the data contract refuses such rows at training), so a tree's answer at
    the bound is the answer it would give beyond it, and a linear model's scaling cannot
    overflow FP32 into inf - inf = NaN (every feature at 1e37 did, through a StandardScaler).
    NaN passes through untouched: it means "missing" in a nullable feature (the graph imputes
    it); the servers refuse it elsewhere before the graph runs."""
    graph = model.graph
    clipped = f"{INPUT}_clipped"
    for node in graph.node:
        node.input[:] = [clipped if name == INPUT else name for name in node.input]
    n = len(low)
    graph.initializer.extend(
        [
            helper.make_tensor(f"{INPUT}_low", TensorProto.FLOAT, [n], low),
            helper.make_tensor(f"{INPUT}_high", TensorProto.FLOAT, [n], high),
        ]
    )
    guard = [
        helper.make_node("Max", [INPUT, f"{INPUT}_low"], [f"{INPUT}_floor"], name="range_low"),
        helper.make_node(
            "Min", [f"{INPUT}_floor", f"{INPUT}_high"], [f"{INPUT}_ceil"], name="range_high"
        ),
        helper.make_node("IsNaN", [INPUT], [f"{INPUT}_missing"], name="missing"),
        helper.make_node(
            "Where", [f"{INPUT}_missing", INPUT, f"{INPUT}_ceil"], [clipped], name="range_clip"
        ),
    ]
    nodes = list(graph.node)
    del graph.node[:]
    graph.node.extend(guard + nodes)
    onnx.checker.check_model(model)
    return model


def convert(
    model: Pipeline, n_features: int, bounds: tuple[list[float], list[float]] | None = None
) -> bytes:
    """ONNX bytes for `model`: input `features` FP32 [N, n]; a classifier's outputs `label`
    INT64 [N, 1] and `probabilities` FP32 [N, classes], a regressor's `prediction` FP32 [N, 1].

    ZipMap is off: its sequence-of-maps output cannot be served by Triton. `bounds`: each
    feature's (low, high) range (`input_bounds`), enforced inside the graph by clipping.
    """
    estimator = model.steps[-1][1]
    # The family teaches skl2onnx its estimator (once) and says which opsets its graph uses.
    opset = family_of(estimator).onnx_converters()
    classifier = hasattr(estimator, "predict_proba")
    converted = to_onnx(
        model,
        initial_types=[(INPUT, FloatTensorType([None, n_features]))],
        options={id(estimator): {"zipmap": False}} if classifier else None,
        target_opset=opset,
    )
    if bounds is not None:
        converted = _clip_inputs(converted, *bounds)
    if classifier:
        converted = _as_column(converted, LABEL, LABEL, TensorProto.INT64)
    else:
        converted = _as_column(converted, SKL2ONNX_REGRESSION_OUTPUT, PREDICTION, TensorProto.FLOAT)
    return converted.SerializeToString()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def session(onnx_bytes: bytes) -> ort.InferenceSession:
    return ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])


def predict_outputs(onnx_bytes: bytes, features: np.ndarray) -> dict[str, np.ndarray]:
    """Offline ONNX predictions, every output of the graph by name (as Triton serves them)."""
    return outputs_of(session(onnx_bytes), features)


def outputs_of(runner: ort.InferenceSession, features: np.ndarray) -> dict[str, np.ndarray]:
    """Every output of an open session's graph by name, for `features`."""
    names = [output.name for output in runner.get_outputs()]
    return dict(zip(names, runner.run(names, {INPUT: features}), strict=True))


def predict(onnx_bytes: bytes, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A classifier's offline ONNX predictions: (labels [N], probabilities [N, n_classes])."""
    outputs = predict_outputs(onnx_bytes, features)
    return outputs[LABEL].reshape(-1), outputs[PROBABILITIES]


def measure_parity(
    model: Pipeline,
    onnx_bytes: bytes,
    features: np.ndarray,
    tolerance: float,
    scale: float = 1.0,
    rounding: float | None = None,
) -> ParityReport:
    """How far sklearn and ONNX are apart on the same rows: a classifier's probabilities and
    labels, or a regressor's prediction relative to `scale`. Measured only: `require_parity`
    judges it (so the parts measured piece by piece on a cluster are judged once, merged).
    `rounding`: the graph's `rounding_bound`, where the caller measures many parts of one graph
    (it walks every leaf of the ensemble: once per graph, not once per part)."""
    outputs = predict_outputs(onnx_bytes, features)
    if rounding is None:
        rounding = rounding_bound(onnx.load_from_string(onnx_bytes))
    bound = (tolerance + rounding / scale) * scale  # in served units
    flips = ties = 0
    if LABEL in outputs:
        served, expected = outputs[PROBABILITIES], model.predict_proba(features)
        # reshape: a library may answer a multiclass label as a column, [N, 1].
        flipped = outputs[LABEL].reshape(-1) != np.asarray(model.predict(features)).reshape(-1)
        top_two = np.sort(expected[flipped], axis=1)[:, -2:]
        flips = int(flipped.sum())
        # A row whose two likeliest classes are this close may flip by rounding alone.
        ties = int((top_two[:, 1] - top_two[:, 0] <= 2 * bound).sum())
    else:
        served = outputs[PREDICTION].reshape(-1)
        expected = np.asarray(model.predict(features)).reshape(-1)
    diff = np.abs(served - expected).reshape(len(features), -1).max(axis=1)
    return ParityReport(
        rows=len(features),
        max_abs_diff=float(diff.max(initial=0.0)),
        label_flips=flips,
        tolerance=tolerance,
        scale=scale,
        rounding=rounding,
        rows_over=int((diff > bound).sum()),
        tie_flips=ties,
        classifier=LABEL in outputs,
    )


def require_parity(report: ParityReport) -> ParityReport:
    """`report` if it passed; otherwise ParityError saying how far the export is off."""
    if report.passed:
        return report
    relative = f" = {report.relative_diff:.3g} of the target's spread" if report.scale != 1 else ""
    what = "probability" if report.classifier else "prediction"
    raise ParityError(
        f"ONNX export does not match the sklearn model on {report.rows} holdout rows: "
        f"{report.rows_over} row(s) differ by more than float32 arithmetic allows, max "
        f"|Δ {what}| = {report.max_abs_diff:.3g}{relative} (allowed {report.bound:.2g}: "
        f"tolerance {report.tolerance:.0e} + float32 rounding "
        f"{report.rounding / report.scale:.1e}), {report.label_flips - report.tie_flips} "
        "label flip(s) away from a tie. The estimator or one of its options is not converted "
        "faithfully; change the estimator family or its parameters."
    )


def check_parity(
    model: Pipeline,
    onnx_bytes: bytes,
    features: np.ndarray,
    tolerance: float,
    scale: float = 1.0,
) -> ParityReport:
    """Compare sklearn and ONNX on the same rows; raise ParityError saying how far they differ."""
    return require_parity(measure_parity(model, onnx_bytes, features, tolerance, scale))
