"""Zero-downtime swap: the promoted version becomes the one unversioned requests reach, while a
probe of real clients keeps sending requests and counts every error."""

from __future__ import annotations

import time
from datetime import UTC, datetime

from prefect import get_run_logger, task
from pydantic import BaseModel

from tasks.core import names
from tasks.core.errors import ConveyorError
from tasks.core.pushgateway import Observation
from tasks.core.settings import Settings
from tasks.core.spec import ModelSpec
from tasks.datasets.data import DatasetRef, load_dataset, to_features
from tasks.registry import model_registry, tracking
from tasks.serving import replicas, rollout, triton_client
from tasks.serving.traffic import LoadResult, Traffic

WARM_REQUESTS = 50  # connection set-up and first requests, left out of the steady window
STEADY_REQUESTS = 300
SETTLE_S = 0.5  # probe traffic kept after the new version first answers


class SwapError(ConveyorError):
    """Clients saw errors while a version was swapped in."""

    gate = "swap"


class SwapReport(BaseModel):
    model: str
    version: int
    started_at: datetime  # when the new version was asked to load
    before: list[int]
    after: list[int]
    load_seconds: float
    # None when nothing was served before (a first release has no callers to protect).
    steady: LoadResult | None
    during: LoadResult | None
    errors: list[str]

    @property
    def p99_ratio(self) -> float | None:
        if self.steady is None or self.during is None or not self.steady.p99_ms:
            return None
        return self.during.p99_ms / self.steady.p99_ms

    def summary(self) -> str:
        head = f"{self.model} {self.before} → {self.after} in {self.load_seconds:.2f} s"
        if self.steady is None or self.during is None:
            return f"{head} (nothing was served before: no probe)"
        return (
            f"{head}; probe p99 {self.steady.p99_ms:.2f} ms steady, {self.during.p99_ms:.2f} ms "
            f"during the swap ({self.p99_ratio:.2f}x) over {self.during.requests} requests, "
            f"{len(self.errors)} errors"
        )


def swap_in(
    settings: Settings, spec: ModelSpec, ref: model_registry.ModelRef, holdout: DatasetRef
) -> SwapReport:
    """Load `ref` under the model's own name beside the current champion (kept for an instant
    rollback), wait until it answers unversioned requests, then drop the candidate model.

    Triton keeps serving the loaded versions while the new one loads (control calls go over gRPC,
    see `triton_client.control_client`) and drains a version it unloads. With several replicas
    every one changes before this returns (`rollout.go_live`: all or nothing), and the probe
    sends what callers send, where they send it: through the balancer when there is one."""
    targets = replicas.quorum(settings, f"the swap of {spec.name} v{ref.version}")
    endpoint = replicas.probe_endpoint(settings, targets)
    before = triton_client.loaded_versions(targets[0].endpoint, spec.name)
    champion = model_registry.alias_version(settings, spec.name, model_registry.CHAMPION)
    if champion == ref.version:
        # A resumed release whose promotion had moved `champion` before its process died: the
        # version kept beside it for a rollback is the one `previous` already names.
        champion = model_registry.alias_version(settings, spec.name, model_registry.PREVIOUS)
    live = rollout.live_versions(settings, spec)
    target = sorted({ref.version} | ({champion} if champion in live else set()))
    started_at = datetime.now(UTC)
    if not before:
        began = time.monotonic()
        state = rollout.go_live(settings, spec, target, targets=targets)
        elapsed = time.monotonic() - began
        _drop_candidate(targets, spec, ref)
        return SwapReport(
            model=spec.name,
            version=ref.version,
            started_at=started_at,
            before=before,
            after=state.versions,
            load_seconds=elapsed,
            steady=None,
            during=None,
            errors=[],
        )
    rows = to_features(load_dataset(holdout.uri), spec)[: spec.smoke.rows]
    clients, rate = spec.smoke.swap_probe_clients, replicas.probe_rate(settings, endpoint)
    with Traffic(endpoint, spec.name, rows, clients, rate_per_s=rate) as traffic:
        traffic.wait_for(WARM_REQUESTS)
        steady_from = time.monotonic()
        traffic.wait_for(WARM_REQUESTS + STEADY_REQUESTS)
        started_at = datetime.now(UTC)
        began = time.monotonic()
        state = rollout.go_live(settings, spec, target, targets=targets)
        loaded = time.monotonic()
        answered = traffic.wait_for_version(ref.version, since=began)
        # A little traffic after the switch, so requests the old version drained are counted.
        time.sleep(SETTLE_S)
    samples = traffic.samples()
    report = SwapReport(
        model=spec.name,
        version=ref.version,
        started_at=started_at,
        before=before,
        after=state.versions,
        load_seconds=loaded - began,
        steady=traffic.window(steady_from, began),
        during=traffic.window(began, max(loaded, answered) + SETTLE_S),
        errors=[s.error for s in samples if s.version is None],
    )
    _drop_candidate(targets, spec, ref)
    if report.errors:
        raise SwapError(
            f"{len(report.errors)} of {len(samples)} probe requests failed while {spec.name} "
            f"v{ref.version} was swapped in, first: {report.errors[0]}"
        )
    return report


def _drop_candidate(
    targets: list[replicas.Replica], spec: ModelSpec, ref: model_registry.ModelRef
) -> None:
    for replica in targets:
        triton_client.unload_model(replica.endpoint, names.candidate_name(spec.name, ref.version))


@task(name="swap-in")
def swap_task(
    settings: Settings, spec: ModelSpec, ref: model_registry.ModelRef, holdout: DatasetRef
) -> SwapReport:
    report = swap_in(settings, spec, ref, holdout)
    metrics = {"swap_load_seconds": report.load_seconds, "swap_errors": float(len(report.errors))}
    if report.steady and report.during and report.p99_ratio is not None:
        metrics |= {
            "swap_steady_p99_ms": report.steady.p99_ms,
            "swap_during_p99_ms": report.during.p99_ms,
            "swap_p99_ratio": report.p99_ratio,
        }
    tracking.log_to_run(settings, ref.run_id, metrics=metrics)
    get_run_logger().info("swap: %s", report.summary())
    return report


def record_swap(obs: Observation, swap: SwapReport) -> None:
    obs.version_gauge("conveyor_swap_load_seconds", "Time to load the version.", swap.load_seconds)
    if swap.p99_ratio is not None:
        obs.version_gauge(
            "conveyor_swap_p99_ratio", "Probe p99 during / before the swap.", swap.p99_ratio
        )
