"""skl2onnx conversion to the served contract, and the parity proof against the sklearn model."""

from __future__ import annotations

import hashlib

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper
from prefect import get_run_logger, task
from pydantic import BaseModel
from skl2onnx import to_onnx
from skl2onnx.common.data_types import FloatTensorType
from sklearn.pipeline import Pipeline

from tasks.core.attempts import RESUMABLE
from tasks.core.errors import ConveyorError
from tasks.core.settings import Settings
from tasks.core.spec import FeatureType, ModelSpec
from tasks.datasets.data import DatasetRef, load_dataset, to_features
from tasks.registry import model_registry, tracking

INPUT = "features"
LABEL = "label"
PROBABILITIES = "probabilities"


class ParityError(ConveyorError):
    """The ONNX model does not reproduce the sklearn model."""

    gate = "onnx_parity"


class ParityReport(BaseModel):
    rows: int
    max_abs_diff: float
    label_flips: int
    tolerance: float

    @property
    def passed(self) -> bool:
        return self.max_abs_diff <= self.tolerance and self.label_flips == 0


def _label_as_column(model: onnx.ModelProto) -> onnx.ModelProto:
    """skl2onnx emits `label` as [N]; the contract (Triton with max_batch_size > 0) wants [N, 1].

    Reshaping inside the graph keeps both Triton renderings identical instead of relying on a
    `reshape` clause that only the onnxruntime backend would honour.
    """
    graph = model.graph
    raw = f"{LABEL}_raw"
    for node in graph.node:
        node.output[:] = [raw if name == LABEL else name for name in node.output]
    shape_name = f"{LABEL}_shape"
    graph.initializer.append(helper.make_tensor(shape_name, TensorProto.INT64, [2], [-1, 1]))
    graph.node.append(helper.make_node("Reshape", [raw, shape_name], [LABEL], name="label_column"))
    for output in graph.output:
        if output.name == LABEL:
            output.CopyFrom(helper.make_tensor_value_info(LABEL, TensorProto.INT64, [None, 1]))
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
    """ONNX bytes for `model`: input `features` FP32 [N, n]; outputs label [N, 1], probabilities.

    ZipMap is off: its sequence-of-maps output cannot be served by Triton. `bounds`: each
    feature's (low, high) range (`input_bounds`), enforced inside the graph by clipping.
    """
    classifier = model.steps[-1][1]
    converted = to_onnx(
        model,
        initial_types=[(INPUT, FloatTensorType([None, n_features]))],
        options={id(classifier): {"zipmap": False}},
    )
    if bounds is not None:
        converted = _clip_inputs(converted, *bounds)
    return _label_as_column(converted).SerializeToString()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def session(onnx_bytes: bytes) -> ort.InferenceSession:
    return ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])


def predict(onnx_bytes: bytes, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Offline ONNX predictions: (labels [N], probabilities [N, n_classes])."""
    label, proba = session(onnx_bytes).run([LABEL, PROBABILITIES], {INPUT: features})
    return label.reshape(-1), proba


def check_parity(
    model: Pipeline, onnx_bytes: bytes, features: np.ndarray, tolerance: float
) -> ParityReport:
    """Compare sklearn and ONNX on the same rows; raise ParityError saying how far they differ."""
    label, proba = predict(onnx_bytes, features)
    expected = model.predict_proba(features)
    report = ParityReport(
        rows=len(features),
        max_abs_diff=float(np.abs(proba - expected).max()),
        label_flips=int((label != model.predict(features)).sum()),
        tolerance=tolerance,
    )
    if not report.passed:
        raise ParityError(
            f"ONNX export does not match the sklearn model on {report.rows} holdout rows: "
            f"max |Δ probability| = {report.max_abs_diff:.3g} (allowed {tolerance:.0e}), "
            f"{report.label_flips} label flip(s). The estimator or one of its options is not "
            "converted faithfully by skl2onnx; change the estimator family or its parameters."
        )
    return report


class OnnxArtifact(BaseModel):
    """The exported model, stored with its MLflow run, and the proof that it matches sklearn."""

    uri: str
    sha256: str
    parity: ParityReport


def export_onnx(
    settings: Settings, spec: ModelSpec, ref: model_registry.ModelRef, holdout: DatasetRef
) -> OnnxArtifact:
    model = tracking.load_model(settings, ref.model_uri)
    data = convert(model, spec.n_features, input_bounds(spec))
    features = to_features(load_dataset(holdout.uri), spec)
    parity = check_parity(model, data, features, spec.smoke.tolerance)
    digest = sha256(data)
    uri = tracking.log_run_artifact(settings, ref.run_id, tracking.ONNX_ARTIFACT, data)
    model_registry.tag_version(settings, ref, {model_registry.TAG_ONNX: digest})
    return OnnxArtifact(uri=uri, sha256=digest, parity=parity)


@task(name="export-onnx", cache_policy=RESUMABLE, persist_result=True)
def export_onnx_task(
    settings: Settings, spec: ModelSpec, ref: model_registry.ModelRef, holdout: DatasetRef
) -> OnnxArtifact:
    result = export_onnx(settings, spec, ref, holdout)
    get_run_logger().info(
        "ONNX %s… matches sklearn on %d holdout rows: max |Δp| %.2e, %d label flips",
        result.sha256[:12],
        result.parity.rows,
        result.parity.max_abs_diff,
        result.parity.label_flips,
    )
    return result
