"""MLflow tracking: the experiment per model, the runs a release opens (candidate, trials, data
validation, drift checks), their lineage tags, artifacts and the logged sklearn model."""

from __future__ import annotations

import hashlib
import subprocess
import tempfile
import time
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import mlflow
import mlflow.artifacts
import mlflow.data
import numpy as np
import pandas as pd
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
from mlflow.models import infer_signature
from pydantic import BaseModel

from tasks.core.families import FAMILIES
from tasks.core.orchestration import root_flow_run
from tasks.core.settings import Settings
from tasks.core.spec import ModelSpec
from tasks.registry.mlflow_store import RegistryError, client

if TYPE_CHECKING:
    # Imported where a model is logged or loaded: commands that only read the registry
    # (status, history, doctor) never pay for scikit-learn's import.
    from sklearn.pipeline import Pipeline

# Lineage: what a candidate was made from, tagged on its run (and copied to its version).
TAG_DATA = "conveyor.data_sha256"  # the training split
TAG_SOURCE = "conveyor.source_sha256"  # the snapshot of the source the splits were cut from
TAG_HOLDOUT = "conveyor.holdout_sha256"
TAG_CODE = "conveyor.code_version"
TAG_FLOW_RUN = "conveyor.flow_run_id"
TAG_HOLDOUT_URI = "conveyor.holdout_uri"
TAG_TRAIN_URI = "conveyor.train_uri"  # the drift check's reference
# The source as the snapshot read it, pinned where it has versions (a Delta table at its version):
# reading it again reproduces the release's rows.
TAG_READ_FROM = "conveyor.source_read"
TAG_SPEC = "conveyor.spec_sha256"
TAG_THRESHOLD = "conveyor.operating_threshold"
TAG_COMPUTE = "conveyor.compute"  # dask: trained and judged on a cluster (absent: local)
TAG_MANIFEST = "conveyor.manifest"  # compute dask: the manifest of the pieces it read
TAG_ROWS = "conveyor.rows"  # compute dask: how many rows each step read
TAG_TASK = "conveyor.task"  # binary, multiclass or regression: what the version answers
TAG_THRESHOLD_SOURCE = "conveyor.operating_threshold_source"  # what it was chosen on
# Where the splits lie on the host that trained the version: the run's record (the drift and
# outcome checks read them there), not the version's, whose page a reviewer reads (#42).
RUN_ONLY_TAGS = frozenset({TAG_HOLDOUT_URI, TAG_TRAIN_URI, TAG_READ_FROM})
ONNX_ARTIFACT = "onnx/model.onnx"
# The spec a candidate was released with: what repair and rollback read when no fleet file
# names the model (`tasks.registry.known_specs`).
SPEC_ARTIFACT = "spec.json"
# What loading the logged sklearn model needs (skops format, no pickle). Stated rather than left to
# MLflow's inference, which loads the model in a subprocess (about 8 s a release) and lists whatever
# the training process had imported (pytest, dask, rich) as the model's requirements.
MODEL_REQUIREMENTS = ("scikit-learn", "numpy", "scipy", "skops")


class DataRef(Protocol):
    uri: str
    sha256: str


class CandidateRun(BaseModel):
    run_id: str
    model_uri: str
    experiment_id: str


# MLflow 3 marks an experiment's kind with this tag: conveyor's are machine-learning ones (its
# experiment list says so, and a UI without the GenAI/training switch opens them on their runs;
# with the switch, the links conveyor writes ask for training: `ui_links.MODE`).
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")


def ensure_experiment(mlflow_client: MlflowClient, settings: Settings, name: str) -> str:
    experiment = mlflow_client.get_experiment_by_name(name)
    key, kind = EXPERIMENT_KIND
    if experiment is not None:
        if experiment.tags.get(key) != kind:  # made before conveyor set it, or by hand
            mlflow_client.set_experiment_tag(experiment.experiment_id, key, kind)
        return str(experiment.experiment_id)
    tags = {key: kind}
    if settings.tracking_uri.startswith(("http://", "https://")):
        # A tracking server stores artifacts where it was told (--artifacts-destination,
        # proxied): a client-side path would bypass its credentials and its bucket.
        return str(mlflow_client.create_experiment(name, tags=tags))
    # Explicit artifact root: with a SQLite store MLflow would otherwise write ./mlruns in the cwd.
    location = (settings.artifacts_dir / name).as_uri()
    return str(mlflow_client.create_experiment(name, artifact_location=location, tags=tags))


UNKNOWN_CODE = "unknown"


def code_version(root: Path | None = None) -> str:
    """The git commit of the code that trained the model. Uncommitted changes to tracked files
    add `-dirty-` and a hash of the diff, so two different edits of one commit never read as the
    same code (the unchanged-model check compares it). `root`: the checkout (conveyor's own)."""
    root = root or Path(__file__).resolve().parents[2]

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=root, capture_output=True, text=True, check=True
        ).stdout

    try:
        commit = git("rev-parse", "HEAD").strip()
        diff = git("diff", "HEAD", "--no-ext-diff", "--binary")
    except (OSError, subprocess.CalledProcessError):
        return UNKNOWN_CODE
    if not diff:
        return commit
    return f"{commit}-dirty-{hashlib.sha256(diff.encode()).hexdigest()[:12]}"


def open_run(
    settings: Settings, name: str, run_name: str, tags: dict[str, str], parent_run_id: str = ""
) -> CandidateRun:
    """A RUNNING run in the model's experiment (a child of `parent_run_id` when given)."""
    mlflow_client = client(settings)
    experiment_id = ensure_experiment(mlflow_client, settings, name)
    if parent_run_id:
        tags = tags | {"mlflow.parentRunId": parent_run_id}
    run = mlflow_client.create_run(experiment_id, run_name=run_name, tags=tags)
    return CandidateRun(run_id=run.info.run_id, model_uri="", experiment_id=experiment_id)


def close_run(settings: Settings, run_id: str, status: str = "FAILED") -> None:
    client(settings).set_terminated(run_id, status)


# Runs that a release opens; a drift check's run is not one (it runs beside releases, unleased).
# Only the candidate's run carries over into a resumed release (its task result names it); a
# trial or a data validation that did not finish runs again in a run of its own.
CANDIDATE_RUN = "train-"
RELEASE_RUN_NAMES = (CANDIDATE_RUN, "trial-", "data-validation")


def running_runs(settings: Settings, name: str) -> list[tuple[str, str]]:
    """(run id, run name) of the model's release runs still RUNNING."""
    mlflow_client = client(settings)
    experiment = mlflow_client.get_experiment_by_name(name)
    if experiment is None:
        return []
    runs = mlflow_client.search_runs(
        [experiment.experiment_id], filter_string="attributes.status = 'RUNNING'"
    )
    return [
        (r.info.run_id, str(r.info.run_name))
        for r in runs
        if str(r.info.run_name).startswith(RELEASE_RUN_NAMES)
    ]


def log_trial(
    settings: Settings,
    name: str,
    parent_run_id: str,
    number: int,
    params: dict[str, object],
    metrics: dict[str, float],
) -> str:
    run = open_run(
        settings, name, f"trial-{number}", {"conveyor.trial": str(number)}, parent_run_id
    )
    log_to_run(settings, run.run_id, metrics=metrics, params=params)
    close_run(settings, run.run_id, "FINISHED")
    return run.run_id


def log_candidate(
    settings: Settings,
    spec: ModelSpec,
    run: CandidateRun,
    model: Pipeline,
    params: dict[str, object],
    metrics: dict[str, float],
    example: np.ndarray,
    tags: dict[str, str],
    trusted_types: list[str],
    figures: dict[str, Any],
    inputs: dict[str, tuple[pd.DataFrame, DataRef]],
) -> CandidateRun:
    """Complete the candidate's run: params, metrics, lineage tags, model with signature+example."""
    client(settings)
    with mlflow.start_run(run_id=run.run_id):
        mlflow.log_params(
            {
                "estimator": spec.estimator.family,
                **{f"estimator.{k}": v for k, v in params.items()},
                "data.source": spec.data.source,
                "data.rows": spec.data.rows,
                "data.seed": spec.data.seed,
                "features": ",".join(spec.feature_names),
            }
        )
        mlflow.log_metrics(metrics)
        mlflow.set_tags(tags)
        mlflow.log_dict(spec.model_dump(mode="json"), SPEC_ARTIFACT)
        for context, (frame, ref) in inputs.items():
            # MLflow caps a dataset digest at 36 characters; the full sha256 rides as a tag.
            dataset = mlflow.data.from_pandas(
                frame,
                source=ref.uri,
                targets=spec.target.name,
                name=context,
                digest=ref.sha256[:36],
            )
            mlflow.log_input(dataset, context=context, tags={"sha256": ref.sha256})
        for filename, figure in figures.items():
            mlflow.log_figure(figure, f"evaluation/{filename}")
        # A classifier's pyfunc answers probabilities (what callers act on), a regressor's its
        # prediction.
        predict_fn = "predict_proba" if hasattr(model, "predict_proba") else "predict"
        requirements = MODEL_REQUIREMENTS + FAMILIES[spec.estimator.family].requirements
        from mlflow import sklearn as mlflow_sklearn

        info = mlflow_sklearn.log_model(
            model,
            name="model",
            signature=infer_signature(example, getattr(model, predict_fn)(example)),
            input_example=example[:2],
            skops_trusted_types=trusted_types,
            pip_requirements=[f"{name}=={version(name)}" for name in requirements],
            pyfunc_predict_fn=predict_fn,
        )
    return run.model_copy(update={"model_uri": info.model_uri})


def log_data_validation(
    settings: Settings, name: str, data: DataRef, passed: bool, report_markdown: str
) -> str:
    """One run per data check in the model's experiment, FAILED when the data was refused."""
    tags = {
        "conveyor.data_validation": "passed" if passed else "failed",
        TAG_DATA: data.sha256,
        "conveyor.data_uri": data.uri,
        TAG_FLOW_RUN: root_flow_run(),
    }
    run = open_run(settings, name, "data-validation", tags)
    client(settings).log_text(run.run_id, report_markdown, "data_validation.md")
    close_run(settings, run.run_id, "FINISHED" if passed else "FAILED")
    return run.run_id


DRIFT_SHARE_METRIC = "drift_share"  # on each drift-check run: what `conveyor status` shows


OUTCOME_RUN = "outcome-check"


def log_check_run(
    settings: Settings,
    name: str,
    run_name: str,
    metrics: dict[str, float],
    files: dict[str, bytes],
    tags: dict[str, str] | None = None,
    directory: str = "check",
) -> str:
    """One finished run per check (drift, outcomes) in the model's experiment, with its figures
    and files (under `directory/`); returns the run id."""
    run = open_run(settings, name, run_name, {TAG_FLOW_RUN: root_flow_run(), **(tags or {})})
    try:
        log_to_run(settings, run.run_id, metrics=metrics)
        for filename, data in files.items():
            log_run_artifact(settings, run.run_id, f"{directory}/{filename}", data)
    except BaseException:
        close_run(settings, run.run_id, "FAILED")
        raise
    close_run(settings, run.run_id, "FINISHED")
    return run.run_id


DRIFT_RUN = "drift-check"


def log_drift_run(
    settings: Settings, name: str, html: Path, metrics: dict[str, float]
) -> tuple[str, str]:
    """One run per drift check in the model's experiment; returns its id and the HTML report's
    URI."""
    run_id = log_check_run(
        settings, name, DRIFT_RUN, metrics, {html.name: html.read_bytes()}, directory="drift"
    )
    return run_id, f"runs:/{run_id}/drift/{html.name}"


def load_model(settings: Settings, model_uri: str) -> Pipeline:
    client(settings)
    from mlflow import sklearn as mlflow_sklearn

    model: Pipeline = mlflow_sklearn.load_model(model_uri)
    return model


def log_run_artifact(settings: Settings, run_id: str, artifact_path: str, data: bytes) -> str:
    """Store bytes as an artifact of a run; returns its `runs:/` URI."""
    directory, _, filename = artifact_path.rpartition("/")
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp) / filename
        local.write_bytes(data)
        client(settings).log_artifact(run_id, str(local), directory or None)
    return f"runs:/{run_id}/{artifact_path}"


def log_to_run(
    settings: Settings,
    run_id: str,
    metrics: dict[str, float] | None = None,
    params: dict[str, object] | None = None,
    tags: dict[str, str] | None = None,
) -> None:
    """Metrics, params and tags of a run in one write (one transaction on the tracking store)."""
    now = int(time.time() * 1000)
    client(settings).log_batch(
        run_id,
        metrics=[Metric(k, v, now, 0) for k, v in (metrics or {}).items()],
        params=[Param(k, str(v)) for k, v in (params or {}).items()],
        tags=[RunTag(k, v) for k, v in (tags or {}).items()],
    )


def read_artifact(settings: Settings, uri: str) -> bytes:
    client(settings)
    with tempfile.TemporaryDirectory() as tmp:
        path = mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=tmp)
        return Path(path).read_bytes()


def run_param(settings: Settings, run_id: str, key: str) -> str | None:
    value = client(settings).get_run(run_id).data.params.get(key)
    return None if value is None else str(value)


def run_tag(settings: Settings, run_id: str, key: str) -> str:
    value = client(settings).get_run(run_id).data.tags.get(key)
    if value is None:
        raise RegistryError(f"MLflow run {run_id} has no tag {key}; was it trained by conveyor?")
    return str(value)


def run_tags(settings: Settings, run_id: str) -> dict[str, str]:
    return dict(client(settings).get_run(run_id).data.tags)
