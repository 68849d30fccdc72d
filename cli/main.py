"""The `conveyor` command: the entry point (`conveyor = "cli.main:app"`), the application of
`cli.app` with every command module registered on it."""

import typer

from cli import operate, release, review, score, triton
from cli.app import app

# Importing a command module registers its commands on `app`.
COMMANDS = (release, operate, review, score, triton)
# How `conveyor --help` lists them: along the line first, then operating the fleet. Typer lists
# commands in registration order, which is the modules' import order otherwise.
ORDER = (
    "run",
    "init",
    "train",
    "smoke",
    "drift",
    "outcomes",
    "approve",
    "rollback",
    "status",
    "history",
    "report",
    "explain",
    "score",
)


def _place(command: typer.models.CommandInfo) -> int:
    name = command.name or getattr(command.callback, "__name__", "")
    return ORDER.index(name) if name in ORDER else len(ORDER)


app.registered_commands.sort(key=_place)

__all__ = ["app"]
