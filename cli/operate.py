"""`conveyor` commands that operate the fleet: status, history, doctor, approve, rollback."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from cli.app import _expected_errors, _fail, _flag, _prefect_logs, _stages, _tagged, app, console
from tasks.core.errors import ConveyorError
from tasks.core.settings import Settings

if TYPE_CHECKING:
    from tasks.ops.fleet import ModelStatus


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

    from tasks.registry.approval import answer

    try:
        run_id = UUID(flow_run_id)
    except ValueError:
        _fail(ConveyorError(f"{flow_run_id!r} is not a flow run id (a UUID)"))
        return
    _prefect_logs()
    with _expected_errors():
        asyncio.run(answer(run_id, not reject, approver, reason))
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
    from tasks.registry.known_specs import spec_of

    with _expected_errors():
        spec_of(Settings(), model)  # a model conveyor does not know fails before Prefect starts
        from flows.rollback import rollback_flow

        with _tagged(), _stages(f"rollback {model}"):
            result = rollback_flow(model=model, reason=reason)
    console.print(f"{model}: champion is v{result.champion} again, served alone on Triton")


@app.command()
def status(
    as_json: Annotated[bool, _flag("--json", help="One JSON object per model.")] = False,
) -> None:
    """One row per model: champion and previous (when, who, why), versions Triton serves READY,
    the last release and its outcome, the last drift check, approval pending, problems."""
    from tasks.ops import fleet

    settings = Settings()
    with _expected_errors():
        statuses = fleet.fleet_status(settings)
        across = fleet.fleet_problems(settings)
    if as_json:
        for model_status in statuses:
            typer.echo(model_status.model_dump_json())
        return
    console.print(fleet_table(statuses, f"{len(statuses)} models, {settings.spec_dir}/"))
    print_details(statuses)
    for line in across:
        console.print(f"fleet problem: {line}", highlight=False, soft_wrap=True)
    if across:
        console.print("`conveyor doctor --repair` fixes what is safe", highlight=False)


def fleet_table(statuses: list[ModelStatus], where: str) -> Table:
    """The short table (cells of a few characters: no word is broken at 80 columns); the long
    fields follow it, per model (`print_details`)."""
    from tasks.ops import fleet

    table = Table(title=f"conveyor fleet ({where})", box=None, pad_edge=False)
    for column in fleet.SHORT_COLUMNS:
        # A model's name and task are never cut; a header never breaks inside a word.
        whole = column in {"model", "task"}
        table.add_column(column, no_wrap=whole, min_width=max(map(len, column.split())))
    for model_status in statuses:
        table.add_row(*fleet.short_cells(model_status))
    return table


def print_details(statuses: list[ModelStatus]) -> None:
    from tasks.ops import fleet

    for model_status in statuses:
        first, *rest = fleet.details(model_status)
        console.print(f"{model_status.model}: {first}", highlight=False, soft_wrap=True)
        for line in rest:
            console.print(f"  {line}", highlight=False, soft_wrap=True)


@app.command()
def history(
    model: Annotated[str, typer.Argument(help="Registered model name.")],
    as_json: Annotated[bool, _flag("--json", help="One JSON object per move.")] = False,
) -> None:
    """Every alias move of a model: when, which alias, from, to, who, why."""
    from tasks.registry import alias_history

    with _expected_errors():
        moves = alias_history.moves(Settings(), model)
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
    from tasks.ops.doctor import checks

    settings = Settings()
    with _expected_errors():
        models = [model] if model else checks.fleet(settings)
        if repair:
            from tasks.ops.doctor import repairs  # Prefect's import: only a repair needs it

            _prefect_logs()  # repairs hold the model's lease, which may be a Prefect server's
            report = repairs.check_and_repair(settings, models, repair)
        else:
            report = checks.examine(settings, models)
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
