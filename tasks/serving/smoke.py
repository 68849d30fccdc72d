"""Smoke test of a served version: it is up, keeps the contract, answers like the offline model,
rejects malformed requests and is fast enough."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import numpy as np
import tritonclient.http as httpclient
from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from pydantic import BaseModel
from tritonclient.grpc import model_config_pb2 as mc
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

from tasks.core.errors import ConveyorError
from tasks.core.model_task import LABEL
from tasks.core.pushgateway import Observation
from tasks.core.settings import Settings
from tasks.core.spec import ModelSpec
from tasks.datasets.data import DatasetRef, load_dataset, to_features, to_target
from tasks.modeling import onnx
from tasks.modeling.kinds import kind_of
from tasks.modeling.onnx import INPUT
from tasks.registry import model_registry, tracking
from tasks.serving import model_config, triton_client, triton_server
from tasks.serving.traffic import LoadResult, measure
from tasks.serving.triton_server import Endpoint

# The load run's p99 is judged on the best of this many runs. A model that is slow is slow on
# every run; one stall of a shared host (another job's training on the same cores, a GC pause)
# lands in a single run's top percentile and would fail a good model on noise.
LOAD_TRIES = 3


class SmokeTestError(ConveyorError):
    """The served model failed its smoke test."""

    gate = "smoke_test"


class SmokeReport(BaseModel):
    model: str
    version: int
    served_as: str  # the Triton model name the checks addressed (the candidate's own name)
    rows: int
    # Largest |served - offline| of the probabilities (or a regressor's prediction), in their
    # units; judged against smoke.tolerance x `scale` (1, or the holdout target's spread).
    http_max_abs_diff: float
    grpc_max_abs_diff: float
    scale: float = 1.0
    label_mismatches: int
    metadata_ok: bool
    malformed_rejected: dict[str, str]  # case → the server's error message
    latency_requests: int
    p50_ms: float
    p99_ms: float
    load: LoadResult
    load_tries: int = 1  # load runs made; `load` is the best (see LOAD_TRIES)
    p99_budget_ms: float
    failures: list[str]

    @property
    def passed(self) -> bool:
        return not self.failures


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


def _malformed(
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


def run_smoke(
    endpoint: Endpoint,
    spec: ModelSpec,
    model: str,
    version: int,
    features: np.ndarray,
    offline: dict[str, np.ndarray],
    scale: float = 1.0,
) -> SmokeReport:
    """Run every check and collect what failed; the caller decides what a failure means.
    `offline`: the ONNX file's outputs for `features`; `scale`: what the tolerance is relative
    to (1 for probabilities, the target's spread for a regression)."""
    tag = str(version)
    # Closed here, in the thread that opened it (see `traffic.measure`).
    with contextlib.closing(triton_client.http_client(endpoint)) as http:
        grpc = triton_client.grpc_client(endpoint)
        failures: list[str] = []
        # Live, not ready: strict readiness drops while Triton unloads a version the policy dropped.
        if not (http.is_server_live() and grpc.is_server_live()):
            raise SmokeTestError(f"Triton at {endpoint.http} / {endpoint.grpc} is not live")
        if not (http.is_model_ready(model, tag) and grpc.is_model_ready(model, tag)):
            raise SmokeTestError(
                f"{model} version {version} is not loaded on Triton at {endpoint.http}; "
                "`conveyor triton up` loads the champion and previous versions"
            )

        metadata_problems = _metadata_problems(http.get_model_metadata(model, tag), spec)
        failures += metadata_problems

        batch = spec.serving.max_batch_size
        predictors: dict[str, Predict] = {
            "HTTP": lambda x: triton_client.outputs_http(http, model, x, tag),
            "gRPC": lambda x: triton_client.outputs_grpc(grpc, model, x, tag),
        }
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

        failures += extreme_problems(predictors, spec, batch)

        malformed = _malformed(endpoint, spec, model, tag)
        failures += [
            f"malformed request accepted: {case}" for case, m in malformed.items() if m is None
        ]

        single = measure(endpoint, model, features, tag, 1, spec.smoke.latency_requests)
        loads = [
            measure(
                endpoint, model, features, tag, spec.smoke.concurrency, spec.smoke.load_requests
            )
        ]
        while loads[-1].p99_ms > spec.smoke.p99_budget_ms and len(loads) < LOAD_TRIES:
            loads.append(
                measure(
                    endpoint, model, features, tag, spec.smoke.concurrency, spec.smoke.load_requests
                )
            )
        load = min(loads, key=lambda run: run.p99_ms)
        for run in (single, *loads):
            if run.errors:
                failures.append(
                    f"{run.errors} of {run.requests} requests failed with "
                    f"{run.concurrency} client(s)"
                )
        if load.p99_ms > spec.smoke.p99_budget_ms:
            failures.append(
                f"p99 latency {load.p99_ms:.2f} ms at concurrency {load.concurrency} exceeds the "
                f"budget {spec.smoke.p99_budget_ms} ms (best of {len(loads)} runs)"
            )

        return SmokeReport(
            model=spec.name,
            version=version,
            served_as=model,
            rows=len(features),
            http_max_abs_diff=diffs["HTTP"],
            grpc_max_abs_diff=diffs["gRPC"],
            scale=scale,
            label_mismatches=mismatches,
            metadata_ok=not metadata_problems,
            malformed_rejected={case: m for case, m in malformed.items() if m is not None},
            latency_requests=single.requests,
            p50_ms=single.p50_ms,
            p99_ms=single.p99_ms,
            load=load,
            load_tries=len(loads),
            p99_budget_ms=spec.smoke.p99_budget_ms,
            failures=failures,
        )


def require_passed(report: SmokeReport) -> None:
    if not report.passed:
        raise SmokeTestError(
            f"smoke test of {report.model} version {report.version} failed: "
            + "; ".join(report.failures)
        )


def smoke_test(
    settings: Settings,
    spec: ModelSpec,
    ref: model_registry.ModelRef,
    holdout: DatasetRef,
    served_as: str | None = None,
) -> SmokeReport:
    """Smoke-test `ref` against the offline predictions of its own ONNX file: as the candidate
    (its own Triton name, during a release) or, with `served_as`, under that name (a live
    version, `conveyor smoke`)."""
    onnx_bytes = tracking.read_artifact(settings, f"runs:/{ref.run_id}/{tracking.ONNX_ARTIFACT}")
    frame = load_dataset(holdout.uri)
    features = to_features(frame, spec)[: spec.smoke.rows]
    offline = onnx.predict_outputs(onnx_bytes, features)
    scale = kind_of(spec).parity_scale(to_target(frame, spec))
    endpoint = triton_server.endpoint(settings)
    name = served_as or model_config.candidate_name(spec.name, ref.version)
    report = run_smoke(endpoint, spec, name, ref.version, features, offline, scale)
    tracking.log_to_run(
        settings,
        ref.run_id,
        metrics={
            "smoke_p50_ms": report.p50_ms,
            "smoke_p99_ms": report.p99_ms,
            "smoke_max_abs_diff": max(report.http_max_abs_diff, report.grpc_max_abs_diff),
            "smoke_load_rps": report.load.throughput_rps,
            "smoke_load_p50_ms": report.load.p50_ms,
            "smoke_load_p99_ms": report.load.p99_ms,
            "smoke_load_errors": float(report.load.errors),
            "smoke_passed": float(report.passed),
        },
    )
    return report


def report_markdown(report: SmokeReport) -> str:
    verdict = "passed" if report.passed else "FAILED"
    lines = [
        f"# Smoke test of {report.model} version {report.version}: {verdict}",
        "",
        "| check | result |",
        "|---|---|",
        f"| rows compared (HTTP and gRPC) | {report.rows} |",
        f"| max abs diff HTTP / gRPC | {report.http_max_abs_diff:.2e} / "
        f"{report.grpc_max_abs_diff:.2e} |",
        f"| label mismatches | {report.label_mismatches} |",
        f"| metadata matches contract | {report.metadata_ok} |",
        f"| malformed requests rejected | {', '.join(report.malformed_rejected) or 'none'} |",
        f"| latency p50 / p99 (batch 1, HTTP, one client) | {report.p50_ms:.2f} / "
        f"{report.p99_ms:.2f} ms |",
        f"| under load: {report.load.concurrency} clients, {report.load.requests} requests | "
        f"{report.load.throughput_rps:.0f} req/s, p50 {report.load.p50_ms:.2f} ms, p99 "
        f"{report.load.p99_ms:.2f} ms (budget {report.p99_budget_ms} ms), "
        f"{report.load.errors} errors; best of {report.load_tries} run(s) |",
    ]
    if report.failures:
        lines += ["", "## Failures", *[f"- {f}" for f in report.failures]]
    return "\n".join(lines)


@task(name="smoke-test")
def smoke_test_task(
    settings: Settings,
    spec: ModelSpec,
    ref: model_registry.ModelRef,
    holdout: DatasetRef,
    served_as: str | None = None,
) -> SmokeReport:
    report = smoke_test(settings, spec, ref, holdout, served_as)
    create_markdown_artifact(
        key=f"smoke-{spec.name}",
        markdown=report_markdown(report),
        description=f"Smoke test of {spec.name} v{ref.version} on Triton: served answers against "
        "offline ones over HTTP and gRPC, latency, load",
    )
    get_run_logger().info(
        "under load (%d clients): %.0f req/s, p50 %.2f ms, p99 %.2f ms, %d errors",
        report.load.concurrency,
        report.load.throughput_rps,
        report.load.p50_ms,
        report.load.p99_ms,
        report.load.errors,
    )
    get_run_logger().info(
        "smoke test of %s v%d: %s; |Δ| ≤ %.1e on %d rows, p50 %.2f ms, p99 %.2f ms",
        spec.name,
        ref.version,
        "passed" if report.passed else "FAILED: " + "; ".join(report.failures),
        max(report.http_max_abs_diff, report.grpc_max_abs_diff),
        report.rows,
        report.p50_ms,
        report.p99_ms,
    )
    return report


def record_smoke(obs: Observation, smoke: SmokeReport) -> None:
    for mode, p50, p99 in (
        ("single", smoke.p50_ms, smoke.p99_ms),
        ("load", smoke.load.p50_ms, smoke.load.p99_ms),
    ):
        obs.version_gauge("conveyor_smoke_latency_p50_seconds", "Smoke p50.", p50 / 1e3, mode=mode)
        obs.version_gauge("conveyor_smoke_latency_p99_seconds", "Smoke p99.", p99 / 1e3, mode=mode)
    obs.version_gauge(
        "conveyor_smoke_throughput_requests_per_second",
        "Smoke-test throughput under load.",
        smoke.load.throughput_rps,
    )
