"""`conveyor init`'s reading of the label column: which task it is (binary, multiclass or
regression), its classes or its range, and why, in words the command prints and the spec keeps
as a comment. A target conveyor cannot learn from is one InitError saying what to change."""

from __future__ import annotations

import math

import pandas as pd
from pydantic import BaseModel

from tasks.core.errors import ConveyorError
from tasks.core.model_task import Task
from tasks.datasets.data import label_key

# A classifier's classes, at most: beyond it an integer target is a count or an amount (a
# regression), and a text target an identifier. One of our reference systems has 10 classes.
MAX_CLASSES = 30
# Rows of each class, at least: the split, the search and the threshold's folds each stratify
# on the class, and three folds of a quarter-held-out split need about this many to see it.
MIN_CLASS_ROWS = 10


# A range is widened by this share of its observed span on each side: tomorrow's data should not
# fail the contract for a value slightly past what one extract happened to contain.
RANGE_MARGIN = 0.1


def widen(low: float, high: float, integer: bool, non_negative: bool) -> tuple[float, float]:
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


class InitError(ConveyorError):
    """The dataset cannot be made into a model spec as it is."""


class TargetInference(BaseModel):
    task: Task
    classes: list[int] | list[str] | None = None
    counts: list[int] = []  # rows of each class, in `classes` order
    low: float | None = None  # a regression target's observed range
    high: float | None = None
    std: float | None = None
    why: str

    @property
    def positive_rate(self) -> float:
        """A binary target's share of its second (positive) class."""
        return self.counts[1] / sum(self.counts) if self.task is Task.binary else 0.0


def _integral(labels: pd.Series) -> bool:
    numbers = labels.astype(float)
    return bool((numbers == numbers.round()).all())


def _classification(labels: pd.Series, target: str, source: str, why: str) -> TargetInference:
    keyed = {label_key(v): int(n) for v, n in labels.value_counts().items()}
    numeric = pd.api.types.is_numeric_dtype(labels)
    classes: list[int] | list[str] = sorted(int(k) for k in keyed) if numeric else sorted(keyed)
    by_class = [keyed[str(c)] for c in classes]
    rare = [(c, n) for c, n in zip(classes, by_class, strict=True) if n < MIN_CLASS_ROWS]
    if rare:
        shown = ", ".join(f"{c!r} ({n} rows)" for c, n in rare[:5])
        raise InitError(
            f"target {target!r} of {source} has classes with too few rows to stratify: {shown}; "
            f"each class needs at least {MIN_CLASS_ROWS}. Merge rare classes into one at the "
            "source, gather more data"
            + (", or pass --task regression if it is a count or amount" if numeric else "")
        )
    task = Task.binary if len(classes) == 2 else Task.multiclass
    if task is Task.binary:
        why += f"; {classes[1]!r} is the positive class (list it second to choose)"
    return TargetInference(task=task, classes=classes, counts=by_class, why=why)


def _regression(labels: pd.Series, target: str, source: str, why: str) -> TargetInference:
    if not pd.api.types.is_numeric_dtype(labels) or pd.api.types.is_bool_dtype(labels):
        raise InitError(
            f"target {target!r} of {source} holds {labels.dtype} values: a regression needs "
            "numbers. Recode it at the source, or drop --task regression to classify it"
        )
    numbers = labels.astype(float)
    # Widened like a feature's range, and rounded outward: the contract holds every value seen.
    low, high = widen(
        float(numbers.min()), float(numbers.max()), _integral(labels), bool(numbers.min() >= 0)
    )
    return TargetInference(
        task=Task.regression,
        low=low,
        high=high,
        std=float(numbers.std(ddof=0)),
        why=why,
    )


def infer_target(
    frame: pd.DataFrame, target: str, source: str, task: Task | None = None
) -> TargetInference:
    """The task and its target, from the label column (or the task the user named)."""
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
    distinct = labels.nunique()
    if distinct < 2:
        raise InitError(
            f"target {target!r} has one class only ({labels.iloc[0]!r}) in {source}: a model "
            "needs examples of more than one outcome; check the extract's filter"
        )
    if task is Task.regression:
        return _regression(labels, target, source, "regression, as --task said")
    if task is not None:
        if (distinct == 2 and task is Task.multiclass) or (distinct > 2 and task is Task.binary):
            raise InitError(
                f"--task {task.value} contradicts target {target!r}: it has {distinct} distinct "
                f"values in {source}. Binary is two classes, multiclass three or more"
            )
        return _classification(labels, target, source, f"{task.value}, as --task said")
    if pd.api.types.is_bool_dtype(labels) or distinct == 2:
        return _classification(labels, target, source, "two distinct values: binary")
    numeric = pd.api.types.is_numeric_dtype(labels)
    if numeric and not _integral(labels):
        return _regression(
            labels, target, source, f"numbers with fractions, {distinct} distinct: regression"
        )
    if distinct > MAX_CLASSES:
        if numeric:
            return _regression(
                labels,
                target,
                source,
                f"{distinct} distinct whole numbers (more than {MAX_CLASSES} classes): regression",
            )
        raise InitError(
            f"target {target!r} has {distinct} distinct text values in {source}, more than the "
            f"{MAX_CLASSES} classes conveyor infers: an identifier, not a label. Group them into "
            "classes at the source, or pass --task multiclass to keep every one"
        )
    return _classification(
        labels,
        target,
        source,
        f"{distinct} distinct {'whole numbers' if numeric else 'values'} (at most "
        f"{MAX_CLASSES}): multiclass",
    )
