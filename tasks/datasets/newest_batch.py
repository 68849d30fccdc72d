"""The newest batch of a partitioned Parquet table, sampled where it lies (`compute: dask`): the
drift and outcome checks compare a seeded sample of at most `max_rows` rows, so the batch itself
(a day of a card issuer's transactions is tens of millions of rows) never sits in the flow's
process. Each worker counts its pieces' rows from their footers (or, for labelled rows, from the
target column alone), then draws every row with the same seeded rate: a uniform sample of the
batch, the same on every rerun.

The batch is the newest `date=` partition (the whole table when it has none); for outcomes, the
newest one whose target is filled, as `tasks.datasets.labels` picks it locally."""

from __future__ import annotations

import zlib

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from tasks.core.cluster import runner
from tasks.core.settings import Settings
from tasks.datasets.pieces import Piece, columns_of, filesystem, list_pieces, read_piece
from tasks.datasets.sources.files import DataError, dates_in, in_partition


def _available(piece: Piece, target: str | None) -> tuple[str, int]:
    """The piece's rows (from its footer), or its rows with `target` filled."""
    if target is None:
        fs, path = filesystem(piece.uri)
        return piece.key, pq.read_metadata(path, filesystem=fs).num_rows
    if target not in columns_of(piece):
        return piece.key, 0
    return piece.key, int(read_piece(piece, [target])[target].notna().sum())


def _drawn(
    piece: Piece, columns: list[str], target: str | None, rate: float, seed: int
) -> tuple[str, pd.DataFrame]:
    have = set(columns_of(piece))
    frame = read_piece(piece, [c for c in columns if c in have])
    if target is not None:
        frame = frame[frame[target].notna()]
    keep = np.random.default_rng([seed, zlib.crc32(piece.key.encode())]).random(len(frame)) < rate
    return piece.key, frame[keep]


def sample(
    uri: str,
    settings: Settings,
    columns: list[str],
    rows: int,
    seed: int,
    labelled: str | None = None,
) -> tuple[pd.DataFrame, str, int]:
    """At most `rows` rows drawn uniformly from the newest batch of `uri` (its rows with the
    `labelled` column filled, when given), where they came from, and the batch's rows."""
    pieces = list_pieces(uri)
    keys = [piece.key for piece in pieces]
    dates: list[str | None] = [*dates_in(keys)] or [None]
    with runner(settings, "dask") as run:
        # Labels arrive late: the newest partitions usually have none yet.
        for date in dates if labelled else dates[:1]:
            batch = set(in_partition(keys, date))
            chosen = [piece for piece in pieces if piece.key in batch]
            total = sum(count for _, count in run(_available, chosen, labelled))
            if total:
                break
        else:
            raise DataError(
                f"no partition of {uri} has its target {labelled!r} filled yet: the outcomes "
                "have not arrived; rerun the check once they have"
                if labelled
                else f"the newest batch of {uri} ({date or 'all of it'}) has no rows"
            )
        rate = min(1.0, rows / total)
        parts = sorted(run(_drawn, chosen, columns, labelled, rate, seed), key=lambda p: p[0])
    frame = pd.concat([part for _, part in parts], ignore_index=True)
    if len(frame) > rows:  # each row is drawn at the rate: the count may pass it by a few
        frame = frame.sample(n=rows, random_state=seed, ignore_index=True)
    what = f"date={date}, " if date else ""
    return frame, f"{uri} ({what}a seeded sample of {len(frame):,} of {total:,} rows)", total
