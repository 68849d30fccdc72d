"""A partitioned table as pieces, and the scores' columns: which files are pieces, what a written
piece carries, what is refused before anything is read."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tasks.core.spec import load_spec
from tasks.datasets import pieces
from tasks.datasets.sources.files import DataError
from tasks.ops import scoring
from tests.conftest import write_spec

ROOT = Path(__file__).resolve().parents[2]


def test_pieces_are_the_parquet_files_below_the_root_not_a_writers_leftovers(tmp_path: Path):
    frame = pd.DataFrame({"x": [1.0, 2.0]})
    for key in ["date=2026-11-02/a.parquet", "date=2026-11-01/b.parquet", "c.parquet"]:
        (tmp_path / key).parent.mkdir(parents=True, exist_ok=True)
        frame.to_parquet(tmp_path / key)
    for leftover in [".a.parquet.123.tmp", "_SUCCESS", "date=2026-11-01/.b.parquet", "x.csv"]:
        (tmp_path / leftover).write_text("")
    found = pieces.list_pieces(str(tmp_path))
    assert [p.key for p in found] == [
        "c.parquet",
        "date=2026-11-01/b.parquet",
        "date=2026-11-02/a.parquet",
    ]
    assert all(p.size > 0 for p in found)
    [one] = pieces.list_pieces(found[0].uri)
    assert one.key == "c.parquet"


@pytest.mark.parametrize(
    ("make", "said"),
    [
        (lambda root: root / "missing", "nothing at"),
        (lambda root: root, "no .parquet files under"),
        (
            lambda root: (root / "rows.csv", (root / "rows.csv").write_text("x\n1\n"))[0],
            "not a Parquet",
        ),
    ],
)
def test_nothing_to_score_is_said_as_such(tmp_path: Path, make, said: str) -> None:
    with pytest.raises(DataError, match=said):
        pieces.list_pieces(str(make(tmp_path)))


def test_a_written_piece_is_whole_and_carries_its_stamp(tmp_path: Path) -> None:
    target = tmp_path / "out" / "date=2026-11-01" / "part-0.parquet"
    assert pieces.stamp_of(str(target)) is None
    frame = pd.DataFrame({"row": np.arange(3), "prediction": [0.5, 1.5, 2.5]})
    pieces.write_piece(frame, str(target), {"model": "m", "version": "2"})
    assert pieces.stamp_of(str(target)) == {"model": "m", "version": "2"}
    pd.testing.assert_frame_equal(pd.read_parquet(target), frame)
    assert [p.name for p in target.parent.iterdir()] == [target.name]


def test_segment_columns_never_leave_their_table(tmp_path: Path) -> None:
    spec = load_spec(ROOT / "deployments" / "models" / "credit-default.yaml")
    with pytest.raises(scoring.ScoreError, match="protected attributes"):
        scoring._keep(spec, ["customer_id", "age_band"])
    assert scoring._keep(spec, ["transaction_id"]) == ["transaction_id"]


def test_a_classifiers_label_is_its_class_as_the_spec_names_it(tmp_path: Path) -> None:
    spec = load_spec(write_spec(tmp_path))
    outputs = {
        "label": np.array([[1], [0]], dtype=np.int64),
        "probabilities": np.array([[0.2, 0.8], [0.9, 0.1]], dtype=np.float32),
    }
    table = scoring.served_columns(spec, outputs)
    classes = spec.target.classes or []
    assert list(table["label"]) == [classes[1], classes[0]]
    assert list(table.columns) == ["label", *(f"probability:{c}" for c in classes)]


@pytest.mark.parametrize(
    ("given", "output"),
    [("table", "table"), ("table", "table/scores"), ("s3://lake/t", "s3://lake/t/scores")],
)
def test_scores_are_never_written_inside_the_table_they_score(
    tmp_path: Path, given: str, output: str
) -> None:
    root = "" if given.startswith("s3://") else f"{tmp_path}/"
    with pytest.raises(scoring.ScoreError, match="lies inside --input"):
        scoring._apart(root + given, root + output)
    scoring._apart(root + given, root + "scores")  # beside it is fine
