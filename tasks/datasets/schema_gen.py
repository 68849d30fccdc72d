"""`conveyor init`: a model spec inferred from a dataset, in the manner of TFX's SchemaGen.

Everything the data can say is taken from it (feature types, ranges, nulls, categories, target
classes, quality floors, a model family for its size); what it cannot say (the metric floors a
model must reach, the approval policy) is set to a permissive floor and said so in a comment.
The file is written with a comment on every choice, validated by `load_spec`, and never written
over an existing one.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd
from pydantic import BaseModel

from tasks.core.cluster import Compute
from tasks.core.model_task import Task
from tasks.core.names import MAX_NAME_LENGTH, name_problem
from tasks.core.spec import FeatureSpec, FeatureType, load_spec
from tasks.datasets.data import read_source
from tasks.datasets.not_numbers import PLACEHOLDER_FIX, examples_of, not_numbers
from tasks.datasets.table_profile import profile
from tasks.datasets.target_inference import RANGE_MARGIN, InitError, infer_target, widen
from tasks.datasets.task_templates import TEMPLATES, choose_family, fixed_params, search_space

__all__ = ["InitError", "init_spec", "render"]

# A column whose values are numbers but for at most this share is a numeric column with
# placeholders ("n/a", "-") where values are missing, not text.
PLACEHOLDER_SHARE = 0.1
# A text column with more distinct values than this is an identifier or free text, not a
# category (its one-hot encoding would be as wide as the data).
MAX_CATEGORIES = 50
HOLDOUT_FRACTION = 0.25
COMPUTE_WHY: dict[Compute, str] = {
    "local": "               # the table is read into one process; dask: on a cluster",
    "dask": "                # read, checked, trained on and scored on a Dask cluster",
}


class InferredFeature(FeatureSpec):
    """A spec feature, with what was seen to infer it."""

    null_share: float = 0.0
    note: str = ""  # why this type or range, for the comment

    def yaml(self) -> str:
        fields: dict[str, object] = {"name": self.name, "type": self.type.value}
        if self.min is not None and self.max is not None:
            # Printed at 6 significant digits: the bounds were rounded outward to 4 already.
            fields["min"], fields["max"] = float(f"{self.min:.6g}"), float(f"{self.max:.6g}")
        if self.categories is not None:
            fields["categories"] = self.categories
        if self.nullable:
            fields["nullable"] = True
        # JSON is YAML: names and categories with any character stay one safe line.
        body = ", ".join(f"{k}: {json.dumps(v)}" for k, v in fields.items())
        return f"  - {{{body}}}" + (f"  # {self.note}" if self.note else "")


class Skipped(BaseModel):
    name: str
    why: str


def default_name(source: str) -> str:
    stem = Path(source.rstrip("/")).stem.lower()
    name = re.sub(r"[^a-z0-9_-]+", "-", stem)[:MAX_NAME_LENGTH].strip("-_")
    return name or "model"


def infer_feature(column: pd.Series) -> InferredFeature | Skipped:
    name = str(column.name)
    nulls = int(column.isna().sum())
    share = nulls / len(column) if len(column) else 0.0
    values = column.dropna()
    if values.empty:
        return Skipped(name=name, why="every value is null")
    nullable = nulls > 0
    note = f"{share:.1%} nulls" if nullable else ""
    if pd.api.types.is_bool_dtype(values):
        return InferredFeature(
            name=name, type=FeatureType.boolean, nullable=nullable, null_share=share, note=note
        )
    if pd.api.types.is_numeric_dtype(values):
        numbers = values.astype(float)
        if not np.isfinite(numbers).all():
            return Skipped(name=name, why="holds infinity; clean it at the source first")
        integer = bool((numbers == np.round(numbers)).all())
        if values.nunique() == 1:
            return Skipped(name=name, why=f"one value only ({numbers.iloc[0]:g}): no signal")
        low, high = widen(numbers.min(), numbers.max(), integer, bool(numbers.min() >= 0))
        seen = f"seen {numbers.min():g}..{numbers.max():g}, widened {RANGE_MARGIN:.0%}"
        return InferredFeature(
            name=name,
            type=FeatureType.integer if integer else FeatureType.numeric,
            min=low,
            max=high,
            nullable=nullable,
            null_share=share,
            note="; ".join(x for x in (seen, note) if x),
        )
    text = not_numbers(values)
    if 0 < len(text) <= PLACEHOLDER_SHARE * len(values):
        # Numbers with a few placeholders: the data gate would refuse the same column later.
        return Skipped(
            name=name,
            why=f"numbers, but {len(text)} of {len(values)} rows hold text that is not a number: "
            f"{examples_of(text)}. {PLACEHOLDER_FIX} Then run init again.",
        )
    text = values.astype(str)
    distinct = sorted(text.unique())
    if len(distinct) > MAX_CATEGORIES:
        return Skipped(
            name=name,
            why=f"text with {len(distinct)} distinct values (more than {MAX_CATEGORIES}): an "
            "identifier or free text, not a category",
        )
    if len(distinct) == 1:
        return Skipped(name=name, why=f"one value only ({distinct[0]!r}): no signal")
    return InferredFeature(
        name=name,
        type=FeatureType.category,
        categories=distinct,
        nullable=nullable,
        null_share=share,
        note="; ".join(x for x in (f"{len(distinct)} values seen", note) if x),
    )


def render(
    source: str,
    name: str,
    target: str,
    frame: pd.DataFrame,
    task: Task | None = None,
    compute: Compute = "local",
    rows: int | None = None,
) -> tuple[str, list[Skipped], str]:
    """The spec's text, the columns left out (with why), and why the task is what it is.
    `rows`: the table's rows, where `frame` is a profile of it (`compute: dask`)."""
    if frame.empty:
        raise InitError(f"{source} has a header but no rows: point --from at data with rows")
    inferred_target = infer_target(frame, target, source, task)
    inferred = [infer_feature(frame[c]) for c in frame.columns if c != target]
    features = [f for f in inferred if isinstance(f, InferredFeature)]
    skipped = [f for f in inferred if isinstance(f, Skipped)]
    if not features:
        raise InitError(
            f"no column of {source} can be a feature: "
            + "; ".join(f"{s.name}: {s.why}" for s in skipped)
        )
    rows = rows or len(frame)
    nulls = [f for f in features if f.nullable]
    family, family_why = choose_family(rows, bool(nulls), inferred_target.task, compute)
    holdout_rows = int(rows * HOLDOUT_FRACTION)
    max_null = max((f.null_share for f in nulls), default=0.0)
    null_floor = min(0.5, max(0.05, round(2 * max_null, 2)))
    left_out = "".join(f"#   - {s.name}: {s.why}\n" for s in skipped)
    t = TEMPLATES[inferred_target.task](inferred_target, rows)
    fairness_example = {
        Task.binary: "selection_rate_ratio: 0.8, equalized_odds_difference: 0.1",
        Task.multiclass: "equalized_odds_difference: 0.1",
        Task.regression: "error_gap: ...",
    }[inferred_target.task]
    quality = t.quality + "\n" if t.quality else ""
    said = f"--from {source} --target {target}" + (" --compute dask" if compute == "dask" else "")
    text = f"""# Written by `conveyor init {said}` from {rows:,} rows.
# Review it before the first release: every value below is inferred or a default, and says which.
name: {name}
description: >-
  Inferred from {source}. Describe what the model decides and for whom.
subject: row                  # what one row is (customer, loan application…): the card's noun
{t.task_line}
compute: {compute}{COMPUTE_WHY[compute]}

data:
  source: {json.dumps(source)}
  rows: {max(rows, 100)}                 # rows seen (used by the synthetic generators only)
  seed: 0
  holdout_fraction: {HOLDOUT_FRACTION}      # a quarter is held out for the gates

# Order here is the order of the served `features` tensor. Ranges are the observed ones widened
# {RANGE_MARGIN:.0%} of their span each side (non-negative columns stay non-negative): values
# outside fail the data contract. nullable: nulls were seen (served as NaN, imputed in the model).
features:
{chr(10).join(f.yaml() for f in features)}
{("# Left out:" + chr(10) + left_out) if skipped else ""}
target:
  name: {json.dumps(target)}
{t.target}

quality:                     # from the data: floors a broken extract would fall under
  min_rows: {max(100, rows // 10)}            # a tenth of the rows seen
{quality}  max_null_share: {null_floor}        # twice the largest null share seen, at least 5 %

estimator:
  family: {family}   # {family_why}
  params:
{fixed_params(inferred_target.task, family)}

search:
  trials: 8
  parallel: 2
  metric: {t.metric}            # {t.metric_why}
  validation_fraction: 0.25
  max_rows: 20000            # trials fit on a sample of at most this many rows
  seed: 0
  space:
{search_space(family)}
{(chr(10) + t.evaluation + chr(10)) if t.evaluation else ""}
# LEFT FOR YOU: the floors a model must reach to be released. These are only "better than
# chance" so that a first release on this data goes through; set them from your model-risk policy.
thresholds:
{t.thresholds}

validation:                  # challenger vs champion on the challenger's holdout
  metric: {t.metric}
  rule: non_inferior
  margin: {t.margin}
  resamples: 1000
  confidence: 0.95
  seed: 0

# LEFT FOR YOU (never guessed): columns to slice the holdout by (an age band, a region, a
# product), evaluation-only: in the data, never model inputs; with fairness gates between them.
# segments:
#   columns: [age_band]
# fairness:
#   floors: {{{t.metric}: ...}}          # per segment, judged by its interval
#   limits: {{{fairness_example}}}

drift:
  share: 0.3
  max_rows: 100000
  seed: 0
  cooldown_s: 21600

# LEFT FOR YOU: where the outcomes arrive, for the nightly outcome check.
# outcomes:
#   source: s3://bucket/labelled   # newest date=YYYY-MM-DD partition whose target is filled
#   label_lag_days: 30
#   tolerance: 0.02

promotion:
  requires_approval: false   # LEFT FOR YOU: true if a person signs off each promotion
  approval_timeout_s: 86400

retention:
  keep_last: 3

serving:
  max_batch_size: 256
  preferred_batch_sizes: [8, 32]
  max_queue_delay_microseconds: 200
  instance_count: 1
  kind: KIND_CPU
  tuning:
    enabled: false           # true: measure queue delay x instances on each candidate

smoke:
  rows: {min(1000, holdout_rows)}               # holdout rows compared with offline predictions
  latency_requests: 200
  concurrency: 8
  load_requests: 2000
  p99_budget_ms: 50.0
  tolerance: 1.0e-5
"""
    return text, skipped, inferred_target.why


class InitResult(BaseModel):
    path: str
    name: str
    features: int
    skipped: list[Skipped]
    task: Task
    task_why: str  # what the target showed that chose the task


def init_spec(
    source: str,
    target: str,
    name: str | None,
    spec_dir: Path,
    task: Task | None = None,
    compute: Compute = "local",
) -> InitResult:
    name = name or default_name(source)
    problem = name_problem(name)
    if problem:
        # Checked before it becomes a path: `--name ../../x` must not reach the file system.
        raise InitError(f"--name {problem}")
    path = spec_dir / f"{name}.yaml"
    if path.exists():
        raise InitError(
            f"{path} already exists; conveyor init never writes over a spec. Pick another "
            "--name, or delete it first if it is yours to replace"
        )
    if compute == "dask":  # a profile of the table, never all its rows
        frame, rows = profile(source, MAX_CATEGORIES)
    else:
        frame, rows = read_source(source)[0], None
    text, skipped, why = render(source, name, target, frame, task, compute, rows)
    spec_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    try:
        spec = load_spec(tmp)  # what is written is a spec conveyor loads, or nothing is
        # O_EXCL: a spec written by someone else meanwhile is not replaced either.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        with os.fdopen(fd, "w") as out:
            out.write(text)
    finally:
        tmp.unlink(missing_ok=True)
    return InitResult(
        path=str(path),
        name=spec.name,
        features=spec.n_features,
        skipped=skipped,
        task=spec.task,
        task_why=why,
    )
