"""The calibration gate: a classifier's probabilities must mean what they say. Its expected
calibration error (ECE: the mean gap between the probability a model states and how often it is
right, over bins of equal width, weighted by their rows) has a ceiling; a binary model is binned
on the positive class's probability, a multiclass one on its top class's (confidence against
accuracy). Both figures come with the release's bootstrap interval, and the gate refuses only on
evidence: when the whole interval lies past the ceiling, or, beside a champion, when the whole
paired interval of challenger minus champion lies past the margin. Off unless the spec sets
`gates.calibration`."""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from tasks.core.gates.gate import GateInputs, GateReport, ModelGate, interval
from tasks.core.model_task import Task

NAME = "calibration"


class CalibrationSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_ece: float = Field(gt=0, lt=1, description="Ceiling on the expected calibration error.")
    bins: int = Field(default=10, ge=2, le=100, description="Equal-width probability bins.")
    margin: float | None = Field(
        default=None,
        ge=0,
        description="Beside a champion: how much worse calibrated (ECE) the challenger may be.",
    )
    resamples: int = Field(default=400, ge=50, le=10_000)


def _confidence_and_hits(task: Task, target: np.ndarray, scores: np.ndarray) -> tuple:
    """What is binned and what it is compared with: the positive class's probability and the
    label (binary), or the top class's probability and whether it was right (multiclass)."""
    if task is Task.binary:
        return scores, target.astype(np.float64)
    top = scores.argmax(axis=1)
    return scores.max(axis=1), (top == target).astype(np.float64)


def weighted_ece(
    task: Task, target: np.ndarray, scores: np.ndarray, weights: np.ndarray, bins: int
) -> np.ndarray:
    """ECE under each row of `weights` (resamples, rows): one figure per resample."""
    stated, hits = _confidence_and_hits(task, target, scores)
    which = np.minimum((stated * bins).astype(int), bins - 1)
    one_hot = np.zeros((len(stated), bins))
    one_hot[np.arange(len(stated)), which] = 1.0
    rows = weights @ one_hot  # (resamples, bins)
    gap = np.abs(weights @ (one_hot * stated[:, None]) - weights @ (one_hot * hits[:, None]))
    return gap.sum(axis=1) / np.maximum(rows.sum(axis=1), 1e-12)


def evaluate(inputs: GateInputs) -> GateReport:
    s: CalibrationSpec = inputs.settings
    task, target, champion = inputs.task, inputs.target, inputs.champion
    everyone = np.ones((1, len(target)))
    point = float(weighted_ece(task, target, inputs.challenger, everyone, s.bins)[0])
    # One pass over the resamples, the champion scored on the same ones (paired).
    ours, differences = [], []
    for weights in inputs.resample(s.resamples):
        ece = weighted_ece(task, target, inputs.challenger, weights, s.bins)
        ours.append(ece)
        if champion is not None and s.margin is not None:
            differences.append(ece - weighted_ece(task, target, champion, weights, s.bins))
    low, high = interval(np.concatenate(ours), inputs.confidence)
    level = f"{inputs.confidence:.0%}"
    failures, metrics = [], {"calibration_ece": point}
    lines = [
        "## Calibration",
        "",
        "| figure | value | interval | limit |",
        "|---|---:|---|---|",
        f"| expected calibration error ({s.bins} bins) | {point:.4f} | "
        f"[{low:.4f}, {high:.4f}] | ≤ {s.max_ece} |",
    ]
    if low > s.max_ece:
        failures.append(
            f"calibration: expected calibration error {point:.4f} ({level} interval "
            f"[{low:.4f}, {high:.4f}]) is wholly above the ceiling {s.max_ece}: the model's "
            "probabilities overstate or understate how often it is right; recalibrate it or "
            "raise gates.calibration.max_ece"
        )
    if differences and champion is not None:
        theirs = float(weighted_ece(task, target, champion, everyone, s.bins)[0])
        d_low, d_high = interval(np.concatenate(differences), inputs.confidence)
        metrics["calibration_ece_champion"] = theirs
        lines.append(
            f"| ECE minus champion v{inputs.champion_version}'s ({theirs:.4f}) | "
            f"{point - theirs:+.4f} | [{d_low:+.4f}, {d_high:+.4f}] | ≤ +{s.margin} |"
        )
        if d_low > (s.margin or 0.0):
            failures.append(
                f"calibration: the challenger's ECE is {point - theirs:+.4f} above champion "
                f"v{inputs.champion_version}'s ({level} interval [{d_low:+.4f}, {d_high:+.4f}]), "
                f"more than the margin {s.margin}"
            )
    lines += ["", "Refused only when the whole interval lies past the limit."]
    return GateReport(
        gate=NAME, passed=not failures, failures=failures, lines=lines, metrics=metrics
    )


GATE = ModelGate(
    name=NAME,
    settings=CalibrationSpec,
    tasks=frozenset({Task.binary, Task.multiclass}),
    evaluate=evaluate,
    summary="a ceiling on a classifier's expected calibration error, and a champion margin",
    example={"max_ece": 0.05, "bins": 10, "margin": 0.01},
)
