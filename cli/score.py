"""`conveyor score`: batch scoring of a partitioned Parquet table (`flows.score`)."""

from __future__ import annotations

from typing import Annotated

import typer

from cli.app import _expected_errors, _flag, _stages, _tagged, app, console
from tasks.core.cluster import COMPUTES
from tasks.core.errors import ConveyorError


@app.command()
def score(
    model: Annotated[str, typer.Argument(help="Registered model name.")],
    input: Annotated[
        str,
        typer.Option("--input", help="Parquet file, or folder / s3:// prefix of them, to score."),
    ],
    output: Annotated[
        str, typer.Option("--output", help="Folder or s3:// prefix the scores are written to.")
    ],
    version: Annotated[
        int | None, typer.Option("--version", help="Registered version (default: champion).")
    ] = None,
    compute: Annotated[
        str,
        typer.Option(
            "--compute",
            help="local (this process, piece after piece) or dask (CONVEYOR_DASK_ADDRESS, "
            "or a local cluster conveyor starts).",
        ),
    ] = "local",
    skip_bad: Annotated[
        bool,
        _flag("--skip-bad", help="Score the pieces that keep the contract; name the others."),
    ] = False,
    keep: Annotated[
        list[str] | None,
        typer.Option(
            "--keep",
            help="A column copied beside the scores (repeat it); default: the spec's outcomes key.",
        ),
    ] = None,
) -> None:
    """Score a table with the champion's (or a version's) ONNX file, piece by piece: each output
    piece is written whole or not at all, and a rerun skips the pieces already written."""
    with _expected_errors():
        if compute not in COMPUTES:
            raise ConveyorError(f"--compute is one of {list(COMPUTES)}, not {compute!r}")
    from flows.score import score_flow

    with _expected_errors(), _tagged(), _stages(f"score {model}"):
        report = score_flow(
            model=model,
            input=input,
            output=output,
            version=version,
            compute=compute,  # type: ignore[arg-type]
            skip_bad=skip_bad,
            keep=keep,
        )
    refused = (
        f"; {len(report.refused)} refused: " + ", ".join(r.key for r in report.refused)
        if report.refused
        else ""
    )
    console.print(
        f"{model} v{report.version}: {report.rows:,} rows scored in {report.scored} pieces "
        f"({report.skipped} already written) into {report.output} on {report.compute} in "
        f"{report.seconds:.1f} s{refused}",
        soft_wrap=True,
        highlight=False,
    )
