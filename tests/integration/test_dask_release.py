"""Releases with `compute: dask` on a `LocalCluster` of two worker processes, from partitioned
Parquet tables: XGBoost and LightGBM for every task trained on every training row and measured on
every holdout row (checked against the table read here, row by row); a whole release through
Triton, its model card saying what read which rows, and its rerun unchanged; the data contract
refusing a bad piece by name; a piece changed under the release; the scikit-learn families and a
scheduler that is gone refused in one paragraph, with nothing registered."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from flows.release import release_flow
from flows.training import training_flow
from tasks.core.families import FAMILIES, distributed_families
from tasks.core.model_task import Task
from tasks.core.settings import Settings
from tasks.core.spec import SPEC_DIR, ModelSpec, load_spec
from tasks.datasets import partition_contract, partitioned
from tasks.datasets.data import load_source, to_features, to_target
from tasks.datasets.pieces import list_pieces
from tasks.datasets.quality import DataQualityError
from tasks.datasets.sources.files import DataError
from tasks.modeling import distributed, onnx
from tasks.modeling.kinds import kind_of
from tasks.modeling.training import build_pipeline
from tasks.modeling.unchanged import UnchangedModel
from tasks.ops.drift import check_drift
from tasks.ops.outcomes import check_outcomes
from tasks.registry import model_registry, tracking
from tasks.registry.mlflow_store import client
from tasks.serving import triton_server
from tests.conftest import write_spec
from tests.faults import assert_one_paragraph
from tests.integration.test_score import write_table
from tests.servers import BIN, clean_env, free_port

# A shipped spec per task, and the rows of its table (small: the sizes are `make bench`'s).
SHIPPED = {
    Task.binary: SPEC_DIR / "fraud-detector.yaml",
    Task.multiclass: SPEC_DIR / "merchant-category.yaml",
    Task.regression: SPEC_DIR / "loss-given-default.yaml",
}
ROWS = 24_000


@pytest.fixture(scope="module")
def scheduler() -> Iterator[str]:
    """One cluster for the module's releases (each would otherwise start its own, as a user's
    `conveyor run` does when CONVEYOR_DASK_ADDRESS is unset: `test_score` covers that)."""
    from distributed import LocalCluster

    with LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
    ) as cluster:
        yield cluster.scheduler_address


@pytest.fixture
def on_cluster(
    prefect_api: None, scheduler: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Settings:
    """A fresh state directory, and the module's cluster for every step of a release."""
    monkeypatch.setenv("CONVEYOR_HOME", str(tmp_path / "state"))
    monkeypatch.setenv("CONVEYOR_DASK_ADDRESS", scheduler)
    return Settings()


def dask_spec(directory: Path, task: Task, family: str, rows: int = ROWS, **more: object) -> Path:
    """A shipped spec of `task` with `compute: dask` over its synthetic rows written as a table
    of `date=` pieces."""
    base = write_spec(directory, SHIPPED[task], **{"data.rows": rows})
    table = write_table(load_source(load_spec(base)), directory / f"table-{task.value}")
    return write_spec(
        directory,
        SHIPPED[task],
        **{
            "compute": "dask",
            "data.source": str(table),
            "estimator.family": family,
            "estimator.params": {"n_estimators": 20},
            "search.space": {"learning_rate": {"type": "float", "low": 0.05, "high": 0.3}},
            "search.trials": 1,
            "search.parallel": 1,
            **more,
        },
    )


def registered(settings: Settings, name: str) -> list[object]:
    return list(client(settings).search_model_versions(f"name='{name}'"))


def whole_holdout(spec: ModelSpec) -> pd.DataFrame:
    """Every holdout row of the table, read here in one piece (small tables only)."""
    frames = []
    for piece in list_pieces(spec.data.source):
        frame = pd.read_parquet(piece.uri)
        mask = partitioned.holdout_mask(
            piece.key, len(frame), spec.data.seed, spec.data.holdout_fraction
        )
        frames.append(frame[mask])
    return pd.concat(frames, ignore_index=True)


@pytest.mark.parametrize("family", distributed_families())
@pytest.mark.parametrize("task", list(SHIPPED))
def test_trained_on_the_cluster_and_measured_on_every_holdout_row(
    on_cluster: Settings, tmp_path: Path, task: Task, family: str
) -> None:
    settings = on_cluster
    spec = load_spec(dask_spec(tmp_path, task, family, **{"evaluation.sample_rows": 2_000}))
    result = training_flow(spec, settings)

    holdout = whole_holdout(spec)
    assert result.metrics.rows == len(holdout) > 5_000  # every holdout row, not the sample
    assert result.holdout.rows < 3_000  # what the in-process gates read: the sample
    model = tracking.load_model(settings, result.candidate.model_uri)
    assert type(model[-1]).__module__.split(".")[0] == FAMILIES[family].library
    assert "Dask" not in type(model[-1]).__name__  # the single-process class, as served
    threshold = getattr(result.metrics, "threshold", None)
    kind = kind_of(spec)
    # The metrics are the logged model's on the table's holdout, read here row by row.
    again = kind.evaluate(
        spec, to_target(holdout, spec), kind.scores(model, to_features(holdout, spec)), threshold
    )
    for name, value in result.metrics.scalars().items():
        assert again.scalars()[name] == pytest.approx(value, rel=1e-6, abs=1e-9), name
    tags = tracking.run_tags(settings, result.run_id)
    assert tags[tracking.TAG_COMPUTE] == "dask"
    split = sum(p.train_rows for p in _split(spec, settings))
    assert f"{split} training" in tags[tracking.TAG_ROWS]


def test_parity_on_the_cluster_covers_every_holdout_row_and_refuses_a_wrong_graph(
    on_cluster: Settings, tmp_path: Path
) -> None:
    settings = on_cluster
    spec = load_spec(
        dask_spec(tmp_path, Task.binary, "xgboost", **{"evaluation.sample_rows": 1_000})
    )
    trained = training_flow(spec, settings)
    assert trained.partitioned is not None
    model = tracking.load_model(settings, trained.candidate.model_uri)
    good = onnx.convert(model, spec.n_features, onnx.input_bounds(spec))
    holdout = trained.partitioned.holdout_rows
    report = distributed.holdout_parity(spec, settings, trained.partitioned, model, good, 1e-5, 1)
    assert report.passed and report.rows == holdout == trained.metrics.rows
    # A graph of another model: refused on the whole holdout, not only on the sample.
    sample = pd.read_parquet(trained.holdout.uri)
    other = build_pipeline(spec).fit(to_features(sample, spec), to_target(sample, spec))
    wrong = onnx.convert(other, spec.n_features)
    report = distributed.holdout_parity(spec, settings, trained.partitioned, model, wrong, 1e-5, 1)
    assert report.rows == holdout and report.rows_over > len(sample)
    with pytest.raises(onnx.ParityError, match=f"on {holdout} holdout rows"):
        onnx.require_parity(report)


def _split(spec: ModelSpec, settings: Settings) -> list[partitioned.SplitPiece]:
    ref = partitioned.snapshot(spec, settings)
    return partitioned.split(spec, settings, ref).partitioned.pieces  # type: ignore[union-attr]


def test_a_release_on_the_cluster_is_served_and_its_rerun_unchanged(
    on_cluster: Settings, tmp_path: Path
) -> None:
    settings = on_cluster
    path = dask_spec(
        tmp_path,
        Task.multiclass,
        "lightgbm",
        rows=200_000,
        **{
            "evaluation.sample_rows": 20_000,
            "smoke.rows": 300,
            "drift.max_rows": 5_000,
            "outcomes.source": str(tmp_path / "table-multiclass"),
            "outcomes.max_rows": 4_000,
        },
    )
    try:
        result = release_flow(str(path))
        spec = load_spec(path)
        assert model_registry.alias_version(settings, spec.name, "champion") == result.version
        assert result.metrics.rows > 45_000 and result.holdout.rows < 25_000
        # The ONNX graph was held to the model on every holdout row, not on the sample.
        assert result.export.onnx.parity.rows == result.metrics.rows
        card = tracking.read_artifact(settings, f"runs:/{result.run_id}/model_card.md").decode()
        assert "compute: dask" in card and "every holdout row" in card, card
        assert f"{result.holdout.rows:,} holdout" in card, card
        assert result.swap.after == [result.version]
        again = release_flow(str(path))
        assert isinstance(again, UnchangedModel), again  # the manifest is the same
        # The nightly checks sample the newest batch on the workers, never read it whole.
        days = sorted(Path(spec.data.source).glob("date=*"))
        newest = sum(len(pd.read_parquet(piece)) for piece in days[-1].glob("*.parquet"))
        drift = check_drift(settings, spec)
        assert drift.current_rows == newest and drift.compared_rows == 5_000, drift
        sampled = f"{days[-1].name}, a seeded sample of 5,000 of {newest:,} rows"
        assert sampled in drift.current_source, drift.current_source
        # Labels arrive late: the newest day has none, so the day before is judged.
        for piece in days[-1].glob("*.parquet"):
            frame = pd.read_parquet(piece)
            frame.assign(**{spec.target.name: None}).to_parquet(piece, index=False)
        outcomes = check_outcomes(settings, spec)
        assert outcomes.rows == 4_000 and days[-2].name in outcomes.source, outcomes
        assert outcomes.realised is not None and outcomes.verdict != "too small"
    finally:
        triton_server.stop(settings)


def test_a_bad_piece_is_refused_by_name_and_nothing_registered(
    on_cluster: Settings, tmp_path: Path
) -> None:
    settings = on_cluster
    path = dask_spec(tmp_path, Task.binary, "xgboost")
    spec = load_spec(path)
    bad = sorted(Path(spec.data.source).rglob("*.parquet"))[3]
    frame = pd.read_parquet(bad)
    frame.loc[[2, 7], "amount"] = -5.0  # below its min 0
    frame.to_parquet(bad, index=False)
    key = str(bad.relative_to(spec.data.source))

    report = partition_contract.check_table(spec, settings, partitioned.snapshot(spec, settings))
    [issue] = [i for i in report.errors if i.column == "amount"]
    assert issue.unexpected == 2 and key in issue.detail and "rows 3, 8" in issue.detail, issue
    with pytest.raises(DataQualityError) as refused:
        release_flow(str(path))
    assert key in str(refused.value) and "amount" in str(refused.value)
    assert model_registry.alias_version(settings, spec.name, "champion") is None
    assert not registered(settings, spec.name)


def test_the_whole_tables_checks_and_warnings_come_from_the_pieces_counts(
    scheduler: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What only the whole table shows, as the local contract reports it: a regression target
    out of its range (by piece and row), a segment with one value everywhere, a nullable
    feature's nulls over `max_null_share` (warning), and a column the spec does not name."""
    monkeypatch.setenv("CONVEYOR_DASK_ADDRESS", scheduler)
    settings = Settings(home=tmp_path / "state")
    base = load_spec(SHIPPED[Task.regression])
    features = [
        f.model_dump(mode="json", exclude_none=True) | {"nullable": f.name == "exposure"}
        for f in base.features
    ]
    path = dask_spec(
        tmp_path,
        Task.regression,
        "lightgbm",
        features=features,
        **{"segments.columns": ["lender"], "quality.max_null_share": 0.1},
    )
    spec = load_spec(path)
    pieces = sorted(Path(spec.data.source).rglob("*.parquet"))
    for number, piece in enumerate(pieces):
        frame = pd.read_parquet(piece).assign(lender="north")
        if number < 3:
            frame["exposure"] = np.nan  # 3 of the table's pieces: over 10% of its rows
        if number == 4:
            frame.loc[5, spec.target.name] = 1.5  # above its max 1
            frame["note"] = "free text"
        frame.to_parquet(piece, index=False)

    report = partition_contract.check_table(spec, settings, partitioned.snapshot(spec, settings))
    errors = {i.check: i for i in report.errors}
    target = errors["target finite, in [0, 1]"]
    assert target.unexpected == 1 and "rows 6)" in target.detail, target
    assert str(pieces[4].relative_to(spec.data.source)) in target.detail
    assert errors["segment has at least two values (fairness compares them)"].examples == [
        "'north'"
    ]
    assert len(errors) == 2, report.markdown()
    warnings = {i.check: i for i in report.warnings}
    nulls = warnings["at most 10% nulls"]
    assert nulls.column == "exposure" and nulls.unexpected == sum(
        len(pd.read_parquet(piece)) for piece in pieces[:3]
    )
    assert warnings["no unexpected columns"].examples == ["note"]


def test_the_snapshot_is_a_copy_a_source_changed_afterwards_does_not_reach(
    scheduler: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The workers copy each piece at the snapshot: a piece rewritten in the source afterwards
    changes neither the split nor the rows read; the next snapshot sees it and copies only it;
    an altered copy is refused by name."""
    monkeypatch.setenv("CONVEYOR_DASK_ADDRESS", scheduler)
    settings = Settings(home=tmp_path / "state")
    spec = load_spec(dask_spec(tmp_path, Task.regression, "lightgbm"))
    ref = partitioned.snapshot(spec, settings)
    manifest = partitioned.load_manifest(ref)
    copies = Path(settings.pieces_root)
    assert sorted(copies.glob("*.parquet")) == sorted(
        copies / f"{piece.sha256}.parquet" for piece in manifest.pieces
    )
    piece = sorted(Path(spec.data.source).rglob("*.parquet"))[0]
    pd.read_parquet(piece).iloc[:-1].to_parquet(piece, index=False)

    split = partitioned.split(spec, settings, ref).partitioned
    assert split is not None and split.train_rows + split.holdout_rows == manifest.rows
    again = partitioned.snapshot(spec, settings)
    assert again.sha256 != ref.sha256 and again.rows == ref.rows - 1  # the manifest tells
    assert len(list(copies.glob("*.parquet"))) == len(manifest.pieces) + 1  # one new copy

    altered = Path(manifest.pieces[1].uri)
    pd.read_parquet(altered).iloc[:-2].to_parquet(altered, index=False)
    with pytest.raises(DataError) as changed:
        partitioned.split(spec, settings, ref)
    assert manifest.pieces[1].key in str(changed.value) and "altered" in str(changed.value)


@pytest.mark.parametrize("refusal", ["family", "scheduler"])
def test_refused_before_any_work_in_one_paragraph(
    prefect_api: None, tmp_path: Path, refusal: str
) -> None:
    one_process = next(name for name, f in FAMILIES.items() if f.distributed is None)
    family = one_process if refusal == "family" else "lightgbm"
    path = dask_spec(tmp_path, Task.binary, "xgboost")
    text = path.read_text().replace("family: xgboost", f"family: {family}")
    path.write_text(text)
    address = f"tcp://127.0.0.1:{free_port()}"
    env = clean_env(
        CONVEYOR_HOME=str(tmp_path / "state"),
        CONVEYOR_DASK_ADDRESS=address,
        CONVEYOR_DASK_TIMEOUT_S="3",
    )
    command = [str(BIN / "conveyor"), "run", "--spec", str(path)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    said = " ".join((done.stdout + done.stderr).split())
    assert done.returncode == 2, said[-3000:]
    assert_one_paragraph(said)
    if refusal == "family":
        assert all(name in said for name in distributed_families()), said
    else:
        assert address in said and "CONVEYOR_DASK_ADDRESS" in said, said
    settings = Settings(home=tmp_path / "state")
    assert not registered(settings, yaml.safe_load(text)["name"])


def test_init_covers_the_whole_table_not_only_its_sample(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A value, a null and a category only one late piece holds still reach the spec written
    from a profile, so the first release does not fail its own contract."""
    from tasks.datasets import table_profile
    from tasks.datasets.schema_gen import init_spec

    monkeypatch.setattr(table_profile, "SAMPLE_ROWS", 500)
    rng = np.random.default_rng(3)
    rows = 6_000
    frame = pd.DataFrame(
        {
            "x": rng.normal(0, 1, rows),
            "kind": rng.choice(["a", "b"], rows),
            "y": rng.integers(0, 2, rows),
        }
    )
    frame.loc[rows - 10, "x"] = 1_000.0
    frame.loc[rows - 20, "x"] = np.nan
    frame.loc[rows - 30, "kind"] = "rare"
    table = write_table(frame, tmp_path / "table")
    result = init_spec(str(table), "y", "profiled", tmp_path / "specs", compute="dask")
    spec = load_spec(Path(result.path))
    assert spec.compute == "dask" and spec.estimator.family in distributed_families()
    x = next(f for f in spec.features if f.name == "x")
    assert x.max is not None and x.max >= 1_000 and x.nullable
    kind = next(f for f in spec.features if f.name == "kind")
    assert kind.categories == ["a", "b", "rare"]


class Killer:
    """Kills the worker running a piece of LightGBM's fit (`_train_part`), `times` times, each
    time once its nanny has started a new one."""

    def __init__(self, address: str, times: int) -> None:
        self.address, self.times, self.killed = address, times, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        from distributed import Client

        with Client(self.address) as client:
            while self.killed < self.times and not self._stop.is_set():
                time.sleep(0.05)
                try:
                    busy = [
                        worker
                        for worker, keys in client.processing().items()
                        if any("_train_part" in str(key) for key in keys)
                    ]
                    if busy and len(client.scheduler_info()["workers"]) == 2:
                        pid = client.run(os.getpid, workers=[busy[0]])[busy[0]]
                        os.kill(pid, signal.SIGKILL)
                        self.killed += 1
                # A worker restarting as it is asked (a busy machine makes that likely) fails
                # the look: look again, rather than end the thread and leave the second fit
                # unharmed (the test then says how many kills it made).
                except Exception:
                    continue

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


@pytest.mark.parametrize("kills", [1, 2])
def test_a_worker_killed_mid_fit_is_fitted_again_once_then_refused(
    tmp_path: Path, kills: int
) -> None:
    from distributed import LocalCluster

    from tasks.core.cluster import ClusterError
    from tasks.modeling import distributed
    from tasks.modeling.training import build_pipeline

    spec = load_spec(dask_spec(tmp_path, Task.binary, "lightgbm"))
    params = {"n_estimators": 4000, "learning_rate": 0.01}
    with LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
    ) as cluster:
        settings = Settings(home=tmp_path / "state", dask_address=cluster.scheduler_address)
        result = partitioned.split(spec, settings, partitioned.snapshot(spec, settings))
        split = result.partitioned
        assert split is not None
        sample = pd.read_parquet(result.train.uri)
        killer = Killer(cluster.scheduler_address, kills)
        try:
            if kills == 1:
                model = distributed.fit(
                    spec, settings, split, build_pipeline(spec, params), sample, params
                )
                assert killer.killed == 1
                assert model[-1].n_estimators == 4000  # the whole fit, done again
            else:
                with pytest.raises(ClusterError) as refused:
                    distributed.fit(
                        spec, settings, split, build_pipeline(spec, params), sample, params
                    )
                said = str(refused.value)
                assert killer.killed == 2
                assert "lost twice" in said and "champion still serves" in said, said
        finally:
            killer.stop()
