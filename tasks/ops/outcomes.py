"""Is the champion still right? The outcome check scores the newest labelled batch through the
champion's ONNX file (what Triton serves) and compares the task's metric with the figure the
champion was released with; before labels arrive, a binary model's performance on the newest
unlabelled batch is estimated from its calibrated probabilities (`tasks.modeling.estimation`).

A drop is *degradation* only when the seeded bootstrap interval lies wholly beyond the released
figure minus `outcomes.tolerance`; a batch under `outcomes.min_rows` is *too small*, never
healthy. Degradation emits `conveyor.performance.degraded`, which the retrain deployment answers
as it answers drift (same cooldown, one at a time)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Literal

import numpy as np
from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from pydantic import BaseModel

from tasks.core import events
from tasks.core.model_task import Task, direction
from tasks.core.pushgateway import Observation
from tasks.core.settings import Settings
from tasks.core.spec import ModelSpec
from tasks.datasets.data import load_dataset, to_features, to_target
from tasks.datasets.labels import load_labelled
from tasks.modeling import estimation, onnx
from tasks.modeling.fairness import (
    Interval,
    SegmentFigures,
    interval,
    metric_samples,
    segment_figures,
    segment_table,
)
from tasks.modeling.kinds import kind_of
from tasks.ops import history
from tasks.ops.drift import current_sample, sample_rows
from tasks.registry import mlflow_store, model_registry, tracking

# "not configured": the spec has no `outcomes:` source or labels (only an estimate, if binary).
Verdict = Literal["degraded", "healthy", "too small", "not configured"]
REPORT_FILE = "outcomes.json"


class Estimate(BaseModel):
    metric: str
    value: float
    source: str
    rows: int
    calibration_rows: int


class OutcomeReport(BaseModel):
    model: str
    champion: int
    metric: str
    higher_is_better: bool
    released: float
    tolerance: float
    source: str
    rows: int
    realised: Interval | None
    verdict: Verdict
    segments: list[SegmentFigures] = []
    estimated: Estimate | None = None
    label_lag_days: int | None = None
    run_id: str = ""
    checked_at: datetime

    @property
    def degraded(self) -> bool:
        return self.verdict == "degraded"

    def line(self) -> str:
        if self.verdict == "not configured":
            estimate = (
                f"; estimated {self.estimated.metric} {self.estimated.value:.4f} before labels"
                if self.estimated
                else ""
            )
            return (
                f"{self.model} v{self.champion}: no outcome check configured (the spec has no "
                f"`outcomes:` source, or labels + key){estimate}"
            )
        realised = (
            f"realised {self.realised.text()}" if self.realised else f"{self.rows} labelled rows"
        )
        estimate = (
            f"; estimated {self.estimated.metric} {self.estimated.value:.4f}"
            if self.estimated
            else ""
        )
        return (
            f"{self.model} v{self.champion} {self.metric}: {self.verdict} ({realised} vs released "
            f"{self.released:.4f}, tolerance {self.tolerance}){estimate}"
        )

    def mlflow_metrics(self) -> dict[str, float]:
        out = {f"released_{self.metric}": self.released, "labelled_rows": float(self.rows)}
        if self.realised is not None:
            out |= {
                f"outcome_{self.metric}": self.realised.value,
                f"outcome_{self.metric}_ci_low": self.realised.low,
                f"outcome_{self.metric}_ci_high": self.realised.high,
            }
        if self.estimated is not None:
            out[f"estimated_{self.estimated.metric}"] = self.estimated.value
        out["degraded"] = float(self.degraded)
        return out


def _released_figure(settings: Settings, run_id: str, metric: str) -> float:
    value = mlflow_store.client(settings).get_run(run_id).data.metrics.get(metric)
    if value is None:
        raise mlflow_store.RegistryError(
            f"the champion's run {run_id} has no {metric!r} metric to compare outcomes with; "
            "release the model again (or set outcomes.metric to one it logged)"
        )
    return float(value)


def realised_interval(
    spec: ModelSpec, metric: str, target: np.ndarray, scores: np.ndarray
) -> Interval:
    """The metric on the labelled rows with a seeded bootstrap interval (within each class)."""
    o = spec.outcomes
    rng = np.random.default_rng(o.seed)
    samples = metric_samples(spec, [metric], target, scores, rng, o.resamples)[metric]
    return interval(kind_of(spec).point(spec, metric, target, scores), samples, o.confidence)


def judge(spec: ModelSpec, metric: str, released: float, realised: Interval) -> Verdict:
    """Degraded when the whole interval is worse than the released figure by the tolerance."""
    tolerance = spec.outcomes.tolerance
    if direction(spec.task, metric) == "higher":
        return "degraded" if realised.high < released - tolerance else "healthy"
    return "degraded" if realised.low > released + tolerance else "healthy"


def estimate(spec: ModelSpec, settings: Settings, ref_run: str, onnx_bytes: bytes) -> Estimate:
    """CBPE on the newest (unlabelled) batch, calibrated on the champion's release holdout."""
    kind = kind_of(spec)
    metric = spec.outcome_metric if spec.outcome_metric in estimation.ESTIMABLE else "roc_auc"
    holdout = load_dataset(tracking.run_tag(settings, ref_run, tracking.TAG_HOLDOUT_URI))
    held = kind.served_scores(onnx.predict_outputs(onnx_bytes, to_features(holdout, spec)))
    calibrate = estimation.calibrator(held, to_target(holdout, spec))
    current, where, _ = current_sample(spec, settings, spec.outcomes.max_rows, spec.outcomes.seed)
    scores = kind.served_scores(onnx.predict_outputs(onnx_bytes, to_features(current, spec)))
    value = estimation.expected_metric(metric, scores, calibrate.predict(scores))
    return Estimate(
        metric=metric, value=value, source=where, rows=len(current), calibration_rows=len(holdout)
    )


def check_outcomes(settings: Settings, spec: ModelSpec) -> OutcomeReport:
    champion = model_registry.alias_version(settings, spec.name, model_registry.CHAMPION)
    if champion is None:
        raise mlflow_store.RegistryError(
            f"{spec.name} has no champion: the outcome check judges the champion's answers. "
            "Release a model first (`conveyor run`)."
        )
    ref = model_registry.version_ref(settings, spec.name, champion)
    onnx_bytes = tracking.read_artifact(settings, f"runs:/{ref.run_id}/{tracking.ONNX_ARTIFACT}")
    metric, o, kind = spec.outcome_metric, spec.outcomes, kind_of(spec)
    released = _released_figure(settings, ref.run_id, metric)
    estimated = (
        estimate(spec, settings, ref.run_id, onnx_bytes) if spec.task is Task.binary else None
    )
    realised, segments, rows, where = None, [], 0, "no outcomes configured"
    verdict: Verdict = "not configured"
    if o.configured:
        frame, where = load_labelled(spec, settings)
        frame = sample_rows(frame, o.max_rows, o.seed).reset_index(drop=True)
        rows = len(frame)
        target = to_target(frame, spec)
        verdict = "too small"
        if rows >= o.min_rows and (spec.task is Task.regression or len(np.unique(target)) > 1):
            outputs = onnx.predict_outputs(onnx_bytes, to_features(frame, spec))
            scores = kind.served_scores(outputs)
            realised = realised_interval(spec, metric, target, scores)
            verdict = judge(spec, metric, released, realised)
            rng = np.random.default_rng(spec.segments.seed)
            for column in [c for c in spec.segments.columns if c in frame.columns]:
                values = frame[column].astype(str).to_numpy()
                segments += [
                    segment_figures(
                        spec, column, v, np.flatnonzero(values == v), target, scores, rng
                    )
                    for v in sorted(np.unique(values))
                ]
    return OutcomeReport(
        model=spec.name,
        champion=champion,
        metric=metric,
        higher_is_better=direction(spec.task, metric) == "higher",
        released=released,
        tolerance=o.tolerance,
        source=where,
        rows=rows,
        realised=realised,
        verdict=verdict,
        segments=segments,
        estimated=estimated,
        label_lag_days=o.label_lag_days,
        checked_at=datetime.now(UTC),
    )


def report_markdown(report: OutcomeReport, link: str = "") -> str:
    lines = [
        f"# Outcome check of {report.model} (champion v{report.champion}): {report.verdict}",
        "",
        report.line() + ".",
        "",
        f"Labelled batch: {report.source}, {report.rows} rows"
        + (
            f" (labels arrive about {report.label_lag_days} days after the decision)."
            if report.label_lag_days is not None
            else "."
        ),
    ]
    if report.estimated is not None:
        e = report.estimated
        lines.append(
            f"Estimated (CBPE, calibrated on {e.calibration_rows} holdout rows; an early warning, "
            f"never a gate): {e.metric} {e.value:.4f} on {e.rows} rows of {e.source}."
        )
    if report.segments:
        lines += ["", *segment_table(report.segments)]
    if link:
        lines += ["", link]
    return "\n".join(lines)


@task(name="check-outcomes")
def check_outcomes_task(settings: Settings, spec: ModelSpec) -> OutcomeReport:
    report = check_outcomes(settings, spec)
    run_id = tracking.log_check_run(
        settings,
        spec.name,
        tracking.OUTCOME_RUN,
        report.mlflow_metrics(),
        {REPORT_FILE: report.model_dump_json(indent=1).encode()},
        tags={"conveyor.outcome.verdict": report.verdict, "conveyor.outcome.metric": report.metric},
    )
    report = report.model_copy(update={"run_id": run_id})
    # The chart includes this check: drawn after its run is logged, kept with it.
    uri = history.log_history(settings, spec, run_id)
    create_markdown_artifact(
        key=f"outcomes-{spec.name}",
        markdown=report_markdown(report, uri),
        description=f"Outcome check of {spec.name}: realised and estimated performance",
    )
    logger = get_run_logger()
    (logger.warning if report.degraded else logger.info)("%s", report.line())
    return report


@task(name="emit-degradation-event")
def emit_degraded_task(report: OutcomeReport, spec_path: str) -> bool:
    """Emit `conveyor.performance.degraded` on degradation; anything else, no event."""
    if not report.degraded or report.realised is None:
        return False
    events.emit(
        events.PERFORMANCE_DEGRADED,
        report.model,
        {
            "metric": report.metric,
            "realised": report.realised.value,
            "ci": json.dumps([report.realised.low, report.realised.high]),
            "released": report.released,
            "run_id": report.run_id,
            "champion": report.champion,
            "spec": spec_path,
        },
    )
    get_run_logger().warning("emitted %s for %s", events.PERFORMANCE_DEGRADED, report.model)
    return True


def record_outcomes(obs: Observation, report: OutcomeReport) -> None:
    """Latest realised and estimated metric per model (the alert reads `degraded`). `_ratio`
    as `conveyor_model_metric_ratio`: the task's metric (an error, in the target's units, for a
    regression)."""
    labels = {"metric": report.metric}
    series = [
        ("conveyor_outcome_released_ratio", "The champion's metric at release.", report.released)
    ]
    if report.realised is not None:
        r = report.realised
        series += [
            ("conveyor_outcome_realised_ratio", "Realised metric on labels.", r.value),
            ("conveyor_outcome_realised_low_ratio", "Its interval's low end.", r.low),
            ("conveyor_outcome_realised_high_ratio", "Its interval's high end.", r.high),
        ]
    for name, help_text, value in series:
        obs.gauge(name, help_text, value, **labels)
    if report.estimated is not None:
        obs.gauge(
            "conveyor_outcome_estimated_ratio",
            "Metric estimated from calibrated probabilities (CBPE), before labels.",
            report.estimated.value,
            metric=report.estimated.metric,
        )
    obs.gauge(
        "conveyor_outcome_degraded",
        "1 if the last outcome check found degradation.",
        report.degraded,
    )
    obs.gauge("conveyor_outcome_labelled_rows", "Labelled rows checked.", report.rows)
