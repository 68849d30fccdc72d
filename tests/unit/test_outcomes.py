"""Outcome monitoring on small tables: the degradation knob moves no distribution, the verdict
reads the interval in the metric's direction, CBPE's expectation meets the realised figure on
calibrated data, labelled batches are found (newest labelled partition, or a join by key) and
bad ones refused clearly, and the history page draws every point."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import average_precision_score, brier_score_loss, roc_auc_score

from tasks.core.settings import Settings
from tasks.core.spec import SpecError, load_spec
from tasks.datasets.data import DataError, to_target
from tasks.datasets.labels import degrade, load_labelled
from tasks.datasets.synthetic import generate
from tasks.modeling import estimation
from tasks.modeling.fairness import Interval
from tasks.ops import history
from tasks.ops.outcomes import judge, realised_interval
from tests.unit.test_model_kinds import REGRESSION, spec_with

CHURN = Path("deployments/models/churn.yaml")


def test_the_degradation_knob_keeps_every_distribution_and_breaks_the_relation() -> None:
    spec = load_spec(CHURN)
    frame = generate(spec.data.source, 4000, 3, spec.data.positive_rate, 0.0)
    degraded = degrade(frame, spec.target.name, 0.7, 0)
    for column in frame.columns:  # the same values, row for row for features
        if column != spec.target.name:
            pd.testing.assert_series_equal(frame[column], degraded[column])
    assert sorted(degraded[spec.target.name]) == sorted(frame[spec.target.name])
    changed = (degraded[spec.target.name] != frame[spec.target.name]).mean()
    assert 0.1 < changed < 0.7
    assert degrade(frame, spec.target.name, 0.0, 0) is frame


def test_the_verdict_reads_the_interval_in_the_metrics_direction() -> None:
    spec = load_spec(CHURN)  # pr_auc, tolerance 0.05
    assert judge(spec, "pr_auc", 0.60, Interval(value=0.50, low=0.48, high=0.54)) == "degraded"
    # a point below the bar whose interval reaches it is not (yet) degradation
    assert judge(spec, "pr_auc", 0.60, Interval(value=0.53, low=0.49, high=0.56)) == "healthy"
    regression = load_spec(REGRESSION)  # rmse: lower is better, tolerance 0.02
    assert judge(regression, "rmse", 0.20, Interval(value=0.26, low=0.23, high=0.29)) == "degraded"
    assert judge(regression, "rmse", 0.20, Interval(value=0.21, low=0.19, high=0.23)) == "healthy"


def test_the_realised_interval_brackets_the_figure_and_narrows_with_rows() -> None:
    spec = load_spec(CHURN)
    rng = np.random.default_rng(0)
    widths = []
    for n in (1000, 10000):
        scores = rng.random(n)
        target = (rng.random(n) < scores).astype(int)
        interval = realised_interval(spec, "pr_auc", target, scores)
        assert interval.low < interval.value < interval.high
        assert interval.value == pytest.approx(average_precision_score(target, scores))
        widths.append(interval.high - interval.low)
    assert widths[1] < widths[0] / 2


def test_cbpe_expects_what_calibrated_probabilities_realise() -> None:
    rng = np.random.default_rng(1)
    scores = rng.beta(1, 6, 20000)
    labels = (rng.random(len(scores)) < scores).astype(int)  # calibrated by construction
    for metric, realised in (
        ("roc_auc", roc_auc_score(labels, scores)),
        ("pr_auc", average_precision_score(labels, scores)),
        ("brier", brier_score_loss(labels, scores)),
    ):
        assert estimation.expected_metric(metric, scores, scores) == pytest.approx(
            realised, abs=0.02
        )
    # miscalibrated scores are corrected by the isotonic fit on labelled (holdout) rows
    squashed = scores**0.5
    fitted = estimation.calibrator(squashed[:10000], labels[:10000])
    estimate = estimation.expected_metric(
        "pr_auc", squashed[10000:], fitted.predict(squashed[10000:])
    )
    assert estimate == pytest.approx(
        average_precision_score(labels[10000:], squashed[10000:]), abs=0.03
    )


def test_the_newest_labelled_partition_is_checked(tmp_path: Path, settings: Settings) -> None:
    spec_path = spec_with(CHURN, tmp_path, **{"outcomes.source": str(tmp_path / "batches")})
    spec = load_spec(spec_path)
    frame = generate(spec.data.source, 900, 2, spec.data.positive_rate, 0.0)
    for date, part in (("2026-11-01", frame[:300]), ("2026-11-02", frame[300:600])):
        folder = tmp_path / "batches" / f"date={date}"
        folder.mkdir(parents=True)
        part.to_parquet(folder / "part.parquet")
    newest = tmp_path / "batches" / "date=2026-11-03"
    newest.mkdir()
    frame[600:].assign(**{spec.target.name: None}).to_parquet(newest / "part.parquet")
    labelled, where = load_labelled(spec, settings)
    assert "date=2026-11-02" in where and len(labelled) == 300
    assert list(to_target(labelled, spec)) == list(to_target(frame[300:600], spec))


def test_labels_joined_by_key_and_bad_labels_refused(tmp_path: Path, settings: Settings) -> None:
    base = load_spec(CHURN)
    scored = generate(base.data.source, 600, 4, base.data.positive_rate, 0.0)
    scored = scored.assign(customer_id=[f"c{i}" for i in range(len(scored))])
    scored.drop(columns=[base.target.name]).to_csv(tmp_path / "scored.csv", index=False)
    labels = scored[["customer_id", base.target.name]].iloc[:400]
    labels.to_csv(tmp_path / "labels.csv", index=False)
    spec = load_spec(
        spec_with(
            CHURN,
            tmp_path,
            **{
                "data.source": str(tmp_path / "scored.csv"),
                "outcomes.source": None,
                "outcomes.labels": str(tmp_path / "labels.csv"),
                "outcomes.key": "customer_id",
            },
        )
    )
    joined, where = load_labelled(spec, settings)
    assert len(joined) == 400 and "joined on customer_id" in where
    assert list(joined[base.target.name]) == list(labels[base.target.name])
    pd.concat([labels, pd.DataFrame({"customer_id": ["x9"], base.target.name: [1]})]).to_csv(
        tmp_path / "labels.csv", index=False
    )
    with pytest.raises(DataError, match=r"1 label\(s\) .* keys never scored .* e.g. x9"):
        load_labelled(spec, settings)
    labels.assign(extra=1).to_csv(tmp_path / "labels.csv", index=False)
    with pytest.raises(DataError, match=r"has columns \['churned', 'customer_id', 'extra'\]"):
        load_labelled(spec, settings)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"outcomes.labels": "l.csv", "outcomes.key": "id"}, "names both `source`"),
        ({"outcomes.source": None, "outcomes.labels": "l.csv"}, "labels and outcomes.key go"),
        ({"outcomes.metric": "rmse"}, "outcomes.metric 'rmse' is not a binary metric"),
    ],
)
def test_outcome_sections_that_contradict_themselves_are_one_clear_error(
    tmp_path: Path, changes: dict[str, object], message: str
) -> None:
    with pytest.raises(SpecError, match=message):
        load_spec(spec_with(CHURN, tmp_path, **changes))


def test_the_history_page_draws_every_point() -> None:
    spec = load_spec(CHURN)
    start = datetime(2026, 12, 1, tzinfo=UTC)
    points = [
        history.Point(kind="release", at=start, value=0.61, label="v1"),
        history.Point(kind="drift", at=start + timedelta(days=1), value=0.1),
        history.Point(
            kind="outcome", at=start + timedelta(days=2), value=0.58, low=0.55, high=0.61
        ),
        history.Point(kind="estimate", at=start + timedelta(days=2), value=0.6, label="pr_auc"),
        history.Point(kind="release", at=start + timedelta(days=3), value=0.63, label="v2"),
    ]
    page = history.render(spec, points)
    assert page.count("<tr><td>") == 5 and "data:image/png;base64," in page
    assert "[0.5500, 0.6100]" in page and ">v2<" in page


def test_one_release_is_drawn_on_an_axis_of_hours_not_years() -> None:
    """matplotlib spread a lone point (a span of zero) over four years of axis (#42)."""
    import matplotlib.dates as mdates

    spec = load_spec(CHURN)
    at = datetime(2026, 12, 1, 9, tzinfo=UTC)
    chart = history.figure(spec, [history.Point(kind="release", at=at, value=0.61, label="v1")])
    low, high = (mdates.num2date(x) for x in chart.axes[1].get_xlim())
    assert low <= at <= high
    assert high - low <= timedelta(hours=3)
    span = [at, at + timedelta(days=40)]
    assert history.time_window([history.Point(kind="drift", at=t, value=0.1) for t in span]) == (
        at - timedelta(days=2),
        at + timedelta(days=42),
    )


def test_the_gauges_the_alert_and_the_dashboard_read() -> None:
    from prometheus_client import generate_latest

    from tasks.core import pushgateway
    from tasks.ops.outcomes import OutcomeReport, record_outcomes

    report = OutcomeReport(
        model="churn",
        champion=2,
        metric="pr_auc",
        higher_is_better=True,
        released=0.6,
        tolerance=0.05,
        source="synthetic",
        rows=6000,
        realised=Interval(value=0.4, low=0.38, high=0.42),
        verdict="degraded",
        checked_at=datetime(2026, 12, 6, tzinfo=UTC),
    )
    obs = pushgateway.Observation(model="churn", flow="outcome-check")
    record_outcomes(obs, report)
    text = generate_latest(pushgateway.build_registry(obs, 1.0, {}, {})).decode()
    assert 'conveyor_outcome_realised_high_ratio{metric="pr_auc"} 0.42' in text
    assert 'conveyor_outcome_released_ratio{metric="pr_auc"} 0.6' in text
    assert "conveyor_outcome_degraded 1.0" in text
    assert "conveyor_outcome_estimated_ratio" not in text  # no estimate: no series


def test_a_check_killed_mid_way_is_neither_a_point_nor_the_fleets_drift(settings: Settings) -> None:
    """A drift check whose process died between logging its figure and closing its run leaves a
    RUNNING run without its report: the history and `conveyor status` read finished ones only."""
    from tasks.ops import fleet
    from tasks.registry import mlflow_store, tracking

    spec = load_spec(CHURN)
    mlflow_store.client(settings).create_registered_model(spec.name)
    tracking.log_check_run(
        settings, spec.name, tracking.DRIFT_RUN, {tracking.DRIFT_SHARE_METRIC: 0.1}, {}
    )
    killed = tracking.open_run(settings, spec.name, tracking.DRIFT_RUN, {})
    tracking.log_to_run(settings, killed.run_id, metrics={tracking.DRIFT_SHARE_METRIC: 0.9})
    status = fleet.model_status(settings, spec.name, spec)
    assert status.drift_share == 0.1
    drawn = [p.value for p in history.points(settings, spec) if p.kind == "drift"]
    assert drawn == [0.1]
