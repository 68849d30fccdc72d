"""The `conveyor` command's live view of a flow's stages (`tasks.core.progress`): on a
terminal, a table redrawn in place (stage, state, elapsed, key figure); elsewhere (a pipe, CI,
`-v` with Prefect's log lines on the same console) one line per stage as it ends."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.table import Table

from tasks.core import progress

MARKS = {"running": "[yellow]…[/]", "done": "[green]✓[/]", "failed": "[bold red]✗[/]"}


class StageView:
    def __init__(self, console: Console, title: str) -> None:
        self.console = console
        self.title = title
        self.stages: dict[str, progress.Stage] = {}

    def table(self) -> Table:
        table = Table(title=self.title, show_header=True, header_style="bold", expand=False)
        for column in ("", "stage", "elapsed", "result"):
            table.add_column(column)
        for stage in self.stages.values():
            table.add_row(
                MARKS[stage.state],
                escape(stage.name),
                f"{stage.elapsed_s:6.1f} s",
                escape(stage.figure),
            )
        return table

    def line(self, stage: progress.Stage) -> None:
        figure = f"  {escape(stage.figure)}" if stage.figure else ""
        self.console.print(
            f"{MARKS[stage.state]} {escape(stage.name):<14} {stage.elapsed_s:6.1f} s{figure}",
            highlight=False,
        )


@contextmanager
def shown(console: Console, title: str, live: bool) -> Iterator[StageView]:
    """Render the stages of whatever runs inside; `live`: redraw a table in place (a terminal
    without Prefect's log lines on it)."""
    view = StageView(console, title)
    if not (live and console.is_terminal):

        def on_stage(stage: progress.Stage) -> None:
            view.stages[stage.name] = stage
            # A running stage is shown once it says what it is doing (a wait), else at its end.
            if stage.state != "running" or stage.figure:
                view.line(stage)

        with progress.listening(on_stage):
            yield view
        return
    # get_renderable: each refresh rebuilds the table, so a running stage's elapsed time moves.
    with Live(console=console, get_renderable=view.table, refresh_per_second=4) as screen:

        def redraw(stage: progress.Stage) -> None:
            view.stages[stage.name] = stage
            screen.refresh()

        with progress.listening(redraw):
            yield view
