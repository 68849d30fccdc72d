"""Every estimator family of the table, made quick to fit: the tests iterate `FAMILIES` through
these helpers, so a family added to the table is trained, converted, explained and stored by
the existing tests without an edit to them."""

from __future__ import annotations

from pathlib import Path

from tasks.core.families import FAMILIES, families_for
from tasks.core.families.family import Params
from tasks.core.model_task import Task
from tasks.core.spec import ModelSpec

# One shipped spec per task: the data the family cases train on.
BINARY = Path("deployments/models/credit-default.yaml")
MULTICLASS = Path("deployments/models/merchant-category.yaml")
REGRESSION = Path("deployments/models/loss-given-default.yaml")
SPEC_OF_TASK = {Task.binary: BINARY, Task.multiclass: MULTICLASS, Task.regression: REGRESSION}


def quick_params(family: str, task: Task, rounds: int = 20) -> Params:
    """The family's fixed parameters for `task` with few rounds: what the tests fit."""
    params = dict(FAMILIES[family].fixed_params(task))
    if FAMILIES[family].rounds:
        params[FAMILIES[family].rounds] = rounds
    return params


def with_family(spec: ModelSpec, family: str, params: Params | None = None) -> ModelSpec:
    params = quick_params(family, spec.task) if params is None else params
    estimator = spec.estimator.model_copy(update={"family": family, "params": params})
    return spec.model_copy(update={"estimator": estimator})


# Every (task's spec, family) pair the table allows, for parametrize.
CASES = [(SPEC_OF_TASK[task], name) for task in Task for name in families_for(task)]


def case_id(case: object) -> str:
    return case.stem if isinstance(case, Path) else str(case)
