"""Bad files get an error that names what is wrong with them, with the offending values."""

from pathlib import Path

import pandas as pd
import pytest

from tasks.core.spec import DEFAULT_SPEC, ModelSpec, load_spec
from tasks.datasets.data import DataError, load_source
from tasks.datasets.synthetic import generate_transactions


@pytest.fixture(scope="module")
def spec() -> ModelSpec:
    return load_spec(DEFAULT_SPEC)


@pytest.fixture(scope="module")
def good() -> pd.DataFrame:
    return generate_transactions(1200, seed=4, fraud_rate=0.05)


def _load(spec: ModelSpec, path: Path) -> pd.DataFrame:
    data = spec.data.model_copy(update={"source": str(path)})
    return load_source(spec.model_copy(update={"data": data}))


def _numeric_feature(spec: ModelSpec) -> str:
    return next(f.name for f in spec.features if f.type.value == "numeric")


def test_text_in_a_numeric_column_is_named_as_text_not_as_nulls(
    spec: ModelSpec, good: pd.DataFrame, tmp_path: Path
) -> None:
    column = _numeric_feature(spec)
    frame = good.astype({column: object})
    frame.loc[[3, 10, 11], column] = "n/a"
    frame.to_csv(tmp_path / "na.csv", index=False)
    with pytest.raises(DataError) as caught:
        _load(spec, tmp_path / "na.csv")
    message = str(caught.value)
    assert f"`{column}` is numeric in the spec" in message
    assert "3 of 1200 rows hold text that is not a number: 'n/a' (3 rows)" in message
    assert "first at line 5" in message  # header is line 1, row 3 is line 5
    assert "null" not in message.split(":")[0]  # not called nulls


def test_mixed_numbers_and_words_list_the_words(
    spec: ModelSpec, good: pd.DataFrame, tmp_path: Path
) -> None:
    column = _numeric_feature(spec)
    frame = good.copy()
    frame[column] = frame[column].astype(str)  # a text column: numbers as text, and words
    frame.loc[0, column] = "twelve"
    frame.loc[1, column] = "1,5"
    frame.loc[2, column] = "unknown"
    frame.to_parquet(tmp_path / "mixed.parquet", index=False)
    with pytest.raises(
        DataError, match=r"'twelve' \(1 row\).*'1,5' \(1 row\).*'unknown' \(1 row\)"
    ):
        _load(spec, tmp_path / "mixed.parquet")


def test_empty_cells_stay_nulls_for_the_contract(
    spec: ModelSpec, good: pd.DataFrame, tmp_path: Path
) -> None:
    column = _numeric_feature(spec)
    frame = good.copy()
    frame.loc[[1, 2], column] = None
    frame.to_csv(tmp_path / "nulls.csv", index=False)
    loaded = _load(spec, tmp_path / "nulls.csv")
    assert int(loaded[column].isna().sum()) == 2
    assert pd.api.types.is_numeric_dtype(loaded[column])


def test_a_duplicated_header_is_named(spec: ModelSpec, good: pd.DataFrame, tmp_path: Path) -> None:
    column = _numeric_feature(spec)
    header = list(good.columns)
    header[-1] = column
    text = good.to_csv(index=False).splitlines()
    (tmp_path / "dup.csv").write_text("\n".join([",".join(header), *text[1:]]) + "\n")
    with pytest.raises(DataError, match=rf"names `{column}` twice \(columns \d+ and \d+\)"):
        _load(spec, tmp_path / "dup.csv")


@pytest.mark.parametrize(("delimiter", "said"), [(";", "';'"), ("\t", "tab"), ("|", "'|'")])
def test_a_wrong_delimiter_is_named(
    spec: ModelSpec, good: pd.DataFrame, tmp_path: Path, delimiter: str, said: str
) -> None:
    good.head(50).to_csv(tmp_path / "semi.csv", index=False, sep=delimiter)
    with pytest.raises(DataError) as caught:
        _load(spec, tmp_path / "semi.csv")
    message = str(caught.value)
    assert f"separated by {said}, not commas" in message
    assert "re-export it with commas" in message
