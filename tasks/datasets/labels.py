"""Labelled batches for the outcome check (`outcomes` in the spec): the rows the model scored,
with the outcome that came later. Three ways in, one result: rows with the features and the
target, and a sentence saying where they came from."""

from __future__ import annotations

import numpy as np
import pandas as pd

from tasks.core.settings import Settings
from tasks.core.spec import ModelSpec
from tasks.datasets import newest_batch, synthetic
from tasks.datasets.data import DataError, read_source, require_numbers
from tasks.datasets.partitioned import columns
from tasks.datasets.sources import source_of


def degrade(frame: pd.DataFrame, target: str, share: float, seed: int) -> pd.DataFrame:
    """Shuffle the target among a random `share` of the rows: every feature's distribution and
    the target's own are exactly kept (no drift to see), while for those rows the relation
    between them is gone. What a model meets when the world changes under stable inputs."""
    if share <= 0:
        return frame
    rng = np.random.default_rng([seed, 2])
    rows = np.flatnonzero(rng.random(len(frame)) < share)
    values = frame[target].to_numpy().copy()
    values[rows] = values[rng.permutation(rows)]
    return frame.assign(**{target: values})


def _newest_labelled(spec: ModelSpec, source: str) -> tuple[pd.DataFrame, str]:
    """The newest `date=` partition of `source` whose target is filled (labels arrive late, so
    the newest partitions usually have none yet); its rows with a target."""
    reader = source_of(source)
    at = reader.pin(source)  # every partition from one version of the source
    dates: list[str | None] = [*sorted(reader.partitions(at), reverse=True)]
    target = spec.target.name
    for date in dates or [None]:
        frame = reader.read(at, date)
        if target not in frame.columns:
            raise DataError(
                f"the labelled batch {source} ({f'date={date}' if date else 'all of it'}) has no "
                f"target column {target!r}; its columns: {list(frame.columns)}. Point "
                "outcomes.source at batches that carry the outcome"
            )
        labelled = frame[frame[target].notna()]
        if len(labelled):
            where = f"{source} (date={date})" if date else source
            return labelled.reset_index(drop=True), where
    raise DataError(
        f"no partition of {source} has its target {target!r} filled yet: the outcomes have not "
        "arrived; nothing to check"
    )


def _joined(spec: ModelSpec) -> tuple[pd.DataFrame, str]:
    """The labels table (key + target) joined to the newest batch of `data.source`."""
    o, target = spec.outcomes, spec.target.name
    assert o.labels is not None and o.key is not None  # the spec's validator pairs them
    scored, newest = read_source(spec.data.source, newest_only=True)
    labels = read_source(o.labels)[0]
    expected = {o.key, target}
    if set(labels.columns) != expected:
        raise DataError(
            f"the labels table {o.labels} has columns {sorted(labels.columns)}, expected exactly "
            f"{sorted(expected)} (the key and the target): fix the export"
        )
    if o.key not in scored.columns:
        raise DataError(
            f"the scored batch {spec.data.source} has no key column {o.key!r} to join labels on"
        )
    if labels[o.key].duplicated().any():
        raise DataError(
            f"the labels table {o.labels} lists {int(labels[o.key].duplicated().sum())} key(s) "
            "twice: one outcome per scored row"
        )
    unknown = ~labels[o.key].isin(scored[o.key])
    if unknown.any():
        examples = ", ".join(map(str, labels.loc[unknown, o.key].head(5)))
        raise DataError(
            f"{int(unknown.sum())} label(s) in {o.labels} are for keys never scored in "
            f"{spec.data.source} ({newest or 'all of it'}), e.g. {examples}: labels must join "
            "the batch they judge; nothing was checked"
        )
    frame = scored.drop(columns=[target], errors="ignore").merge(labels, on=o.key, how="inner")
    return frame, f"{o.labels} joined on {o.key} to {spec.data.source} ({newest or 'all'})"


def load_labelled(spec: ModelSpec, settings: Settings) -> tuple[pd.DataFrame, str]:
    """The newest labelled batch for the spec's outcome check, and where it came from. With
    `compute: dask`, a batch of `outcomes.source` is sampled on the workers (`newest_batch`):
    at most `outcomes.max_rows` of its labelled rows."""
    o, d = spec.outcomes, spec.data
    if o.labels is None and o.source is not None and spec.compute == "dask":
        frame, where, _ = newest_batch.sample(
            o.source, settings, columns(spec), o.max_rows, o.seed, labelled=spec.target.name
        )
    elif o.labels is not None:
        frame, where = _joined(spec)
    elif o.source is not None and synthetic.is_synthetic(o.source):
        # A later batch than the drift check's (seed + 2), from the spec's own generator.
        source = d.source if synthetic.is_synthetic(d.source) else o.source
        frame = synthetic.generate(source, d.rows, d.seed + 2, d.positive_rate, d.drift, d.bias)
        frame = degrade(frame, spec.target.name, o.degradation, d.seed)
        where = f"{source} (later batch, degradation {o.degradation})"
    elif o.source is not None:
        frame, where = _newest_labelled(spec, o.source)
    else:
        raise DataError(f"{spec.name} names no outcomes (outcomes.source or outcomes.labels)")
    require_numbers(frame, spec, where)
    return frame, where
