"""Every data source of the table, against a real store where it has one (S3: moto's server on
127.0.0.1): written as its users' pipelines write it, `date=` partitions included, then read
whole, read by its newest partition, pinned and read again, and turned into a spec by `conveyor
init --from`. Iterates `SOURCES`: a source added to the table needs its writer below, nothing
else."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from pathlib import Path

import boto3
import pandas as pd
import pytest

from tasks.core.spec import load_spec
from tasks.datasets.data import fingerprint
from tasks.datasets.schema_gen import init_spec
from tasks.datasets.sources import SOURCES, pinned, read_source, source_of
from tasks.datasets.synthetic import generate_transactions
from tests.servers import moto_s3

Days = dict[str, pd.DataFrame]


def _local(base: Path, days: Days) -> str:
    for day, frame in days.items():
        (base / "local" / f"date={day}").mkdir(parents=True)
        frame.to_parquet(base / "local" / f"date={day}" / "part-0.parquet", index=False)
    return str(base / "local")


def _s3(base: Path, days: Days) -> str:
    client = boto3.client("s3")
    client.create_bucket(Bucket="lake")
    for day, frame in days.items():
        buffer = io.BytesIO()
        frame.to_parquet(buffer, index=False)
        client.put_object(
            Bucket="lake", Key=f"tx/date={day}/part-0.parquet", Body=buffer.getvalue()
        )
    client.put_object(Bucket="lake", Key="tx/_SUCCESS", Body=b"")
    return "s3://lake/tx"


def _delta(base: Path, days: Days) -> str:
    from deltalake import write_deltalake

    for day, frame in days.items():
        write_deltalake(
            base / "delta", frame.assign(date=day), partition_by=["date"], mode="append"
        )
    return str(base / "delta")


WRITERS: dict[str, Callable[[Path, Days], str]] = {"local": _local, "s3": _s3, "delta": _delta}


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    with moto_s3(tmp_path_factory.mktemp("moto")) as endpoint, pytest.MonkeyPatch.context() as env:
        env.setenv("AWS_ENDPOINT_URL", endpoint)
        env.setenv("AWS_ACCESS_KEY_ID", "testing")
        env.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        env.setenv("AWS_DEFAULT_REGION", "us-east-1")
        yield


@pytest.mark.parametrize("name", list(SOURCES))
def test_every_source_reads_whole_newest_pinned_and_for_init(
    s3: None, name: str, tmp_path: Path
) -> None:
    assert name in WRITERS, f"write a {name} source here as its users would"
    frame = generate_transactions(900, seed=5, fraud_rate=0.05)
    days = {"2026-11-01": frame.iloc[:500], "2026-11-02": frame.iloc[500:]}
    uri = WRITERS[name](tmp_path, days)
    assert source_of(uri) is SOURCES[name]

    whole, partition = read_source(uri)
    assert partition is None and len(whole) == 900
    assert whole.is_fraud.sum() == frame.is_fraud.sum()
    newest, partition = read_source(uri, newest_only=True)
    assert partition == "date=2026-11-02" and len(newest) == 400
    assert sorted(newest.amount) == sorted(days["2026-11-02"].amount)

    # Pinned, the read is the same rows in the same order, every time.
    again = pinned(uri)
    assert fingerprint(read_source(again)[0]) == fingerprint(whole)
    assert fingerprint(read_source(uri)[0]) == fingerprint(whole)

    spec = load_spec(init_spec(uri, "is_fraud", f"from-{name}", tmp_path / "specs").path)
    assert spec.data.source == uri and spec.task.value == "binary"
    assert "amount" in spec.feature_names


def test_a_delta_table_on_s3_reads_whole_newest_and_pinned(s3: None) -> None:
    """Delta Lake on an S3 store (moto here, MinIO on the stack), written as a lakehouse job
    writes it: the same reads as a local table, at a pinned version after the table moved."""
    import os

    from deltalake import write_deltalake

    options = {"AWS_ALLOW_HTTP": "true", "AWS_S3_ALLOW_UNSAFE_RENAME": "true"}
    options["AWS_ENDPOINT_URL"] = os.environ["AWS_ENDPOINT_URL"]
    boto3.client("s3").create_bucket(Bucket="lakehouse")
    frame = generate_transactions(900, seed=6, fraud_rate=0.05)
    table = "s3://lakehouse/tx"
    for day, rows in (("2026-11-01", frame.iloc[:500]), ("2026-11-02", frame.iloc[500:])):
        write_deltalake(
            table,
            rows.assign(date=day),
            partition_by=["date"],
            mode="append",
            storage_options=options,
        )
    uri = f"delta://{table}"
    assert source_of(uri) is SOURCES["delta"]
    whole, _ = read_source(uri)
    assert len(whole) == 900 and whole.is_fraud.sum() == frame.is_fraud.sum()
    newest, partition = read_source(uri, newest_only=True)
    assert partition == "date=2026-11-02" and len(newest) == 400
    at = pinned(uri)
    write_deltalake(
        table,
        frame.iloc[:10].assign(date="2026-11-03"),
        partition_by=["date"],
        mode="append",
        storage_options=options,
    )
    assert fingerprint(read_source(at)[0]) == fingerprint(whole)
    assert len(read_source(uri)[0]) == 910


def test_a_delta_table_is_released_at_its_version_and_unchanged_until_it_moves(
    prefect_api: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from deltalake import write_deltalake

    from flows.release import release_flow
    from tasks.core.settings import Settings
    from tasks.modeling.unchanged import UnchangedModel
    from tasks.registry import tracking
    from tests.conftest import write_spec

    monkeypatch.setenv("CONVEYOR_HOME", str(tmp_path / "state"))
    table = tmp_path / "transactions"
    frame = generate_transactions(3000, seed=8, fraud_rate=0.05)
    write_deltalake(table, frame.iloc[:2000])
    write_deltalake(table, frame.iloc[2000:], mode="append")  # version 1: all 3,000 rows
    spec_path = write_spec(tmp_path, **{"data.source": f"delta://{table}"})
    first = release_flow(str(spec_path))
    run = tracking.run_tags(Settings(), first.run_id)
    assert run[tracking.TAG_READ_FROM] == f"delta://{table}?version=1"
    assert first.train.rows + first.holdout.rows == 3000
    # The table has not moved: nothing to rebuild.
    assert isinstance(release_flow(str(spec_path)), UnchangedModel)
    # The pinned read is what the release saw, after the table moved on.
    write_deltalake(table, frame.iloc[:100], mode="append")
    assert len(read_source(run[tracking.TAG_READ_FROM])[0]) == 3000
    assert len(read_source(f"delta://{table}")[0]) == 3100
