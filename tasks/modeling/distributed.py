"""The candidate on a Dask cluster (`compute: dask`): the refit on every training row, and the
holdout scores and the ONNX export's parity on every holdout row, each piece read and encoded
where it is worked on, so the table never sits in the flow's process. What comes back is the
fitted model (the family's own single-process estimator, so MLflow, ONNX and Triton see what a
local release gives them), the holdout's target and scores (a few numbers per row: the exact
metrics need every row), and the parity's counts.

The Pipeline's feature step (imputation, one-hot encoding) is fitted in this process on the
training sample (`tasks.datasets.partitioned`): its categories come from the spec, and a nullable
feature's median is the sample's, which the model card says. The estimator is then fitted by the
family's Dask interface (`Family.distributed`) on the encoded rows of every training piece."""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import onnx
import pandas as pd
from sklearn.pipeline import Pipeline

from tasks.core.cluster import ClusterError, connected, out_of_memory, runner
from tasks.core.families import FAMILIES
from tasks.core.families.family import Params
from tasks.core.logs import run_logger
from tasks.core.model_task import Task
from tasks.core.settings import Settings
from tasks.core.spec import ModelSpec
from tasks.datasets.data import PartitionedSplit, SplitPiece, to_features, to_target
from tasks.datasets.partitioned import side
from tasks.modeling.kinds import kind_of
from tasks.modeling.onnx import ParityReport, measure_parity, rounding_bound

# How often the fit's workers are looked at, and how long their restart may take.
WATCH_S = 0.5
RESTART_S = 60


def _encoded(
    piece: SplitPiece, spec: ModelSpec, split: PartitionedSplit, step: Any
) -> tuple[np.ndarray, np.ndarray]:
    """One piece's training rows, encoded by the fitted feature step, and their target."""
    rows = side(piece, spec, split, holdout=False)
    encoded = np.asarray(step.transform(to_features(rows, spec)), dtype=np.float32)
    return encoded, to_target(rows, spec)


def fit(
    spec: ModelSpec,
    settings: Settings,
    split: PartitionedSplit,
    pipeline: Pipeline,
    sample: pd.DataFrame,
    params: Params,
) -> Pipeline:
    """`pipeline` (unfitted, from `training.build_pipeline`) fitted on every training row."""
    step = pipeline.steps[0][1].fit(to_features(sample, spec))
    with connected(settings) as client:
        estimator = _fit_estimator(
            spec,
            settings,
            client,
            lambda: _rows(client, spec, split, step, sample),
            spec.estimator.params | params,
        )
    return Pipeline([(pipeline.steps[0][0], step), (pipeline.steps[-1][0], estimator)])


def _rows(
    client: Any, spec: ModelSpec, split: PartitionedSplit, step: Any, sample: pd.DataFrame
) -> tuple[Any, Any]:
    """Every training row, encoded, and its target: dask arrays held by the workers (read and
    encoded once per fit, kept for the boosting rounds)."""
    import dask
    import dask.array as da

    width = np.asarray(step.transform(to_features(sample.iloc[:1], spec))).shape[1]
    target_type = np.float64 if spec.task is Task.regression else np.int64
    pieces = [piece for piece in split.pieces if piece.train_rows]
    parts = [dask.delayed(_encoded, nout=2)(piece, spec, split, step) for piece in pieces]
    x = da.concatenate(
        [
            da.from_delayed(encoded, (piece.train_rows, width), np.float32)
            for (encoded, _), piece in zip(parts, pieces, strict=True)
        ]
    )
    y = da.concatenate(
        [
            da.from_delayed(target, (piece.train_rows,), target_type)
            for (_, target), piece in zip(parts, pieces, strict=True)
        ]
    )
    return tuple(client.persist([x, y]))


def _fit_estimator(
    spec: ModelSpec,
    settings: Settings,
    client: Any,
    rows: Callable[[], tuple[Any, Any]],
    params: Params,
) -> Any:
    """The family's Dask fit, run again once if a worker was lost during it (on the rows read
    again: a lost worker's share of them went with it), a second loss being the release's
    failure."""
    family = FAMILIES[spec.estimator.family]
    assert family.distributed is not None  # the spec refuses a family without one
    for attempt in (1, 2):
        workers = set(client.scheduler_info()["workers"])
        x, y = rows()
        try:
            return _watched(
                functools.partial(
                    family.distributed, spec.task, params, spec.data.seed, client, x, y
                ),
                client,
                workers,
            )
        except Exception as exc:
            lost = workers - set(client.scheduler_info()["workers"])
            if not lost:
                raise
            said = f"{type(exc).__name__}: {' '.join(str(exc).split())[:160]}"
            memory = out_of_memory(client, lost)
            if memory:
                said = f"out of memory: {memory}"
            if attempt == 2:
                cure = (
                    "give the workers more memory or add workers"
                    if memory
                    else "see the lost workers' logs (no nanny stopped one for memory)"
                )
                raise ClusterError(
                    f"Dask workers were lost twice while {family.name} trained on the cluster "
                    f"(last: {sorted(lost)}, {said}); nothing was registered and the champion "
                    f"still serves. To continue, {cure}, then rerun the release"
                ) from None
            run_logger(__name__).warning(
                "Dask worker(s) %s lost during the %s fit (%s): fitting again once the "
                "cluster has %d workers",
                sorted(lost),
                family.name,
                said,
                len(workers),
            )
            # The survivors too: a booster's network state outlives a failed fit in its
            # process (LightGBM's next fit there breaks on it), so every worker starts afresh
            # and the lost pieces are read again from the table.
            with contextlib.suppress(Exception):
                client.restart_workers(sorted(workers - lost), timeout=RESTART_S)
            with contextlib.suppress(TimeoutError):  # fewer workers still train
                client.wait_for_workers(len(workers), timeout=settings.dask_timeout_s)
    raise AssertionError("unreachable")


def _watched(fit: Callable[[], Any], client: Any, workers: set[str]) -> Any:
    """`fit()`, watched: the boosters train every worker in lockstep, each part pinned to its
    worker, and when one worker dies the others can wait for it forever (a LightGBM worker still
    connecting to its peers does), as does the part pinned to the dead worker's address. When a
    worker of the fit is lost, the fit's own tasks are cancelled and the other workers restarted,
    so the fit raises instead of hanging."""
    from distributed import Future

    before = set(client.run_on_scheduler(_task_keys, client.id))
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["model"] = fit()
        except BaseException as exc:  # handed to the caller's thread
            outcome["error"] = exc

    thread = threading.Thread(target=run, name="dask-fit", daemon=True)
    thread.start()
    while thread.is_alive():
        thread.join(WATCH_S)
        present = set(client.scheduler_info()["workers"])
        if thread.is_alive() and workers - present:
            with contextlib.suppress(Exception):  # what is gone already is fine
                fits = set(client.run_on_scheduler(_task_keys, client.id)) - before
                client.cancel([Future(key, client) for key in fits], force=True)
                client.restart_workers(sorted(workers & present), timeout=RESTART_S)
            thread.join(RESTART_S)
            if thread.is_alive():
                raise ClusterError(
                    f"a Dask worker of the fit was lost ({sorted(workers - present)}) and the "
                    "others did not stop their part of it: restart the cluster, then rerun"
                )
    if "error" in outcome:
        raise outcome["error"]
    return outcome["model"]


def _task_keys(client_id: str, dask_scheduler: Any) -> list[Any]:
    """The tasks `client_id` holds a future of (run on the scheduler): what it may cancel. Not
    another client's on a shared cluster, and not a task no client wants (the scheduler fails
    an assertion cancelling one)."""
    return [
        key
        for key, state in dask_scheduler.tasks.items()
        if any(wanting.client_key == client_id for wanting in state.who_wants or ())
    ]


def _scored(
    piece: SplitPiece, spec: ModelSpec, split: PartitionedSplit, model: Pipeline
) -> tuple[str, np.ndarray, np.ndarray]:
    rows = side(piece, spec, split, holdout=True)
    return piece.key, to_target(rows, spec), kind_of(spec).scores(model, to_features(rows, spec))


def holdout_scores(
    spec: ModelSpec, settings: Settings, split: PartitionedSplit, model: Pipeline
) -> tuple[np.ndarray, np.ndarray]:
    """The target and the model's scores on every holdout row, in piece order. Each piece's
    part is copied into its place as it arrives and let go, so the flow holds the two arrays
    once, not the parts beside their concatenation."""
    pieces = [piece for piece in split.pieces if piece.holdout_rows]
    offsets, rows = {}, 0
    for piece in pieces:
        offsets[piece.key], rows = rows, rows + piece.holdout_rows
    target: np.ndarray | None = None
    scores: np.ndarray | None = None
    with runner(settings, "dask") as run:
        for key, part_target, part_scores in run(_scored, pieces, spec, split, model):
            if target is None or scores is None:
                target = np.empty(rows, dtype=part_target.dtype)
                scores = np.empty((rows, *part_scores.shape[1:]), dtype=part_scores.dtype)
            at = offsets[key]
            target[at : at + len(part_target)] = part_target
            scores[at : at + len(part_scores)] = part_scores
    assert target is not None and scores is not None  # a split has holdout rows
    return target, scores


def _parity(
    piece: SplitPiece,
    spec: ModelSpec,
    split: PartitionedSplit,
    model: Pipeline,
    onnx_bytes: bytes,
    tolerance: float,
    scale: float,
    rounding: float,
) -> ParityReport:
    rows = side(piece, spec, split, holdout=True)
    return measure_parity(model, onnx_bytes, to_features(rows, spec), tolerance, scale, rounding)


def holdout_parity(
    spec: ModelSpec,
    settings: Settings,
    split: PartitionedSplit,
    model: Pipeline,
    onnx_bytes: bytes,
    tolerance: float,
    scale: float,
) -> ParityReport:
    """The model and its ONNX graph compared on every holdout row, each piece on a worker;
    only the pieces' counts and largest differences come back, merged into one report."""
    pieces = [piece for piece in split.pieces if piece.holdout_rows]
    rounding = rounding_bound(onnx.load_from_string(onnx_bytes))
    shared = (spec, split, model, onnx_bytes, tolerance, scale, rounding)
    with runner(settings, "dask") as run:
        parts = list(run(_parity, pieces, *shared))
    return ParityReport.merged(parts)
