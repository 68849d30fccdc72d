"""Datasets: the release's snapshot of its source, Parquet load/save, split, fingerprint,
encoding (the sources themselves are `tasks.datasets.sources`, the synthetic generators
`tasks.datasets.synthetic`)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
from pydantic import BaseModel
from sklearn.model_selection import train_test_split

from tasks.core.model_task import Task
from tasks.core.settings import Settings
from tasks.core.spec import FeatureType, ModelSpec
from tasks.datasets import synthetic
from tasks.datasets.not_numbers import PLACEHOLDER_FIX, examples_of, not_numbers
from tasks.datasets.pieces import Piece, write_table_atomic
from tasks.datasets.sources import pinned, read_source
from tasks.datasets.sources.files import DataError


class DatasetRef(BaseModel):
    """A dataset on disk, named by its content."""

    uri: str
    sha256: str
    rows: int
    positives: int
    # The source as it was read, pinned where it has versions (a Delta table's): reading this
    # again gives these rows. None for a split or a synthetic source.
    read_from: str | None = None


class SplitPiece(Piece):
    train_rows: int
    holdout_rows: int


class PartitionedSplit(BaseModel):
    """`compute: dask` (`tasks.datasets.partitioned`): where every row of both sides is, the
    manifest and each piece's share of each side, cut again the same way by whoever reads it."""

    manifest: str
    pieces: list[SplitPiece]
    seed: int
    holdout_fraction: float

    @property
    def train_rows(self) -> int:
        return sum(piece.train_rows for piece in self.pieces)

    @property
    def holdout_rows(self) -> int:
        return sum(piece.holdout_rows for piece in self.pieces)


class SplitResult(BaseModel):
    train: DatasetRef
    holdout: DatasetRef
    source_sha256: str  # the snapshot both were cut from: what "the same data" means
    read_from: str | None = None  # the snapshot's source, pinned (`DatasetRef.read_from`)
    # With `compute: dask`, `train` and `holdout` are seeded samples of the two sides, and this
    # says where all their rows are.
    partitioned: PartitionedSplit | None = None


def fingerprint(frame: pd.DataFrame) -> str:
    """sha256 of the content (column names, dtypes and values), independent of the file format."""
    digest = hashlib.sha256()
    digest.update("|".join(f"{c}:{t}" for c, t in frame.dtypes.astype(str).items()).encode())
    digest.update(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes())
    return digest.hexdigest()


def write_parquet_atomic(frame: pd.DataFrame, path: Path) -> None:
    """Write next to the target and rename, so a reader never sees a half-written file."""
    write_table_atomic(pa.Table.from_pandas(frame, preserve_index=False), path)


def save_dataset(frame: pd.DataFrame, directory: Path, stem: str, target: str) -> DatasetRef:
    """Store under a content-addressed name; saving the same data twice writes one file."""
    sha = fingerprint(frame)
    path = directory / f"{stem}-{sha[:16]}.parquet"
    if not path.exists():
        write_parquet_atomic(frame, path)
    # A binary target's positives (rows whose label is 1); 0 for other tasks' targets.
    positives = int((frame[target] == 1).sum()) if target in frame else 0
    return DatasetRef(uri=str(path), sha256=sha, rows=len(frame), positives=positives)


def load_dataset(uri: str) -> pd.DataFrame:
    path = Path(uri)
    if not path.exists():
        raise DataError(f"dataset not found: {uri}. Re-run training to regenerate it.")
    return pd.read_parquet(path)


def split(
    frame: pd.DataFrame, target: str | None, holdout_fraction: float, seed: int
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split stratified on `target` (so a rare class appears in both parts at its base rate), or
    uniformly when `target` is None (a regression's continuous target)."""
    if target is not None:
        counts = frame[target].value_counts()
        rare = counts[counts < 2]
        if len(rare):
            raise DataError(
                f"class(es) {[label_key(v) for v in rare.index][:5]} of {target!r} have "
                f"{int(rare.min())} row(s) in {len(frame)}: a stratified split needs at least 2 "
                "of each class. Add data or merge the rare classes at the source"
            )
    train, holdout = train_test_split(
        frame,
        test_size=holdout_fraction,
        random_state=seed,
        stratify=None if target is None else frame[target],
    )
    return train.reset_index(drop=True), holdout.reset_index(drop=True)


def stratify_on(spec: ModelSpec) -> str | None:
    """The column splits are stratified on: a classifier's target; none for a regression."""
    return None if spec.task is Task.regression else spec.target.name


def label_key(value: object) -> str:
    """A class label as the spec names it: 1, 1.0 and True are the class `1`."""
    if isinstance(value, bool | np.bool_ | int | np.integer):
        return str(int(value))
    if isinstance(value, float | np.floating) and float(value).is_integer():
        return str(int(value))
    return str(value)


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
    """A classifier's target as class indices into `target.classes` (the served `label`); a
    regression's as float64."""
    name = spec.target.name
    if name not in frame.columns:
        raise DataError(f"target column {name!r} is missing from the data")
    values = frame[name]
    if values.isna().any():
        raise DataError(
            f"target {name!r} is empty in {int(values.isna().sum())} row(s): drop unlabelled "
            "rows at the source"
        )
    if spec.task is Task.regression:
        if not pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values):
            raise DataError(
                f"target {name!r} of a regression holds {values.dtype} values, not numbers; "
                "recode it at the source or choose a classification task"
            )
        return values.to_numpy(dtype=np.float64)
    classes = spec.class_names
    if classes == ["0", "1"] and pd.api.types.is_integer_dtype(values):
        codes = values.to_numpy(dtype=np.int64)  # the common binary case, without a lookup
        codes = np.where((codes == 0) | (codes == 1), codes, -1)
    else:
        codes = pd.Categorical(values.map(label_key), categories=classes).codes.astype(np.int64)
    if (codes < 0).any():
        unknown = sorted({label_key(v) for v in values[codes < 0]})[:5]
        raise DataError(
            f"target {name!r} holds {unknown}, not among target.classes {classes}: add the class "
            "to the spec or clean the data"
        )
    return codes


def require_numbers(frame: pd.DataFrame, spec: ModelSpec, source: str) -> None:
    """Numeric and integer features must hold numbers: text in such a column (a "n/a" marker, a
    decimal comma, a word) is named as text, with examples, not left to read as nulls."""
    for feature in spec.features:
        if feature.type not in (FeatureType.numeric, FeatureType.integer):
            continue
        if feature.name not in frame.columns or pd.api.types.is_numeric_dtype(frame[feature.name]):
            continue
        values = frame[feature.name]
        text = not_numbers(values)
        if text.empty:
            continue
        # Line numbers as an editor shows them for a CSV (the header is line 1).
        first = f" (first at line {int(text.index[0]) + 2})" if source.endswith(".csv") else ""
        raise DataError(
            f"`{feature.name}` is {feature.type.value} in the spec, but {len(text)} of "
            f"{len(frame)} rows hold text that is not a number: {examples_of(text)}{first}, in "
            f"{source}. {PLACEHOLDER_FIX}"
        )


def load_source(spec: ModelSpec, source: str | None = None) -> pd.DataFrame:
    """The spec's data (or `source`, the same pinned): synthetic, or any registered source."""
    source = source or spec.data.source
    if synthetic.is_synthetic(source):
        d = spec.data
        return synthetic.generate(source, d.rows, d.seed, d.positive_rate, d.drift, d.bias)
    frame = read_source(source)[0]
    require_numbers(frame, spec, source)
    return frame


def snapshot(spec: ModelSpec, settings: Settings) -> DatasetRef:
    """Read the source once and keep a content-addressed copy: every later step, and lineage,
    refers to exactly these rows."""
    source = spec.data.source
    read_from = None if synthetic.is_synthetic(source) else pinned(source)
    frame = load_source(spec, read_from)
    ref = save_dataset(frame, settings.data_dir / spec.name, "source", spec.target.name)
    return ref.model_copy(update={"read_from": read_from})


def split_dataset(spec: ModelSpec, settings: Settings, data: DatasetRef) -> SplitResult:
    directory = settings.data_dir / spec.name
    train, holdout = split(
        load_dataset(data.uri), stratify_on(spec), spec.data.holdout_fraction, spec.data.seed
    )
    return SplitResult(
        train=save_dataset(train, directory, "train", spec.target.name),
        holdout=save_dataset(holdout, directory, "holdout", spec.target.name),
        source_sha256=data.sha256,
        read_from=data.read_from,
    )
