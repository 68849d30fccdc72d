"""`conveyor` commands for a model-risk review: explain (reason codes)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cli.app import _expected_errors, _flag, _stages, _tagged, app, console


@app.command()
def explain(
    model: Annotated[str, typer.Argument(help="Registered model name.")],
    rows: Annotated[
        Path, typer.Option("--rows", help="CSV or Parquet file of rows in the model's schema.")
    ],
    version: Annotated[
        int | None, typer.Option("--version", help="Registered version (default: champion).")
    ] = None,
    top: Annotated[
        int | None,
        typer.Option("--top", min=1, help="Reasons per row (default: spec explanations.top)."),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option("--out", help="CSV to write (default: <rows stem>.reasons.csv)."),
    ] = None,
    full: Annotated[
        bool, _flag("--full", help="Every feature's contribution too (an audit of the sums).")
    ] = False,
) -> None:
    """Reason codes: for each row, the score and the features that pushed it most toward the
    adverse outcome, with their contributions, from exactly the registered version's model."""
    from flows.explain import explain_flow

    with _expected_errors(), _tagged(), _stages(f"explain {model}"):
        result = explain_flow(
            model=model, rows=str(rows), output=str(out or ""), version=version, top=top, full=full
        )
    console.print(
        f"{model} v{result.version}: reason codes of {result.rows} rows (top {result.top}, "
        f"contributions in {result.link} units, reproducing each score to "
        f"{result.max_reconstruction_error:.1e}) in {result.output}",
        soft_wrap=True,
    )
