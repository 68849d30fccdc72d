"""Smoke test of a served version: it is up, keeps the contract, answers like the offline model,
rejects malformed requests and is fast enough."""

from __future__ import annotations

import numpy as np
from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from pydantic import BaseModel

from tasks.core import names
from tasks.core.pushgateway import Observation
from tasks.core.settings import Settings
from tasks.core.spec import ModelSpec
from tasks.datasets.data import DatasetRef, load_dataset, to_features, to_target
from tasks.modeling import onnx
from tasks.modeling.kinds import kind_of
from tasks.registry import model_registry, tracking
from tasks.serving import answers, replicas
from tasks.serving.answers import SmokeTestError
from tasks.serving.traffic import LoadResult, measure
from tasks.serving.triton_ports import Endpoint

# The load run's p99 is judged on the best of this many runs. A model that is slow is slow on
# every run; one stall of a shared host (another job's training on the same cores, a GC pause)
# lands in a single run's top percentile and would fail a good model on noise.
LOAD_TRIES = 3


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
    # Replicas past the first, whose answers were checked against offline ONNX too.
    replicas_verified: list[str] = []

    @property
    def passed(self) -> bool:
        return not self.failures


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
    with answers.answering(endpoint, model, version) as (predictors, metadata):
        batch = spec.serving.max_batch_size
        parity = answers.parity(predictors, metadata, spec, features, offline, scale)
        failures = list(parity.failures)
        diffs, mismatches = parity.diffs, parity.label_mismatches

        failures += answers.extreme_problems(predictors, spec, batch)

        malformed = answers.malformed(endpoint, spec, model, tag)
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
            metadata_ok=parity.metadata_ok,
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
    name = served_as or names.candidate_name(spec.name, ref.version)
    first, *others = replicas.quorum(settings, f"the smoke test of {name}")
    report = run_smoke(first.endpoint, spec, name, ref.version, features, offline, scale)
    for replica in others:
        problems = answers.verify_replica(
            replica.endpoint, spec, name, ref.version, features, offline, scale
        )
        report.failures += [f"{replica.name}: {p}" for p in problems]
        report.replicas_verified.append(replica.name)
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
    if report.replicas_verified:
        lines.append(
            f"| answers also checked on | {', '.join(report.replicas_verified)} (same files, "
            "same configuration: latency and load measured on the first) |"
        )
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
