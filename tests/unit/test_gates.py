"""The model gate table, entry by entry: every gate's section is accepted by the spec for the
tasks it judges and refused for the others, it has its place among the release's gate metrics,
and its evaluation is a deterministic report that passes a perfect model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydantic import BaseModel

from tasks.core.gates import MODEL_GATES, GatesSpec
from tasks.core.gates.gate import GateInputs, GateReport
from tasks.core.model_task import Task
from tasks.core.pushgateway import GATES
from tasks.core.spec import SpecError, load_spec
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
