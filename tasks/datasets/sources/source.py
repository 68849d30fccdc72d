"""What a data source is to the line: how a spec's `data.source` (or `outcomes.source`, a labels
table) is recognised, its `date=` partitions listed, read whole or one partition at a time, and
pinned so that a release can say exactly what it read. `tasks.datasets.sources.SOURCES` holds one
per kind of source; the synthetic generators are apart (`tasks.datasets.synthetic`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pandas as pd

from tasks.datasets.sources.files import DataError


class MissingSourceError(DataError):
    """The source names nothing that exists (what the table's forms are is added to it)."""


def unpinned(uri: str) -> str:
    """A source without versions: its URI is all there is to say about a read."""
    return uri


@dataclass(frozen=True)
class Source:
    name: str
    # How a spec names one, said in errors and in `conveyor init --help`.
    form: str
    # Whether a URI is this source's (the table is asked in order; the last claims the rest).
    claims: Callable[[str], bool]
    # The dates of its `date=YYYY-MM-DD` partitions, any order ([] when it is not dated).
    partitions: Callable[[str], list[str]]
    # Its rows: one partition's (a date) or all of them (None), in an order that depends only on
    # the data (a fingerprint of the read must not change when nothing did).
    read: Callable[[str, str | None], pd.DataFrame]
    # The URI pinned to what it holds now (a Delta table's version): reading the pinned URI
    # later gives the same rows, and the release records it.
    pin: Callable[[str], str] = unpinned
