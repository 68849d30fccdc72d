"""`conveyor init`: a model spec inferred from a dataset, in the manner of TFX's SchemaGen.

Everything the data can say is taken from it (feature types, ranges, nulls, categories, target
classes, quality floors, a model family for its size); what it cannot say (the metric floors a
model must reach, the approval policy) is set to a permissive floor and said so in a comment.
The file is written with a comment on every choice, validated by `load_spec`, and never written
over an existing one.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd
from pydantic import BaseModel

from tasks.core.errors import ConveyorError
from tasks.core.model_task import Family as EstimatorFamily
from tasks.core.spec import MODEL_NAME, FeatureSpec, FeatureType, load_spec
from tasks.datasets.data import read_source

# A range is widened by this share of its observed span on each side: tomorrow's data should not
# fail the contract for a value slightly past what one extract happened to contain.
RANGE_MARGIN = 0.1
# A text column with more distinct values than this is an identifier or free text, not a
# category (its one-hot encoding would be as wide as the data).
MAX_CATEGORIES = 50
# Families by the number of rows: a linear model where trees would overfit, trees beyond.
SMALL_DATA_ROWS = 5_000
LARGE_DATA_ROWS = 50_000
HOLDOUT_FRACTION = 0.25
# The pipeline scores a binary target (PR AUC, one operating threshold).
SUPPORTED_CLASSES = 2


class InitError(ConveyorError):
    """The dataset cannot be made into a model spec as it is."""


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
    name = re.sub(r"[^a-z0-9_-]+", "-", stem).strip("-_")
    return name or "model"


def _widen(low: float, high: float, integer: bool, non_negative: bool) -> tuple[float, float]:
    span = high - low
    margin = RANGE_MARGIN * span if span > 0 else max(abs(high) * RANGE_MARGIN, 1.0)
    low, high = low - margin, high + margin
    if non_negative:
        low = max(low, 0.0)
    if integer:
        return float(math.floor(low)), float(math.ceil(high))

    # Rounded outward to 4 significant digits: readable, and still containing every value.
    def outward(value: float, up: bool) -> float:
        if value == 0:
            return 0.0
        scale = 10 ** (math.floor(math.log10(abs(value))) - 3)
        return float((math.ceil if up else math.floor)(value / scale) * scale)

    return outward(low, up=False), outward(high, up=True)


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
        low, high = _widen(numbers.min(), numbers.max(), integer, bool(numbers.min() >= 0))
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


def target_classes(frame: pd.DataFrame, target: str, source: str) -> tuple[list[int], float]:
    """The target's classes (0 and 1) and its positive rate, or an InitError saying what to fix."""
    if target not in frame.columns:
        raise InitError(
            f"{source} has no column {target!r}; its columns are "
            f"{', '.join(map(str, frame.columns))}. Pass the label column with --target."
        )
    labels = frame[target]
    if labels.isna().any():
        raise InitError(
            f"target {target!r} is empty in {int(labels.isna().sum())} row(s) of {source}: "
            "drop unlabelled rows before training on them"
        )
    distinct = sorted(labels.unique().tolist())
    if len(distinct) < SUPPORTED_CLASSES:
        raise InitError(
            f"target {target!r} has one class only ({distinct[0]!r}) in {source}: a classifier "
            "needs examples of both outcomes; check the extract's filter"
        )
    if len(distinct) > SUPPORTED_CLASSES:
        shown = ", ".join(map(repr, distinct[:8])) + (" …" if len(distinct) > 8 else "")
        raise InitError(
            f"target {target!r} has {len(distinct)} classes ({shown}) in {source}; conveyor's "
            "pipeline scores binary targets: map them to 0 and 1 (the outcome to detect = 1)"
        )
    binary = pd.api.types.is_bool_dtype(labels) or (
        pd.api.types.is_numeric_dtype(labels) and {float(v) for v in distinct} == {0.0, 1.0}
    )
    if not binary:
        raise InitError(
            f"target {target!r} holds {distinct!r} in {source}; conveyor expects 0 and 1 (or "
            "false and true), with 1 the outcome to detect: recode it at the source"
        )
    return [0, 1], float((labels.astype(int) == 1).mean())


def choose_family(rows: int, has_nulls: bool) -> tuple[EstimatorFamily, str]:
    if rows < SMALL_DATA_ROWS:
        return "logistic_regression", f"{rows:,} rows: a linear model, trees would overfit"
    if has_nulls or rows >= LARGE_DATA_ROWS:
        why = "nulls and " if has_nulls else ""
        return "hist_gradient_boosting", f"{why}{rows:,} rows: gradient-boosted trees"
    return "random_forest", f"{rows:,} rows: a random forest, robust with few settings"


SEARCH_SPACES: dict[EstimatorFamily, str] = {
    "logistic_regression": "    C: {type: float, low: 0.001, high: 100.0, log: true}",
    "random_forest": "\n".join(
        [
            "    n_estimators: {type: int, low: 50, high: 300}",
            "    max_depth: {type: int, low: 4, high: 16}",
            "    min_samples_leaf: {type: int, low: 1, high: 20}",
        ]
    ),
    "hist_gradient_boosting": "\n".join(
        [
            "    learning_rate: {type: float, low: 0.03, high: 0.3, log: true}",
            "    max_leaf_nodes: {type: int, low: 8, high: 64}",
            "    min_samples_leaf: {type: int, low: 10, high: 100}",
        ]
    ),
}
FIXED_PARAMS: dict[EstimatorFamily, str] = {
    "logistic_regression": "    class_weight: balanced",
    "random_forest": "    class_weight: balanced_subsample",
    "hist_gradient_boosting": "    max_iter: 200\n    early_stopping: false",
}


def render(source: str, name: str, target: str, frame: pd.DataFrame) -> tuple[str, list[Skipped]]:
    """The spec's text and the columns left out (with why)."""
    if frame.empty:
        raise InitError(f"{source} has a header but no rows: point --from at data with rows")
    classes, positive_rate = target_classes(frame, target, source)
    inferred = [infer_feature(frame[c]) for c in frame.columns if c != target]
    features = [f for f in inferred if isinstance(f, InferredFeature)]
    skipped = [f for f in inferred if isinstance(f, Skipped)]
    if not features:
        raise InitError(
            f"no column of {source} can be a feature: "
            + "; ".join(f"{s.name}: {s.why}" for s in skipped)
        )
    rows = len(frame)
    positives = round(positive_rate * rows)
    if positives < 10 or rows - positives < 10:
        raise InitError(
            f"target {target!r} has {min(positives, rows - positives)} example(s) of its rarer "
            f"class in {rows} rows of {source}: too few to train and hold out; gather more data"
        )
    nulls = [f for f in features if f.nullable]
    family, family_why = choose_family(rows, bool(nulls))
    holdout_rows = int(rows * HOLDOUT_FRACTION)
    max_null = max((f.null_share for f in nulls), default=0.0)
    metric = "pr_auc" if positive_rate < 0.1 else "roc_auc"
    metric_why = "a rare positive class" if metric == "pr_auc" else "classes balanced enough"
    null_floor = min(0.5, max(0.05, round(2 * max_null, 2)))
    pr_floor = round(positive_rate + (1 - positive_rate) / 4, 3)
    left_out = "".join(f"#   - {s.name}: {s.why}\n" for s in skipped)
    text = f"""# Written by `conveyor init --from {source} --target {target}` from {rows:,} rows.
# Review it before the first release: every value below is inferred or a default, and says which.
name: {name}
description: >-
  Inferred from {source}. Describe what the model decides and for whom.

data:
  source: {json.dumps(source)}
  rows: {max(rows, 100)}                 # rows seen (used by the synthetic generators only)
  seed: 0
  holdout_fraction: {HOLDOUT_FRACTION}      # a stratified quarter is held out for the gates

# Order here is the order of the served `features` tensor. Ranges are the observed ones widened
# {RANGE_MARGIN:.0%} of their span each side (non-negative columns stay non-negative): values
# outside fail the data contract. nullable: nulls were seen (served as NaN, imputed in the model).
features:
{chr(10).join(f.yaml() for f in features)}
{("# Left out:" + chr(10) + left_out) if skipped else ""}
target:
  name: {json.dumps(target)}
  classes: {classes}          # {positive_rate:.2%} of rows are 1

quality:                     # from the data: floors a broken extract would fall under
  min_rows: {max(100, rows // 10)}            # a tenth of the rows seen
  min_positive_rate: {positive_rate / 4:.4g}  # a quarter of the rate seen ({positive_rate:.2%})
  max_null_share: {null_floor}        # twice the largest null share seen, at least 5 %

estimator:
  family: {family}   # {family_why}
  params:
{FIXED_PARAMS[family]}

search:
  trials: 8
  parallel: 2
  metric: {metric}            # {metric_why}
  validation_fraction: 0.25
  max_rows: 20000            # trials fit on a sample of at most this many rows
  seed: 0
  space:
{SEARCH_SPACES[family]}

evaluation:
  operating_point: best_f1   # or target_precision, with target_precision set below
  target_precision: 0.9

# LEFT FOR YOU: the floors a model must reach to be released. These are only "better than
# chance" so that a first release on this data goes through; set them from your model-risk policy.
thresholds:
  roc_auc: 0.6
  pr_auc: {pr_floor}             # a quarter of the way from chance (the positive rate) to 1

validation:                  # challenger vs champion on the challenger's holdout
  metric: {metric}
  rule: non_inferior
  margin: 0.01
  resamples: 1000
  confidence: 0.95
  seed: 0

drift:
  share: 0.3
  max_rows: 100000
  seed: 0
  cooldown_s: 21600

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
    return text, skipped


class InitResult(BaseModel):
    path: str
    name: str
    features: int
    skipped: list[Skipped]


def init_spec(source: str, target: str, name: str | None, spec_dir: Path) -> InitResult:
    name = name or default_name(source)
    if not re.fullmatch(MODEL_NAME, name):
        # Checked before it becomes a path: `--name ../../x` must not reach the file system.
        raise InitError(
            f"--name {name!r} is not a model name: use lowercase letters, digits, '-' and '_', "
            "starting with a letter or digit (it names the registry entry, the Triton model "
            "and the spec file)"
        )
    path = spec_dir / f"{name}.yaml"
    if path.exists():
        raise InitError(
            f"{path} already exists; conveyor init never writes over a spec. Pick another "
            "--name, or delete it first if it is yours to replace"
        )
    frame = read_source(source)[0]
    text, skipped = render(source, name, target, frame)
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
    return InitResult(path=str(path), name=spec.name, features=spec.n_features, skipped=skipped)
