"""What every file-backed source shares: the data error, reading a .csv or .parquet file's bytes
(columnar, with the header checked), and `date=YYYY-MM-DD` partitions in keys and paths."""

from __future__ import annotations

import re

import pandas as pd
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from tasks.core.errors import ConveyorError


class DataError(ConveyorError):
    """The data does not match the spec."""


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


def dates_in(keys: list[str]) -> list[str]:
    """The `date=` partitions' dates among `keys`, newest first ([] if they are not dated)."""
    return sorted({m.group(1) for key in keys if (m := PARTITION.search(key))}, reverse=True)


def in_partition(keys: list[str], date: str | None) -> list[str]:
    """The keys of one `date=` partition (all of them for None)."""
    return [key for key in keys if date is None or f"date={date}" in key]


def concat(parts: list[pd.DataFrame]) -> pd.DataFrame:
    return pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0]
