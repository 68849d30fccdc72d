"""A model's history on one time axis: every release (its holdout figure), every outcome check
(the realised figure with its interval, and the estimate before labels) and every drift check
(the drifted share), read back from MLflow, drawn as one chart (PNG inside a self-contained HTML
page with the points as a table). Each check logs it with its run; `conveyor report MODEL`
writes the same file."""

from __future__ import annotations

import base64
import io
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from pydantic import BaseModel

from tasks.core.settings import Settings
from tasks.core.spec import ModelSpec
from tasks.registry import mlflow_store, tracking, ui_links

HISTORY_HTML = "history.html"


class Point(BaseModel):
    kind: Literal["release", "outcome", "estimate", "drift"]
    at: datetime
    value: float
    low: float | None = None
    high: float | None = None
    label: str = ""


def _when(milliseconds: int) -> datetime:
    return datetime.fromtimestamp(milliseconds / 1000, UTC)


def points(settings: Settings, spec: ModelSpec) -> list[Point]:
    """Releases, outcome checks, estimates and drift checks of `spec`'s model, oldest first."""
    client, metric = mlflow_store.client(settings), spec.outcome_metric
    found: list[Point] = []
    for version in client.search_model_versions(f"name='{spec.name}'"):
        if not version.run_id:
            continue
        value = client.get_run(version.run_id).data.metrics.get(metric)
        if value is not None:
            found.append(
                Point(
                    kind="release",
                    at=_when(version.creation_timestamp),
                    value=value,
                    label=f"v{version.version}",
                )
            )
    experiment = client.get_experiment_by_name(spec.name)
    if experiment is not None:
        # MLflow's filter has no OR: one search per kind of check.
        runs = [
            run
            for name in (tracking.DRIFT_RUN, tracking.OUTCOME_RUN)
            for run in client.search_runs(
                [experiment.experiment_id],
                # A check killed mid-way leaves its run RUNNING, half-logged: not a point.
                filter_string=f"attributes.run_name = '{name}' and attributes.status = 'FINISHED'",
                max_results=5000,
            )
        ]
        for run in runs:
            m, at = run.data.metrics, _when(run.info.start_time)
            if run.info.run_name == tracking.DRIFT_RUN and tracking.DRIFT_SHARE_METRIC in m:
                found.append(Point(kind="drift", at=at, value=m[tracking.DRIFT_SHARE_METRIC]))
                continue
            realised = m.get(f"outcome_{metric}")
            if realised is not None:
                found.append(
                    Point(
                        kind="outcome",
                        at=at,
                        value=realised,
                        low=m.get(f"outcome_{metric}_ci_low"),
                        high=m.get(f"outcome_{metric}_ci_high"),
                        label=run.data.tags.get("conveyor.outcome.verdict", ""),
                    )
                )
            for key, value in m.items():
                if key.startswith("estimated_"):
                    found.append(
                        Point(
                            kind="estimate",
                            at=at,
                            value=value,
                            label=key.removeprefix("estimated_"),
                        )
                    )
    return sorted(found, key=lambda p: p.at)


def time_window(history: list[Point]) -> tuple[datetime, datetime]:
    """The x axis: the points' span, padded by a twentieth of it and at least an hour. Left to
    matplotlib, one release (a span of zero) drew an axis of four years."""
    first, last = min(p.at for p in history), max(p.at for p in history)
    pad = max((last - first) / 20, timedelta(hours=1))
    return first - pad, last + pad


def figure(spec: ModelSpec, history: list[Point]) -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = spec.outcome_metric
    fig, (top, bottom) = plt.subplots(
        2, 1, figsize=(10, 6), sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    releases = [p for p in history if p.kind == "release"]
    for p in releases:
        top.axvline(p.at, color="0.8", linestyle="--", linewidth=1)
        top.annotate(p.label, (p.at, p.value), textcoords="offset points", xytext=(4, 6))
    top.plot([p.at for p in releases], [p.value for p in releases], "k*", ms=12, label="release")
    outcomes = [p for p in history if p.kind == "outcome"]
    if outcomes:
        top.errorbar(
            [p.at for p in outcomes],
            [p.value for p in outcomes],
            yerr=[
                [p.value - (p.low if p.low is not None else p.value) for p in outcomes],
                [(p.high if p.high is not None else p.value) - p.value for p in outcomes],
            ],
            fmt="o",
            color="tab:blue",
            capsize=4,
            label=f"realised {metric} (interval)",
        )
    estimates = [p for p in history if p.kind == "estimate"]
    if estimates:
        top.plot(
            [p.at for p in estimates],
            [p.value for p in estimates],
            "o",
            mfc="none",
            color="tab:orange",
            label="estimated (CBPE)",
        )
    floor = spec.thresholds.limits().get(metric)
    if floor is not None:
        top.axhline(floor, color="tab:red", linewidth=1, label=f"release threshold {floor}")
    if releases:
        bar = releases[-1].value - spec.outcomes.tolerance
        top.axhline(bar, color="tab:purple", linestyle=":", label="degradation (last release)")
    top.set_ylabel(metric)
    top.set_title(f"{spec.name}: {metric} per release and per check")
    top.legend(loc="lower left", fontsize=8)
    drifts = [p for p in history if p.kind == "drift"]
    bottom.plot([p.at for p in drifts], [p.value for p in drifts], "s", color="tab:green")
    bottom.axhline(spec.drift.share, color="tab:red", linewidth=1)
    bottom.set_ylabel("drift share")
    bottom.set_ylim(-0.05, 1.05)
    bottom.set_xlim(*time_window(history))
    fig.autofmt_xdate()
    fig.tight_layout()
    return fig


def render(spec: ModelSpec, history: list[Point]) -> str:
    """A self-contained HTML page: the chart and the points it was drawn from."""
    import matplotlib.pyplot as plt

    chart = figure(spec, history)
    buffer = io.BytesIO()
    chart.savefig(buffer, format="png", dpi=110)
    plt.close(chart)
    image = base64.b64encode(buffer.getvalue()).decode()
    rows = "".join(
        f"<tr><td>{p.at:%Y-%m-%d %H:%M:%S}</td><td>{p.kind}</td><td>{p.value:.4f}</td>"
        f"<td>{'' if p.low is None else f'[{p.low:.4f}, {p.high:.4f}]'}</td><td>{p.label}</td></tr>"
        for p in history
    )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{spec.name} history</title>"
        "</head><body style='font-family:sans-serif'>"
        f"<h1>{spec.name}: releases, outcome and drift checks</h1>"
        f"<img alt='history chart' src='data:image/png;base64,{image}'>"
        "<table border='1' cellpadding='4'><tr><th>when (UTC)</th><th>what</th><th>value</th>"
        f"<th>interval</th><th>note</th></tr>{rows}</table></body></html>"
    )


def log_history(settings: Settings, spec: ModelSpec, run_id: str) -> str:
    """Draw the history now and keep it with the check's run; returns a markdown link to it in
    the MLflow UI (the run's artifacts), with its `runs:/` URI beside."""
    page = render(spec, points(settings, spec))
    uri = tracking.log_run_artifact(settings, run_id, f"check/{HISTORY_HTML}", page.encode())
    return ui_links.artifact_link(settings, "history chart", uri)
