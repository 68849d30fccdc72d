"""Datasets: synthetic transaction generator, Parquet load/save, split, fingerprint, encoding."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
from prefect import task
from pydantic import BaseModel
from sklearn.model_selection import train_test_split

from tasks.settings import ConveyorError, FeatureType, ModelSpec, Settings


class DataError(ConveyorError):
    """The data does not match the spec."""


class DatasetRef(BaseModel):
    """A dataset on disk, named by its content."""

    uri: str
    sha256: str
    rows: int
    positives: int


class SplitResult(BaseModel):
    train: DatasetRef
    holdout: DatasetRef


# Class-conditional distributions of the synthetic transactions: (legitimate, fraud).
_CHANNEL_P = {
    "legit": {"pos": 0.45, "online": 0.30, "atm": 0.10, "contactless": 0.15},
    "fraud": {"pos": 0.10, "online": 0.70, "atm": 0.12, "contactless": 0.08},
}
# Share of fraud rows whose features are drawn from the legitimate distribution one by one: real
# fraudsters imitate normal behaviour, and without it the problem is trivially separable.
_CAMOUFLAGE = 0.45


def generate_transactions(
    rows: int, seed: int, fraud_rate: float, drift: float = 0.0
) -> pd.DataFrame:
    """Card transactions with a rare fraud class; `drift` > 0 shifts the population (not labels)."""
    rng = np.random.default_rng(seed)
    fraud = rng.random(rows) < fraud_rate

    def mix(legit: np.ndarray, bad: np.ndarray) -> np.ndarray:
        use_bad = fraud & (rng.random(rows) >= _CAMOUFLAGE)
        return np.where(use_bad, bad, legit)

    night = rng.integers(0, 6, rows)
    day = np.clip(np.round(rng.normal(14, 4, rows)), 0, 23).astype(int)
    hour = mix(
        np.where(rng.random(rows) < 0.1, night, day), np.where(rng.random(rows) < 0.6, night, day)
    )

    amount = mix(rng.lognormal(3.6, 1.0, rows), rng.lognormal(5.0, 1.3, rows))
    international = mix(rng.random(rows) < 0.05, rng.random(rows) < 0.35)
    velocity = mix(rng.beta(2, 8, rows), rng.beta(5, 3, rows))
    merchant = mix(rng.beta(2, 6, rows), rng.beta(4, 3, rows))
    age = mix(rng.gamma(2.0, 800.0, rows), rng.gamma(1.2, 150.0, rows))
    count = mix(rng.poisson(3, rows), rng.poisson(9, rows))
    distance = mix(rng.exponential(15.0, rows), rng.exponential(500.0, rows))
    present = mix(rng.random(rows) < 0.6, rng.random(rows) < 0.15)
    names = list(_CHANNEL_P["legit"])
    channel = mix(
        rng.choice(len(names), rows, p=list(_CHANNEL_P["legit"].values())),
        rng.choice(len(names), rows, p=list(_CHANNEL_P["fraud"].values())),
    )

    if drift > 0:
        # Covariate shift of the kind a card book sees after a product launch or an attack wave.
        amount = amount * (1.0 + 0.8 * drift)
        international = international | (rng.random(rows) < 0.15 * drift)
        velocity = np.clip(velocity + 0.15 * drift * rng.random(rows), 0, 1)
        to_online = rng.random(rows) < 0.35 * min(drift, 1.0)
        channel = np.where(to_online, names.index("online"), channel)
        hour = np.where(rng.random(rows) < 0.2 * min(drift, 1.0), rng.integers(0, 6, rows), hour)

    return pd.DataFrame(
        {
            "amount": np.round(np.clip(amount, 0.5, 50_000.0), 2),
            "hour_of_day": hour.astype("int64"),
            "is_international": international.astype(bool),
            "velocity_score": np.round(velocity, 4),
            "merchant_risk_score": np.round(merchant, 4),
            "account_age_days": np.clip(age, 0, 20_000).astype("int64"),
            "txn_count_24h": np.clip(count, 0, 500).astype("int64"),
            "distance_from_home_km": np.round(np.clip(distance, 0, 20_000.0), 1),
            "card_present": present.astype(bool),
            "channel": pd.Categorical.from_codes(channel, categories=names).astype(str),
            "is_fraud": fraud.astype("int64"),
        }
    )


def fingerprint(frame: pd.DataFrame) -> str:
    """sha256 of the content (column names, dtypes and values), independent of the file format."""
    digest = hashlib.sha256()
    digest.update("|".join(f"{c}:{t}" for c, t in frame.dtypes.astype(str).items()).encode())
    digest.update(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes())
    return digest.hexdigest()


def write_parquet_atomic(frame: pd.DataFrame, path: Path) -> None:
    """Write next to the target and rename, so a reader never sees a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        frame.to_parquet(tmp, index=False)
        Path(tmp).replace(path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_dataset(frame: pd.DataFrame, directory: Path, stem: str, target: str) -> DatasetRef:
    """Store under a content-addressed name; saving the same data twice writes one file."""
    sha = fingerprint(frame)
    path = directory / f"{stem}-{sha[:16]}.parquet"
    if not path.exists():
        write_parquet_atomic(frame, path)
    positives = int(frame[target].sum()) if target in frame else 0
    return DatasetRef(uri=str(path), sha256=sha, rows=len(frame), positives=positives)


def load_dataset(uri: str) -> pd.DataFrame:
    path = Path(uri)
    if not path.exists():
        raise DataError(f"dataset not found: {uri}. Re-run training to regenerate it.")
    return pd.read_parquet(path)


def split(
    frame: pd.DataFrame, target: str, holdout_fraction: float, seed: int
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Stratified split, so the rare class appears in both parts at its base rate."""
    train, holdout = train_test_split(
        frame, test_size=holdout_fraction, random_state=seed, stratify=frame[target]
    )
    return train.reset_index(drop=True), holdout.reset_index(drop=True)


def to_features(frame: pd.DataFrame, spec: ModelSpec) -> np.ndarray:
    """The served `features` tensor: FP32, spec order, categories as indices, booleans as 0/1."""
    missing = [f.name for f in spec.features if f.name not in frame.columns]
    if missing:
        raise DataError(
            f"columns {missing} required by spec {spec.name!r} are missing from the data; "
            f"present: {list(frame.columns)}"
        )
    columns = []
    for feature in spec.features:
        values = frame[feature.name]
        if feature.type is FeatureType.category:
            categories = feature.categories or []
            codes = pd.Categorical(values, categories=categories).codes
            unknown = sorted(set(values[codes < 0].astype(str)) - {"nan"})[:5]
            if unknown:
                raise DataError(
                    f"feature {feature.name!r} has values outside its categories {categories}: "
                    f"{unknown}; add them to the spec or clean the data"
                )
            columns.append(codes.astype(np.float32))
        else:
            columns.append(values.to_numpy(dtype=np.float32))
    return np.column_stack(columns).astype(np.float32, copy=False)


def to_target(frame: pd.DataFrame, spec: ModelSpec) -> np.ndarray:
    if spec.target.name not in frame.columns:
        raise DataError(f"target column {spec.target.name!r} is missing from the data")
    return frame[spec.target.name].to_numpy(dtype=np.int64)


def prepare_data(spec: ModelSpec, settings: Settings) -> SplitResult:
    """Produce the spec's dataset and its train/holdout split, stored under the state directory."""
    if spec.data.source != "synthetic":
        raise DataError(f"data source {spec.data.source!r} is not supported yet; use `synthetic`")
    frame = generate_transactions(
        spec.data.rows, spec.data.seed, spec.data.fraud_rate, spec.data.drift
    )
    directory = settings.data_dir / spec.name
    train, holdout = split(frame, spec.target.name, spec.data.holdout_fraction, spec.data.seed)
    return SplitResult(
        train=save_dataset(train, directory, "train", spec.target.name),
        holdout=save_dataset(holdout, directory, "holdout", spec.target.name),
    )


@task(name="prepare-data")
def prepare_data_task(spec: ModelSpec, settings: Settings) -> SplitResult:
    return prepare_data(spec, settings)
