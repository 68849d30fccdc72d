"""Batch scoring (`conveyor score`) of a partitioned Parquet table with a released champion, in
this process and on a `LocalCluster` of two worker processes: every row scored as the champion's
ONNX file answers it, pieces mirrored and written whole, a rerun after a kill skipping what was
written, bad pieces refused by name (or left out on request), another version's output refused,
S3 in and out through pyarrow, and the cluster's faults (a worker killed, no scheduler)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from flows.release import release_flow
from tasks.core import cluster
from tasks.core.settings import Settings
from tasks.core.spec import ModelSpec, load_spec
from tasks.datasets import pieces
from tasks.datasets.data import load_source, to_features
from tasks.modeling import onnx
from tasks.ops import scoring
from tasks.registry import model_registry, tracking
from tasks.serving import triton_server
from tests.conftest import write_spec
from tests.faults import SMALL_RELEASE, assert_one_paragraph
from tests.servers import BIN, clean_env, free_port, moto_s3
from tests.worker_faults import dies_always, dies_once, fills_memory

DAYS = [f"2026-11-{day:02d}" for day in range(1, 7)]


@dataclass
class Released:
    settings: Settings
    spec: ModelSpec
    version: int
    onnx_bytes: bytes
    threshold: float  # the release's operating threshold
    table: Path  # date=… partitions, two files each
    env: dict[str, str]


def write_table(frame: pd.DataFrame, root: Path, files_per_day: int = 2) -> Path:
    """`frame` as a folder of `date=` partitions, as a warehouse export writes it."""
    chunks = np.array_split(np.arange(len(frame)), len(DAYS) * files_per_day)
    for i, rows in enumerate(chunks):
        folder = root / f"date={DAYS[i // files_per_day]}"
        folder.mkdir(parents=True, exist_ok=True)
        frame.iloc[rows].to_parquet(folder / f"part-{i % files_per_day}.parquet", index=False)
    return root


@pytest.fixture(scope="module")
def released(prefect_api: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Released]:
    base = tmp_path_factory.mktemp("score")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("CONVEYOR_HOME", str(base / "state"))
        settings = Settings()
        spec_path = write_spec(base, **SMALL_RELEASE)
        try:
            result = release_flow(str(spec_path))
            spec = load_spec(spec_path)
            ref = model_registry.version_ref(settings, spec.name, result.version)
            onnx_bytes = tracking.read_artifact(
                settings, f"runs:/{ref.run_id}/{tracking.ONNX_ARTIFACT}"
            )
            frame = load_source(
                spec.model_copy(
                    update={"data": spec.data.model_copy(update={"rows": 3000, "seed": 11})}
                )
            )
            table = write_table(frame.drop(columns=[spec.target.name]), base / "table")
            threshold = float(tracking.run_tags(settings, ref.run_id)[tracking.TAG_THRESHOLD])
            yield Released(
                settings,
                spec,
                result.version,
                onnx_bytes,
                threshold,
                table,
                clean_env(CONVEYOR_HOME=str(base / "state")),
            )
        finally:
            triton_server.stop(settings)


def scored_table(root: Path) -> pd.DataFrame:
    return pd.concat(
        [
            pd.read_parquet(path).assign(piece=str(path.relative_to(root)))
            for path in sorted(root.rglob("*.parquet"))
        ],
        ignore_index=True,
    )


def expected(released: Released) -> pd.DataFrame:
    """The champion's ONNX answers for every input row, piece by piece in key order."""
    frames = []
    for piece in pieces.list_pieces(str(released.table)):
        frame = pd.read_parquet(piece.uri)
        outputs = onnx.predict_outputs(released.onnx_bytes, to_features(frame, released.spec))
        table = scoring.served_columns(released.spec, outputs, released.threshold)
        frames.append(table.assign(piece=piece.key))
    return pd.concat(frames, ignore_index=True)


@pytest.mark.parametrize("compute", cluster.COMPUTES)
def test_every_row_is_scored_as_the_champion_answers(
    released: Released, compute: cluster.Compute, tmp_path: Path
) -> None:
    out = tmp_path / "scores"
    report = scoring.score(
        released.settings, released.spec.name, str(released.table), str(out), compute=compute
    )
    found = pieces.list_pieces(str(released.table))
    assert (report.pieces, report.scored, report.skipped, report.refused) == (12, 12, 0, [])
    assert report.rows == 3000 and report.version == released.version
    got = scored_table(out)
    assert sorted(got["piece"].unique()) == [piece.key for piece in found]
    want = expected(released)
    probabilities = [c for c in want.columns if c.startswith("probability:")]
    assert len(got) == len(want) == 3000
    np.testing.assert_array_equal(got["label"], want["label"])
    np.testing.assert_allclose(got[probabilities], want[probabilities], rtol=0, atol=0)
    # The decision the release's metrics describe: the positive class from its threshold on.
    negative, positive = released.spec.target.classes or []
    flagged = got[f"probability:{positive}"] >= released.threshold
    assert (got["decision"] == np.where(flagged, positive, negative)).all()
    assert 0 < flagged.sum() < len(got)
    assert (got["version"] == released.version).all() and (got["model"] == released.spec.name).all()
    # Each piece's rows are numbered from 0 as in its input, for a join by position.
    assert got.groupby("piece")["row"].apply(lambda r: list(r) == list(range(len(r)))).all()
    assert not list(out.rglob(".*")), "a writer's leftovers are visible"


def test_a_rerun_after_a_kill_skips_what_was_written(released: Released, tmp_path: Path) -> None:
    """`conveyor score` killed once its first pieces are written; the rerun scores the rest and
    every piece is whole."""
    frame = pd.concat(pd.read_parquet(p.uri) for p in pieces.list_pieces(str(released.table)))
    table = write_table(pd.concat([frame] * 10, ignore_index=True), tmp_path / "big", 6)
    total = len(pieces.list_pieces(str(table)))
    out = tmp_path / "scores"
    command = [str(BIN / "conveyor"), "score", released.spec.name]
    command += ["--input", str(table), "--output", str(out)]
    process = subprocess.Popen(
        command,
        env=released.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    deadline = time.monotonic() + 180
    while len(list(out.rglob("*.parquet"))) < 3:
        assert process.poll() is None, process.communicate()[0][-3000:]
        assert time.monotonic() < deadline, "no piece was written"
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(30)
    written = len(list(out.rglob("*.parquet")))
    assert 3 <= written < total
    for path in out.rglob("*.parquet"):  # whole pieces only, each readable
        assert len(pd.read_parquet(path)) > 0
    again = subprocess.run(command, env=released.env, capture_output=True, text=True, timeout=300)
    said = " ".join(again.stdout.split())
    assert again.returncode == 0, said[-3000:]
    assert f"in {total - written} pieces ({written} already written)" in said, said
    assert len(scored_table(out)) == 30_000
    assert not list(out.rglob(".*"))


def test_bad_pieces_are_refused_by_name_unless_skipped(released: Released, tmp_path: Path):
    table = tmp_path / "table"
    frame = pd.concat(pd.read_parquet(p.uri) for p in pieces.list_pieces(str(released.table)))
    write_table(frame, table)
    feature = next(f for f in released.spec.features if f.max is not None)
    bad = table / f"date={DAYS[2]}" / "part-1.parquet"
    broken = pd.read_parquet(bad)
    broken.loc[broken.index[[3, 7]], feature.name] = feature.max * 10 + 1
    broken.to_parquet(bad, index=False)
    out = tmp_path / "scores"
    name = released.spec.name
    with pytest.raises(scoring.ScoreError) as refused:
        scoring.score(released.settings, name, str(table), str(out))
    message = str(refused.value)
    assert f"date={DAYS[2]}/part-1.parquet" in message and feature.name in message, message
    assert "row(s) 4, 8" in message and "--skip-bad" in message, message
    assert not out.exists() or not list(out.rglob("*.parquet")), "a refusal wrote scores"

    report = scoring.score(released.settings, name, str(table), str(out), skip_bad=True)
    assert report.scored == 11 and [r.key for r in report.refused] == [
        bad.relative_to(table).as_posix()
    ]
    assert not (out / bad.relative_to(table)).exists()


def test_scores_of_another_version_are_not_overwritten(released: Released, tmp_path: Path):
    out = tmp_path / "scores"
    scoring.score(released.settings, released.spec.name, str(released.table), str(out))
    first = out / f"date={DAYS[0]}" / "part-0.parquet"
    before = first.read_bytes()
    # The same output, now claimed by other scores (another model wrote there).
    pieces.write_piece(
        pd.read_parquet(first),
        str(first),
        {
            "model": "another-model",
            "version": "3",
            "run_id": "x",
            "input_key": f"date={DAYS[0]}/part-0.parquet",
            "input_size": "1",
        },
    )
    with pytest.raises(scoring.ScoreError) as refused:
        scoring.score(released.settings, released.spec.name, str(released.table), str(out))
    message = str(refused.value)
    assert "another-model v3" in message and "another --output" in message, message
    assert first.read_bytes() != before  # the claim stayed: nothing was overwritten


def test_a_piece_written_by_another_run_meanwhile_is_named_not_overwritten(
    released: Released, tmp_path: Path
) -> None:
    """Two runs into one output at once, of different versions: the piece the other run wrote
    after this one planned stays as that run wrote it, and this run names it as refused."""
    out = tmp_path / "scores"
    [piece, *_] = pieces.list_pieces(str(released.table))
    target = out / piece.key
    claimed = {"model": "another-model", "version": "3", "run_id": "x"}
    pieces.write_piece(pd.DataFrame({"row": [0]}), str(target), claimed | {"input_key": "k"})
    before = target.read_bytes()
    stamp = {"model": released.spec.name, "version": str(released.version), "run_id": "r"}
    job = scoring.Job(spec=released.spec, stamp=stamp, output=str(out), keep=[])
    result = scoring.score_piece(piece, job, released.onnx_bytes)
    assert result.state == "refused" and "another-model v3" in result.problems[0], result
    assert target.read_bytes() == before
    # A piece nobody else wrote is scored as usual.
    assert (
        scoring.score_piece(
            pieces.list_pieces(str(released.table))[1], job, released.onnx_bytes
        ).state
        == "scored"
    )


def test_s3_in_and_out_through_pyarrow(released: Released, tmp_path: Path) -> None:
    import boto3

    with moto_s3(tmp_path) as endpoint, pytest.MonkeyPatch.context() as env:
        for key, value in {
            "AWS_ENDPOINT_URL": endpoint,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
        }.items():
            env.setenv(key, value)
        s3 = boto3.client("s3")
        s3.create_bucket(Bucket="lake")
        for piece in pieces.list_pieces(str(released.table)):
            s3.upload_file(piece.uri, "lake", f"cards/{piece.key}")
        report = scoring.score(
            released.settings, released.spec.name, "s3://lake/cards", "s3://lake/scores/v1"
        )
        assert (report.scored, report.rows) == (12, 3000)
        keys = [o["Key"] for o in s3.list_objects_v2(Bucket="lake", Prefix="scores/")["Contents"]]
        assert sorted(keys) == sorted(
            f"scores/v1/{p.key}" for p in pieces.list_pieces(str(released.table))
        )
        again = scoring.score(
            released.settings, released.spec.name, "s3://lake/cards", "s3://lake/scores/v1"
        )
        assert (again.scored, again.skipped) == (0, 12)


def test_a_killed_worker_is_replaced_and_the_work_done(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "state")
    with cluster.runner(settings, "dask") as run:
        pids = list(run(dies_once, [str(tmp_path / "marker")], 0))
    assert len(pids) == 1 and pids[0] != os.getpid()


def test_a_piece_that_kills_every_worker_is_named_with_its_size(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "state")
    piece = pieces.Piece(
        uri=str(tmp_path / "x.parquet"), key="date=2026-11-03/x.parquet", size=3 << 20
    )
    with pytest.raises(cluster.ClusterError) as stopped, cluster.runner(settings, "dask") as run:
        list(run(dies_always, [piece], 0))
    message = str(stopped.value)
    assert "date=2026-11-03/x.parquet (3.0 MB on disk)" in message, message
    assert "not for memory" in message and "rerun" in message, message


def test_a_piece_too_large_for_a_workers_memory_is_named_as_such(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real memory limit: the nanny stops each worker that takes the piece, and the refusal
    says out of memory, how much the worker held of its limit, and the piece with its size."""
    import dask
    from distributed import LocalCluster

    with (
        dask.config.set({"distributed.scheduler.allowed-failures": 1}),  # two tries, not four
        LocalCluster(
            n_workers=1,
            threads_per_worker=1,
            processes=True,
            memory_limit="1GiB",
            dashboard_address=None,
        ) as local,
    ):
        monkeypatch.setenv("CONVEYOR_DASK_ADDRESS", local.scheduler_address)
        settings = Settings(home=tmp_path / "state")
        piece = pieces.Piece(
            uri=str(tmp_path / "x.parquet"), key="date=2026-11-04/x.parquet", size=5 << 20
        )
        with (
            pytest.raises(cluster.ClusterError) as stopped,
            cluster.runner(settings, "dask") as run,
        ):
            list(run(fills_memory, [piece], 0))
    message = str(stopped.value)
    assert message.startswith(
        "date=2026-11-04/x.parquet (5.0 MB on disk) ran the Dask workers out of memory: worker "
    ), message
    assert "MB of its 1,024 MB limit" in message and "more memory" in message, message


def test_no_scheduler_is_one_paragraph_and_nothing_written(
    released: Released, tmp_path: Path
) -> None:
    address = f"tcp://127.0.0.1:{free_port()}"
    out = tmp_path / "scores"
    env = released.env | {"CONVEYOR_DASK_ADDRESS": address, "CONVEYOR_DASK_TIMEOUT_S": "3"}
    command = [str(BIN / "conveyor"), "score", released.spec.name, "--compute", "dask"]
    command += ["--input", str(released.table), "--output", str(out)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    said = " ".join((done.stdout + done.stderr).split())
    assert done.returncode == 2, said[-3000:]
    assert_one_paragraph(said)
    assert address in said and "CONVEYOR_DASK_ADDRESS" in said, said
    assert not out.exists()
