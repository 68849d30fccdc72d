import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from tasks.core.spec import (
    DEFAULT_SPEC,
    EvaluationSpec,
    ModelSpec,
    Thresholds,
    ValidationSpec,
    load_spec,
)
from tasks.datasets.data import DataError, snapshot, split_dataset
from tasks.modeling.evaluation import (
    GateError,
    ValidationReport,
    compare,
    operating_threshold,
    paired_bootstrap,
    require_valid,
    threshold_failures,
)
from tasks.modeling.kinds import Binary
from tasks.modeling.scores import ModelMetrics, weighted_metric
from tasks.modeling.scores import binary_metrics as compute_metrics
from tasks.modeling.search import run_trial
from tasks.modeling.training import fit
from tasks.registry import mlflow_store, tracking

SAMPLE = ModelMetrics(
    roc_auc=0.80,
    pr_auc=0.5,
    brier=0.02,
    threshold=0.5,
    precision=0.5,
    recall=0.3,
    f1=0.4,
    positive_rate=0.02,
    rows=100,
)


@pytest.fixture(scope="module")
def scores() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A rare-class target, a good scorer and a clearly worse one."""
    rng = np.random.default_rng(0)
    target = (rng.random(5000) < 0.03).astype(int)
    good = np.clip(target * 0.5 + rng.normal(0.3, 0.15, 5000), 0, 1)
    worse = np.clip(target * 0.2 + rng.normal(0.3, 0.15, 5000), 0, 1)
    return target, good, worse


def test_metrics_of_a_perfect_and_a_useless_scorer() -> None:
    target = np.array([0, 0, 0, 1, 1])
    perfect = compute_metrics(target, np.array([0.1, 0.2, 0.3, 0.8, 0.9]), threshold=0.5)
    assert (perfect.roc_auc, perfect.pr_auc, perfect.f1) == (1.0, 1.0, 1.0)
    assert perfect.brier == pytest.approx((0.01 + 0.04 + 0.09 + 0.04 + 0.01) / 5)
    useless = compute_metrics(target, np.full(5, 0.5), threshold=0.9)
    assert useless.roc_auc == 0.5
    assert (useless.precision, useless.recall, useless.f1) == (0.0, 0.0, 0.0)
    assert useless.positive_rate == pytest.approx(0.4)


def test_operating_threshold_best_f1_and_target_precision(scores) -> None:
    target, good, _ = scores
    best = operating_threshold(target, good, EvaluationSpec(operating_point="best_f1"))
    at_best = compute_metrics(target, good, best)
    for other in (best - 0.05, best + 0.05):
        assert compute_metrics(target, good, other).f1 <= at_best.f1
    strict = operating_threshold(
        target, good, EvaluationSpec(operating_point="target_precision", target_precision=0.95)
    )
    assert compute_metrics(target, good, strict).precision >= 0.95
    assert strict >= best


def test_unreachable_precision_is_a_clear_error(scores) -> None:
    target, _, _ = scores
    constant = np.full(len(target), 0.5)  # precision is the base rate at every threshold
    with pytest.raises(GateError, match=r"no threshold reaches precision 0\.5 .*best 0\.0"):
        operating_threshold(
            target,
            constant,
            EvaluationSpec(operating_point="target_precision", target_precision=0.5),
        )


def test_evaluation_figures_are_the_four_plots(scores) -> None:
    target, good, _ = scores
    plots = Binary().figures(load_spec(DEFAULT_SPEC), target, good, 0.5)
    assert sorted(plots) == [
        "calibration.png",
        "confusion_matrix.png",
        "precision_recall.png",
        "roc.png",
    ]


def test_threshold_failures_name_each_missed_metric() -> None:
    assert threshold_failures(SAMPLE, Thresholds(roc_auc=0.8, pr_auc=0.5)) == []
    assert threshold_failures(SAMPLE, Thresholds(roc_auc=0.9, pr_auc=0.6)) == [
        "roc_auc 0.8000 < 0.9000",
        "pr_auc 0.5000 < 0.6000",
    ]


@pytest.mark.parametrize("metric", ["roc_auc", "pr_auc"])
def test_weighted_metric_matches_sklearn_with_sample_weights(scores, metric: str) -> None:
    target, good, _ = scores
    rounded = np.round(good, 2)  # ties, which both must treat as one threshold
    weights = np.random.default_rng(3).integers(0, 4, size=(3, len(target))).astype(float)
    ours = weighted_metric(metric, target, rounded, weights)
    score = {"roc_auc": roc_auc_score, "pr_auc": average_precision_score}[metric]
    sklearn = [score(target, rounded, sample_weight=w) for w in weights]
    np.testing.assert_allclose(ours, sklearn, rtol=1e-12)


def judged(**validation: object) -> ModelSpec:
    """The default (binary) spec with its validation section replaced."""
    spec = load_spec(DEFAULT_SPEC)
    section = ValidationSpec(**{"metric": "pr_auc", **validation})  # type: ignore[arg-type]
    return spec.model_copy(update={"validation": section})


def test_paired_bootstrap_is_seeded_and_brackets_the_difference(scores) -> None:
    target, good, worse = scores
    spec = judged(seed=1)
    a = paired_bootstrap(spec, "pr_auc", target, good, worse)
    assert a == paired_bootstrap(spec, "pr_auc", target, good, worse)
    difference, low, high = a
    assert low < difference < high
    assert low > 0.1  # the good scorer is clearly better
    same = paired_bootstrap(spec, "roc_auc", target, good, good)
    assert same == (0.0, 0.0, 0.0)


def test_worse_challenger_fails_both_rules(scores) -> None:
    target, good, worse = scores
    for rule in ("non_inferior", "superior"):
        verdict = compare(judged(rule=rule, margin=0.01), target, worse, good, 3)
        assert not verdict.passed
        assert verdict.ci_high < 0


def test_better_challenger_passes_both_rules(scores) -> None:
    target, good, worse = scores
    for rule in ("non_inferior", "superior"):
        assert compare(judged(rule=rule), target, good, worse, 3).passed


def test_equal_challenger_follows_the_configured_rule(scores) -> None:
    target, good, _ = scores
    assert compare(judged(rule="non_inferior", margin=0.01), target, good, good, 3).passed
    assert not compare(judged(rule="superior"), target, good, good, 3).passed


def test_rejected_report_raises_with_its_numbers(scores) -> None:
    target, good, worse = scores
    comparison = compare(judged(), target, worse, good, 7)
    report = ValidationReport(
        metrics=SAMPLE, thresholds=Thresholds(), threshold_failures=[], comparison=comparison
    )
    assert report.verdict == "rejected: not non-inferior to the champion"
    assert report.tags()["conveyor.validation.champion_version"] == "7"
    with pytest.raises(GateError, match=r"champion v7 .* difference -0\.\d+ \[95% CI"):
        require_valid(report)


def test_no_champion_means_thresholds_decide() -> None:
    report = ValidationReport(
        metrics=SAMPLE,
        thresholds=Thresholds(roc_auc=0.9),
        threshold_failures=["x"],
        comparison=None,
    )
    assert not report.passed
    require_valid(
        ValidationReport(
            metrics=SAMPLE, thresholds=Thresholds(), threshold_failures=[], comparison=None
        )
    )


def test_a_refusal_says_what_production_keeps(scores) -> None:
    """A first release refused at a gate said "the champion is unchanged" with no champion."""
    target, good, worse = scores
    first = ValidationReport(
        metrics=SAMPLE, thresholds=Thresholds(), threshold_failures=["x"], comparison=None
    )
    with pytest.raises(GateError) as refused:
        require_valid(first)
    assert "there is still no champion (nothing of this model is served)" in str(refused.value)
    assert "champion is unchanged" not in str(refused.value)
    later = first.model_copy(
        update={"comparison": compare(judged(), target, worse, good, 7), "champion": 7}
    )
    with pytest.raises(GateError, match=r"the champion \(v7\) is unchanged\.$"):
        require_valid(later)


def test_single_class_target_is_refused() -> None:
    spec = load_spec(DEFAULT_SPEC)
    with pytest.raises(DataError, match=r"has no row of class\(es\) \['1'\]"):
        fit(spec, np.zeros((10, spec.n_features), dtype=np.float32), np.zeros(10, dtype=np.int64))


def test_the_fitted_model_predicts_on_one_core() -> None:
    spec = load_spec(DEFAULT_SPEC)
    rng = np.random.default_rng(0)
    features = rng.random((200, spec.n_features), dtype=np.float32)
    target = (features[:, 0] > 0.5).astype(np.int64)
    model = fit(spec, features, target, {"n_estimators": 5})
    assert model[-1].get_params()["n_jobs"] == 1


@pytest.mark.parametrize(("max_rows", "fit_rows"), [(None, 3375), (1000, 750)])
def test_trials_fit_on_at_most_search_max_rows(settings, max_rows, fit_rows) -> None:
    spec = load_spec(DEFAULT_SPEC)
    spec = spec.model_copy(
        update={
            "data": spec.data.model_copy(update={"rows": 6000}),
            "search": spec.search.model_copy(update={"max_rows": max_rows}),
        }
    )
    parts = split_dataset(spec, settings, snapshot(spec, settings))
    parent = tracking.open_run(settings, spec.name, "train", {})
    params = {"n_estimators": 5, "max_depth": 3}
    trial = run_trial(spec, settings, parts, parent.run_id, 0, params, n_jobs=1)
    assert trial.fit_rows == fit_rows
    logged = mlflow_store.client(settings).get_run(trial.run_id).data.params
    assert logged["fit_rows"] == str(fit_rows)
