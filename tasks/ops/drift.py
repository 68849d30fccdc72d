"""Data and prediction drift of the newest batch against the champion's training data (Evidently).

Both sides are scored with the champion's ONNX file, so a shift in what the model says is caught
even when no single feature moves enough on its own.

Large batches are compared on a uniform random sample (seeded) of at most `drift.max_rows` rows
per side. The tests Evidently runs per column (Wasserstein distance / Jensen-Shannon distance above
1,000 rows) estimate a distance between distributions; a 100,000-row uniform sample estimates it to
within about 0.01 of the full data, far below the 0.1 threshold, so the decision is the same while
time and memory stop growing with the batch.
"""

from __future__ import annotations

import tempfile
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
from evidently import DataDefinition, Dataset, Report
from evidently.metrics import ValueDrift
from evidently.presets import DataDriftPreset
from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from pydantic import BaseModel

from tasks.core import events
from tasks.core.pushgateway import Observation
from tasks.core.settings import Settings
from tasks.core.spec import FeatureType, ModelSpec
from tasks.datasets import newest_batch, partitioned, synthetic
from tasks.datasets.data import load_dataset, read_source, require_numbers, to_features
from tasks.modeling import onnx
from tasks.modeling.kinds import kind_of
from tasks.ops import history
from tasks.registry import mlflow_store, model_registry, tracking, ui_links


class ColumnDrift(BaseModel):
    column: str
    method: str
    score: float
    threshold: float
    drifted: bool


class DriftReport(BaseModel):
    model: str
    champion: int
    reference_uri: str
    reference_rows: int
    current_source: str
    current_rows: int
    compared_rows: int  # per side, after sampling
    columns: list[ColumnDrift]
    prediction: ColumnDrift
    drift_share: float
    threshold_share: float
    report_uri: str
    run_id: str = ""  # the check's MLflow run (its report and history chart)
    checked_at: datetime

    @property
    def drifted(self) -> bool:
        return self.drift_share >= self.threshold_share

    @property
    def drifted_columns(self) -> list[str]:
        return [c.column for c in self.columns if c.drifted]


def load_current(spec: ModelSpec) -> tuple[pd.DataFrame, str]:
    """The newest batch of the spec's source and a description of where it came from."""
    source = spec.data.source
    if synthetic.is_synthetic(source):
        # Tomorrow's traffic: another seed, and the spec's drift knob.
        d = spec.data
        frame = synthetic.generate(source, d.rows, d.seed + 1, d.positive_rate, d.drift, d.bias)
        return frame, f"{source} (drift {d.drift})"
    frame, newest = read_source(source, newest_only=True)
    where = f"{source} ({newest})" if newest else source
    require_numbers(frame, spec, where)
    return frame, where


def sample_rows(frame: pd.DataFrame, rows: int, seed: int) -> pd.DataFrame:
    """A seeded uniform sample of at most `rows` rows (the frame itself when smaller)."""
    return frame if len(frame) <= rows else frame.sample(n=rows, random_state=seed)


def current_sample(
    spec: ModelSpec, settings: Settings, rows: int, seed: int
) -> tuple[pd.DataFrame, str, int]:
    """A seeded sample of at most `rows` rows of the newest batch, where it came from, and the
    batch's rows. With `compute: dask` the sample is drawn on the workers (`newest_batch`)."""
    if spec.compute == "dask":
        frame, where, total = newest_batch.sample(
            spec.data.source, settings, partitioned.columns(spec), rows, seed
        )
        require_numbers(frame, spec, where)
        return frame, where, total
    full, where = load_current(spec)
    return sample_rows(full, rows, seed), where, len(full)


def _scored(frame: pd.DataFrame, spec: ModelSpec, onnx_bytes: bytes) -> pd.DataFrame:
    """The features beside what the champion answers for them: a binary model's score, a
    multiclass model's predicted class (by name), a regressor's prediction."""
    kind = kind_of(spec)
    scored = frame[[f.name for f in spec.features]].copy()
    values = kind.drift_values(onnx.predict_outputs(onnx_bytes, to_features(frame, spec)))
    if kind.drift_categorical:
        values = np.asarray(spec.class_names, dtype=object)[values]
    scored[kind.drift_column] = values
    return scored


def _definition(spec: ModelSpec) -> DataDefinition:
    categorical = {FeatureType.category, FeatureType.boolean}
    kind = kind_of(spec)
    answer = [kind.drift_column]
    return DataDefinition(
        numerical_columns=[f.name for f in spec.features if f.type not in categorical]
        + ([] if kind.drift_categorical else answer),
        categorical_columns=[f.name for f in spec.features if f.type in categorical]
        + (answer if kind.drift_categorical else []),
    )


def _column_results(snapshot: dict[str, object]) -> dict[str, ColumnDrift]:
    """Per-column results from the snapshot: the metric's score and its test's verdict."""
    metrics = snapshot["metrics"] if isinstance(snapshot["metrics"], list) else []
    tests = snapshot["tests"] if isinstance(snapshot["tests"], list) else []
    failed = {t["metric_config"]["metric_id"] for t in tests if t.get("status") == "FAIL"}
    results = {}
    for metric in metrics:
        config = metric["config"]
        if not str(config.get("type", "")).endswith("ValueDrift"):
            continue
        results[config["column"]] = ColumnDrift(
            column=config["column"],
            method=str(config["method"]),
            score=float(metric["value"]),
            threshold=float(config["threshold"]),
            drifted=metric["id"] in failed,
        )
    return results


def check_drift(settings: Settings, spec: ModelSpec) -> DriftReport:
    champion = model_registry.alias_version(settings, spec.name, model_registry.CHAMPION)
    if champion is None:
        raise mlflow_store.RegistryError(
            f"{spec.name} has no champion: the drift check compares against the champion's "
            "training data. Release a model first (`conveyor run`)."
        )
    ref = model_registry.version_ref(settings, spec.name, champion)
    reference_uri = tracking.run_tag(settings, ref.run_id, tracking.TAG_TRAIN_URI)
    onnx_bytes = tracking.read_artifact(settings, f"runs:/{ref.run_id}/{tracking.ONNX_ARTIFACT}")
    reference_full = load_dataset(reference_uri)
    rows = spec.drift.max_rows
    current, where, current_rows = current_sample(spec, settings, rows, spec.drift.seed)
    reference = _scored(sample_rows(reference_full, rows, spec.drift.seed), spec, onnx_bytes)
    current = _scored(current, spec, onnx_bytes)
    definition = _definition(spec)
    features = [f.name for f in spec.features]
    answer = kind_of(spec).drift_column
    report = Report(
        [
            DataDriftPreset(columns=features, drift_share=spec.drift.share),
            ValueDrift(column=answer),
        ],
        include_tests=True,
    )
    snapshot = report.run(
        current_data=Dataset.from_pandas(current, data_definition=definition),
        reference_data=Dataset.from_pandas(reference, data_definition=definition),
    )
    columns = _column_results(snapshot.dict())
    feature_results = [columns[name] for name in features]
    drifted = sum(c.drifted for c in feature_results)
    share = drifted / len(feature_results)
    with tempfile.TemporaryDirectory() as tmp:
        html = Path(tmp) / "drift_report.html"
        snapshot.save_html(str(html))
        run_id, report_uri = tracking.log_drift_run(
            settings,
            spec.name,
            html,
            # The share is what `conveyor status` shows; the scores are per column.
            metrics={f"drift_{c.column}": c.score for c in [*feature_results, columns[answer]]}
            | {tracking.DRIFT_SHARE_METRIC: share},
        )
    return DriftReport(
        model=spec.name,
        champion=champion,
        reference_uri=reference_uri,
        reference_rows=len(reference_full),
        current_source=where,
        current_rows=current_rows,
        compared_rows=len(current),
        columns=feature_results,
        prediction=columns[answer],
        drift_share=share,
        threshold_share=spec.drift.share,
        report_uri=report_uri,
        run_id=run_id,
        checked_at=datetime.now(UTC),
    )


def report_markdown(report: DriftReport, full_report: str = "") -> str:
    verdict = "DRIFT" if report.drifted else "no drift"
    lines = [
        f"# Drift check of {report.model} (champion v{report.champion}): {verdict}",
        "",
        f"Drifted columns: {len(report.drifted_columns)} of {len(report.columns)} "
        f"(share {report.drift_share:.2f}, threshold {report.threshold_share:.2f}); "
        f"prediction drift: {'yes' if report.prediction.drifted else 'no'} "
        f"({report.prediction.method} {report.prediction.score:.3f}).",
        f"Current: {report.current_source}, {report.current_rows} rows; reference: "
        f"{report.reference_rows} rows; compared {report.compared_rows} per side.",
        f"Full report: {full_report or f'`{report.report_uri}`'}",
        "",
        "| column | method | score | threshold | drifted |",
        "|---|---|---|---|---|",
        *[
            f"| {c.column} | {c.method} | {c.score:.3f} | {c.threshold} | "
            f"{'yes' if c.drifted else ''} |"
            for c in [*report.columns, report.prediction]
        ],
    ]
    return "\n".join(lines)


@task(name="check-drift")
def check_drift_task(settings: Settings, spec: ModelSpec) -> DriftReport:
    report = check_drift(settings, spec)
    # The model's history, this check included, kept with the check's run.
    chart = history.log_history(settings, spec, report.run_id)
    create_markdown_artifact(
        key=f"drift-{spec.name}",
        markdown=report_markdown(
            report, ui_links.artifact_link(settings, "Evidently report", report.report_uri)
        )
        + f"\n\n{chart}",
        description=f"Drift check of {spec.name}: each feature and the predictions against the "
        "training data, with the full report and the model's history",
    )
    get_run_logger().info(
        "%s: drift share %.2f (threshold %.2f), drifted columns %s, prediction drift %s",
        spec.name,
        report.drift_share,
        report.threshold_share,
        report.drifted_columns or "none",
        report.prediction.drifted,
    )
    return report


@task(name="emit-drift-event")
def emit_drift_task(report: DriftReport, spec_path: str) -> bool:
    """Emit `conveyor.drift.detected` when the share crosses the threshold; no drift, no event."""
    if not report.drifted:
        return False
    events.emit(
        events.DRIFT_DETECTED,
        report.model,
        {
            "share": report.drift_share,
            "columns": ",".join(report.drifted_columns),
            "report_uri": report.report_uri,
            "champion": report.champion,
            "spec": spec_path,
        },
    )
    get_run_logger().warning("emitted %s for %s", events.DRIFT_DETECTED, report.model)
    return True


def record_drift(obs: Observation, report: DriftReport) -> None:
    obs.gauge("conveyor_drift_share_ratio", "Share of drifted columns.", report.drift_share)
    obs.gauge(
        "conveyor_drift_threshold_ratio", "Share that counts as drift.", report.threshold_share
    )
    obs.gauge("conveyor_drift_detected", "1 if the last check found drift.", report.drifted)
    for column in [*report.columns, report.prediction]:
        obs.gauge(
            "conveyor_drift_column_score",
            "Drift score per column (the prediction is column `score`).",
            column.score,
            column=column.column,
            method=column.method,
        )
    obs.gauge("conveyor_drift_current_rows", "Rows in the checked batch.", report.current_rows)
