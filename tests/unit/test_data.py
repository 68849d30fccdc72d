from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tasks.core.spec import DEFAULT_SPEC, load_spec
from tasks.datasets.data import (
    DataError,
    fingerprint,
    load_dataset,
    save_dataset,
    split,
    to_features,
)
from tasks.datasets.synthetic import generate_transactions


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    return generate_transactions(20_000, seed=3, fraud_rate=0.02)


def test_generator_is_seeded_and_has_a_rare_positive_class(frame: pd.DataFrame) -> None:
    again = generate_transactions(20_000, seed=3, fraud_rate=0.02)
    pd.testing.assert_frame_equal(frame, again)
    assert 0.015 < frame["is_fraud"].mean() < 0.025
    assert not generate_transactions(20_000, seed=4, fraud_rate=0.02).equals(frame)


def test_fraud_differs_from_legitimate_traffic(frame: pd.DataFrame) -> None:
    fraud, legit = frame[frame.is_fraud == 1], frame[frame.is_fraud == 0]
    assert fraud.amount.median() > 1.5 * legit.amount.median()
    assert fraud.is_international.mean() > 2 * legit.is_international.mean()
    assert (fraud.channel == "online").mean() > (legit.channel == "online").mean()


def test_drift_knob_shifts_the_population_and_zero_means_none(frame: pd.DataFrame) -> None:
    drifted = generate_transactions(20_000, seed=3, fraud_rate=0.02, drift=1.0)
    assert drifted.amount.mean() > 1.5 * frame.amount.mean()
    assert (drifted.channel == "online").mean() > (frame.channel == "online").mean() + 0.2
    assert drifted.is_fraud.equals(frame.is_fraud)


def test_generated_data_respects_the_spec_ranges(frame: pd.DataFrame) -> None:
    spec = load_spec(DEFAULT_SPEC)
    for feature in spec.features:
        column = frame[feature.name]
        if feature.min is not None:
            assert column.min() >= feature.min, feature.name
        if feature.max is not None:
            assert column.max() <= feature.max, feature.name
        if feature.categories:
            assert set(column) <= set(feature.categories)


def test_fingerprint_depends_on_content_only(frame: pd.DataFrame, tmp_path: Path) -> None:
    a = save_dataset(frame, tmp_path / "a", "train", "is_fraud")
    b = save_dataset(frame.copy(), tmp_path / "b", "train", "is_fraud")
    assert a.sha256 == b.sha256 == fingerprint(load_dataset(a.uri))
    changed = frame.copy()
    changed.loc[0, "amount"] += 0.01
    assert fingerprint(changed) != a.sha256


def test_split_is_stratified(frame: pd.DataFrame) -> None:
    train, holdout = split(frame, "is_fraud", 0.25, seed=1)
    assert len(train) + len(holdout) == len(frame)
    assert abs(holdout.is_fraud.mean() - train.is_fraud.mean()) < 0.002


def test_features_follow_the_spec_order_and_encoding(frame: pd.DataFrame) -> None:
    spec = load_spec(DEFAULT_SPEC)
    features = to_features(frame.head(5), spec)
    assert features.dtype == np.float32
    assert features.shape == (5, spec.n_features)
    channel = spec.feature_names.index("channel")
    categories = spec.features[channel].categories or []
    assert [categories[int(c)] for c in features[:, channel]] == list(frame.channel.head(5))


def test_unknown_category_and_missing_column_are_named(frame: pd.DataFrame) -> None:
    spec = load_spec(DEFAULT_SPEC)
    odd = frame.head(3).copy()
    odd.loc[1, "channel"] = "carrier-pigeon"
    with pytest.raises(DataError, match="carrier-pigeon"):
        to_features(odd, spec)
    with pytest.raises(DataError, match="velocity_score"):
        to_features(frame.drop(columns=["velocity_score"]), spec)


def test_missing_dataset_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="Re-run training"):
        load_dataset(str(tmp_path / "gone.parquet"))
