"""The estimator families conveyor trains, as one table. A family is one module in this package
(a `Family` value, `tasks.core.families.family`) plus one line in `FAMILIES`; every stage reads
the table, and the tests iterate it, so a new family is built, stored, converted, checked for
ONNX parity, explained and offered by `conveyor init` without an edit elsewhere."""

from __future__ import annotations

from typing import Any

from tasks.core.families import (
    catboost_trees,
    hist_gradient_boosting,
    lightgbm_trees,
    logistic_regression,
    random_forest,
    ridge,
    xgboost_trees,
)
from tasks.core.families.family import Family
from tasks.core.model_task import Task

FAMILIES: dict[str, Family] = {
    family.name: family
    for family in (
        random_forest.FAMILY,
        hist_gradient_boosting.FAMILY,
        logistic_regression.FAMILY,
        ridge.FAMILY,
        xgboost_trees.FAMILY,
        lightgbm_trees.FAMILY,
        catboost_trees.FAMILY,
    )
}


def families_for(task: Task) -> list[str]:
    """The families that can learn `task`, in the table's order."""
    return [name for name, family in FAMILIES.items() if task in family.tasks]


def distributed_families() -> list[str]:
    """The families that train on a Dask cluster (`compute: dask`)."""
    return [name for name, family in FAMILIES.items() if family.distributed is not None]


def compute_problem(compute: str, family: str) -> str | None:
    """Why `family` cannot run with `compute`, or None."""
    if compute != "dask" or FAMILIES[family].distributed is not None:
        return None
    return (
        f"estimator family {family} trains in one process only, so `compute: dask` cannot train "
        f"it on a table larger than one machine: use one of {distributed_families()} (they "
        "train on the cluster's workers), or `compute: local` for a table that fits this process"
    )


def family_of(estimator: Any) -> Family:
    """The family a fitted estimator's library belongs to (what converts it to ONNX)."""
    library = type(estimator).__module__.split(".")[0]
    found = [family for family in FAMILIES.values() if family.library == library]
    if not found:
        raise LookupError(f"no estimator family comes from {library!r}")
    return found[0]
