import numpy as np
import onnx
import pytest

from tasks.core.spec import DEFAULT_SPEC, ModelSpec, load_spec
from tasks.datasets.data import to_features, to_target
from tasks.datasets.synthetic import generate_transactions
from tasks.modeling.onnx import ParityError, check_parity, convert, predict
from tasks.modeling.training import build_pipeline

FAMILIES = {
    "random_forest": {"n_estimators": 20, "max_depth": 8},
    "hist_gradient_boosting": {"max_iter": 30},
    "logistic_regression": {"C": 1.0},
}


@pytest.fixture(scope="module")
def data() -> tuple[ModelSpec, np.ndarray, np.ndarray]:
    spec = load_spec(DEFAULT_SPEC)
    frame = generate_transactions(6000, seed=11, fraud_rate=0.05)
    return spec, to_features(frame, spec), to_target(frame, spec)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_family_converts_with_parity(data, family: str) -> None:
    spec, features, target = data
    spec = spec.model_copy(
        update={
            "estimator": spec.estimator.model_copy(
                update={"family": family, "params": FAMILIES[family]}
            )
        }
    )
    model = build_pipeline(spec).fit(features, target)
    exported = convert(model, spec.n_features)
    report = check_parity(model, exported, features, tolerance=1e-5)
    assert report.label_flips == 0
    assert report.max_abs_diff <= 1e-5
    assert report.rows == len(features)


def test_exported_graph_keeps_the_served_contract(data) -> None:
    spec, features, target = data
    model = build_pipeline(spec).fit(features, target)
    graph = onnx.load_from_string(convert(model, spec.n_features)).graph
    assert [i.name for i in graph.input] == ["features"]
    outputs = {o.name: o.type.tensor_type for o in graph.output}
    assert set(outputs) == {"label", "probabilities"}
    assert outputs["label"].elem_type == onnx.TensorProto.INT64
    assert [d.dim_value for d in outputs["label"].shape.dim][1:] == [1]
    labels, probabilities = predict(convert(model, spec.n_features), features[:7])
    assert labels.shape == (7,)
    assert probabilities.shape == (7, 2)


def test_parity_failure_says_by_how_much(data) -> None:
    spec, features, target = data
    model = build_pipeline(spec).fit(features, target)
    other = build_pipeline(spec).fit(features[::-1][:2000], target[::-1][:2000])
    with pytest.raises(ParityError, match=r"max \|Δ probability\| = [0-9.e-]+ \(allowed 1e-05\)"):
        check_parity(model, convert(other, spec.n_features), features, tolerance=1e-5)
