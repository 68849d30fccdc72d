"""The `conveyor` command: parses options into the same typed configs the flows take."""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from tasks.errors import ConveyorError
from tasks.settings import Settings
from tasks.spec import ModelSpec, load_spec

if TYPE_CHECKING:
    from flows.release import ReleaseResult
    from tasks.unchanged import UnchangedModel

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)
triton_app = typer.Typer(no_args_is_help=True, help="The embedded Triton server.")
app.add_typer(triton_app, name="triton")
console = Console()


def _flag(*names: str, help: str) -> Any:
    """An on/off option. Its help shows no value column: typer 0.29 prints `<bool>` there, as
    if the flag took a value."""
    return typer.Option(*names, help=help, metavar="")


SpecOption = Annotated[
    Path | None,
    typer.Option("--spec", help="Model spec YAML (default: CONVEYOR_SPEC or the fraud detector)."),
]


LOG_FILE = "conveyor.log"
# Set once per command by the callback: -v puts Prefect's log lines on the console, where a
# live-redrawn table would fight them, so stages are then printed as lines.
VERBOSE = {"on": False}
# Loggers Prefect gives a console handler (the root, and its embedded server's uvicorn/fastapi).
CONSOLE_LOGGERS = ("", "uvicorn", "fastapi")


@app.callback()
def main(
    verbose: Annotated[
        bool, _flag("-v", "--verbose", help="Show Prefect's log lines on the console.")
    ] = False,
) -> None:
    """Prefect's log lines go to <CONVEYOR_HOME>/logs/conveyor.log (and to the Prefect API, as
    always); the console shows conveyor's own output, unless -v."""
    # The ephemeral API's telemetry cannot reach anything here and logs an ERROR each start.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # MLflow installs its own console handler at import (INFO lines on every new SQLite store);
    # without it its records reach the root logger, so the log file (and -v), like Prefect's.
    os.environ.setdefault("MLFLOW_CONFIGURE_LOGGING", "false")
    # With a tracking server MLflow writes "View run … at: <url>" to stdout for every run.
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    VERBOSE["on"] = verbose
    route_logs(Settings().home / "logs" / LOG_FILE, verbose)
    _end_what_killed_commands_left()


def _end_what_killed_commands_left() -> None:
    """A command killed with SIGKILL leaves its helpers running (its ephemeral Prefect API, ~250
    MB each): this command ends them, then marks its own (`tasks.owned_processes`)."""
    from tasks import owned_processes

    ended = owned_processes.end_orphans()
    if ended:
        logging.getLogger("conveyor").warning(
            "ended %d process(es) left by a killed conveyor command: pids %s",
            len(ended),
            ", ".join(map(str, ended)),
        )
    owned_processes.mark_children()


def route_logs(path: Path, verbose: bool) -> None:
    import prefect  # noqa: F401 - importing Prefect installs its logging configuration

    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    handler = logging.FileHandler(path)
    handler.set_name("conveyor-file")
    handler.setFormatter(
        logging.Formatter("%(asctime)s | %(levelname)-7s | %(name)s - %(message)s")
    )
    for name in CONSOLE_LOGGERS:
        logger = logging.getLogger(name)
        for old in list(logger.handlers):
            console = type(old).__name__ == "PrefectConsoleHandler"
            if old.get_name() == "conveyor-file" or (console and not verbose):
                logger.removeHandler(old)
        logger.addHandler(handler)


def log_path() -> Path | None:
    for handler in logging.getLogger().handlers:
        if handler.get_name() == "conveyor-file" and isinstance(handler, logging.FileHandler):
            return Path(handler.baseFilename)
    return None


def _fail(exc: Exception) -> None:
    """Expected errors (conveyor's own, a service refusing credentials) are one paragraph and
    exit 2; anything else keeps its traceback."""
    from tasks.credentials import explain

    expected = exc if isinstance(exc, ConveyorError) else explain(exc)
    if expected is None:
        raise exc
    where = log_path()
    logged = where is not None and where.exists() and where.stat().st_size > 0
    details = f" (details: {where})" if logged else ""
    # Not wrapped by rich (the terminal wraps it): a path split across lines cannot be pasted.
    # Escaped: a message naming a pattern (`[a-z0-9]`) is text, not rich markup to swallow.
    console.print(
        f"[bold red]error:[/] {escape(str(expected))}{escape(details)}",
        highlight=False,
        soft_wrap=True,
    )
    raise typer.Exit(2) from None


def _tagged() -> contextlib.AbstractContextManager[None]:
    """Flow runs this command starts carry its pid and host, so that a later command can tell
    a killed one (still "Running") from a live one (`tasks.crashed_runs`)."""
    from prefect import tags

    from tasks.crashed_runs import process_tags

    return tags(*process_tags())


def _stages(title: str) -> contextlib.AbstractContextManager[object]:
    from flows.stages import shown

    return shown(console, title, live=not VERBOSE["on"])


def _spec_path(spec: Path | None, settings: Settings) -> str:
    return str(spec or settings.spec)


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
    try:
        from tasks.crashed_runs import dead_runs, mark_crashed
        from tasks.resume import LAST, check_resumable, last_release

        model_spec = _releasable(path)
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
    except Exception as exc:
        _fail(exc)
        return
    _print_release(result, settings)


def _releasable(path: str) -> ModelSpec:
    from tasks.approval import ensure_approvable

    model_spec = load_spec(path)
    ensure_approvable(model_spec)  # fail fast, before Prefect starts its API
    return model_spec


def _release(
    path: str, resume_from: str | None, no_wait: bool, force: bool
) -> ReleaseResult | UnchangedModel:
    from flows.release import release_flow

    return release_flow(spec_path=path, resume_from=resume_from, wait=not no_wait, force=force)


def _run_all(settings: Settings, no_wait: bool, force: bool) -> None:
    from tasks.credentials import explain
    from tasks.fleet import load_fleet
    from tasks.unchanged import UnchangedModel

    try:
        fleet = load_fleet(settings)
        for path, _ in fleet:
            _releasable(str(path))
    except Exception as exc:
        _fail(exc)
        return
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
    from tasks.unchanged import UnchangedModel

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
        (
            "ROC AUC / PR AUC / F1",
            f"{metrics.roc_auc:.4f} / {metrics.pr_auc:.4f} / {metrics.f1:.4f}",
        ),
        (
            "ONNX parity",
            f"max |Δp| {onnx.parity.max_abs_diff:.1e} on {onnx.parity.rows} rows, "
            f"{onnx.parity.label_flips} label flips",
        ),
        (
            "served vs offline",
            f"max |Δp| {max(smoke.http_max_abs_diff, smoke.grpc_max_abs_diff):.1e} "
            f"on {smoke.rows} rows (HTTP + gRPC)",
        ),
        (
            "Triton HTTP / gRPC",
            f"http://{result.export.serving.endpoint.http} / {result.export.serving.endpoint.grpc}",
        ),
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
        ("swap", result.swap.summary()),
        ("repository", result.retention.summary()),
        ("model card", result.model_card),
        ("MLflow store", settings.tracking_uri),
    ]
    for key, value in rows:
        table.add_row(key, value)
    console.print(table)
    console.print(
        "Triton keeps serving the champion; stop it with `conveyor triton down`. "
        f"MLflow UI: `.venv/bin/mlflow ui --backend-store-uri {settings.tracking_uri}`."
    )


@app.command()
def init(
    source: Annotated[
        str, typer.Option("--from", help="The data: a CSV or Parquet file, a folder, s3://…")
    ],
    target: Annotated[str, typer.Option(help="The label column (0/1 or false/true).")],
    name: Annotated[
        str | None, typer.Option(help="Model name (default: from the file name).")
    ] = None,
) -> None:
    """Write deployments/models/NAME.yaml from the data: types, ranges, nulls, categories,
    target, quality floors, a model family for its size. Never overwrites a spec."""
    from tasks.schema_gen import init_spec

    settings = Settings()
    try:
        result = init_spec(source, target, name, settings.spec_dir)
    except Exception as exc:
        _fail(exc)
        return
    console.print(
        f"wrote {result.path}: model {result.name}, {result.features} features", highlight=False
    )
    for skipped in result.skipped:
        console.print(f"  left out {skipped.name}: {skipped.why}", highlight=False)
    console.print(
        "Review its thresholds (set to better-than-chance floors) and approval policy, then "
        f"release it: conveyor run --spec {result.path}",
        highlight=False,
    )


@app.command()
def train(spec: SpecOption = None) -> None:
    """Train a candidate and log it to MLflow (no registration)."""
    from flows.training import training_flow
    from tasks.search import task_runner

    settings = Settings()
    try:
        model_spec = load_spec(_spec_path(spec, settings))
        runner = task_runner(
            settings.task_runner, model_spec.search.parallel, settings.dask_address
        )
        result = training_flow.with_options(task_runner=runner)(model_spec, settings)
    except Exception as exc:
        _fail(exc)
        return
    m = result.metrics
    console.print(
        f"MLflow run {result.run_id}: ROC AUC {m.roc_auc:.4f}, PR AUC {m.pr_auc:.4f}, "
        f"F1 {m.f1:.4f} on {m.rows} holdout rows (data {result.train.sha256[:12]}…)"
    )


@app.command()
def smoke(
    spec: SpecOption = None,
    version: Annotated[
        int | None, typer.Option(help="Version to test (default: champion).")
    ] = None,
) -> None:
    """Smoke-test a served version (default: the champion) through Triton."""
    from flows.smoke import smoke_test_flow
    from tasks import registry, tracking
    from tasks.data import DatasetRef

    settings = Settings()
    try:
        model_spec = load_spec(_spec_path(spec, settings))
        number = version or registry.alias_version(settings, model_spec.name, registry.CHAMPION)
        if number is None:
            raise ConveyorError(f"{model_spec.name} has no champion yet; run `conveyor run` first")
        ref = registry.version_ref(settings, model_spec.name, number)
        holdout_uri = tracking.run_tag(settings, ref.run_id, tracking.TAG_HOLDOUT_URI)
        holdout = DatasetRef(
            uri=holdout_uri,
            sha256=tracking.run_tag(settings, ref.run_id, tracking.TAG_HOLDOUT),
            rows=0,
            positives=0,
        )
        # A live version answers under the model's own name (the candidate name is a release's).
        report = smoke_test_flow(model_spec, settings, ref, holdout, served_as=model_spec.name)
    except Exception as exc:
        _fail(exc)
        return
    console.print(
        f"{report.model} v{report.version}: passed; {report.rows} rows match offline ONNX, "
        f"p50 {report.p50_ms:.2f} ms, p99 {report.p99_ms:.2f} ms"
    )


@app.command()
def drift(
    spec: SpecOption = None,
    every: Annotated[
        bool, _flag("--all", help="Check every model of the fleet (the nightly run).")
    ] = False,
) -> None:
    """Drift check of the champion against the newest batch; emits the retrain event on drift."""
    from flows.drift import drift_check_flow, fleet_drift_flow
    from tasks import registry

    settings = Settings()
    if every:
        try:
            with _tagged(), _stages("nightly drift check"):
                fleet_report = fleet_drift_flow()
        except Exception as exc:
            _fail(exc)
            return
        for checked in fleet_report.models:
            console.print(checked.line(), highlight=False)
        return
    path = _spec_path(spec, settings)
    try:
        name = load_spec(path).name
        if registry.alias_version(settings, name, registry.CHAMPION) is None:
            # Before Prefect starts its API: there is nothing to compare against.
            raise ConveyorError(f"{name} has no champion yet; run `conveyor run` first")
        with _tagged(), _stages(f"drift check {name}"):
            report = drift_check_flow(spec_path=path)
    except Exception as exc:
        _fail(exc)
        return
    verdict = "DRIFT (conveyor.drift.detected emitted)" if report.drifted else "no drift"
    console.print(
        f"{report.model} v{report.champion}: {verdict}; share {report.drift_share:.2f} "
        f"(threshold {report.threshold_share:.2f}), drifted columns "
        f"{', '.join(report.drifted_columns) or 'none'}, prediction drift "
        f"{'yes' if report.prediction.drifted else 'no'}; report {report.report_uri}"
    )


@app.command()
def approve(
    flow_run_id: Annotated[str, typer.Argument(help="The paused release's flow run id.")],
    approver: Annotated[str, typer.Option(help="Who decides.")],
    reason: Annotated[str, typer.Option(help="Why (ticket, review notes).")],
    reject: Annotated[bool, _flag("--reject", help="Refuse the promotion.")] = False,
) -> None:
    """Answer a release paused for approval (needs PREFECT_API_URL of its Prefect server)."""
    import asyncio
    from uuid import UUID

    from tasks.approval import answer

    try:
        run_id = UUID(flow_run_id)
    except ValueError:
        _fail(ConveyorError(f"{flow_run_id!r} is not a flow run id (a UUID)"))
        return
    try:
        asyncio.run(answer(run_id, not reject, approver, reason))
    except Exception as exc:
        _fail(exc)
        return
    console.print(f"{'rejected' if reject else 'approved'}: flow run {run_id} resumes")


@app.command()
def rollback(
    model: Annotated[
        str,
        typer.Argument(
            help="Model name: its spec is the fleet's, or the one recorded with its release."
        ),
    ],
    reason: Annotated[
        str, typer.Option(help="Why; kept in the alias history.")
    ] = "manual rollback",
) -> None:
    """Serve the previous version again and move `champion` back to it."""
    from flows.rollback import rollback_flow
    from tasks.known_specs import spec_of

    try:
        spec_of(Settings(), model)  # a model conveyor does not know fails before Prefect starts
        with _tagged(), _stages(f"rollback {model}"):
            result = rollback_flow(model=model, reason=reason)
    except Exception as exc:
        _fail(exc)
        return
    console.print(f"{model}: champion is v{result.champion} again, served alone on Triton")


@app.command()
def status(
    as_json: Annotated[bool, _flag("--json", help="One JSON object per model.")] = False,
) -> None:
    """One row per model: champion and previous (when, who, why), versions Triton serves READY,
    the last release and its outcome, the last drift check, approval pending, problems."""
    from tasks import fleet

    settings = Settings()
    try:
        statuses = fleet.fleet_status(settings)
    except Exception as exc:
        _fail(exc)
        return
    if as_json:
        for model_status in statuses:
            typer.echo(model_status.model_dump_json())
        return
    table = Table(title=f"conveyor fleet ({len(statuses)} models, {settings.spec_dir}/)")
    for column in fleet.COLUMNS:
        table.add_column(column, overflow="fold")
    for model_status in statuses:
        table.add_row(*fleet.row(model_status))
    console.print(table)


@app.command()
def history(
    model: Annotated[str, typer.Argument(help="Registered model name.")],
    as_json: Annotated[bool, _flag("--json", help="One JSON object per move.")] = False,
) -> None:
    """Every alias move of a model: when, which alias, from, to, who, why."""
    from tasks import alias_history

    try:
        moves = alias_history.moves(Settings(), model)
    except Exception as exc:
        _fail(exc)
        return
    if as_json:
        for move in moves:
            typer.echo(move.model_dump_json())
        return
    table = Table(title=f"alias history: {model}")
    for column in ("when (UTC)", "alias", "from", "to", "who", "why"):
        table.add_column(column)
    for move in moves:
        table.add_row(
            f"{move.at:%Y-%m-%d %H:%M:%S}",
            move.alias,
            "-" if move.from_version is None else str(move.from_version),
            "-" if move.to_version is None else str(move.to_version),
            move.actor,
            move.reason,
        )
    console.print(table)


@app.command()
def doctor(
    model: Annotated[
        str | None, typer.Argument(help="One model (default: every model conveyor knows).")
    ] = None,
    repair: Annotated[
        bool, _flag("--repair", help="Fix what is safe, and say what was done.")
    ] = False,
    as_json: Annotated[bool, _flag("--json", help="The report as JSON.")] = False,
) -> None:
    """Check registry, repository and Triton against each other; exit 0 only when clean."""
    from tasks import doctor as checks

    settings = Settings()
    try:
        models = [model] if model else checks.fleet(settings)
        report = checks.check_and_repair(settings, models, repair)
    except Exception as exc:
        _fail(exc)
        return
    if as_json:
        typer.echo(report.model_dump_json(indent=2))
    else:
        for line in checks.report_lines(report):
            console.print(line, highlight=False, markup=False)
    if not report.clean:
        left = [p for p in report.problems if not p.repaired and p.kind != "release-running"]
        console.print(
            f"{len(left)} problem(s) left: "
            + (
                "each line says what was tried and why it was not repaired"
                if repair
                else f"`conveyor doctor {model or ''} --repair`".replace("  ", " ")
                + " fixes what is safe"
            ),
            highlight=False,
            soft_wrap=True,
        )
        raise typer.Exit(1)


@triton_app.command("up")
def triton_up(spec: SpecOption = None) -> None:
    """Start the embedded Triton and load the spec's champion (and previous) version."""
    from tasks import triton, triton_server

    settings = Settings()
    try:
        model_spec = load_spec(_spec_path(spec, settings))
        state = triton_server.ensure_running(settings)
        serving = triton.restore_serving(settings, model_spec)
    except Exception as exc:
        _fail(exc)
        return
    console.print(
        f"Triton pid {state.pid}: http://{state.endpoint.http}, grpc {state.endpoint.grpc}, "
        f"metrics {state.metrics_url}; {model_spec.name} versions loaded: "
        f"{serving.versions or 'none (no champion yet)'}; log {state.log_path}"
    )


@triton_app.command("down")
def triton_down() -> None:
    """Stop the embedded Triton."""
    from tasks import triton_server

    stopped = triton_server.stop(Settings())
    console.print("stopped" if stopped else "the embedded Triton was not running")


@triton_app.command("status")
def triton_status() -> None:
    """Say whether Triton (the embedded one, or the one TRITON_URL names) is up, where, and
    what it serves."""
    from tasks import triton, triton_server

    settings = Settings()
    if not settings.embedded_triton:
        # TRITON_URL points at a server conveyor did not start (compose, `make stack`).
        where = triton_server.endpoint(settings)
        described = f"http://{where.http}, grpc {where.grpc} (external: TRITON_URL)"
    else:
        state = triton_server.status(settings)
        if state is None:
            console.print("the embedded Triton is not running (`conveyor triton up` starts it)")
            raise typer.Exit(1)
        where = state.endpoint
        described = (
            f"pid {state.pid}, http://{where.http}, grpc {where.grpc}, "
            f"metrics {state.metrics_url}, repository {state.repository}"
        )
    try:
        ready = triton.control_client(where).ready_models()
    except Exception as exc:
        _fail(exc)
        return
    loaded = [f"{name}:{version or '?'}" for name, version in ready]
    console.print(f"up: {described}; loaded: {', '.join(loaded) or 'nothing'}")
