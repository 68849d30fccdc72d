"""The model gate table, entry by entry: every gate's section is accepted by the spec for the
tasks it judges and refused for the others, it has its place among the release's gate metrics,
and its evaluation is a deterministic report that passes a perfect model. Then the calibration
gate's own figures: it refuses a badly calibrated model with its interval, passes a calibrated
one, and holds a challenger to the champion's calibration."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
from pydantic import BaseModel

from tasks.core.gates import MODEL_GATES, GatesSpec
from tasks.core.gates.calibration import CalibrationSpec, weighted_ece
from tasks.core.gates.gate import GateInputs, GateReport
from tasks.core.model_task import Task
from tasks.core.pushgateway import GATES
from tasks.core.spec import SpecError, load_spec
from tasks.modeling.evaluation import ModelGateError, ValidationReport, require_valid
from tasks.modeling.scores import binary_metrics
from tests.families import SPEC_OF_TASK
from tests.unit.test_model_kinds import spec_with


def _resample(rows: int, seed: int = 0):
    def chunks(resamples: int):
        rng = np.random.default_rng(seed)
        for start in range(0, resamples, 100):
            size = min(100, resamples - start)
            yield rng.multinomial(rows, np.full(rows, 1 / rows), size).astype(float)

    return chunks


def _perfect(task: Task, rows: int = 400) -> tuple[np.ndarray, np.ndarray]:
    target = np.arange(rows) % (2 if task is Task.binary else 3)
    if task is Task.binary:
        return target, target.astype(float)
    return target, np.eye(3)[target]


def _inputs(task: Task, settings: BaseModel, target, challenger, champion=None) -> GateInputs:
    return GateInputs(
        task=task,
        settings=settings,
        target=target,
        challenger=challenger,
        champion=champion,
        champion_version=None if champion is None else 3,
        resample=_resample(len(target)),
        confidence=0.95,
    )


@pytest.mark.parametrize("name", list(MODEL_GATES))
def test_every_gate_is_set_for_the_tasks_it_judges_and_refused_for_others(
    name: str, tmp_path: Path
) -> None:
    gate = MODEL_GATES[name]
    assert GATES.index("fairness") < GATES.index(name) < GATES.index("onnx_parity")
    for task in Task:
        path = spec_with(SPEC_OF_TASK[task], tmp_path, **{f"gates.{name}": gate.example})
        if task in gate.tasks:
            assert getattr(load_spec(path).gates, name) == gate.settings(**gate.example)
        else:
            with pytest.raises(SpecError, match=f"gates.{name} judges .* remove it"):
                load_spec(path)
    # Off unless set.
    assert getattr(load_spec(SPEC_OF_TASK[Task.binary]).gates, name) is None


def test_a_gate_the_table_does_not_know_is_refused(tmp_path: Path) -> None:
    path = spec_with(SPEC_OF_TASK[Task.binary], tmp_path, **{"gates.calibraton": {"x": 1}})
    with pytest.raises(SpecError, match=r"`gates\.calibraton` is not a known field"):
        load_spec(path)
    assert set(GatesSpec.model_fields) == set(MODEL_GATES)


@pytest.mark.parametrize(
    ("name", "task"), [(n, t) for n, g in MODEL_GATES.items() for t in sorted(g.tasks)]
)
def test_every_gate_passes_a_perfect_model_with_a_deterministic_report(
    name: str, task: Task
) -> None:
    gate = MODEL_GATES[name]
    target, scores = _perfect(task)
    settings = gate.settings(**gate.example)
    first = gate.evaluate(_inputs(task, settings, target, scores, scores))
    assert isinstance(first, GateReport) and first.gate == name
    assert first.passed and not first.failures, first.failures
    assert first.lines and first.lines[0].startswith("## ")
    assert first == gate.evaluate(_inputs(task, settings, target, scores, scores))


def _calibrated(rows: int = 4000, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Scores that mean what they say: each row's label drawn with its score's probability."""
    rng = np.random.default_rng(seed)
    scores = rng.uniform(0.02, 0.98, rows)
    return (rng.random(rows) < scores).astype(int), scores


def test_calibration_refuses_an_overconfident_model_with_its_interval() -> None:
    target, scores = _calibrated()
    settings = CalibrationSpec(max_ece=0.05)
    assert (
        MODEL_GATES["calibration"].evaluate(_inputs(Task.binary, settings, target, scores)).passed
    )
    # The same ranking (same AUC), pushed to the extremes: it claims 0.99 where it is right 80 %.
    overconfident = 1 / (1 + np.exp(-6 * np.log(scores / (1 - scores))))
    report = MODEL_GATES["calibration"].evaluate(
        _inputs(Task.binary, settings, target, overconfident)
    )
    assert not report.passed
    [failure] = report.failures
    assert "wholly above the ceiling 0.05" in failure and "95% interval [" in failure
    assert report.metrics["calibration_ece"] > 0.1
    validation = ValidationReport(
        metrics=binary_metrics(target, overconfident, 0.5),
        thresholds={},
        threshold_failures=[],
        comparison=None,
        gates=[report],
    )
    assert validation.verdict == "rejected: the calibration gate failed"
    with pytest.raises(ModelGateError, match="calibration: expected calibration error") as refused:
        require_valid(validation)
    assert refused.value.gate == "calibration"
    # A failed task's state carries the exception across processes: it keeps its gate.
    assert pickle.loads(pickle.dumps(refused.value)).gate == "calibration"
    assert "## Calibration" in validation.markdown()


def test_calibration_holds_a_challenger_to_the_champions_calibration() -> None:
    target, champion = _calibrated()
    worse = np.clip(champion + 0.15, 0, 1)  # every probability 0.15 too high
    settings = CalibrationSpec(max_ece=0.5, margin=0.02)
    report = MODEL_GATES["calibration"].evaluate(
        _inputs(Task.binary, settings, target, worse, champion)
    )
    assert not report.passed
    assert "above champion v3's" in report.failures[0] and "margin 0.02" in report.failures[0]
    # Without a margin, the champion is not asked.
    loose = CalibrationSpec(max_ece=0.5)
    assert (
        MODEL_GATES["calibration"]
        .evaluate(_inputs(Task.binary, loose, target, worse, champion))
        .passed
    )


def test_multiclass_calibration_is_confidence_against_accuracy() -> None:
    rng = np.random.default_rng(2)
    target = rng.integers(0, 3, 3000)
    # Always 90 % sure of a class that is right a third of the time.
    scores = np.full((3000, 3), 0.05)
    scores[np.arange(3000), rng.integers(0, 3, 3000)] = 0.9
    ece = weighted_ece(Task.multiclass, target, scores, np.ones((1, 3000)), 10)[0]
    assert ece == pytest.approx(0.9 - 1 / 3, abs=0.03)
