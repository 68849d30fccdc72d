"""Reason codes: for each row, the score and the K features that pushed it most toward the
adverse outcome, with their contributions, from exactly a registered version's model (its MLflow
model and the spec recorded with it). What adverse means per task is `explain.toward_adverse`.

The contributions are checked against the model's own scores before anything is written: base +
contributions must reproduce every row's score within `TOLERANCE` (measured: 1e-15 for
scikit-learn trees through shap, 3e-7 for XGBoost's float32 contributions, 1e-7 for the linear
models), so a code that does not explain the score it sits beside is never handed out."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from pydantic import BaseModel
from sklearn.pipeline import Pipeline

from tasks.core.errors import ConveyorError
from tasks.core.model_task import Task
from tasks.core.settings import Settings
from tasks.core.spec import ModelSpec
from tasks.datasets.data import DataError, load_dataset, to_features
from tasks.datasets.row_contract import require_rows
from tasks.datasets.sources.files import read_bytes
from tasks.modeling import explain
from tasks.modeling.kinds import kind_of
from tasks.registry import known_specs, model_registry, tracking

TOLERANCE = 1e-5
# Holdout rows whose mean is a linear model's reference point (trees need none).
BACKGROUND_ROWS = 2000


class ReasonCodes(BaseModel):
    model: str
    version: int
    rows: int
    top: int
    link: explain.Link
    output: str
    max_reconstruction_error: float


def reason_table(
    spec: ModelSpec,
    model: Pipeline,
    frame: pd.DataFrame,
    background: np.ndarray,
    top: int,
    full: bool = False,
) -> tuple[pd.DataFrame, float, explain.Link]:
    """One row per input row: the score of the explained outcome, the base value, and for k in
    1..top the feature, its value, its contribution and the spec's reason text; with `full`,
    every feature's contribution too (`contribution:<feature>`: an auditor adds them to the base
    value and gets the score back through the link). Returns the table, the largest
    |reconstructed - model score| and the units of the contributions."""
    features = to_features(frame, spec)
    c = explain.contributions(spec, model, features, background)
    scores = kind_of(spec).scores(model, features)
    error = float(np.max(np.abs(c.scores() - scores))) if len(features) else 0.0
    if error > TOLERANCE:
        raise ConveyorError(
            f"the contributions of {spec.name} reproduce its scores only to {error:.2e} (limit "
            f"{TOLERANCE:.0e}): the explainer does not match the model; nothing was written"
        )
    pushes, explained = explain.toward_adverse(spec, c)
    n = len(frame)
    if spec.task is Task.multiclass:
        score = scores[np.arange(n), explained]
        base = c.base[np.arange(n), explained]
    elif spec.task is Task.binary and c.link == "probability":
        score = scores if spec.adverse_index == 1 else 1 - scores
        base = c.base[:, spec.adverse_index or 0]
    else:
        score = scores if spec.adverse_index != 0 else 1 - scores
        base = c.base[:, 0] * (-1.0 if spec.adverse_index == 0 else 1.0)
    table: dict[str, object] = {
        "row": np.arange(1, n + 1),
        "score": score,
        "explained": ["higher value" if k < 0 else spec.class_names[k] for k in explained.tolist()],
        "base_value": base,
    }
    order = np.argsort(-pushes, axis=1, kind="stable")[:, :top]
    names, reasons = spec.feature_names, spec.explanations.reasons
    for k in range(min(top, spec.n_features)):
        chosen = order[:, k]
        push = pushes[np.arange(n), chosen]
        # Only a push toward the adverse outcome is a reason: a low-risk row may have fewer
        # than `top`, and its remaining columns stay empty.
        toward = push > 0
        shown = [int(i) if t else -1 for i, t in zip(chosen, toward, strict=True)]
        table[f"reason_{k + 1}"] = [
            reasons.get(names[i], names[i]) if i >= 0 else "" for i in shown
        ]
        table[f"feature_{k + 1}"] = [names[i] if i >= 0 else "" for i in shown]
        table[f"value_{k + 1}"] = [
            frame[names[i]].iloc[r] if i >= 0 else None for r, i in enumerate(shown)
        ]
        table[f"contribution_{k + 1}"] = np.where(toward, push, np.nan)
    if full:
        for i, name in enumerate(names):
            table[f"contribution:{name}"] = pushes[:, i]
    return pd.DataFrame(table), error, c.link


def read_rows(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise DataError(
            f"rows file not found: {path}. Pass a CSV or Parquet file of rows to explain"
        )
    return read_bytes(path.read_bytes(), str(path))


def explain_rows(
    settings: Settings,
    model_name: str,
    rows_path: Path,
    output: Path,
    version: int | None = None,
    top: int | None = None,
    full: bool = False,
) -> ReasonCodes:
    """Reason codes for the rows in `rows_path` from `model_name` v`version` (default: the
    champion), written to `output` (CSV). Rows that break the data contract are refused, named."""
    if version is None:
        version = model_registry.alias_version(settings, model_name, model_registry.CHAMPION)
        if version is None:
            raise ConveyorError(
                f"{model_name} has no champion to explain; release it first or pass --version"
            )
    spec = known_specs.recorded_spec(settings, model_name, version)
    frame = read_rows(rows_path)
    require_rows(frame, spec, str(rows_path))
    ref = model_registry.version_ref(settings, model_name, version)
    model = tracking.load_model(settings, ref.model_uri)
    background = to_features(load_dataset(_holdout_uri(settings, ref)), spec)[:BACKGROUND_ROWS]
    k = top or spec.explanations.top
    table, error, link = reason_table(spec, model, frame, background, k, full)
    output.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(output, index=False)
    return ReasonCodes(
        model=model_name,
        version=version,
        rows=len(table),
        top=k,
        link=link,
        output=str(output),
        max_reconstruction_error=error,
    )


def _holdout_uri(settings: Settings, ref: model_registry.ModelRef) -> str:
    uri = tracking.run_tags(settings, ref.run_id).get(tracking.TAG_HOLDOUT_URI)
    if uri is None:
        raise ConveyorError(
            f"{ref.name} v{ref.version} records no holdout (tag {tracking.TAG_HOLDOUT_URI} of "
            f"run {ref.run_id}): it was released before lineage tags; release it again"
        )
    return uri


@task(name="explain-rows")
def explain_rows_task(
    settings: Settings,
    model_name: str,
    rows_path: Path,
    output: Path,
    version: int | None = None,
    top: int | None = None,
    full: bool = False,
) -> ReasonCodes:
    result = explain_rows(settings, model_name, rows_path, output, version, top, full)
    get_run_logger().info(
        "reason codes of %d rows from %s v%d (top %d, %s units) in %s; contributions reproduce "
        "the scores to %.1e",
        result.rows,
        model_name,
        result.version,
        result.top,
        result.link,
        result.output,
        result.max_reconstruction_error,
    )
    create_markdown_artifact(
        key=f"reason-codes-{model_name}",
        markdown=(
            f"# Reason codes: {model_name} v{result.version}\n\n{result.rows} rows, top "
            f"{result.top} per row, contributions in {result.link} units, written to "
            f"`{Path(result.output).name}`; base value + contributions reproduce each score to "
            f"{result.max_reconstruction_error:.1e}."
        ),
        description=f"Reason codes of {result.rows} rows from {model_name} v{result.version}",
    )
    return result
