"""Values of a numeric column that are there but do not read as numbers ("n/a", "1,5", "?"),
and how to say so: the data gate (`data.require_numbers`) and `conveyor init` (which then
keeps the column as a number rather than dropping it as text) tell the user the same."""

from __future__ import annotations

import pandas as pd

EXAMPLES = 5  # values quoted in a message
PLACEHOLDER_FIX = (
    "Fix them at the source; leave a missing value empty (and mark the feature "
    "`nullable: true`) rather than writing a placeholder."
)


def not_numbers(values: pd.Series) -> pd.Series:
    """The values of a column that are there but do not read as numbers."""
    return values[values.notna() & pd.to_numeric(values, errors="coerce").isna()]


def examples_of(text: pd.Series) -> str:
    """The commonest of `text` with their counts, and how many other values there are."""
    counts = text.astype(str).value_counts()
    shown = [f"{v!r} ({n} row{'s' if n > 1 else ''})" for v, n in counts.head(EXAMPLES).items()]
    more = f" and {len(counts) - EXAMPLES} other value(s)" if len(counts) > EXAMPLES else ""
    return ", ".join(shown) + more
