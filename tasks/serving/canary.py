"""Canary release: after the smoke test, the candidate is served once more on every replica under
the model's canary name (`<model>.canary`), the edge sends a share of the model's unversioned
HTTP requests (production's and the probe's) to it, and it is judged against the champion on
that same traffic.

The split is the balancer's (`edge_routes`); conveyor only writes the route and watches:
- errors: Triton's own statistics on every replica (the canary's failed share of its requests
  against the champion's), judged every second, so a failing canary is withdrawn at once. Triton
  counts a request the model failed to execute; an error *response* a python-backend model
  returns (the served template's answer to a malformed row) is the caller's, counted a success;
- latency (p99) and the distribution of the answers: the probe's requests, which the edge splits
  like any caller's and whose answers name the version that gave them, judged over the bake.

A candidate's failure is never a caller's: the edge answers a request the candidate failed with
the champion (`infra/nginx/edge.conf`, `@canary`). Within the limits the release goes on to the
swap (every replica, all or nothing) and the promotion; outside them the route is closed and the
release withdraws the candidate.
"""

from __future__ import annotations

import time

import numpy as np
from prefect import get_run_logger, task
from pydantic import BaseModel

from tasks.core.errors import ConveyorError
from tasks.core.names import canary_name
from tasks.core.settings import Settings
from tasks.core.spec import ModelSpec
from tasks.core.spec_release import CanarySpec
from tasks.core.storage import open_store, read_verified
from tasks.datasets.data import DatasetRef, load_dataset, to_features
from tasks.registry import model_registry, tracking
from tasks.serving import edge_routes, replicas, triton_client
from tasks.serving.rollout import serving_for
from tasks.serving.traffic import Sample, Traffic

POLL_S = 1.0  # how often Triton's statistics are read during the bake
# The edge sees a route within a second (its file cache); past this the route was not applied
# (another edge's directory), and the canary stops before judging traffic it never got.
ROUTE_TIMEOUT_S = 15.0
ROUTE_POLL_S = 0.2
# A p99 ratio of sub-millisecond latencies says nothing: the candidate is slower only when it is
# also this much slower in absolute terms.
P99_FLOOR_MS = 2.0
MIN_SHIFT_SAMPLES = 30  # answers per version before their distributions are compared


class CanaryError(ConveyorError):
    """The canary was outside its limits, got too little traffic, or could not be routed."""

    gate = "canary"


class Side(BaseModel):
    """One version's share of the bake."""

    version: int
    requests: int  # Triton's count, every replica, every caller
    failed: int
    probe_answers: int
    p99_ms: float | None

    @property
    def error_rate(self) -> float:
        return self.failed / self.requests if self.requests else 0.0


class CanaryReport(BaseModel):
    model: str
    version: int
    share: float
    bake_s: float  # as configured
    baked_s: float  # until the verdict: shorter when a limit was crossed
    candidate: Side
    champion: Side
    prediction_shift: float | None  # Kolmogorov-Smirnov distance; None: too few answers
    probe_failures: int  # probe requests that failed at the edge: what a caller would have seen
    problems: list[str]

    def summary(self) -> str:
        c, h = self.candidate, self.champion
        shift = "n/a" if self.prediction_shift is None else f"{self.prediction_shift:.3f}"
        head = (
            f"{self.share:.0%} of {self.model} to v{c.version} for {self.baked_s:.0f} s: "
            f"{c.requests} requests reached it ({c.error_rate:.1%} failed, champion v{h.version} "
            f"{h.error_rate:.1%}), p99 {_ms(c.p99_ms)} vs {_ms(h.p99_ms)}, answer shift {shift}, "
            f"{self.probe_failures} probe failures at the edge"
        )
        return head + (f"; outside its limits: {'; '.join(self.problems)}" if self.problems else "")


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f} ms"


def ks_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sample Kolmogorov-Smirnov statistic: the largest gap between the empirical CDFs."""
    grid = np.union1d(a, b)
    cdf_a = np.searchsorted(np.sort(a), grid, side="right") / len(a)
    cdf_b = np.searchsorted(np.sort(b), grid, side="right") / len(b)
    return float(np.max(np.abs(cdf_a - cdf_b)))


def judge(
    limits: CanarySpec,
    candidate: Side,
    champion: Side,
    shift: float | None,
    final: bool,
) -> list[str]:
    """What is outside the limits. Errors are judged as soon as the candidate has answered
    `min_requests` (a failing canary goes at once); latency, answers and too little traffic at
    the end of the bake, over all of it."""
    problems = []
    if candidate.requests >= limits.min_requests:
        excess = candidate.error_rate - champion.error_rate
        if excess > limits.max_error_rate:
            problems.append(
                f"{candidate.error_rate:.1%} of its {candidate.requests} requests failed, the "
                f"champion's {champion.error_rate:.1%} (limit +{limits.max_error_rate:.1%})"
            )
    if not final:
        return problems
    if candidate.requests < limits.min_requests:
        problems.append(
            f"only {candidate.requests} requests reached it in {limits.bake_s:.0f} s, fewer than "
            f"min_requests {limits.min_requests}: no verdict. Raise `promotion.canary.bake_s` or "
            "`share`"
        )
    c99, h99 = candidate.p99_ms, champion.p99_ms
    slower = c99 is not None and h99 is not None and h99 > 0 and c99 - h99 > P99_FLOOR_MS
    if slower and c99 > h99 * limits.max_p99_ratio:
        problems.append(
            f"p99 {c99:.2f} ms against the champion's {h99:.2f} ms "
            f"({c99 / h99:.2f}x, limit {limits.max_p99_ratio:.2f}x)"
        )
    if shift is not None and shift > limits.max_prediction_shift:
        problems.append(
            f"its answers differ from the champion's on the same requests (KS distance "
            f"{shift:.3f}, limit {limits.max_prediction_shift:.3f})"
        )
    return problems


def _counts(targets: list[replicas.Replica], name: str) -> tuple[int, int]:
    succeeded = failed = 0
    for replica in targets:
        s, f = triton_client.control_client(replica.endpoint).request_counts(name)
        succeeded, failed = succeeded + s, failed + f
    return succeeded, failed


def _side(
    version: int, counts: tuple[int, int], start: tuple[int, int], answers: list[Sample]
) -> Side:
    mine = [s.latency_ms for s in answers if s.version == version]
    succeeded, failed = counts[0] - start[0], counts[1] - start[1]
    return Side(
        version=version,
        requests=succeeded + failed,
        failed=failed,
        probe_answers=len(mine),
        p99_ms=float(np.percentile(mine, 99)) if mine else None,
    )


def _shift(answers: list[Sample], candidate: int, champion: int) -> float | None:
    a = np.array([s.score for s in answers if s.version == candidate and s.score is not None])
    b = np.array([s.score for s in answers if s.version == champion and s.score is not None])
    if min(len(a), len(b)) < MIN_SHIFT_SAMPLES:
        return None
    return ks_distance(a, b)


def bake(
    settings: Settings, spec: ModelSpec, ref: model_registry.ModelRef, holdout: DatasetRef
) -> CanaryReport:
    """Route `promotion.canary.share` of the model's traffic to its candidate through the edge,
    judge it until the bake time is over or a limit is crossed, and close the route whatever
    happens. The report says what was seen; `canary_task` turns its problems into the gate."""
    limits = spec.promotion.canary
    targets = replicas.quorum(settings, f"the canary of {spec.name} v{ref.version}")
    endpoint = replicas.probe_endpoint(settings, targets)
    edge_routes.routes_dir(settings)  # no edge routes: said before anything is sent
    if not endpoint.via_edge:
        raise CanaryError(
            "a canary is split by the edge, and none is configured: set CONVEYOR_EDGE_HTTP_URL "
            "(with CONVEYOR_EDGE_ROUTES_DIR), or release with `promotion.rollout: direct`"
        )
    champion = model_registry.alias_version(settings, spec.name, model_registry.CHAMPION)
    if champion is None:
        raise CanaryError(
            f"{spec.name} has no champion to judge a canary against; its first release goes "
            "out with `promotion.rollout: direct`"
        )
    name = canary_name(spec.name)
    rows = to_features(load_dataset(holdout.uri), spec)[: spec.smoke.rows]
    files = read_verified(open_store(settings.repository), f"{spec.name}/{ref.version}")
    serving = serving_for(settings, spec, ref.version)
    try:
        for replica in targets:
            triton_client.load_candidate(
                settings, replica.endpoint, spec, ref.version, files, serving, name=name
            )
        start = {n: _counts(targets, n) for n in (name, spec.name)}
        rate = replicas.probe_rate(settings, endpoint)
        with Traffic(
            endpoint, spec.name, rows, limits.probe_clients, http_only=True, rate_per_s=rate
        ) as traffic:
            began = time.monotonic()
            edge_routes.open_route(settings, spec.name, limits.share)
            # Routed: Triton counts a request at the canary, answered or failed (the probe sees
            # only the answers; a canary that fails everything is answered by the champion).
            while sum(_counts(targets, name)) == sum(start[name]):
                if time.monotonic() - began > ROUTE_TIMEOUT_S:
                    raise CanaryError(
                        f"the edge sent no request to {name} within {ROUTE_TIMEOUT_S:.0f} s of "
                        f"the route being written to {settings.edge_routes_dir}: it is not the "
                        "running edge's routes directory"
                    )
                time.sleep(ROUTE_POLL_S)
            while True:
                time.sleep(POLL_S)
                elapsed = time.monotonic() - began
                final = elapsed >= limits.bake_s
                report = _report(spec, ref, champion, targets, start, traffic, elapsed, final)
                if final or report.problems:
                    break
    finally:
        # Callers first: the route, then the canary (a request the edge still sends it in the
        # next second finds it gone and is answered by the champion).
        edge_routes.close_route(settings, spec.name)
        withdraw_canary(spec.name, targets)
    return report


def withdraw_canary(model: str, targets: list[replicas.Replica]) -> None:
    """The canary model off every replica that answers; one that does not is `doctor`'s."""
    for replica in targets:
        if replicas.is_live(replica.endpoint):
            triton_client.unload_model(replica.endpoint, canary_name(model))


def _report(
    spec: ModelSpec,
    ref: model_registry.ModelRef,
    champion: int,
    targets: list[replicas.Replica],
    start: dict[str, tuple[int, int]],
    traffic: Traffic,
    elapsed: float,
    final: bool,
) -> CanaryReport:
    limits = spec.promotion.canary
    name = canary_name(spec.name)
    samples = traffic.samples()
    candidate = _side(ref.version, _counts(targets, name), start[name], samples)
    served = _side(champion, _counts(targets, spec.name), start[spec.name], samples)
    shift = _shift(samples, ref.version, champion) if final else None
    return CanaryReport(
        model=spec.name,
        version=ref.version,
        share=limits.share,
        bake_s=limits.bake_s,
        baked_s=elapsed,
        candidate=candidate,
        champion=served,
        prediction_shift=shift,
        probe_failures=sum(1 for s in samples if s.version is None),
        problems=judge(limits, candidate, served, shift, final),
    )


@task(name="canary")
def canary_task(
    settings: Settings, spec: ModelSpec, ref: model_registry.ModelRef, holdout: DatasetRef
) -> CanaryReport:
    report = bake(settings, spec, ref, holdout)
    metrics = {
        "canary_requests": float(report.candidate.requests),
        "canary_error_rate": report.candidate.error_rate,
        "canary_seconds": report.baked_s,
    }
    if report.prediction_shift is not None:
        metrics["canary_prediction_shift"] = report.prediction_shift
    tracking.log_to_run(settings, ref.run_id, metrics=metrics)
    if report.problems:
        get_run_logger().warning("canary withdrawn: %s", report.summary())
        raise CanaryError(f"the canary of {spec.name} v{ref.version}: {report.summary()}")
    get_run_logger().info("canary: %s", report.summary())
    return report
