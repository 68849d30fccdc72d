"""Where a model's rows come from, as one table. A kind of source is one module in this package
(a `Source`, `tasks.datasets.sources.source`) plus one line in `SOURCES`; the release's snapshot,
the drift and outcome checks' newest batch, the labels table and `conveyor init --from` all read
through it, and the tests iterate it."""

from __future__ import annotations

import pandas as pd

from tasks.datasets.sources import delta, local, s3
from tasks.datasets.sources.source import MissingSourceError, Source

# Asked in order: the first that claims a URI reads it; `local` claims whatever is left.
SOURCES: dict[str, Source] = {
    source.name: source for source in (s3.SOURCE, delta.SOURCE, local.SOURCE)
}


def source_of(uri: str) -> Source:
    return next(source for source in SOURCES.values() if source.claims(uri))


def forms() -> str:
    """What a source may be, as a spec's reader is told."""
    return "; ".join(source.form for source in SOURCES.values()) + "; or synthetic:<domain>"


def read_source(uri: str, newest_only: bool = False) -> tuple[pd.DataFrame, str | None]:
    """The rows of `uri`, whole or only its newest `date=YYYY-MM-DD` partition; returns them and
    the partition read (None: all of it). Pinned first, so a table written meanwhile cannot give
    its partitions from one version and its rows from another."""
    source = source_of(uri)
    try:
        at = source.pin(uri)
        date = max(source.partitions(at), default=None) if newest_only else None
        return source.read(at, date), (f"date={date}" if date else None)
    except MissingSourceError as exc:
        raise MissingSourceError(f"{exc} (one of: {forms()})") from exc


def pinned(uri: str) -> str:
    """`uri` pinned to what it holds now, where the source has versions (else `uri`)."""
    return source_of(uri).pin(uri)
