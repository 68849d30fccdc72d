"""The operating threshold is chosen on the training split alone: the holdout only reports."""

import numpy as np
import pandas as pd
import pytest

from tasks.core.spec import DEFAULT_SPEC, ModelSpec, load_spec
from tasks.datasets.data import DataError, split, to_features, to_target
from tasks.datasets.synthetic import generate_transactions
from tasks.modeling.evaluation import operating_threshold
from tasks.modeling.scores import binary_metrics as compute_metrics
from tasks.modeling.training import THRESHOLD_FOLDS, fit, refit_and_score, threshold_on_training

PARAMS = {"n_estimators": 20, "max_depth": 8}


@pytest.fixture(scope="module")
def spec() -> ModelSpec:
    return load_spec(DEFAULT_SPEC)


@pytest.fixture(scope="module")
def parts(spec: ModelSpec):
    frame = generate_transactions(6000, seed=11, fraud_rate=0.05)
    return split(frame, spec.target.name, 0.25, seed=3)


def test_the_holdout_plays_no_part_in_choosing_the_threshold(spec: ModelSpec, parts) -> None:
    train, holdout = parts
    target = spec.target.name
    # The same training split, two holdouts that could hardly differ more: the real one, and
    # one with every label flipped (a holdout-chosen threshold would move with it).
    flipped = holdout.copy()
    flipped[target] = 1 - flipped[target]
    _, threshold, metrics, _ = refit_and_score(spec, train, holdout, PARAMS)
    _, threshold_flipped, metrics_flipped, _ = refit_and_score(spec, train, flipped, PARAMS)
    assert threshold == threshold_flipped
    assert metrics.threshold == metrics_flipped.threshold == threshold
    assert metrics.f1 != metrics_flipped.f1  # the holdout still reports, at that threshold
    assert threshold == threshold_on_training(spec, train, PARAMS)


def test_the_threshold_is_not_the_holdouts_best(spec: ModelSpec, parts) -> None:
    """Chosen on the holdout, best F1 there is at least what the out-of-fold threshold gets:
    the gap is the optimism the holdout-chosen figure had."""
    train, holdout = parts
    model = fit(spec, to_features(train, spec), to_target(train, spec), PARAMS)
    scores = model.predict_proba(to_features(holdout, spec))[:, 1]
    target = to_target(holdout, spec)
    on_holdout = compute_metrics(
        target, scores, operating_threshold(target, scores, spec.evaluation)
    )
    _, threshold, honest, _ = refit_and_score(spec, train, holdout, PARAMS)
    assert on_holdout.f1 >= honest.f1
    assert 0 < threshold < 1


def test_too_few_positives_to_fold_is_a_clear_error(spec: ModelSpec, parts) -> None:
    train, _ = parts
    target = spec.target.name
    negatives = train[train[target] == 0].head(500)
    few = pd.concat([negatives, train[train[target] == 1].head(THRESHOLD_FOLDS - 1)])
    with pytest.raises(DataError, match=r"2 row\(s\) of its rarest class.*at least 3"):
        threshold_on_training(spec, few.reset_index(drop=True), PARAMS)
    assert np.unique(few[target]).tolist() == [0, 1]
