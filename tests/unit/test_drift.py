from datetime import UTC, datetime, timedelta
from pathlib import Path

from tasks.core.settings import Settings
from tasks.core.spec import DEFAULT_SPEC, load_spec
from tasks.datasets.sources.files import dates_in
from tasks.datasets.synthetic import generate_transactions
from tasks.ops.drift import load_current
from tasks.ops.retrain import claim_retrain
from tasks.registry import mlflow_store


def test_newest_partition_is_the_latest_date_not_the_last_listed() -> None:
    keys = ["tx/date=2026-11-02/a.parquet", "tx/date=2026-11-10/b.parquet", "tx/date=2026-09-30/c"]
    assert dates_in(keys)[0] == "2026-11-10"
    assert dates_in(["tx/part-0.parquet"]) == []


def test_current_batch_is_the_newest_local_partition(tmp_path: Path) -> None:
    for day, rows in (("2026-11-01", 300), ("2026-11-02", 200)):
        folder = tmp_path / f"date={day}"
        folder.mkdir()
        generate_transactions(rows, seed=3, fraud_rate=0.05).to_parquet(folder / "part-0.parquet")
    spec = load_spec(DEFAULT_SPEC)
    spec = spec.model_copy(update={"data": spec.data.model_copy(update={"source": str(tmp_path)})})
    frame, where = load_current(spec)
    assert len(frame) == 200
    assert where.endswith("(date=2026-11-02)")


def test_retrain_claim_is_refused_inside_the_cooldown_and_granted_after(
    settings: Settings,
) -> None:
    spec = load_spec(DEFAULT_SPEC)
    start = datetime(2026, 11, 23, 2, 0, tzinfo=UTC)
    first = claim_retrain(settings, spec, now=start)
    assert first.granted and first.last_at is None
    inside = claim_retrain(settings, spec, now=start + timedelta(seconds=spec.drift.cooldown_s - 1))
    assert not inside.granted
    assert f"inside the {spec.drift.cooldown_s} s cooldown" in inside.reason
    after = claim_retrain(settings, spec, now=start + timedelta(seconds=spec.drift.cooldown_s))
    assert after.granted and after.last_at == start


def test_retrain_claim_on_a_registered_model_without_tags(settings: Settings) -> None:
    spec = load_spec(DEFAULT_SPEC)
    mlflow_store.client(settings).create_registered_model(spec.name)
    assert claim_retrain(settings, spec).granted
