"""Datasets: reading sources, Parquet load/save, split, fingerprint, encoding (the synthetic
generators are `tasks.datasets.synthetic`)."""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
from prefect import get_run_logger, task
from pydantic import BaseModel
from sklearn.model_selection import train_test_split

from tasks.core.attempts import RESUMABLE
from tasks.core.errors import ConveyorError
from tasks.core.model_task import Task
from tasks.core.settings import Settings
from tasks.core.spec import FeatureType, ModelSpec
from tasks.datasets import synthetic
from tasks.datasets.not_numbers import PLACEHOLDER_FIX, examples_of, not_numbers


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
    source_sha256: str  # the snapshot both were cut from: what "the same data" means


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


SUFFIXES = (".parquet", ".csv")
PARTITION = re.compile(r"date=(\d{4}-\d{2}-\d{2})")


# Only an empty cell is a null. pyarrow's defaults also read "n/a", "NA", "null", "nan" and
# others as nulls: a column of such strings would then be reported as nulls, not as the text it
# is, and a category named "NA" would vanish.
CSV_CONVERT = pa_csv.ConvertOptions(null_values=[""], strings_can_be_null=True)
# Separators a CSV export may have used instead of commas, as they are said to the user.
OTHER_DELIMITERS = {";": "';'", "\t": "tab", "|": "'|'"}


def read_bytes(data: bytes, name: str) -> pd.DataFrame:
    """Columnar readers (pyarrow) for both formats: no row-by-row parsing of large files."""
    if not data:
        raise DataError(f"{name} is empty (0 bytes); point the spec's data.source at real data")
    if name.endswith(".parquet"):
        table = pq.read_table(pa.BufferReader(data))
    else:
        table = pa_csv.read_csv(pa.BufferReader(data), convert_options=CSV_CONVERT)
        _require_commas(table.column_names, name)
    _require_unique_header(table.column_names, name)
    return table.to_pandas()


def _require_commas(header: list[str], name: str) -> None:
    if len(header) != 1:
        return
    for delimiter, said in OTHER_DELIMITERS.items():
        if delimiter in header[0]:
            raise DataError(
                f"{name} looks separated by {said}, not commas: its header is one column "
                f"{header[0][:80]!r}. conveyor reads comma-separated CSV; re-export it with "
                "commas (or as Parquet)."
            )


def _require_unique_header(header: list[str], name: str) -> None:
    seen: dict[str, int] = {}
    for position, column in enumerate(header, start=1):
        if column in seen:
            raise DataError(
                f"the header of {name} names `{column}` twice (columns {seen[column]} and "
                f"{position}): rename one, or drop the copy, so that each column is one feature."
            )
        seen[column] = position


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


def local_files(path: Path) -> list[Path]:
    if not path.exists():
        raise DataError(
            f"data source {path} does not exist; fix data.source in the spec (a .parquet or .csv "
            "file, a folder of them, s3://bucket/prefix, or synthetic)"
        )
    if path.is_file():
        if path.suffix not in SUFFIXES:
            raise DataError(f"{path} is neither .parquet nor .csv")
        return [path]
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in SUFFIXES)
    if not files:
        raise DataError(f"folder {path} holds no .parquet or .csv files")
    return files


def newest_partition(keys: list[str]) -> str | None:
    """The newest `date=YYYY-MM-DD` partition among the keys, or None if they are not dated."""
    dates = {m.group(1) for key in keys if (m := PARTITION.search(key))}
    return f"date={max(dates)}" if dates else None


def _in_newest(names: list[str]) -> tuple[list[str], str | None]:
    newest = newest_partition(names)
    return [n for n in names if newest is None or newest in n], newest


def s3_objects(uri: str, newest_only: bool = False) -> list[tuple[str, bytes]]:
    """Objects under s3://bucket/prefix (only its newest date partition if asked: the others are
    not downloaded). Credentials and endpoint come from the standard AWS variables
    (AWS_ENDPOINT_URL points boto3 at MinIO or another S3-compatible store)."""
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, _, prefix = uri.removeprefix("s3://").partition("/")
    client = boto3.client("s3")
    try:
        keys = [
            item["Key"]
            for page in client.get_paginator("list_objects_v2").paginate(
                Bucket=bucket, Prefix=prefix
            )
            for item in page.get("Contents", [])
            if item["Key"].endswith(SUFFIXES)
        ]
        if not keys:
            raise DataError(f"no .parquet or .csv objects under {uri}")
        if newest_only:
            keys, _ = _in_newest(keys)
        return [
            (key, client.get_object(Bucket=bucket, Key=key)["Body"].read()) for key in sorted(keys)
        ]
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        if code == "NoSuchBucket":
            raise DataError(
                f"S3 bucket {bucket!r} does not exist ({uri}); fix data.source"
            ) from exc
        if code in {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403"}:
            raise DataError(
                f"S3 refused access to {uri} ({code}); check AWS_ACCESS_KEY_ID / "
                "AWS_SECRET_ACCESS_KEY and the bucket policy"
            ) from exc
        raise DataError(f"S3 error reading {uri}: {code or exc}") from exc
    except BotoCoreError as exc:
        raise DataError(f"cannot reach S3 for {uri}: {exc}; check AWS_ENDPOINT_URL") from exc


def read_source(source: str, newest_only: bool = False) -> tuple[pd.DataFrame, str | None]:
    """A local file or folder, or s3://bucket/prefix, read whole or only its newest
    `date=YYYY-MM-DD` partition; returns the rows and the partition read (None: all of it)."""
    if source.startswith("s3://"):
        objects = s3_objects(source, newest_only)
        newest = newest_partition([key for key, _ in objects]) if newest_only else None
        parts = [read_bytes(data, key) for key, data in objects]
    else:
        files = {str(path): path for path in local_files(Path(source))}
        names, newest = _in_newest(list(files)) if newest_only else (list(files), None)
        parts = [read_bytes(files[name].read_bytes(), name) for name in names]
    return (pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0]), newest


def load_source(spec: ModelSpec) -> pd.DataFrame:
    """The spec's data: synthetic, a local file or folder, or s3://bucket/prefix."""
    source = spec.data.source
    if synthetic.is_synthetic(source):
        d = spec.data
        return synthetic.generate(source, d.rows, d.seed, d.positive_rate, d.drift, d.bias)
    frame = read_source(source)[0]
    require_numbers(frame, spec, source)
    return frame


def snapshot(spec: ModelSpec, settings: Settings) -> DatasetRef:
    """Read the source once and keep a content-addressed copy: every later step, and lineage,
    refers to exactly these rows."""
    frame = load_source(spec)
    return save_dataset(frame, settings.data_dir / spec.name, "source", spec.target.name)


def split_dataset(spec: ModelSpec, settings: Settings, data: DatasetRef) -> SplitResult:
    directory = settings.data_dir / spec.name
    train, holdout = split(
        load_dataset(data.uri), stratify_on(spec), spec.data.holdout_fraction, spec.data.seed
    )
    return SplitResult(
        train=save_dataset(train, directory, "train", spec.target.name),
        holdout=save_dataset(holdout, directory, "holdout", spec.target.name),
        source_sha256=data.sha256,
    )


@task(name="snapshot-data", cache_policy=RESUMABLE, persist_result=True)
def snapshot_task(spec: ModelSpec, settings: Settings) -> DatasetRef:
    ref = snapshot(spec, settings)
    get_run_logger().info(
        "%s: %d rows, %d positives, sha256 %s…",
        spec.data.source,
        ref.rows,
        ref.positives,
        ref.sha256[:12],
    )
    return ref


@task(name="split-data", cache_policy=RESUMABLE, persist_result=True)
def split_task(spec: ModelSpec, settings: Settings, data: DatasetRef) -> SplitResult:
    return split_dataset(spec, settings, data)
