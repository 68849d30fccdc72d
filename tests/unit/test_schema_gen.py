"""`conveyor init`: what it infers from a dataset, and how it refuses one it cannot use."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from cli.main import app
from tasks.core.model_task import Task
from tasks.core.spec import FeatureType, load_spec
from tasks.datasets.data import to_features
from tasks.datasets.quality import check_frame
from tasks.datasets.schema_gen import InitError, init_spec


def _frame(rows: int = 600, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    income = rng.lognormal(10, 0.5, rows)
    income[rng.random(rows) < 0.1] = np.nan
    return pd.DataFrame(
        {
            "income": income,
            "children": rng.integers(0, 5, rows),
            "homeowner": rng.random(rows) < 0.4,
            "region": rng.choice(["north", "south", "east"], rows),
            "customer_id": [f"c{i:06d}" for i in range(rows)],  # an identifier, not a feature
            "constant": 7,
            "label": (rng.random(rows) < 0.3).astype(int),
        }
    )


def test_types_ranges_nulls_and_categories_come_from_the_data(tmp_path: Path) -> None:
    source = tmp_path / "loans.csv"
    frame = _frame()
    frame.to_csv(source, index=False)
    result = init_spec(str(source), "label", None, tmp_path / "specs")
    spec = load_spec(result.path)
    assert spec.name == "loans" and spec.target.classes == [0, 1]
    by_name = {f.name: f for f in spec.features}
    assert list(by_name) == ["income", "children", "homeowner", "region"]
    income, children = by_name["income"], by_name["children"]
    assert income.type is FeatureType.numeric and income.nullable
    assert income.min is not None and income.max is not None
    assert 0 <= income.min <= frame.income.min() and income.max >= frame.income.max()
    assert children.type is FeatureType.integer and not children.nullable
    assert (children.min, children.max) == (0.0, 5.0)  # 0..4 seen, widened, kept non-negative
    assert by_name["homeowner"].type is FeatureType.boolean
    assert by_name["region"].categories == ["east", "north", "south"]
    assert {s.name for s in result.skipped} == {"customer_id", "constant"}
    assert spec.estimator.family == "logistic_regression"  # 600 rows
    text = Path(result.path).read_text()
    assert "LEFT FOR YOU" in text and "# Left out:" in text and "identifier" in text
    # The data it came from passes the contract it wrote, and encodes to the served tensor.
    report = check_frame(pd.read_csv(source), spec, "sha")
    assert report.passed, report.errors
    assert to_features(pd.read_csv(source), spec).shape == (600, 4)


def test_it_never_writes_over_a_spec(tmp_path: Path) -> None:
    source = tmp_path / "loans.parquet"
    _frame().to_parquet(source)
    first = init_spec(str(source), "label", "loans", tmp_path)
    before = Path(first.path).read_text()
    with pytest.raises(InitError, match="already exists"):
        init_spec(str(source), "label", "loans", tmp_path)
    assert Path(first.path).read_text() == before


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda f: f.drop(columns="label"), "has no column 'label'"),
        (lambda f: f.assign(label=1), "one class only"),
        (lambda f: f.assign(label=[5] * 3 + [0, 1, 2] * 199), r"too few rows to stratify: 5 \(3"),
        (lambda f: f.assign(label=[f"id{i}" for i in range(len(f))]), "an identifier, not a"),
        (lambda f: f.assign(label=[None] + [0.5] * (len(f) - 1)), "empty in 1 row"),
        (lambda f: f.head(0), "no rows"),
    ],
)
def test_unusable_targets_and_data_are_one_clear_error(
    tmp_path: Path, change: object, message: str
) -> None:
    source = tmp_path / "bad.parquet"
    change(_frame()).to_parquet(source)  # type: ignore[operator]
    with pytest.raises(InitError, match=message):
        init_spec(str(source), "label", None, tmp_path / "specs")
    assert not (tmp_path / "specs" / "bad.yaml").exists()


def test_the_cli_says_what_it_wrote_and_refuses_an_empty_file(tmp_path: Path) -> None:
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    runner = CliRunner()
    env = {"CONVEYOR_SPEC_DIR": str(tmp_path / "specs"), "CONVEYOR_HOME": str(tmp_path / "s")}
    refused = runner.invoke(app, ["init", "--from", str(empty), "--target", "y"], env=env)
    assert refused.exit_code == 2, refused.output
    assert "empty" in refused.output and "Traceback" not in refused.output
    good = tmp_path / "churners.csv"
    _frame().to_csv(good, index=False)
    wrote = runner.invoke(app, ["init", "--from", str(good), "--target", "label"], env=env)
    assert wrote.exit_code == 0, wrote.output
    said = " ".join(wrote.output.split())
    assert "churners.yaml" in "".join(said.split()) and "left out customer_id" in said


@pytest.mark.parametrize(
    ("labels", "task", "classes"),
    [
        (
            lambda n: np.array(["setosa", "versicolor", "virginica"])[np.arange(n) % 3],
            "multiclass",
            ["setosa", "versicolor", "virginica"],
        ),
        (lambda n: np.arange(n) % 10, "multiclass", list(range(10))),
        (lambda n: np.where(np.arange(n) % 4 == 0, "yes", "no"), "binary", ["no", "yes"]),
        (lambda n: np.linspace(0.0, 1.0, n) ** 2, "regression", None),
        (lambda n: (np.arange(n) * 7) % 214, "regression", None),  # 214 whole numbers: amounts
    ],
)
def test_the_task_is_inferred_from_the_target_and_said(
    tmp_path: Path, labels: object, task: str, classes: list[object] | None
) -> None:
    source = tmp_path / "table.parquet"
    frame = _frame()
    frame.assign(label=labels(len(frame))).to_parquet(source)  # type: ignore[operator]
    result = init_spec(str(source), "label", None, tmp_path / "specs")
    spec = load_spec(result.path)
    assert (spec.task.value, spec.target.classes) == (task, classes)
    assert result.task.value == task and task in result.task_why
    assert f"task: {task}" in Path(result.path).read_text()
    # What init wrote is a contract the data it came from passes.
    assert check_frame(pd.read_parquet(source), spec, "sha").passed


def test_a_named_task_wins_and_a_contradicting_one_is_refused(tmp_path: Path) -> None:
    source = tmp_path / "counts.parquet"
    _frame().assign(label=np.arange(600) % 4).to_parquet(source)
    result = init_spec(str(source), "label", "counts", tmp_path / "specs", Task.regression)
    assert load_spec(result.path).task is Task.regression
    with pytest.raises(InitError, match="--task binary contradicts target 'label': it has 4"):
        init_spec(str(source), "label", "other", tmp_path / "specs", Task.binary)
    text = tmp_path / "text.parquet"
    _frame().assign(label=np.where(np.arange(600) % 2, "a", "b")).to_parquet(text)
    with pytest.raises(InitError, match="a regression needs numbers"):
        init_spec(str(text), "label", "t", tmp_path / "specs", Task.regression)


def test_a_numeric_column_with_placeholders_is_named_as_such_not_as_free_text(
    tmp_path: Path,
) -> None:
    """`n/a` where a value is missing made init call a numeric column "an identifier or free
    text" (#42); it now says what the data gate would say, and how to fix it."""
    frame = _frame()
    income = frame["income"].round(2).astype(object)
    income[income.isna()] = "n/a"
    source = tmp_path / "placeholders.csv"
    frame.assign(income=income).to_csv(source, index=False)
    result = init_spec(str(source), "label", None, tmp_path / "specs")
    [skipped] = [s for s in result.skipped if s.name == "income"]
    assert skipped.why.startswith("numbers, but ")
    assert "'n/a' (" in skipped.why and "leave a missing value empty" in skipped.why
    assert "free text" not in skipped.why
    assert "region" not in {s.name for s in result.skipped}  # real text stays a category
