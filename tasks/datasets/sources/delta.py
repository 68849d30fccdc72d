"""A Delta Lake table (`delta://<path or s3://…>`, or a folder holding `_delta_log/`), read with
`deltalake` at a version: a release pins the table's version it read (`delta://…?version=N`),
so its rows can be read again after the table has moved on. A `date` partition column gives
the drift and outcome checks their newest batch."""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

import pandas as pd

from tasks.datasets.sources.files import DataError
from tasks.datasets.sources.source import MissingSourceError, Source

SCHEME = "delta://"
PARTITION_COLUMN = "date"


def claims(uri: str) -> bool:
    return uri.startswith(SCHEME) or (Path(uri) / "_delta_log").is_dir()


def _location(uri: str) -> tuple[str, int | None]:
    """The table's path or URL, and the version the URI pins (None: the newest)."""
    location, _, query = uri.removeprefix(SCHEME).partition("?version=")
    if query and not query.isdigit():
        raise DataError(f"{uri}: the version after ?version= must be a number, got {query!r}")
    return location, int(query) if query else None


def _table(uri: str) -> Any:
    location, version = _location(uri)
    # A version, once written, never changes: a pinned table's log is read once per process
    # (a release pins, lists partitions, then reads).
    return _pinned(location, version) if version is not None else _open(location, None)


@functools.lru_cache(maxsize=8)
def _pinned(location: str, version: int) -> Any:
    return _open(location, version)


def _open(location: str, version: int | None) -> Any:
    from deltalake import DeltaTable
    from deltalake.exceptions import DeltaError, TableNotFoundError

    options = {}
    # deltalake reads the standard AWS variables; a plain-HTTP endpoint (MinIO, a test server)
    # must be allowed explicitly.
    plain_http = os.environ.get("AWS_ENDPOINT_URL", "").startswith("http://")
    if location.startswith("s3://") and plain_http:
        options["AWS_ALLOW_HTTP"] = "true"
    try:
        return DeltaTable(location, version=version, storage_options=options or None)
    except TableNotFoundError as exc:
        raise MissingSourceError(
            f"no Delta table at {location} (no _delta_log); fix data.source"
        ) from exc
    except DeltaError as exc:
        newest = DeltaTable(location, storage_options=options or None).version()
        raise DataError(
            f"the Delta table {location} has no version {version} (its newest is {newest}); "
            "fix the version in data.source"
        ) from exc


def partitions(uri: str) -> list[str]:
    table = _table(uri)
    if PARTITION_COLUMN not in table.metadata().partition_columns:
        return []
    return [str(values[PARTITION_COLUMN]) for values in table.partitions()]


def read(uri: str, date: str | None) -> pd.DataFrame:
    """The table's rows at its pinned version, its files in path order (the log's order of
    files is not the data's: the same version reads the same frame every time)."""
    import pyarrow as pa
    import pyarrow.dataset as pds

    table = _table(uri)
    dataset = table.to_pyarrow_dataset()
    wanted = None if date is None else pds.field(PARTITION_COLUMN) == date
    fragments = sorted(dataset.get_fragments(filter=wanted), key=lambda f: f.path)
    if not fragments:
        raise DataError(f"the Delta table {uri} holds no rows" + (f" on {date}" if date else ""))
    tables = [fragment.to_table(schema=dataset.schema) for fragment in fragments]
    return pa.concat_tables(tables).to_pandas()


def pin(uri: str) -> str:
    location, version = _location(uri)
    return f"{SCHEME}{location}?version={_table(uri).version() if version is None else version}"


SOURCE = Source(
    name="delta",
    form="a Delta Lake table: delta://<path or s3://bucket/prefix>[?version=N], or a folder "
    "with _delta_log/",
    claims=claims,
    partitions=partitions,
    read=read,
    pin=pin,
)
