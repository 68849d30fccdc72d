"""The `conveyor` command's application: the Typer app, its callback (logs, helpers of killed
commands) and what every command shares: one-paragraph errors, stages on the console."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperCommand, TyperGroup

from tasks.core.errors import ConveyorError
from tasks.core.settings import Settings


class _HelpWithoutValue:
    """typer 0.29 shows `--help <bool>` in every help screen, as if --help took a value."""

    def get_help_option(self, ctx: Any) -> Any:
        option = super().get_help_option(ctx)  # type: ignore[misc]
        if option is not None:
            option.metavar = ""
        return option


class _Command(_HelpWithoutValue, TyperCommand):
    pass


class _Group(_HelpWithoutValue, TyperGroup):
    pass


class _Typer(typer.Typer):
    """Commands and groups whose help shows `--help` alone."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(cls=_Group, **kwargs)

    def command(self, *args: Any, **kwargs: Any) -> Any:
        return super().command(*args, cls=_Command, **kwargs)


app = _Typer(
    no_args_is_help=True,
    add_completion=False,
    help="conveyor carries a tabular model from data to a live Triton server and keeps it "
    "healthy there: release (train, gate, register, serve, promote), check drift and outcomes, "
    "operate the fleet.",
)


triton_app = _Typer(no_args_is_help=True, help="The embedded Triton server.")


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
    for name, value in PROCESS_DEFAULTS.items():
        os.environ.setdefault(name, value)
    VERBOSE["on"] = verbose
    route_logs(Settings().home / "logs" / LOG_FILE, verbose)
    _end_what_killed_commands_left()


# What every conveyor process sets before MLflow or Prefect is imported, unless the operator set
# it (`make stack` and compose give their services the same: `infra/stack/state.py`).
PROCESS_DEFAULTS = {
    # The ephemeral API's telemetry cannot reach anything here and logs an ERROR each start.
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    # Prefect's ephemeral API must answer within this many seconds (Prefect's default: 20,
    # counted in its own sleeps): a busy 2-core machine needs longer, and a command that gives
    # up fails before doing anything (`tasks.core.credentials.explain` says so in a paragraph).
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
    # MLflow installs its own console handler at import (INFO lines on every new SQLite store);
    # without it its records reach the root logger, so the log file (and -v), like Prefect's.
    "MLFLOW_CONFIGURE_LOGGING": "false",
    # With a tracking server MLflow writes "View run … at: <url>" to stdout for every run.
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
    # MLflow 3.17's telemetry thread deletes _MLFLOW_TELEMETRY_SESSION_ID from os.environ when
    # its upload fails (no network), while other threads read the environment: a KeyError in
    # the middle of a release.
    "MLFLOW_DISABLE_TELEMETRY": "true",
}


def _end_what_killed_commands_left() -> None:
    """A command killed with SIGKILL leaves its helpers running (its ephemeral Prefect API, ~250
    MB each): this command ends them, then marks its own (`tasks.core.owned_processes`)."""
    from tasks.core import owned_processes

    ended = owned_processes.end_orphans()
    if ended:
        logging.getLogger("conveyor").warning(
            "ended %d process(es) left by a killed conveyor command: pids %s",
            len(ended),
            ", ".join(map(str, ended)),
        )
    owned_processes.mark_children()


def route_logs(path: Path, verbose: bool) -> None:
    """The log file on the root logger (and on the loggers Prefect gives a console). Prefect is
    not imported here: a command that reads (status, doctor, history) never pays for it, and
    Prefect's own set-up leaves a root logger that already has a handler alone. A command that
    runs a flow calls `_prefect_logs()` once Prefect is imported."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    handler = logging.FileHandler(path, delay=True)  # no file until something is logged
    handler.set_name("conveyor-file")
    handler.setFormatter(
        logging.Formatter("%(asctime)s | %(levelname)-7s | %(name)s - %(message)s")
    )
    ROUTED["handler"], ROUTED["verbose"] = handler, verbose
    _attach(handler, verbose)
    # Libraries' warnings (MLflow's UserWarnings on a resume, among others) are log lines for
    # the file, not paragraphs on the console; -v shows them as it shows Prefect's.
    logging.captureWarnings(True)
    if verbose:
        logging.getLogger("py.warnings").addHandler(logging.StreamHandler())


ROUTED: dict[str, Any] = {}


def _attach(handler: logging.Handler, verbose: bool) -> None:
    for name in CONSOLE_LOGGERS:
        logger = logging.getLogger(name)
        for old in list(logger.handlers):
            console = type(old).__name__ == "PrefectConsoleHandler"
            if old.get_name() == "conveyor-file" or (console and not verbose):
                logger.removeHandler(old)
        logger.addHandler(handler)


def _prefect_logs() -> None:
    """After Prefect is imported: its console handlers off (unless -v), the log file kept."""
    import prefect  # noqa: F401 - importing Prefect installs its logging configuration

    if ROUTED:
        _attach(ROUTED["handler"], ROUTED["verbose"])


def log_path() -> Path | None:
    for handler in logging.getLogger().handlers:
        if handler.get_name() == "conveyor-file" and isinstance(handler, logging.FileHandler):
            return Path(handler.baseFilename)
    return None


def _fail(exc: Exception) -> NoReturn:
    """Expected errors (conveyor's own, a service refusing credentials) are one paragraph and
    exit 2; anything else keeps its traceback."""
    from tasks.core.credentials import explain

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


@contextlib.contextmanager
def _expected_errors() -> Iterator[None]:
    """Around a command's work: what it raises is said by `_fail` (one paragraph, exit 2, or
    the traceback of an unexpected error)."""
    try:
        yield
    except Exception as exc:
        _fail(exc)


def _tagged() -> contextlib.AbstractContextManager[None]:
    """Flow runs this command starts carry its pid and host, so that a later command can tell
    a killed one (still "Running") from a live one (`tasks.ops.crashed_runs`)."""
    from prefect import tags

    from tasks.ops.crashed_runs import process_tags

    _prefect_logs()
    return tags(*process_tags())


def _stages(title: str) -> contextlib.AbstractContextManager[object]:
    from cli.stages import shown

    return shown(console, title, live=not VERBOSE["on"])


def _champion_spec(spec: Path | None, settings: Settings) -> tuple[str, str]:
    """(spec path, model name) of a check that judges the champion; refused before Prefect
    starts its API when there is no champion to judge. Call inside `_expected_errors()`."""
    from tasks.core.spec import load_spec
    from tasks.registry import model_registry

    path = _spec_path(spec, settings)
    name = load_spec(path).name
    if model_registry.alias_version(settings, name, model_registry.CHAMPION) is None:
        raise ConveyorError(f"{name} has no champion yet; run `conveyor run` first")
    return path, name


def _spec_path(spec: Path | None, settings: Settings) -> str:
    return str(spec or settings.spec)
