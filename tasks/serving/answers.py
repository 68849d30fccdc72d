"""What a served version answers, checked against the offline ONNX file: over HTTP and gRPC, the
metadata contract, finite answers for any finite input, malformed requests refused. The smoke test
runs them on the first replica and `verify_replica` on each further one."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from pydantic import BaseModel
from tritonclient.grpc import model_config_pb2 as mc
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

from tasks.core.errors import ConveyorError
from tasks.core.model_task import INPUT, LABEL
from tasks.core.spec import ModelSpec
from tasks.modeling import onnx
from tasks.serving import model_config, triton_client
from tasks.serving.triton_ports import Endpoint


class SmokeTestError(ConveyorError):
    """The served model failed its smoke test."""

    gate = "smoke_test"


def _metadata_problems(metadata: dict[str, object], spec: ModelSpec) -> list[str]:
    expected_inputs = [{"name": INPUT, "datatype": "FP32", "shape": [-1, spec.n_features]}]
    expected_outputs = sorted(
        (
            {
                "name": o.name,
                "datatype": mc.DataType.Name(o.data_type).removeprefix("TYPE_"),
                "shape": [-1, *o.dims],
            }
            for o in model_config.served_outputs(spec)
        ),
        key=lambda e: str(e["name"]),
    )

    def shape(items: object) -> list[dict[str, object]]:
        entries = items if isinstance(items, list) else []
        return sorted(
            ({k: e.get(k) for k in ("name", "datatype", "shape")} for e in entries),
            key=lambda e: str(e["name"]),
        )

    problems = []
    if shape(metadata.get("inputs")) != expected_inputs:
        problems.append(f"inputs {metadata.get('inputs')} ≠ contract {expected_inputs}")
    if shape(metadata.get("outputs")) != expected_outputs:
        problems.append(f"outputs {metadata.get('outputs')} ≠ contract {expected_outputs}")
    return problems


Predict = Callable[[np.ndarray], dict[str, np.ndarray]]


def _served_predictions(
    predict: Predict, features: np.ndarray, batch: int
) -> dict[str, np.ndarray]:
    parts = [predict(features[i : i + batch]) for i in range(0, len(features), batch)]
    return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}


def _values(outputs: dict[str, np.ndarray]) -> np.ndarray:
    """The served numbers a caller acts on: every output but the class index, as one array."""
    return np.hstack(
        [v.reshape(len(v), -1).astype(np.float64) for k, v in outputs.items() if k != LABEL]
    )


def malformed(
    endpoint: Endpoint, spec: ModelSpec, model: str, version: str
) -> dict[str, str | None]:
    """Each malformed request mapped to the server's refusal, or None if it was (wrongly) served."""
    cases = {
        "wrong shape": np.zeros((1, spec.n_features + 1), dtype=np.float32),
        "wrong dtype": np.zeros((1, spec.n_features), dtype=np.float64),
        "NaN feature": np.full((1, spec.n_features), np.nan, dtype=np.float32),
        "oversized batch": np.zeros((spec.serving.max_batch_size + 1, spec.n_features), np.float32),
    }
    outcome: dict[str, str | None] = {}
    # Closed here, in the thread that opened it (see `traffic.measure`).
    with contextlib.closing(triton_client.http_client(endpoint)) as client:
        for case, array in cases.items():
            inp = httpclient.InferInput(INPUT, list(array.shape), np_to_triton_dtype(array.dtype))
            inp.set_data_from_numpy(array, binary_data=True)
            try:
                client.infer(model, [inp], model_version=version)
                outcome[case] = None
            except InferenceServerException as exc:
                outcome[case] = exc.message()
    return outcome


# Finite FP32 values far outside any feature's range: every feature at ±1e37 and at ±3e38 (near
# FP32's largest) made a linear model answer NaN before inputs were clipped to the contract.
EXTREMES = (1e37, -1e37, 3e38, -3e38)


def extreme_rows(spec: ModelSpec) -> np.ndarray:
    """Rows a hostile or broken client may send: each extreme for every feature at once, and
    each feature's own contract bounds (`onnx.input_bounds`)."""
    low, high = onnx.input_bounds(spec)
    rows = [np.full(spec.n_features, value) for value in EXTREMES] + [low, high]
    return np.asarray(rows, dtype=np.float32)


def extreme_problems(predictors: dict[str, Predict], spec: ModelSpec, batch: int) -> list[str]:
    """A served answer must be numbers for any finite input (or a refusal, never a NaN in 200)."""
    rows = extreme_rows(spec)
    problems = []
    for protocol, predict in predictors.items():
        try:
            values = _values(_served_predictions(predict, rows, batch))
        except InferenceServerException as exc:
            problems.append(
                f"{protocol}: finite rows outside the spec's ranges were refused "
                f"({exc.message()[:200]}); the model must answer them (its ONNX graph clips "
                "inputs to the contract's range: re-export it with this conveyor)"
            )
            continue
        if not np.isfinite(values).all():
            problems.append(
                f"{protocol}: answered finite rows outside the spec's ranges with non-finite "
                "values; callers would act on NaN"
            )
    return problems


class Parity(BaseModel):
    """Served answers against offline ONNX, over HTTP and gRPC, and the metadata contract."""

    diffs: dict[str, float]
    label_mismatches: int
    metadata_ok: bool
    failures: list[str]


def reachable(
    http: httpclient.InferenceServerClient,
    grpc: grpcclient.InferenceServerClient,
    endpoint: Endpoint,
    model: str,
    version: int,
) -> None:
    tag = str(version)
    # Live, not ready: strict readiness drops while Triton unloads a version the policy dropped.
    if not (http.is_server_live() and grpc.is_server_live()):
        raise SmokeTestError(f"Triton at {endpoint.http} / {endpoint.grpc} is not live")
    if not (http.is_model_ready(model, tag) and grpc.is_model_ready(model, tag)):
        raise SmokeTestError(
            f"{model} version {version} is not loaded on Triton at {endpoint.http}; "
            "`conveyor triton up` loads the champion and previous versions"
        )


def parity(
    predictors: dict[str, Predict],
    metadata: dict[str, object],
    spec: ModelSpec,
    features: np.ndarray,
    offline: dict[str, np.ndarray],
    scale: float,
) -> Parity:
    failures = _metadata_problems(metadata, spec)
    metadata_ok = not failures
    batch = spec.serving.max_batch_size
    served = {p: _served_predictions(f, features, batch) for p, f in predictors.items()}
    diffs, mismatches = {}, 0
    for protocol, answer in served.items():
        got, expected = _values(answer), _values(offline)
        if got.shape != expected.shape:
            diffs[protocol] = 0.0  # nothing comparable: the failure below says why
            failures.append(
                f"{protocol} answers have shape {got.shape}, offline ONNX {expected.shape}"
            )
            continue
        diffs[protocol] = float(np.abs(got - expected).max())
        if LABEL in offline:
            mismatches += int((answer[LABEL].reshape(-1) != offline[LABEL].reshape(-1)).sum())
        if diffs[protocol] > spec.smoke.tolerance * scale:
            failures.append(
                f"{protocol} answers differ from offline ONNX by {diffs[protocol]:.3g} "
                f"(tolerance {spec.smoke.tolerance:.0e}"
                + (f" x target spread {scale:.4g})" if scale != 1 else ")")
            )
    if mismatches:
        failures.append(f"{mismatches} served label(s) differ from offline ONNX")
    return Parity(
        diffs=diffs, label_mismatches=mismatches, metadata_ok=metadata_ok, failures=failures
    )


def predictors(
    http: httpclient.InferenceServerClient,
    grpc: grpcclient.InferenceServerClient,
    model: str,
    tag: str,
) -> dict[str, Predict]:
    return {
        "HTTP": lambda x: triton_client.outputs_http(http, model, x, tag),
        "gRPC": lambda x: triton_client.outputs_grpc(grpc, model, x, tag),
    }


@contextlib.contextmanager
def answering(
    endpoint: Endpoint, model: str, version: int
) -> Iterator[tuple[dict[str, Predict], dict[str, object]]]:
    """`model` `version` reachable over HTTP and gRPC: its predictors on both and its metadata.
    The HTTP client is closed in the thread that opened it (see `traffic.measure`)."""
    with contextlib.closing(triton_client.http_client(endpoint)) as http:
        grpc = triton_client.grpc_client(endpoint)
        reachable(http, grpc, endpoint, model, version)
        tag = str(version)
        yield predictors(http, grpc, model, tag), http.get_model_metadata(model, tag)


def verify_replica(
    endpoint: Endpoint,
    spec: ModelSpec,
    model: str,
    version: int,
    features: np.ndarray,
    offline: dict[str, np.ndarray],
    scale: float = 1.0,
) -> list[str]:
    """A further replica of a smoke-tested one: the same answers as offline ONNX over HTTP and
    gRPC and the same metadata. Latency and load were measured on the first: the replicas run the
    same files (sha256-verified) with the same configuration on the same kind of host."""
    with answering(endpoint, model, version) as (predict, metadata):
        return parity(predict, metadata, spec, features, offline, scale).failures
