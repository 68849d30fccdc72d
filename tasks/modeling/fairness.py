"""Performance by segment and the fairness gate.

For each evaluation-only segment column (`segments.columns`) the holdout is sliced by value: each
metric of the model's task per segment, with a seeded bootstrap interval and the row count, and
the disparity figures between segments (`tasks.core.model_task.DISPARITIES`). fairlearn's
`MetricFrame` (and `equalized_odds_difference`) computes every point figure. The intervals come
from resampling the holdout within each segment and class (the same stratified, weighted bootstrap
as the champion comparison, vectorised): a MetricFrame per resample costs about 100 ms on 2
cores, a thousand of them more than the whole release. `tests/unit/test_fairness.py` holds the
weighted figures at unit weights equal to MetricFrame's.

A gate fails only when its interval lies wholly on the wrong side of its limit; a segment below
`segments.min_rows` (or missing a class its metric needs) is reported as too small, not judged."""

from __future__ import annotations

import re
from typing import Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel

from tasks.core.model_task import DISPARITIES, Task, direction, score_metrics
from tasks.core.spec import ModelSpec
from tasks.modeling.disparity import Predictions, chunked_weights, fairlearn_figure
from tasks.modeling.disparity import samples as disparity_samples
from tasks.modeling.kinds import kind_of

# Where the full report (every segment's intervals) is kept with the version's MLflow run.
REPORT_ARTIFACT = "evaluation/fairness.json"


class Interval(BaseModel):
    value: float
    low: float
    high: float

    def text(self) -> str:
        return f"{self.value:.4f} [{self.low:.4f}, {self.high:.4f}]"


class SegmentFigures(BaseModel):
    column: str
    value: str
    rows: int
    judged: bool
    note: str = ""  # why a segment is not judged
    metrics: dict[str, Interval] = {}


class Disparity(BaseModel):
    column: str
    figure: str
    kind: Literal["min", "max"]
    estimate: Interval
    limit: float | None
    between: str  # the segments the figure sets apart (worst and best)
    passed: bool
    # challenger - champion on the same resamples, where a champion exists
    versus_champion: Interval | None = None
    champion_passed: bool = True


class FairnessReport(BaseModel):
    confidence: float
    resamples: int
    min_rows: int
    segments: list[SegmentFigures]
    disparities: list[Disparity]
    failures: list[str]

    @property
    def passed(self) -> bool:
        return not self.failures

    def mlflow_metrics(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for s in self.segments:
            for metric, interval in s.metrics.items():
                out[_metric_name(f"segment.{s.column}.{s.value}.{metric}")] = interval.value
        for d in self.disparities:
            out[_metric_name(f"fairness.{d.column}.{d.figure}")] = d.estimate.value
        return out

    def markdown(self) -> str:
        verdict = "passed" if self.passed else "FAILED: " + "; ".join(self.failures)
        lines = [
            f"# Fairness and performance by segment: {verdict}",
            "",
            f"Intervals: {self.confidence:.0%}, {self.resamples} seeded resamples of the holdout "
            f"within each segment and class; segments under {self.min_rows} rows are not judged.",
            "",
            *segment_table(self.segments),
        ]
        if self.disparities:
            lines += [
                "",
                "| column | disparity | estimate [interval] | limit | between | vs champion |",
            ]
            lines.append("|---|---|---|---|---|---|")
            for d in self.disparities:
                sign = "≥" if d.kind == "min" else "≤"
                limit = "—" if d.limit is None else f"{sign} {d.limit}"
                champion = d.versus_champion.text() if d.versus_champion else "—"
                lines.append(
                    f"| {d.column} | {d.figure} | {d.estimate.text()} | {limit} | {d.between} "
                    f"| {champion} |"
                )
        return "\n".join(lines)


def segment_table(segments: list[SegmentFigures]) -> list[str]:
    """The per-segment metrics as a markdown table (also the model card's)."""
    metrics = sorted({m for s in segments for m in s.metrics}, key=lambda m: m)
    lines = [
        "| segment | rows | " + " | ".join(metrics) + " |",
        "|---|---:|" + "---|" * len(metrics),
    ]
    for s in segments:
        cells = [
            s.metrics[m].text() if m in s.metrics else (s.note or "—") if not s.judged else "—"
            for m in metrics
        ]
        lines.append(f"| {s.column} = {s.value} | {s.rows:,} | " + " | ".join(cells) + " |")
    return lines


def _metric_name(name: str) -> str:
    # MLflow metric names allow letters, digits and `_-. /`; a segment value may hold others.
    return re.sub(r"[^A-Za-z0-9_\-. /]", "_", name)


def interval(value: float, samples: np.ndarray, confidence: float) -> Interval:
    """The point figure with the percentile interval of its resampled values."""
    tail = (1 - confidence) / 2 * 100
    low, high = np.nanpercentile(samples, [tail, 100 - tail])
    return Interval(value=value, low=float(low), high=float(high))


def _interval(spec: ModelSpec, value: float, samples: np.ndarray) -> Interval:
    return interval(value, samples, spec.segments.confidence)


def metric_samples(
    spec: ModelSpec,
    metrics: list[str],
    target: np.ndarray,
    scores: np.ndarray,
    rng: np.random.Generator,
    resamples: int,
) -> dict[str, np.ndarray]:
    """Each metric under `resamples` seeded resamples of the rows within each class (every
    metric on the same resamples, drawn a chunk at a time)."""
    kind = kind_of(spec)
    samples: dict[str, list[np.ndarray]] = {m: [] for m in metrics}
    for weights in chunked_weights(rng, kind.strata(target), len(target), resamples):
        for m in metrics:
            samples[m].append(kind.weighted(spec, m, target, scores, weights))
    return {m: np.concatenate(found) for m, found in samples.items()}


def segment_figures(
    spec: ModelSpec,
    column: str,
    value: str,
    rows: np.ndarray,
    target: np.ndarray,
    scores: np.ndarray,
    rng: np.random.Generator,
) -> SegmentFigures:
    from fairlearn.metrics import MetricFrame

    kind, s = kind_of(spec), spec.segments
    base = SegmentFigures(column=column, value=value, rows=len(rows), judged=False)
    if len(rows) < s.min_rows:
        return base.model_copy(update={"note": f"too small (< {s.min_rows} rows)"})
    y = target[rows]
    if spec.task is not Task.regression and len(np.unique(y)) < 2:
        # A ranking metric needs both outcomes; a segment of one class says nothing of them.
        return base.model_copy(update={"note": "one class only"})
    names = score_metrics(spec.task)
    # The point figures by MetricFrame (one segment's rows: the group is the whole frame).
    frame = MetricFrame(
        metrics={m: (lambda t, p, m=m: kind.point(spec, m, t, p)) for m in names},
        y_true=y,
        y_pred=scores[rows],
        sensitive_features=np.full(len(rows), value),
    )
    samples = metric_samples(spec, names, y, scores[rows], rng, s.resamples)
    metrics = {m: _interval(spec, float(frame.overall[m]), samples[m]) for m in names}
    return base.model_copy(update={"judged": True, "metrics": metrics})


def _floor_failures(spec: ModelSpec, segments: list[SegmentFigures]) -> list[str]:
    failures = []
    for metric, limit in spec.fairness.floors.items():
        higher = direction(spec.task, metric) == "higher"
        for s in segments:
            interval = s.metrics.get(metric)
            if interval is None:
                continue
            if (higher and interval.high < limit) or (not higher and interval.low > limit):
                sign = "≥" if higher else "≤"
                failures.append(
                    f"{metric} of segment {s.column} = {s.value} is {interval.text()}, "
                    f"wholly outside the limit {sign} {limit}"
                )
    return failures


def evaluate(
    spec: ModelSpec,
    holdout: pd.DataFrame,
    target: np.ndarray,
    challenger: Predictions,
    champion: Predictions | None = None,
) -> FairnessReport:
    """Per-segment figures and disparities of the challenger on the holdout; with a champion,
    the change of each limited disparity on the same resamples."""
    s, f = spec.segments, spec.fairness
    rng = np.random.default_rng(s.seed)
    segments: list[SegmentFigures] = []
    disparities: list[Disparity] = []
    failures: list[str] = []
    for column in s.columns:
        values = holdout[column].astype(str).to_numpy()
        figures = [
            segment_figures(
                spec, column, v, np.flatnonzero(values == v), target, challenger.scores, rng
            )
            for v in sorted(np.unique(values))
        ]
        segments += figures
        judged = [x.value for x in figures if x.judged]
        if len(judged) < 2:
            continue  # nothing to compare: the table says why each segment is not judged
        groups = [np.flatnonzero(values == v) for v in judged]
        kept = np.concatenate(groups)
        # Resampled within each judged segment and class: every resample keeps each segment's
        # size and class mix, as the champion comparison's resamples keep the class mix.
        strata = (
            [g[target[g] == c] for g in groups for c in np.unique(target[g])]
            if (spec.task is not Task.regression)
            else groups
        )
        here = [name for name, (_, tasks) in DISPARITIES.items() if spec.task in tasks]
        ours: dict[str, list[np.ndarray]] = {name: [] for name in here}
        theirs: dict[str, list[np.ndarray]] = {name: [] for name in here}
        for weights in chunked_weights(rng, strata, len(target), s.resamples):
            for name in here:
                ours[name].append(
                    disparity_samples(spec, name, target, challenger, groups, weights)
                )
                if champion is not None and name in f.limits:
                    theirs[name].append(
                        disparity_samples(spec, name, target, champion, groups, weights)
                    )
        for figure in here:
            kind = DISPARITIES[figure][0]
            limit = f.limits.get(figure)
            samples = np.concatenate(ours[figure])
            point = fairlearn_figure(
                spec, figure, target[kept], _subset(challenger, kept), values[kept]
            )
            estimate = _interval(spec, point, samples)
            passed = limit is None or not (
                estimate.high < limit if kind == "min" else estimate.low > limit
            )
            disparity = Disparity(
                column=column,
                figure=figure,
                kind=kind,
                estimate=estimate,
                limit=limit,
                between=_between(spec, figure, target, challenger, groups, judged),
                passed=passed,
            )
            if not passed:
                sign = "≥" if kind == "min" else "≤"
                failures.append(
                    f"{figure} across {column} is {estimate.text()} ({disparity.between}), "
                    f"wholly outside the limit {sign} {limit}"
                )
            if champion is not None and limit is not None:
                disparity = _versus_champion(
                    spec,
                    disparity,
                    target,
                    challenger,
                    champion,
                    groups,
                    samples,
                    np.concatenate(theirs[figure]),
                )
                if not disparity.champion_passed:
                    failures.append(
                        f"{figure} across {column} is {_worse_by(disparity)}, beyond the margin "
                        f"{f.champion_margin}"
                    )
            disparities.append(disparity)
    failures = _floor_failures(spec, segments) + failures
    return FairnessReport(
        confidence=s.confidence,
        resamples=s.resamples,
        min_rows=s.min_rows,
        segments=segments,
        disparities=disparities,
        failures=failures,
    )


def _subset(p: Predictions, rows: np.ndarray) -> Predictions:
    return Predictions(scores=p.scores[rows], decided=p.decided[rows])


def _between(
    spec: ModelSpec,
    figure: str,
    target: np.ndarray,
    p: Predictions,
    groups: list[np.ndarray],
    names: list[str],
) -> str:
    """Which segments are furthest apart on the figure's underlying rate or error."""
    if figure.startswith("selection_rate"):
        per = [float(p.decided[g].mean()) for g in groups]
        what = "selection rate"
    elif figure == "error_gap":
        per = [float(np.abs(p.decided[g] - target[g]).mean()) for g in groups]
        what = "mean |error|"
    else:
        return f"over {len(groups)} segments"
    low, high = int(np.argmin(per)), int(np.argmax(per))
    return f"{what} {names[low]} {per[low]:.3f} vs {names[high]} {per[high]:.3f}"


def _worse_by(disparity: Disparity) -> str:
    """How much worse than the champion's, as a positive amount in the direction that is worse:
    a "min" figure (a ratio that must stay high) dropped, a "max" one (a gap) rose."""
    change = disparity.versus_champion
    if change is None:
        return "worse than the champion's"
    if disparity.kind == "min":
        return (
            f"lower than the champion's by {-change.value:.4f} "
            f"[{-change.high:.4f}, {-change.low:.4f}]"
        )
    return f"higher than the champion's by {change.text()}"


def _versus_champion(
    spec: ModelSpec,
    disparity: Disparity,
    target: np.ndarray,
    challenger: Predictions,
    champion: Predictions,
    groups: list[np.ndarray],
    challenger_samples: np.ndarray,
    champion_samples: np.ndarray,
) -> Disparity:
    """challenger - champion on the same resamples; worse beyond the margin fails (for a "min"
    figure a drop is worse, for a "max" one a rise)."""
    figure = disparity.figure
    ones = np.ones((1, len(target)))
    point = float(
        disparity_samples(spec, figure, target, challenger, groups, ones)[0]
        - disparity_samples(spec, figure, target, champion, groups, ones)[0]
    )
    change = _interval(spec, point, challenger_samples - champion_samples)
    margin = spec.fairness.champion_margin
    worse = change.high < -margin if disparity.kind == "min" else change.low > margin
    return disparity.model_copy(update={"versus_champion": change, "champion_passed": not worse})
