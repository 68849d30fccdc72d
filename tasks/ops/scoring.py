"""Batch scoring: a registered version's ONNX file (what Triton serves) on every piece of a
partitioned Parquet table, each piece read, checked, scored and written where it is worked on
(a Dask worker, or this process in turn), so the table is never gathered in one process.

Each output piece mirrors its input's key (`date=…/part-0.parquet`) and holds the row's number
within its piece, the columns the caller keeps (a join key), the served outputs, and the model,
version and run id. It is written atomically with a stamp (`tasks.datasets.pieces`): a rerun
after a crash skips the pieces already written for the same version and input. The data
contract is checked on every piece before anything is written; a piece that breaks it is
refused by name, and the others are scored only when the caller asks (`skip_bad`)."""

from __future__ import annotations

import functools
import os
import socket
import time
from typing import Literal

import numpy as np
import onnxruntime as ort
import pandas as pd
from prefect import task
from pydantic import BaseModel

from tasks.core import progress
from tasks.core.cluster import Compute, runner
from tasks.core.errors import ConveyorError
from tasks.core.model_task import LABEL, PREDICTION, PROBABILITIES, Task
from tasks.core.settings import Settings
from tasks.core.spec import ModelSpec
from tasks.datasets import pieces
from tasks.datasets.data import to_features
from tasks.datasets.pieces import Piece
from tasks.datasets.row_contract import violations
from tasks.modeling import onnx
from tasks.registry import known_specs, model_registry, tracking

ROW = "row"  # the row's number within its input piece, from 0
DECISION = "decision"
STAMPED = ("model", "version", "run_id", "input_key", "input_size")
# Problems named per refused piece, and refused pieces named in the refusal.
SHOWN = 3


class ScoreError(ConveyorError):
    """Scoring refused before anything was written, or stopped."""


class PieceResult(BaseModel):
    key: str
    rows: int
    # good: checked only; scored: written by this run; refused: it breaks the data contract
    state: Literal["good", "scored", "refused"]
    problems: list[str] = []


class ScoreReport(BaseModel):
    model: str
    version: int
    run_id: str
    input: str
    output: str
    compute: str
    pieces: int
    scored: int  # pieces written by this run
    skipped: int  # pieces an earlier run of the same version had written
    refused: list[PieceResult]
    rows: int  # rows written by this run
    seconds: float


class Job(BaseModel):
    """What every piece's work needs besides the piece and the ONNX bytes."""

    spec: ModelSpec
    stamp: dict[str, str]
    output: str
    keep: list[str]
    # A binary model's operating threshold (its release chose it): the `decision` column.
    threshold: float | None = None


def check_piece(piece: Piece, job: Job) -> PieceResult:
    """The data contract on every row of one piece (its feature columns only are read)."""
    names = [feature.name for feature in job.spec.features]
    have = _present(piece, [*names, *job.keep])
    frame = pieces.read_piece(piece, columns=[name for name in names if name in have])
    found = violations(frame, job.spec)
    lost = [column for column in job.keep if column not in have]
    if lost:
        found.append(f"columns {lost} to keep beside the scores are missing")
    state = "refused" if found else "good"
    return PieceResult(key=piece.key, rows=len(frame), state=state, problems=found[:SHOWN])


def _present(piece: Piece, names: list[str]) -> list[str]:
    """The columns of `names` the piece has (the contract names the missing ones)."""
    have = set(pieces.columns_of(piece))
    return [name for name in names if name in have]


def score_piece(piece: Piece, job: Job, onnx_bytes: bytes) -> PieceResult:
    """Read, check, score and write one piece (its features and kept columns only)."""
    names = [feature.name for feature in job.spec.features]
    frame = pieces.read_piece(
        piece, columns=_present(piece, list(dict.fromkeys([*names, *job.keep])))
    )
    found = violations(frame, job.spec)
    if found:  # changed since it was checked
        return PieceResult(key=piece.key, rows=len(frame), state="refused", problems=found[:SHOWN])
    outputs = onnx.outputs_of(_session(onnx_bytes), to_features(frame, job.spec))
    scored = served_columns(job.spec, outputs, job.threshold)
    scored.insert(0, ROW, np.arange(len(frame), dtype=np.int64))
    for position, column in enumerate(job.keep, start=1):
        scored.insert(position, column, frame[column].to_numpy())
    scored["model"] = job.stamp["model"]
    scored["version"] = int(job.stamp["version"])
    scored["run_id"] = job.stamp["run_id"]
    target = pieces.join(job.output, piece.key)
    # A second run scoring another version into the same output since this one planned: its
    # piece stays as it is, and this one is named, not written over it.
    other = _other_scores(job, piece, pieces.stamp_of(target))
    if other:
        return PieceResult(key=piece.key, rows=len(frame), state="refused", problems=[other])
    stamp = _stamp(job, piece) | {"writer": _writer()}
    pieces.write_piece(scored, target, stamp)
    return PieceResult(key=piece.key, rows=len(frame), state="scored")


def _stamp(job: Job, piece: Piece) -> dict[str, str]:
    return job.stamp | {"input_key": piece.key, "input_size": str(piece.size)}


def _other_scores(job: Job, piece: Piece, stamp: dict[str, str] | None) -> str | None:
    """What holds `piece`'s output when it is not this run's version of this input; None when
    nothing does, or when it is (a rerun's own piece)."""
    mine = _stamp(job, piece)
    if stamp is None or {k: stamp.get(k) for k in STAMPED} == {k: mine[k] for k in STAMPED}:
        return None
    return (
        f"{pieces.join(job.output, piece.key)} already holds other scores "
        f"({stamp.get('model')} v{stamp.get('version')} of input {stamp.get('input_key')} at "
        f"{stamp.get('input_size')} bytes)"
    )


@functools.lru_cache(maxsize=2)
def _session(onnx_bytes: bytes) -> ort.InferenceSession:
    """One onnxruntime session per version in a process: building it costs more than scoring a
    small piece, and a worker scores many pieces of one version (the same bytes object, whose
    hash Python keeps)."""
    return onnx.session(onnx_bytes)


def _writer() -> str:
    """Which process wrote a piece (host:pid), for an audit of where the work ran."""
    return f"{socket.gethostname()}:{os.getpid()}"


def served_columns(
    spec: ModelSpec, outputs: dict[str, np.ndarray], threshold: float | None = None
) -> pd.DataFrame:
    """The served answers as columns: a regressor's prediction; a classifier's label (as its
    class is named in the spec; Triton's argmax) and one `probability:<class>` column per class;
    with a binary model's operating `threshold`, its `decision` (the positive class when the
    probability reaches it: the decision the release's metrics describe)."""
    if spec.task is Task.regression:
        return pd.DataFrame({PREDICTION: outputs[PREDICTION].reshape(-1).astype(np.float64)})
    classes = [str(c) for c in spec.target.classes or []]
    labels = np.asarray(spec.target.classes)[outputs[LABEL].reshape(-1)]
    table: dict[str, object] = {LABEL: labels}
    for i, name in enumerate(classes):
        table[f"probability:{name}"] = outputs[PROBABILITIES][:, i].astype(np.float64)
    if threshold is not None and spec.task is Task.binary:
        positive = outputs[PROBABILITIES][:, 1] >= threshold
        table[DECISION] = np.where(positive, spec.target.classes[1], spec.target.classes[0])
    return pd.DataFrame(table)


def _version(settings: Settings, model: str, version: int | None) -> int:
    if version is not None:
        return version
    champion = model_registry.alias_version(settings, model, model_registry.CHAMPION)
    if champion is None:
        raise ScoreError(f"{model} has no champion to score with; release it or pass --version")
    return champion


def _keep(spec: ModelSpec, keep: list[str] | None) -> list[str]:
    """Columns copied beside the scores: the caller's, else the outcomes' join key. Segment
    columns (protected attributes) never leave their table."""
    chosen = list(keep) if keep is not None else [c for c in [spec.outcomes.key] if c]
    protected = sorted(set(chosen) & set(spec.segments.columns))
    if protected:
        raise ScoreError(
            f"{protected} are segment columns of {spec.name} (protected attributes, evaluation "
            "only): they are not copied into scores; keep a key column and join on it instead"
        )
    return chosen


def _plan(job: Job, found: list[Piece]) -> tuple[list[Piece], int]:
    """The pieces still to score, and how many an earlier run of this version wrote."""
    todo, skipped = [], 0
    for piece in found:
        stamp = pieces.stamp_of(pieces.join(job.output, piece.key))
        if stamp is None:
            todo.append(piece)
            continue
        other = _other_scores(job, piece, stamp)
        if other:
            raise ScoreError(
                f"{other}: nothing was written. Score into another --output, or delete that "
                "folder to score it again"
            )
        skipped += 1
    return todo, skipped


def _apart(input_uri: str, output_uri: str) -> None:
    """Scores written inside the table they score would be read back as its pieces next time."""
    _, source = pieces.filesystem(input_uri)
    _, target = pieces.filesystem(output_uri)
    same_store = input_uri.startswith("s3://") == output_uri.startswith("s3://")
    if same_store and (target == source or target.startswith(f"{source.rstrip('/')}/")):
        raise ScoreError(
            f"--output {output_uri} lies inside --input {input_uri}: the scores would be read "
            "as rows of the table on the next run. Write them beside it (another folder or "
            "prefix)"
        )


def _refusal(refused: list[PieceResult], total: int) -> ScoreError:
    named = "; ".join(f"{r.key}: {' / '.join(r.problems)}" for r in refused[:SHOWN])
    more = f" (and {len(refused) - SHOWN} more)" if len(refused) > SHOWN else ""
    return ScoreError(
        f"{len(refused)} of {total} pieces break the data contract, so nothing was scored: "
        f"{named}{more}. Fix those rows, or pass --skip-bad to score the other pieces and "
        "leave these out"
    )


def score(
    settings: Settings,
    model: str,
    input_uri: str,
    output_uri: str,
    version: int | None = None,
    compute: Compute = "local",
    skip_bad: bool = False,
    keep: list[str] | None = None,
) -> ScoreReport:
    """Score every piece of `input_uri` with `model` v`version` (default: the champion) into
    `output_uri`, piece for piece, on `compute`."""
    began = time.monotonic()
    _apart(input_uri, output_uri)
    version = _version(settings, model, version)
    spec = known_specs.recorded_spec(settings, model, version)
    ref = model_registry.version_ref(settings, model, version)
    onnx_bytes = tracking.read_artifact(settings, f"runs:/{ref.run_id}/{tracking.ONNX_ARTIFACT}")
    stamp = {"model": model, "version": str(version), "run_id": ref.run_id}
    threshold = tracking.run_tags(settings, ref.run_id).get(tracking.TAG_THRESHOLD)
    job = Job(
        spec=spec,
        stamp=stamp,
        output=output_uri,
        keep=_keep(spec, keep),
        threshold=float(threshold) if threshold is not None else None,
    )
    found = pieces.list_pieces(input_uri)
    todo, skipped = _plan(job, found)
    refused: list[PieceResult] = []
    written: list[PieceResult] = []
    with runner(settings, compute) as run:
        for checked, result in enumerate(run(check_piece, todo, job), start=1):
            progress.update(f"checked {checked}/{len(todo)} pieces")
            if result.state == "refused":
                refused.append(result)
        if refused and not skip_bad:
            raise _refusal(sorted(refused, key=lambda r: r.key), len(found))
        bad = {r.key for r in refused}
        good = [piece for piece in todo if piece.key not in bad]
        for result in run(score_piece, good, job, onnx_bytes):
            if result.state == "refused":  # it changed under us: named, not written
                refused.append(result)
            else:
                written.append(result)
            rows = sum(r.rows for r in written)
            progress.update(f"{len(written) + skipped}/{len(found)} pieces, {rows:,} rows scored")
    return ScoreReport(
        model=model,
        version=version,
        run_id=ref.run_id,
        input=input_uri,
        output=output_uri,
        compute=compute,
        pieces=len(found),
        scored=len(written),
        skipped=skipped,
        refused=sorted(refused, key=lambda r: r.key),
        rows=sum(r.rows for r in written),
        seconds=round(time.monotonic() - began, 3),
    )


@task(name="score")
def score_task(
    settings: Settings,
    model: str,
    input_uri: str,
    output_uri: str,
    version: int | None,
    compute: Compute,
    skip_bad: bool,
    keep: list[str] | None,
) -> ScoreReport:
    return score(settings, model, input_uri, output_uri, version, compute, skip_bad, keep)
