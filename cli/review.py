"""`conveyor` commands for a model-risk review and its monitoring: explain (reason codes),
outcomes (realised performance on labels), report (the model's history as a chart)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cli.app import (
    SpecOption,
    _champion_spec,
    _expected_errors,
    _flag,
    _spec_path,
    _stages,
    _tagged,
    app,
    console,
)
from tasks.core.errors import ConveyorError
from tasks.core.settings import Settings


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
    with _expected_errors():
        _check_explain_arguments(model, rows, version)  # before Prefect starts its API
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


def _check_outcomes_configured(path: str) -> None:
    """Nothing to check and nothing to estimate is said before Prefect starts, as what it is."""
    from tasks.core.model_task import Task
    from tasks.core.spec import load_spec

    spec = load_spec(path)
    if not spec.outcomes.configured and spec.task is not Task.binary:
        raise ConveyorError(
            f"nothing configured: {spec.name}'s spec ({path}) has no `outcomes:` section, so "
            "there are no labels to check its answers against (and a "
            f"{spec.task.value} model gives no estimate before labels). Add `outcomes:` with "
            "`source` (labelled batches) or `labels` + `key` (a table joined to the scored rows)."
        )


def _check_explain_arguments(model: str, rows: Path, version: int | None) -> None:
    """What `reason_codes.explain` would refuse first, said in a second, not after ~20 s."""
    if not rows.is_file():
        raise ConveyorError(f"rows file not found: {rows}. Pass a CSV or Parquet file of rows")
    if version is None:
        from tasks.registry import model_registry

        if model_registry.alias_version(Settings(), model, model_registry.CHAMPION) is None:
            raise ConveyorError(
                f"{model} has no champion to explain; release it first or pass --version"
            )


@app.command()
def outcomes(spec: SpecOption = None) -> None:
    """Outcome check of the champion on the newest labelled batch (and, for a binary model, its
    estimate before labels); emits the retrain event on degradation."""
    with _expected_errors():
        settings = Settings()
        _check_outcomes_configured(_spec_path(spec, settings))
        path, name = _champion_spec(spec, settings)
        from flows.outcomes import outcome_check_flow  # Evidently's import: ~6 s

        with _tagged(), _stages(f"outcome check {name}"):
            report = outcome_check_flow(spec_path=path)
    event = " (conveyor.performance.degraded emitted)" if report.degraded else ""
    console.print(f"{report.line()}{event}; MLflow run {report.run_id}", highlight=False)


@app.command()
def report(
    model: Annotated[str, typer.Argument(help="Registered model name.")],
    out: Annotated[
        Path | None,
        typer.Option("--out", help="HTML file to write (default: <model>-history.html)."),
    ] = None,
) -> None:
    """The model's history on one time axis: every release, outcome check (with its interval),
    estimate and drift check, as a chart in a self-contained HTML page."""
    from tasks.ops import history
    from tasks.registry import known_specs

    settings = Settings()
    target = out or Path(f"{model}-history.html")
    with _expected_errors():
        spec = known_specs.spec_of(settings, model)
        found = history.points(settings, spec)
        if not found:
            raise ConveyorError(f"{model} has no release or check on record yet")
        target.write_text(history.render(spec, found))
    kinds = {
        name: sum(p.kind == k for p in found)
        for k, name in (
            ("release", "release"),
            ("outcome", "outcome check"),
            ("estimate", "estimate"),
            ("drift", "drift check"),
        )
    }
    summary = ", ".join(f"{n} {k}{'s' if n != 1 else ''}" for k, n in kinds.items())
    console.print(f"{model}: {summary} in {target}", highlight=False)
