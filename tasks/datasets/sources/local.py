"""A local .csv or .parquet file, or a folder of them (`date=YYYY-MM-DD` sub-folders are
partitions)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from tasks.datasets.sources.files import (
    SUFFIXES,
    DataError,
    concat,
    dates_in,
    in_partition,
    read_bytes,
)
from tasks.datasets.sources.source import MissingSourceError, Source


def local_files(path: Path) -> list[Path]:
    if not path.exists():
        raise MissingSourceError(f"data source {path} does not exist; fix data.source in the spec")
    if path.is_file():
        if path.suffix not in SUFFIXES:
            raise DataError(f"{path} is neither .parquet nor .csv")
        return [path]
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in SUFFIXES)
    if not files:
        raise DataError(f"folder {path} holds no .parquet or .csv files")
    return files


def partitions(uri: str) -> list[str]:
    return dates_in([str(path) for path in local_files(Path(uri))])


def read(uri: str, date: str | None) -> pd.DataFrame:
    names = in_partition([str(path) for path in local_files(Path(uri))], date)
    return concat([read_bytes(Path(name).read_bytes(), name) for name in names])


SOURCE = Source(
    name="local",
    form="a .parquet or .csv file, or a folder of them",
    claims=lambda uri: True,
    partitions=partitions,
    read=read,
)
