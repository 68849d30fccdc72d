"""Stages as the console shows them: started, ended with a figure, or failed."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from cli.stages import shown
from tasks.core import progress


def test_each_stage_is_told_when_it_starts_and_ends_and_a_failure_is_marked() -> None:
    seen: list[tuple[str, str]] = []
    with progress.listening(lambda s: seen.append((s.name, s.state))):
        with progress.stage("training") as step:
            step.figure = "ROC AUC 0.95"
        with pytest.raises(ValueError), progress.stage("smoke test"):
            raise ValueError("Triton went away")
    assert seen == [
        ("training", "running"),
        ("training", "done"),
        ("smoke test", "running"),
        ("smoke test", "failed"),
    ]
    with progress.stage("unheard"):
        pass  # no listener left: nothing to tell, nothing fails


def test_off_a_terminal_each_stage_is_one_line_when_it_ends() -> None:
    out = io.StringIO()
    console = Console(file=out, width=100, force_terminal=False)
    with shown(console, "release m", live=True):
        with progress.stage("data") as step:
            step.figure = "12,000 rows"
        with pytest.raises(RuntimeError), progress.stage("training"):
            raise RuntimeError
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("✓ data") and lines[0].endswith("12,000 rows")
    assert lines[1].startswith("✗ training")


def test_on_a_terminal_the_table_is_redrawn_with_every_stage() -> None:
    out = io.StringIO()
    console = Console(file=out, width=100, force_terminal=True)
    with shown(console, "release m", live=True):
        with progress.stage("data") as step:
            step.figure = "12,000 rows"
        with progress.stage("training") as step:
            step.figure = "ROC AUC 0.95"
    final = out.getvalue()
    assert "release m" in final and "12,000 rows" in final and "ROC AUC 0.95" in final
