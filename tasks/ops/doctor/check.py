"""What a doctor check is: one broken invariant found, and put right where that is safe, as a
pair. `tasks.ops.doctor.CHECKS` holds them in the order they are examined and repaired; a new
check is one module defining `CHECK = DoctorCheck(...)` plus one line there.

A server check reads the settings (the embedded Triton, the replicas, the edge); a model check
reads one model's `ModelScene`. A repair gets the problems its check found and a `Mend`: what
repairs of one model share (the serving repair says whether Triton could be put back, and no
file it may still serve is deleted while it could not)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from tasks.core.settings import Settings
from tasks.core.spec import ModelSpec
from tasks.ops.doctor.problems import Problem


@dataclass
class Mend:
    settings: Settings
    model: str | None  # None for the server checks
    spec: ModelSpec | None = None  # the model's spec when the caller has it (a release)
    kept_runs: set[str] = field(default_factory=set)  # MLflow runs a resumed release goes on in
    serving_stuck: bool = False  # Triton could not be put back on champion and previous


@dataclass(frozen=True)
class DoctorCheck:
    name: str
    kinds: tuple[str, ...]  # the problem kinds it reports
    scope: Literal["server", "model"]
    # server: (settings) → problems; model: (scene) → problems
    detect: Callable[..., list[Problem]]
    # Puts its problems right and marks them `repaired`; None: nothing here is safe to do.
    repair: Callable[[Mend, list[Problem]], None] | None = None
    # A release's leftovers: not judged while a release of the model is running.
    leftover: bool = False
    # A release runs the server checks it needs before it starts (the edge's certificate is
    # doctor's: one renewal at a time, not one per model releasing).
    before_release: bool = True
