"""The estimator family table, entry by entry: what each family declares holds for the library
it wraps. A family added to `FAMILIES` is checked here (and trained, converted and explained
by the tests that iterate `tests.families.CASES`) without an edit to any test."""

from __future__ import annotations

from importlib.metadata import version
from pathlib import Path

import numpy as np
import pytest
import skops.io
import yaml

from tasks.core.families import FAMILIES, distributed_families, families_for, family_of
from tasks.core.model_task import Task
from tasks.core.spec import SpecError, load_spec
from tasks.core.spec_sections import Dimension
from tasks.datasets.data import to_features, to_target
from tasks.datasets.synthetic import generate
from tasks.datasets.task_templates import fixed_params, search_space
from tasks.modeling.training import fit, skops_trusted
from tests.families import CASES, SPEC_OF_TASK, case_id, with_family
from tests.unit.test_model_kinds import spec_with


@pytest.mark.parametrize("name", list(FAMILIES))
def test_every_family_declares_what_the_line_reads(name: str) -> None:
    family = FAMILIES[name]
    assert family.name == name and family.tasks, "a family learns at least one task"
    assert family.explanation, "the model card says how contributions are taken"
    for requirement in family.requirements:
        assert version(requirement), f"{requirement} is what a loaded model needs: installed"
    for task in family.tasks:
        # Every parameter `conveyor init` writes, and the rounds a quick fit turns down, are
        # ones its estimator takes.
        for key, dimension in family.search_space.items():
            low = Dimension.model_validate(dimension).low
            value = int(low) if dimension["type"] == "int" else low
            family.build(task, {key: value}, 0, 1)
        family.build(task, dict(family.fixed_params(task)), 0, 1)
        if family.rounds:
            family.build(task, {family.rounds: 3}, 0, 1)


@pytest.mark.parametrize("task", list(Task))
def test_every_task_has_families_and_a_wrong_one_is_refused_with_them(
    task: Task, tmp_path: Path
) -> None:
    allowed = families_for(task)
    assert allowed
    others = [name for name in FAMILIES if name not in allowed]
    for name in others:
        with pytest.raises(SpecError, match=f"cannot learn a {task.value} task; use one of"):
            load_spec(spec_with(SPEC_OF_TASK[task], tmp_path, **{"estimator.family": name}))
    with pytest.raises(SpecError, match="unknown estimator family 'catboost2'; use one of"):
        load_spec(spec_with(SPEC_OF_TASK[task], tmp_path, **{"estimator.family": "catboost2"}))


@pytest.mark.parametrize(("base", "family"), CASES, ids=case_id)
def test_compute_dask_takes_exactly_the_families_that_train_on_a_cluster(
    base: Path, family: str, tmp_path: Path
) -> None:
    """A family without a Dask fit is refused `compute: dask` at load, before any work, in one
    sentence naming the families that have one; the others load."""
    path = spec_with(base, tmp_path, **{"estimator.family": family, "compute": "dask"})
    if FAMILIES[family].distributed is not None:
        assert load_spec(path).compute == "dask"
        return
    with pytest.raises(SpecError) as refused:
        load_spec(path)
    said = str(refused.value)
    assert "trains in one process only" in said and "compute: local" in said, said
    assert all(name in said for name in distributed_families()), said


@pytest.mark.parametrize(("base", "family"), CASES, ids=case_id)
def test_what_init_writes_for_a_family_loads_as_a_spec(
    base: Path, family: str, tmp_path: Path
) -> None:
    task = load_spec(base).task
    space = yaml.safe_load(search_space(family)) or {}
    params = yaml.safe_load(fixed_params(task, family)) or {}
    spec = load_spec(
        spec_with(
            base,
            tmp_path,
            **{"estimator.family": family, "estimator.params": params, "search.space": space},
        )
    )
    assert spec.estimator.family == family
    assert set(spec.search.space) == set(FAMILIES[family].search_space)


@pytest.mark.parametrize(("base", "family"), CASES, ids=case_id)
def test_every_fitted_family_stores_without_pickle_and_loads_back(base: Path, family: str) -> None:
    """What MLflow saves (skops) needs no type beyond those the family declares, and the loaded
    model answers as the fitted one."""
    spec = with_family(load_spec(base), family)
    frame = generate(spec.data.source, 600, 3, spec.data.positive_rate, 0.0)
    features, target = to_features(frame, spec), to_target(frame, spec)
    model = fit(spec, features, target)
    assert family_of(model[-1]).library == FAMILIES[family].library
    data = skops.io.dumps(model)
    untrusted = skops.io.get_untrusted_types(data=data)
    assert set(untrusted) <= set(skops_trusted(spec)), "declare these in the family's module"
    loaded = skops.io.loads(data, trusted=skops_trusted(spec))
    answer = "predict" if spec.task is Task.regression else "predict_proba"
    np.testing.assert_array_equal(
        getattr(loaded, answer)(features[:50]), getattr(model, answer)(features[:50])
    )
