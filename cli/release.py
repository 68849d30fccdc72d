"""`conveyor` commands along the line: init, train, run (release), smoke, drift."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, cast

import typer
from rich.markup import escape
from rich.table import Table

from cli.app import (
    SpecOption,
    _champion_spec,
    _expected_errors,
    _fail,
    _flag,
    _spec_path,
    _stages,
    _tagged,
    app,
    console,
    log_path,
)
from tasks.core.cluster import COMPUTES, Compute
from tasks.core.errors import ConveyorError
from tasks.core.model_task import Task
from tasks.core.settings import Settings
from tasks.core.spec import ModelSpec, load_spec

if TYPE_CHECKING:
    from flows.release import ReleaseResult
    from tasks.modeling.unchanged import UnchangedModel


@app.command()
def run(
    spec: SpecOption = None,
    resume: Annotated[
        str | None,
        typer.Option(
            "--resume",
            help="Continue an interrupted release of this spec (its flow run id, or 'last'): "
            "the steps it finished are reused.",
        ),
    ] = None,
    no_wait: Annotated[
        bool,
        _flag(
            "--no-wait",
            help="If another flow holds the model (a release, a rollback), exit 2 at once "
            "naming it instead of waiting for it.",
        ),
    ] = False,
    force: Annotated[
        bool,
        _flag(
            "--force",
            help="Release even when the data, spec and code equal the champion's (by default "
            "nothing is registered then).",
        ),
    ] = False,
    every: Annotated[
        bool,
        _flag(
            "--all",
            help="Release every model of the fleet (CONVEYOR_SPEC_DIR, default "
            "deployments/models/), one after the other; one model's failure does not stop the "
            "others.",
        ),
    ] = False,
) -> None:
    """Release: train, validate, register, export to Triton, smoke-test, promote."""
    settings = Settings()
    if every:
        if spec or resume:
            _fail(ConveyorError("--all releases every spec: drop --spec and --resume"))
        _run_all(settings, no_wait, force)
        return
    path = _spec_path(spec, settings)
    with _expected_errors():
        model_spec = load_spec(path)  # a bad spec is refused before the heavy imports below
        from tasks.core.attempts import LAST
        from tasks.ops.crashed_runs import dead_runs, mark_crashed
        from tasks.ops.resume import check_resumable, last_release

        _releasable(model_spec)
        console.print(
            f"releasing {model_spec.name} from {path}; Prefect's log: {log_path()}",
            highlight=False,
        )
        with _tagged():
            if resume:
                # A killed release must read Crashed, not Running, to be resumed.
                mark_crashed(dead_runs())
            resume_from = last_release(path) if resume == LAST else resume
            if resume_from:
                check_resumable(resume_from, path)
            with _stages(f"release {model_spec.name}"):
                result = _release(path, resume_from, no_wait, force)
    _print_release(result, settings)


def _releasable(model_spec: ModelSpec) -> None:
    from tasks.registry.approval import ensure_approvable

    ensure_approvable(model_spec)  # fail fast, before Prefect starts its API


def _release(
    path: str, resume_from: str | None, no_wait: bool, force: bool
) -> ReleaseResult | UnchangedModel:
    from flows.release import release_flow

    return release_flow(spec_path=path, resume_from=resume_from, wait=not no_wait, force=force)


def _run_all(settings: Settings, no_wait: bool, force: bool) -> None:
    from tasks.core.credentials import explain
    from tasks.modeling.unchanged import UnchangedModel
    from tasks.ops.fleet import load_fleet

    with _expected_errors():
        fleet = load_fleet(settings)
        for _, model_spec in fleet:
            _releasable(model_spec)
    console.print(
        f"releasing {len(fleet)} models from {settings.spec_dir}/; Prefect's log: {log_path()}",
        highlight=False,
    )
    table = Table(title=f"conveyor release --all ({len(fleet)} models)")
    for column in ("model", "outcome", "served"):
        table.add_column(column)
    failed = unexpected = 0
    for path, model_spec in fleet:
        console.print(f"{model_spec.name}: releasing", highlight=False)
        try:
            with _tagged(), _stages(f"release {model_spec.name}"):
                result = _release(str(path), None, no_wait, force)
        except Exception as exc:  # reported in the table; the other models still release
            failed += 1
            expected = exc if isinstance(exc, ConveyorError) else explain(exc)
            unexpected += expected is None
            if expected is None:
                console.print_exception()  # not one of conveyor's errors: its traceback stays
            console.print(
                f"[bold red]{model_spec.name} failed:[/] {escape(str(expected or repr(exc)))}",
                soft_wrap=True,
            )
            table.add_row(model_spec.name, f"failed: {expected or type(exc).__name__}", "")
            continue
        if isinstance(result, UnchangedModel):
            outcome, served = f"unchanged: champion v{result.version} already is this model", ""
        else:
            outcome = f"v{result.version} is champion (previous: {result.promotion.previous})"
            served = ", ".join(map(str, result.swap.after))
        console.print(f"{model_spec.name}: {outcome}", highlight=False)
        table.add_row(model_spec.name, outcome, served)
    console.print(table)
    if failed:
        where = log_path()
        console.print(f"{failed} of {len(fleet)} releases failed; details: {where}")
        raise typer.Exit(1 if unexpected else 2)


def _print_release(result: ReleaseResult | UnchangedModel, settings: Settings) -> None:
    from tasks.modeling.unchanged import UnchangedModel

    if isinstance(result, UnchangedModel):
        console.print(f"{result.model}: {result.sentence()}", highlight=False)
        return
    table = Table(title=f"conveyor release: {result.model}", show_header=False)
    metrics, smoke, onnx = result.metrics, result.smoke, result.export.onnx
    tuning = result.export.tuning
    chosen = tuning.chosen
    rows = [
        ("model", result.model),
        ("version", f"{result.version} (champion; previous: {result.promotion.previous})"),
        ("MLflow run", result.run_id),
        ("validation", result.validation.verdict),
        (f"holdout ({metrics.task})", metrics.headline()),
        ("ONNX parity", onnx.parity.summary()),
        (
            "served vs offline",
            f"max |Δ| {max(smoke.http_max_abs_diff, smoke.grpc_max_abs_diff):.1e} "
            f"on {smoke.rows} rows (HTTP + gRPC)",
        ),
        ("served by", result.served_by(settings)),
        ("served versions", ", ".join(map(str, result.swap.after))),
        ("latency p50 / p99", f"{smoke.p50_ms:.2f} / {smoke.p99_ms:.2f} ms (batch 1, HTTP)"),
        (
            f"under load ({smoke.load.concurrency} clients)",
            f"{smoke.load.throughput_rps:.0f} req/s, p99 {smoke.load.p99_ms:.2f} ms, "
            f"{smoke.load.errors} errors",
        ),
        (
            "serving config",
            f"{chosen.instance_count} instance(s), queue delay "
            f"{chosen.max_queue_delay_microseconds} µs"
            + (f" (tuned over {len(tuning.trials)} trials)" if tuning.trials else " (from spec)"),
        ),
        *([("canary", result.canary.summary())] if result.canary else []),
        ("swap", result.swap.summary()),
        ("repository", result.retention.summary()),
        ("model card", result.model_card),
        ("MLflow store", settings.tracking_uri),
    ]
    for key, value in rows:
        table.add_row(key, value)
    console.print(table)
    served = (
        "Triton keeps serving the champion; stop it with `conveyor triton down`."
        if settings.embedded_triton
        else "Every replica serves the champion and previous; `conveyor triton status` lists them."
    )
    console.print(
        f"{served} MLflow UI: `.venv/bin/mlflow ui --backend-store-uri {settings.tracking_uri}`."
    )


@app.command()
def init(
    source: Annotated[
        str, typer.Option("--from", help="The data: a CSV or Parquet file, a folder, s3://…")
    ],
    target: Annotated[
        str, typer.Option(help="The label column: classes (two or more), or a number.")
    ],
    name: Annotated[
        str | None, typer.Option(help="Model name (default: from the file name).")
    ] = None,
    task: Annotated[
        Task | None,
        typer.Option(help="binary, multiclass or regression (default: inferred from the target)."),
    ] = None,
    compute: Annotated[
        str,
        typer.Option(
            help="local, or dask: a partitioned Parquet table read, trained on and scored on a "
            "Dask cluster (only a profile of it is read here)."
        ),
    ] = "local",
) -> None:
    """Write deployments/models/NAME.yaml from the data: the task, types, ranges, nulls,
    categories, target, quality floors, a model family for its size. Never overwrites a spec."""
    settings = Settings()
    with _expected_errors():
        _check_init_arguments(source, name)  # before the data stack is imported (~3 s)
        from tasks.datasets.schema_gen import init_spec

        result = init_spec(source, target, name, settings.spec_dir, task, _compute(compute))
    console.print(
        f"wrote {result.path}: model {result.name}, {result.features} features, "
        f"task {result.task.value} ({result.task_why})",
        highlight=False,
    )
    for skipped in result.skipped:
        console.print(f"  left out {skipped.name}: {skipped.why}", highlight=False)
    console.print(
        "Review its thresholds (set to better-than-chance floors) and approval policy, then "
        f"release it: conveyor run --spec {result.path}",
        highlight=False,
    )


def _compute(compute: str) -> Compute:
    if compute not in COMPUTES:
        raise ConveyorError(f"--compute {compute!r} is not one of {list(COMPUTES)}")
    return cast(Compute, compute)


def _check_init_arguments(source: str, name: str | None) -> None:
    from pathlib import Path

    from tasks.core.names import name_problem

    problem = name_problem(name) if name is not None else None
    if problem:
        raise ConveyorError(f"--name {problem}")
    if "://" not in source and not Path(source).exists():
        # Only on the error: the table of sources imports pyarrow.
        from tasks.datasets.sources import forms

        raise ConveyorError(f"--from {source} does not exist: pass one of: {forms()}")


@app.command()
def train(spec: SpecOption = None) -> None:
    """Train a candidate and log it to MLflow (no registration)."""
    settings = Settings()
    with _expected_errors():
        model_spec = load_spec(_spec_path(spec, settings))  # refused before the flow's imports
        from flows.training import training_flow
        from tasks.modeling.search import task_runner

        runner = task_runner(
            settings.task_runner, model_spec.search.parallel, settings.dask_address
        )
        with _tagged():
            result = training_flow.with_options(task_runner=runner)(model_spec, settings)
    m = result.metrics
    console.print(
        f"MLflow run {result.run_id}: {m.headline()} on {m.rows} holdout rows "
        f"(data {result.train.sha256[:12]}…)"
    )


@app.command()
def smoke(
    spec: SpecOption = None,
    version: Annotated[
        int | None, typer.Option(help="Version to test (default: champion).")
    ] = None,
) -> None:
    """Smoke-test a served version (default: the champion) through Triton."""
    settings = Settings()
    with _expected_errors():
        model_spec = load_spec(_spec_path(spec, settings))
        from tasks.registry import model_registry, tracking

        number = version or model_registry.alias_version(
            settings, model_spec.name, model_registry.CHAMPION
        )
        if number is None:
            raise ConveyorError(f"{model_spec.name} has no champion yet; run `conveyor run` first")
        from flows.smoke import smoke_test_flow
        from tasks.datasets.data import DatasetRef

        ref = model_registry.version_ref(settings, model_spec.name, number)
        holdout_uri = tracking.run_tag(settings, ref.run_id, tracking.TAG_HOLDOUT_URI)
        holdout = DatasetRef(
            uri=holdout_uri,
            sha256=tracking.run_tag(settings, ref.run_id, tracking.TAG_HOLDOUT),
            rows=0,
            positives=0,
        )
        # A live version answers under the model's own name (the candidate name is a release's).
        with _tagged():
            report = smoke_test_flow(model_spec, settings, ref, holdout, served_as=model_spec.name)
    console.print(
        f"{report.model} v{report.version}: passed; {report.rows} rows match offline ONNX, "
        f"p50 {report.p50_ms:.2f} ms, p99 {report.p99_ms:.2f} ms"
    )


@app.command()
def drift(
    spec: SpecOption = None,
    every: Annotated[
        bool, _flag("--all", help="Every model, outcome checks too (the nightly run).")
    ] = False,
) -> None:
    """Drift check of the champion against the newest batch; emits the retrain event on drift."""
    settings = Settings()
    if every:
        from flows.drift import fleet_drift_flow

        with _expected_errors(), _tagged(), _stages("nightly drift check"):
            fleet_report = fleet_drift_flow()
        for checked in fleet_report.models:
            console.print(checked.line(), highlight=False)
        return
    with _expected_errors():
        path, name = _champion_spec(spec, settings)
        from flows.drift import drift_check_flow  # Evidently's import: ~6 s, after the checks

        with _tagged(), _stages(f"drift check {name}"):
            report = drift_check_flow(spec_path=path)
    verdict = "DRIFT (conveyor.drift.detected emitted)" if report.drifted else "no drift"
    console.print(
        f"{report.model} v{report.champion}: {verdict}; share {report.drift_share:.2f} "
        f"(threshold {report.threshold_share:.2f}), drifted columns "
        f"{', '.join(report.drifted_columns) or 'none'}, prediction drift "
        f"{'yes' if report.prediction.drifted else 'no'}; report {report.report_uri}"
    )
