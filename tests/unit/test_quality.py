"""Each bad-data case from the spec's contract gets a named, readable failure."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tasks.core.spec import DEFAULT_SPEC, ModelSpec, load_spec
from tasks.datasets.data import DataError, fingerprint, load_source
from tasks.datasets.quality import DataQualityError, DataQualityReport, check_frame, require_quality
from tasks.datasets.synthetic import generate_transactions


@pytest.fixture(scope="module")
def spec() -> ModelSpec:
    return load_spec(DEFAULT_SPEC)


@pytest.fixture(scope="module")
def good() -> pd.DataFrame:
    return generate_transactions(3000, seed=2, fraud_rate=0.03)


def check(frame: pd.DataFrame, spec: ModelSpec) -> DataQualityReport:
    return check_frame(frame, spec, fingerprint(frame))


def error_lines(report: DataQualityReport) -> str:
    return "\n".join(issue.line() for issue in report.errors)


def test_good_data_passes_every_check(good: pd.DataFrame, spec: ModelSpec) -> None:
    report = check(good, spec)
    assert report.passed, error_lines(report)
    assert report.warnings == []
    assert report.checks > 3 * spec.n_features


def test_missing_column_is_named(good: pd.DataFrame, spec: ModelSpec) -> None:
    report = check(good.drop(columns=["velocity_score"]), spec)
    assert "`velocity_score`: column present" in error_lines(report)


def test_extra_column_is_only_a_warning(good: pd.DataFrame, spec: ModelSpec) -> None:
    report = check(good.assign(customer_email="x@y.z"), spec)
    assert report.passed
    assert [w.check for w in report.warnings] == ["no unexpected columns"]


def test_wrong_dtype_is_named_with_examples(good: pd.DataFrame, spec: ModelSpec) -> None:
    frame = good.assign(amount=good.amount.astype(str))
    lines = error_lines(check(frame, spec))
    assert "`amount`: type is numeric" in lines


def test_all_null_column_fails(good: pd.DataFrame, spec: ModelSpec) -> None:
    frame = good.assign(merchant_risk_score=np.nan)
    report = check(frame, spec)
    [issue] = [i for i in report.errors if i.check == "no nulls"]
    assert issue.column == "merchant_risk_score"
    assert issue.unexpected == len(good)


def test_nan_and_inf_in_features_fail(good: pd.DataFrame, spec: ModelSpec) -> None:
    frame = good.copy()
    frame.loc[[1, 2], "distance_from_home_km"] = np.nan
    frame.loc[3, "amount"] = np.inf
    lines = error_lines(check(frame, spec))
    assert "`distance_from_home_km`: no nulls, 2 row(s)" in lines
    assert "`amount`: finite, in [0, 50000], 1 row(s), e.g. inf" in lines


def test_out_of_range_and_unknown_category_show_offending_values(good, spec) -> None:
    frame = good.copy()
    frame.loc[0, "hour_of_day"] = 27
    frame.loc[0, "channel"] = "carrier-pigeon"
    lines = error_lines(check(frame, spec))
    assert "`hour_of_day`: finite, in [0, 23], 1 row(s), e.g. 27" in lines
    assert "e.g. 'carrier-pigeon'" in lines


def test_target_with_one_class_fails(good: pd.DataFrame, spec: ModelSpec) -> None:
    lines = error_lines(check(good.assign(is_fraud=0), spec))
    assert "`is_fraud`: every class of [0, 1] present" in lines
    assert "positive rate ≥ 0.005" in lines


def test_too_few_rows_fails(good: pd.DataFrame, spec: ModelSpec) -> None:
    lines = error_lines(check(good.head(10), spec))
    assert "table: at least 1000 rows (observed 10)" in lines


def test_failure_message_says_nothing_was_trained(good: pd.DataFrame, spec: ModelSpec) -> None:
    report = check(good.drop(columns=["channel"]), spec)
    with pytest.raises(
        DataQualityError, match=r"(?s)1 failed check.*`channel`.*Nothing was trained"
    ):
        require_quality(report, "/data/x.parquet")


def source_spec(spec: ModelSpec, source: str) -> ModelSpec:
    return spec.model_copy(update={"data": spec.data.model_copy(update={"source": source})})


def test_local_file_and_folder_sources(good: pd.DataFrame, spec: ModelSpec, tmp_path: Path) -> None:
    good.head(1000).to_parquet(tmp_path / "a.parquet", index=False)
    good.tail(2000).to_csv(tmp_path / "b.csv", index=False)
    both = load_source(source_spec(spec, str(tmp_path)))
    assert len(both) == 3000
    assert check(both, spec).passed
    single = load_source(source_spec(spec, str(tmp_path / "b.csv")))
    assert len(single) == 2000


def test_path_that_does_not_exist(spec: ModelSpec, tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"data source .*nowhere.parquet does not exist"):
        load_source(source_spec(spec, str(tmp_path / "nowhere.parquet")))


def test_empty_file(spec: ModelSpec, tmp_path: Path) -> None:
    (tmp_path / "empty.csv").write_bytes(b"")
    with pytest.raises(DataError, match="is empty"):
        load_source(source_spec(spec, str(tmp_path / "empty.csv")))


def test_header_only_file_fails_the_row_count(good, spec: ModelSpec, tmp_path: Path) -> None:
    good.head(0).to_csv(tmp_path / "header.csv", index=False)
    frame = load_source(source_spec(spec, str(tmp_path / "header.csv")))
    assert "at least 1000 rows (observed 0)" in error_lines(check(frame, spec))
