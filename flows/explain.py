"""explain_flow: reason codes for a file of rows from a registered version (the champion by
default), deployable: a reviewer runs it from the Prefect UI on a worker that reads the file."""

from __future__ import annotations

from pathlib import Path

from prefect import flow

from tasks.core.settings import Settings
from tasks.modeling.reason_codes import ReasonCodes, explain_rows_task


@flow(name="explain")
def explain_flow(
    model: str,
    rows: str,
    output: str = "",
    version: int | None = None,
    top: int | None = None,
    full: bool = False,
) -> ReasonCodes:
    """Reason codes for a file of rows from a registered version of `model`.

    Args:
        model: The registered model (a model of the fleet by name).
        rows: A CSV or Parquet file on the worker, rows in the model's feature schema.
        output: Where the reason codes go (CSV); default beside `rows`, `<stem>.reasons.csv`.
        version: The registered version; default the champion.
        top: Reasons per row; default the spec's `explanations.top`.
        full: Every feature's contribution as well, for an audit of the arithmetic.
    """
    source = Path(rows)
    target = Path(output) if output else source.with_name(f"{source.stem}.reasons.csv")
    return explain_rows_task(Settings(), model, source, target, version, top, full)
