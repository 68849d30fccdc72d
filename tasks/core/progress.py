"""Stages a console can show live. A flow says when each of its stages starts and ends, with the
key figure it produced; whoever listens in this process (the `conveyor` command) renders it.
With no listener (a flow run on a worker) a stage costs two clock reads.

Stages are not Prefect's task runs: one stage spans several tasks and subflows, and is named as
an operator thinks of the release ("smoke test"), not as the code is split.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

State = Literal["running", "done", "failed"]


@dataclass
class Stage:
    name: str
    started: float
    ended: float | None = None
    state: State = "running"
    figure: str = ""  # the key result, set by the flow before the stage ends

    @property
    def elapsed_s(self) -> float:
        return (self.ended or time.monotonic()) - self.started


Listener = Callable[[Stage], None]
_listeners: list[Listener] = []


@contextmanager
def listening(listener: Listener) -> Iterator[None]:
    """Call `listener` with each stage when it starts and when it ends, in this process."""
    _listeners.append(listener)
    try:
        yield
    finally:
        _listeners.remove(listener)


def _tell(current: Stage) -> None:
    for listener in list(_listeners):
        listener(current)


# The stages under way in this process, innermost last.
_running: list[Stage] = []


@contextmanager
def stage(name: str) -> Iterator[Stage]:
    """`with stage("training") as s: …; s.figure = "ROC AUC 0.95"` — failed if it raises."""
    current = Stage(name=name, started=time.monotonic())
    _running.append(current)
    _tell(current)
    try:
        yield current
        current.state = "done"
    except BaseException:
        current.state = "failed"
        raise
    finally:
        current.ended = time.monotonic()
        _running.remove(current)
        _tell(current)


def update(figure: str) -> None:
    """Say what the stage under way is doing before it ends (waiting for another run's lease):
    the console shows it at once rather than nothing until the stage ends."""
    if _running:
        _running[-1].figure = figure
        _tell(_running[-1])
