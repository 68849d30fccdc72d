"""The data contract row by row: which rows of a small table (rows to score or to explain) break
the spec's feature schema, by row number, so a caller can fix exactly those. The whole-table
contract of a training snapshot is `tasks.datasets.quality` (Great Expectations)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from tasks.core.errors import ConveyorError
from tasks.core.spec import FeatureSpec, FeatureType, ModelSpec

# Row numbers named per problem: enough to find the pattern, short enough to read.
SHOWN = 5


class RowContractError(ConveyorError):
    """Rows break the spec's feature schema."""


def bad_rows(feature: FeatureSpec, values: pd.Series) -> list[tuple[np.ndarray, str]]:
    """(rows, what is wrong) for one feature's column."""
    missing = values.isna().to_numpy()
    problems = []
    if missing.any() and not feature.nullable:
        problems.append((missing, "is empty (the feature is not nullable)"))
    if feature.type is FeatureType.category:
        known = values.isin(feature.categories or []).to_numpy()
        problems.append((~known & ~missing, f"is not one of {feature.categories}"))
        return problems
    if feature.type is FeatureType.boolean:
        known = values.isin([True, False, 0, 1]).to_numpy()
        problems.append((~known & ~missing, "is not a boolean (true/false or 0/1)"))
        return problems
    numbers = pd.to_numeric(values, errors="coerce").to_numpy(dtype=np.float64)
    not_number = np.isnan(numbers) & ~missing
    problems.append((not_number, "is not a number"))
    finite = ~np.isnan(numbers)
    if feature.min is not None:
        problems.append((finite & (numbers < feature.min), f"is below its min {feature.min:g}"))
    if feature.max is not None:
        problems.append((finite & (numbers > feature.max), f"is above its max {feature.max:g}"))
    problems.append((np.isinf(numbers), "is infinite"))
    if feature.type is FeatureType.integer:
        fractional = finite & ~np.isinf(numbers) & (numbers != np.round(numbers))
        problems.append((fractional, "is not a whole number"))
    return problems


def violations(frame: pd.DataFrame, spec: ModelSpec) -> list[str]:
    """One line per (feature, problem) naming the data rows (1-based, as a spreadsheet counts
    them below the header) that have it; empty when every row keeps the contract."""
    missing = [f.name for f in spec.features if f.name not in frame.columns]
    if missing:
        return [f"columns {missing} of the model's features are missing"]
    lines = []
    for feature in spec.features:
        for rows, what in bad_rows(feature, frame[feature.name]):
            bad = np.flatnonzero(rows)
            if len(bad):
                shown = ", ".join(str(i + 1) for i in bad[:SHOWN])
                more = f" and {len(bad) - SHOWN} more" if len(bad) > SHOWN else ""
                example = frame[feature.name].iloc[bad[0]]
                lines.append(f"`{feature.name}` {what} in row(s) {shown}{more} (e.g. {example!r})")
    return lines


def require_rows(frame: pd.DataFrame, spec: ModelSpec, source: str) -> None:
    problems = violations(frame, spec)
    if problems:
        raise RowContractError(
            f"{source} breaks the data contract of {spec.name}: "
            + "; ".join(problems)
            + ". Nothing was scored: fix those rows (or the spec's schema) and run it again."
        )
