"""What `conveyor init --compute dask` reads of a partitioned table instead of all of it: a
sample of rows (pieces spread over the table, up to `SAMPLE_ROWS`), plus what the whole table
holds that a spec must cover, taken without reading its rows: each numeric column's smallest and
largest value and whether it has nulls (every piece's Parquet statistics), and every value of
each text column (that column alone, piece by piece). Those are added to the sample as a few
witness rows, so the inferred ranges, nullability and categories hold for every row of the table
and its first release does not fail its own data contract."""

from __future__ import annotations

import pandas as pd
import pyarrow.parquet as pq

from tasks.datasets.pieces import Piece, filesystem, list_pieces, read_piece

SAMPLE_ROWS = 200_000


def _statistics(piece: Piece) -> dict[str, tuple[object, object, bool]]:
    """column → (min, max, has nulls) over the piece's row groups, from its footer."""
    fs, path = filesystem(piece.uri)
    metadata = pq.ParquetFile(path, filesystem=fs).metadata
    found: dict[str, tuple[object, object, bool]] = {}
    for group in range(metadata.num_row_groups):
        row_group = metadata.row_group(group)
        for i in range(row_group.num_columns):
            column = row_group.column(i)
            stats = column.statistics
            if stats is None or not stats.has_min_max:
                continue
            name = column.path_in_schema
            low, high, nulls = found.get(name, (stats.min, stats.max, False))
            found[name] = (min(low, stats.min), max(high, stats.max), nulls or stats.null_count > 0)
    return found


def profile(source: str, categories: int) -> tuple[pd.DataFrame, int]:
    """A sample of the table with its witness rows, and the table's row count."""
    pieces = list_pieces(source)
    total = sum(_rows(piece) for piece in pieces)
    # Every k-th piece, so that the sample of a date-partitioned table spans its dates.
    wanted = max(1, round(len(pieces) * min(1.0, SAMPLE_ROWS / max(total, 1))))
    sample, taken = [], 0
    for piece in pieces[:: max(1, len(pieces) // wanted)]:
        sample.append(read_piece(piece))
        taken += len(sample[-1])
        if taken >= SAMPLE_ROWS:
            break
    frame = pd.concat(sample, ignore_index=True).iloc[:SAMPLE_ROWS]
    return pd.concat([frame, _witnesses(frame, pieces, categories)], ignore_index=True), total


def _rows(piece: Piece) -> int:
    fs, path = filesystem(piece.uri)
    return pq.ParquetFile(path, filesystem=fs).metadata.num_rows


def _witnesses(frame: pd.DataFrame, pieces: list[Piece], categories: int) -> pd.DataFrame:
    """Rows holding, column by column, what the whole table has and the sample may lack: the
    smallest and largest number, a null where any piece has one, every text value (up to one
    past `categories`, what `conveyor init` takes for a category: more is an identifier)."""
    flags = [pd.api.types.is_bool_dtype(frame[c]) for c in frame.columns]
    numeric = [
        c
        for c, flag in zip(frame.columns, flags, strict=True)
        if not flag and pd.api.types.is_numeric_dtype(frame[c])
    ]
    text = [
        c for c, flag in zip(frame.columns, flags, strict=True) if not flag and c not in numeric
    ]
    low: dict[str, object] = {c: frame[c].min() for c in numeric}
    high: dict[str, object] = {c: frame[c].max() for c in numeric}
    nulls: set[str] = set()
    values: dict[str, set[object]] = {c: set(frame[c].dropna().unique()) for c in text}
    for piece in pieces:
        for name, (lo, hi, has_nulls) in _statistics(piece).items():
            if has_nulls:
                nulls.add(name)
            if name in numeric:
                low[name], high[name] = min(low[name], lo), max(high[name], hi)
        wide = [name for name in text if len(values[name]) <= categories]
        if wide:
            columns = read_piece(piece, columns=wide)
            for name in wide:
                values[name] |= set(columns[name].dropna().unique())
    shown = {name: sorted(map(str, seen))[: categories + 1] for name, seen in values.items()}
    count = max([3, *(len(seen) for seen in shown.values())])
    rows = frame.iloc[[0] * count].reset_index(drop=True).copy()
    for name in numeric:
        ends = [low[name], high[name]]
        column = [*ends, None if name in nulls else ends[0]] + [ends[0]] * (count - 3)
        rows[name] = pd.Series(column, dtype="float64")
    for name in text:
        seen = shown[name] or [None]
        column = seen + [seen[0]] * (count - len(seen))
        if name in nulls:
            column[-1] = None
        rows[name] = pd.Series(column, dtype=object)
    return rows
