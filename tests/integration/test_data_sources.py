"""Data sources against real servers: S3 (moto's server on 127.0.0.1), and the data contract
stopping a real release before anything is trained or registered."""

from __future__ import annotations

import asyncio
import io
import subprocess
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from mlflow import MlflowClient

from flows.release import release_flow
from tasks.core.settings import Settings
from tasks.core.spec import DEFAULT_SPEC, ModelSpec, load_spec
from tasks.datasets.data import DataError, load_source
from tasks.datasets.quality import DataQualityError
from tasks.datasets.synthetic import generate_transactions
from tasks.ops.drift import load_current
from tests.conftest import write_spec
from tests.servers import BIN, clean_env, moto_s3


def with_source(spec: ModelSpec, source: str) -> ModelSpec:
    return spec.model_copy(update={"data": spec.data.model_copy(update={"source": source})})


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")


@pytest.fixture(scope="module")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with moto_s3(tmp_path_factory.mktemp("moto")) as endpoint:
        yield endpoint


def test_s3_prefix_with_date_partitions_is_read_whole(aws, s3_endpoint, monkeypatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="card-data")
    frame = generate_transactions(3000, seed=9, fraud_rate=0.03)
    for day, part in (("2026-11-01", frame.head(1000)), ("2026-11-02", frame.tail(2000))):
        buffer = io.BytesIO()
        part.to_parquet(buffer, index=False)
        s3.put_object(
            Bucket="card-data", Key=f"tx/date={day}/part-0.parquet", Body=buffer.getvalue()
        )
    s3.put_object(Bucket="card-data", Key="tx/_SUCCESS", Body=b"")
    loaded = load_source(with_source(load_spec(DEFAULT_SPEC), "s3://card-data/tx"))
    assert len(loaded) == 3000
    assert loaded.is_fraud.sum() == frame.is_fraud.sum()
    # The drift check compares only the newest day against the champion's training data.
    current, where = load_current(with_source(load_spec(DEFAULT_SPEC), "s3://card-data/tx"))
    assert len(current) == 2000
    assert where == "s3://card-data/tx (date=2026-11-02)"


def test_missing_bucket_is_named(aws, s3_endpoint, monkeypatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    with pytest.raises(DataError, match="S3 bucket 'no-such-bucket' does not exist"):
        load_source(with_source(load_spec(DEFAULT_SPEC), "s3://no-such-bucket/tx"))


def test_refused_credentials_are_named(aws, monkeypatch, tmp_path: Path) -> None:
    with moto_s3(tmp_path, require_auth=True) as endpoint:
        monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
        with pytest.raises(DataError, match=r"S3 refused access to s3://card-data/tx \(\w+\)"):
            load_source(with_source(load_spec(DEFAULT_SPEC), "s3://card-data/tx"))


def test_bad_data_stops_the_release_before_training(
    prefect_api: None, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setenv("CONVEYOR_HOME", str(tmp_path / "state"))
    bad = generate_transactions(3000, seed=4, fraud_rate=0.03)
    bad.loc[:9, "amount"] = float("inf")
    bad.drop(columns=["card_present"]).to_parquet(tmp_path / "bad.parquet", index=False)
    spec_path = write_spec(tmp_path, **{"data.source": str(tmp_path / "bad.parquet")})
    with pytest.raises(DataQualityError) as failed:
        release_flow(str(spec_path))
    message = str(failed.value)
    assert "`card_present`: column present" in message
    assert "`amount`: finite, in [0, 50000], 10 row(s), e.g. inf" in message

    settings = Settings()
    client = MlflowClient(settings.tracking_uri)
    assert client.search_registered_models() == []
    experiment = client.get_experiment_by_name("fraud-detector")
    runs = client.search_runs([experiment.experiment_id])
    assert [(r.info.run_name, r.info.status) for r in runs] == [("data-validation", "FAILED")]

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    async def artifact() -> str:
        async with get_client() as prefect:
            found = await prefect.read_artifacts(
                artifact_filter=ArtifactFilter(
                    key=ArtifactFilterKey(any_=["data-validation-fraud-detector"])
                )
            )
            # The newest one: other modules' releases share this API and the key.
            return str(max(found, key=lambda a: str(a.created)).data)

    assert "Data validation FAILED" in asyncio.run(artifact())


def _refused_release(spec_path: Path, home: Path) -> str:
    """`conveyor run` as a user runs it; its output, once it exited 2."""
    from prefect.settings import PREFECT_API_URL

    done = subprocess.run(
        [str(BIN / "conveyor"), "run", "--spec", str(spec_path)],
        env=clean_env(CONVEYOR_HOME=str(home), PREFECT_API_URL=str(PREFECT_API_URL.value())),
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 2, output
    return output


def test_a_data_contract_failure_is_shown_on_the_data_stage(
    prefect_api: None, tmp_path: Path
) -> None:
    spec_path = write_spec(tmp_path, **{"data.rows": 2000, "quality.min_rows": 5000})
    said = " ".join(_refused_release(spec_path, tmp_path / "state").split())
    assert "Traceback" not in said
    assert "breaks the spec's contract" in said and "at least 5000 rows" in said, said
    # It was shown as ✓ data then ✗ training: the contract is the data stage's verdict.
    assert "✗ data" in said and "training" not in said, said


def test_a_release_on_an_empty_csv_is_one_short_paragraph(prefect_api: None, tmp_path: Path):
    empty = tmp_path / "transactions.csv"
    empty.write_text("")
    spec_path = write_spec(tmp_path, **{"data.source": str(empty)})
    output = _refused_release(spec_path, tmp_path / "state")
    assert len(output.splitlines()) <= 15, output
    assert "Traceback" not in output and "ERROR" not in output, output
    said = " ".join(output.split())
    assert "is empty (0 bytes)" in said and str(empty.name) in said
    # The data stage is shown failed; nothing after it started.
    assert "✗ data" in said and "training" not in said


def test_init_on_a_csv_it_has_never_seen_writes_a_spec_that_releases(
    prefect_api: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """scikit-learn's bundled Wisconsin breast-cancer table (569 rows, 30 measurements, no
    download), as a bank's analyst would export it: the spec `conveyor init` writes releases
    with no edit."""
    from sklearn.datasets import load_breast_cancer

    from tasks.datasets.schema_gen import init_spec
    from tasks.registry import model_registry
    from tasks.serving import triton_server

    frame = load_breast_cancer(as_frame=True).frame
    frame.columns = [c.replace(" ", "_") for c in frame.columns]
    source = tmp_path / "wdbc.csv"
    frame.to_csv(source, index=False)
    monkeypatch.setenv("CONVEYOR_HOME", str(tmp_path / "state"))
    written = init_spec(str(source), "target", "wdbc", tmp_path / "specs")
    assert written.features == 30 and written.skipped == []
    settings = Settings()
    try:
        result = release_flow(written.path)
        assert result.version == 1 and result.smoke.passed
        assert model_registry.alias_version(settings, "wdbc", model_registry.CHAMPION) == 1
        assert result.metrics.roc_auc > 0.95  # a real, easy table: the pipeline learns it
    finally:
        triton_server.stop(settings)
