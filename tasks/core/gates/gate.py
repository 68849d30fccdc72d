"""What a model gate from the table is to the line: its spec section (off unless the spec sets
it), the tasks it judges, and one evaluation of the candidate on the release's holdout that
returns a `GateReport`. The validation step runs every gate the spec sets after the thresholds,
the champion comparison and the fairness gates; the report is its row of the validation
artifact and the model card, its metrics go to the MLflow run, its name is its label in
`conveyor_gate_decisions_total` and on the error that refuses a release.

A gate module imports nothing of conveyor's above `tasks.core`: what it needs from the release
comes in `GateInputs` (the scores, the champion's, and the release's own seeded resampling)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import BaseModel

from tasks.core.model_task import Task


class GateReport(BaseModel):
    gate: str
    passed: bool
    failures: list[str]  # each one sentence with its figures, for the refusal
    lines: list[str]  # markdown: the gate's section of the validation artifact and model card
    metrics: dict[str, float] = {}  # logged to the candidate's MLflow run


@dataclass(frozen=True)
class GateInputs:
    task: Task
    settings: Any  # the gate's own spec section
    target: np.ndarray  # the holdout's classes (or values)
    challenger: np.ndarray  # the candidate's scores on the holdout (`ModelKind.scores`)
    champion: np.ndarray | None  # the champion's scores on the same rows, if there is one
    champion_version: int | None
    # (resamples) → chunks of weights (≤ 100 resamples, rows): the release's stratified, seeded
    # bootstrap (`spec.validation`); every call yields the same resamples, so two models
    # scored on one call's chunks are paired.
    resample: Callable[[int], Iterator[np.ndarray]]
    confidence: float


@dataclass(frozen=True)
class ModelGate:
    name: str
    # Its section under `gates:` in the spec (a pydantic model; the section's absence is "off").
    settings: type[BaseModel]
    tasks: frozenset[Task]
    evaluate: Callable[[GateInputs], GateReport]
    # One line for the spec reference: what it refuses.
    summary: str
    # A section that sets it (the spec reference's example; the tests set it).
    example: dict[str, Any]


def interval(samples: np.ndarray, confidence: float) -> tuple[float, float]:
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(samples, [tail, 100 - tail])
    return float(low), float(high)
