"""MLflow: the experiment per model, candidate runs, registered versions, aliases and tags."""

from __future__ import annotations

import fcntl
import getpass
import hashlib
import os
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from functools import cache
from importlib.metadata import version
from pathlib import Path
from typing import Any, Protocol

import mlflow
import mlflow.artifacts
import mlflow.data
import mlflow.sklearn
import numpy as np
import pandas as pd
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature
from prefect import get_run_logger, task
from prefect.runtime import flow_run
from pydantic import BaseModel
from sklearn.pipeline import Pipeline

from tasks import credentials, events
from tasks.errors import ConveyorError
from tasks.settings import Settings
from tasks.spec import ModelSpec

CHALLENGER = "challenger"
CHAMPION = "champion"
PREVIOUS = "previous"

TAG_DATA = "conveyor.data_sha256"  # the training split
TAG_SOURCE = "conveyor.source_sha256"  # the snapshot of the source the splits were cut from
TAG_HOLDOUT = "conveyor.holdout_sha256"
TAG_CODE = "conveyor.code_version"
TAG_FLOW_RUN = "conveyor.flow_run_id"
TAG_ONNX = "conveyor.onnx_sha256"
TAG_RELEASE = "conveyor.release"
TAG_HOLDOUT_URI = "conveyor.holdout_uri"
TAG_TRAIN_URI = "conveyor.train_uri"  # the drift check's reference
TAG_SPEC = "conveyor.spec_sha256"
TAG_THRESHOLD = "conveyor.operating_threshold"
TAG_THRESHOLD_SOURCE = "conveyor.operating_threshold_source"  # what it was chosen on
TAG_RETIRED = "conveyor.retired"  # its repository files were deleted by retention
TAG_SERVING = "conveyor.serving"  # the serving configuration (JSON) the version went live with
ONNX_ARTIFACT = "onnx/model.onnx"
HISTORY_PREFIX = "conveyor.history."
# What loading the logged sklearn model needs (skops format, no pickle). Stated rather than left to
# MLflow's inference, which loads the model in a subprocess (about 8 s a release) and lists whatever
# the training process had imported (pytest, dask, rich) as the model's requirements.
MODEL_REQUIREMENTS = ("scikit-learn", "numpy", "scipy", "skops")


class RegistryError(ConveyorError):
    """The MLflow registry refused an operation."""


class DataRef(Protocol):
    uri: str
    sha256: str


class CandidateRun(BaseModel):
    run_id: str
    model_uri: str
    experiment_id: str


class ModelRef(BaseModel):
    """A registered model version: the reference every later step works from."""

    name: str
    version: int
    run_id: str
    model_uri: str


class PromotionResult(BaseModel):
    name: str
    champion: int
    previous: int | None


def client(settings: Settings) -> MlflowClient:
    # Progress bars on every artifact download drown the flow logs.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    credentials.load_mlflow_password()
    # The fluent API (start_run, log_model) reads the process-wide URI; set it for both.
    mlflow.set_tracking_uri(settings.tracking_uri)
    mlflow.set_registry_uri(settings.tracking_uri)
    if not settings.home.exists():
        # The state directory holds the registry and the Triton key: its owner's alone.
        settings.home.mkdir(parents=True, mode=0o700)
    if settings.mlflow_tracking_uri is None:
        _create_sqlite_registry(settings)
    mlflow_client = MlflowClient(
        tracking_uri=settings.tracking_uri, registry_uri=settings.tracking_uri
    )
    if settings.tracking_uri.startswith(("http://", "https://")):
        user = os.environ.get(credentials.MLFLOW_USER_ENV, "")
        password = os.environ.get(credentials.MLFLOW_PASSWORD_ENV, "")
        _check_access(settings.tracking_uri, user, credentials.fingerprint(password))
    return mlflow_client


def _create_sqlite_registry(settings: Settings) -> None:
    """The embedded registry's SQLite file, owner-only, with MLflow's schema in it. Processes
    that open a new file at once (two `conveyor run` on a fresh state directory) each run
    MLflow's schema migrations on it and fail (alembic: "expected to match one row", "table
    already exists"): the first to take the lock creates the schema, the others find it."""
    if settings.tracking_uri in _OPENED:
        return
    lock = settings.home / "mlflow.db.lock"
    with os.fdopen(os.open(lock, os.O_CREAT | os.O_WRONLY, 0o600), "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # released when the file closes
        if not settings.mlflow_db.exists():
            # SQLite takes an empty file as a new database: create it owner-only before MLflow
            # creates it with the umask's permissions.
            os.close(os.open(settings.mlflow_db, os.O_CREAT | os.O_WRONLY, 0o600))
        # Both stores (tracking and registry) migrate the schema when first opened; MLflow then
        # keeps them for the process.
        store = MlflowClient(tracking_uri=settings.tracking_uri, registry_uri=settings.tracking_uri)
        store.search_experiments(max_results=1)
        store.search_registered_models(max_results=1)
    _OPENED.add(settings.tracking_uri)


# SQLite registries this process has opened (MLflow keeps their stores, schema checked).
_OPENED: set[str] = set()


@cache
def _check_access(uri: str, user: str, password_fingerprint: str) -> None:
    """One read per server and credentials per process: missing or wrong credentials are one
    clear paragraph before any work, not a 401 in the middle of a release."""
    with refusals_explained():
        MlflowClient(tracking_uri=uri).search_experiments(max_results=1)


@contextmanager
def refusals_explained() -> Iterator[None]:
    """MLflow's 401/403 as the paragraph that says which credentials or permission to fix."""
    try:
        yield
    except MlflowException as exc:
        refused = credentials.explain(exc)
        if refused is None:
            raise
        raise refused from exc


def ensure_experiment(mlflow_client: MlflowClient, settings: Settings, name: str) -> str:
    experiment = mlflow_client.get_experiment_by_name(name)
    if experiment is not None:
        return str(experiment.experiment_id)
    if settings.tracking_uri.startswith(("http://", "https://")):
        # A tracking server stores artifacts where it was told (--artifacts-destination,
        # proxied): a client-side path would bypass its credentials and its bucket.
        return str(mlflow_client.create_experiment(name))
    # Explicit artifact root: with a SQLite store MLflow would otherwise write ./mlruns in the cwd.
    location = (settings.artifacts_dir / name).as_uri()
    return str(mlflow_client.create_experiment(name, artifact_location=location))


UNKNOWN_CODE = "unknown"


def code_version(root: Path | None = None) -> str:
    """The git commit of the code that trained the model. Uncommitted changes to tracked files
    add `-dirty-` and a hash of the diff, so two different edits of one commit never read as the
    same code (the unchanged-model check compares it). `root`: the checkout (conveyor's own)."""
    root = root or Path(__file__).resolve().parent.parent

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


def run_link(settings: Settings, run: CandidateRun) -> str:
    return f"{settings.mlflow_ui_url}/#/experiments/{run.experiment_id}/runs/{run.run_id}"


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
        mlflow.log_dict(spec.model_dump(mode="json"), "spec.json")
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
        info = mlflow.sklearn.log_model(
            model,
            name="model",
            signature=infer_signature(example, model.predict_proba(example)),
            input_example=example[:2],
            skops_trusted_types=trusted_types,
            pip_requirements=[f"{name}=={version(name)}" for name in MODEL_REQUIREMENTS],
            # Scores, not labels, are what callers of a fraud model act on.
            pyfunc_predict_fn="predict_proba",
        )
    return run.model_copy(update={"model_uri": info.model_uri})


@cache
def _root_of(flow_run_id: str) -> str:
    # Prefect walks the parent chain through its API on every read; a chain never changes.
    return str(flow_run.root_flow_run_id or flow_run_id)


def root_flow_run() -> str:
    """The Prefect flow run a step belongs to (the release, not its subflow); "" outside one."""
    current = flow_run.id
    return _root_of(str(current)) if current else ""


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


def log_drift_run(settings: Settings, name: str, html: Path, metrics: dict[str, float]) -> str:
    """One run per drift check in the model's experiment; returns the HTML report's URI."""
    tags = {TAG_FLOW_RUN: root_flow_run()}
    run = open_run(settings, name, "drift-check", tags)
    try:
        log_to_run(settings, run.run_id, metrics=metrics)
        client(settings).log_artifact(run.run_id, str(html), "drift")
    except BaseException:
        close_run(settings, run.run_id, "FAILED")
        raise
    close_run(settings, run.run_id, "FINISHED")
    return f"runs:/{run.run_id}/drift/{html.name}"


def load_model(settings: Settings, model_uri: str) -> Pipeline:
    client(settings)
    model: Pipeline = mlflow.sklearn.load_model(model_uri)
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


def version_ref(settings: Settings, name: str, version: int) -> ModelRef:
    mlflow_client = client(settings)
    try:
        found = mlflow_client.get_model_version(name, str(version))
    except MlflowException as exc:
        known = sorted(
            int(v.version) for v in mlflow_client.search_model_versions(f"name='{name}'")
        )
        raise RegistryError(
            f"{name} has no version {version} in {settings.tracking_uri}; versions: "
            f"{', '.join(map(str, known)) or 'none'}"
        ) from exc
    return ModelRef(name=name, version=version, run_id=found.run_id, model_uri=found.source)


def run_param(settings: Settings, run_id: str, key: str) -> str | None:
    value = client(settings).get_run(run_id).data.params.get(key)
    return None if value is None else str(value)


def run_tag(settings: Settings, run_id: str, key: str) -> str:
    value = client(settings).get_run(run_id).data.tags.get(key)
    if value is None:
        raise RegistryError(f"MLflow run {run_id} has no tag {key}; was it trained by conveyor?")
    return str(value)


def register(
    settings: Settings, name: str, candidate: CandidateRun, tags: dict[str, str]
) -> ModelRef:
    """Register the run's model; registering the same run again returns the existing version."""
    mlflow_client = client(settings)
    try:
        mlflow_client.get_registered_model(name)
    except MlflowException:
        mlflow_client.create_registered_model(name)
    existing = mlflow_client.search_model_versions(f"name='{name}' and run_id='{candidate.run_id}'")
    if existing:
        version = min(existing, key=lambda v: int(v.version))
    else:
        # A tracking server checks that a `models:/m-<id>` source names its logged model; the
        # SQLite store does not, so only the server path would show a missing model_id.
        logged = candidate.model_uri.removeprefix("models:/")
        version = mlflow_client.create_model_version(
            name,
            source=candidate.model_uri,
            run_id=candidate.run_id,
            tags=tags,
            model_id=logged if logged.startswith("m-") else None,
        )
    return ModelRef(
        name=name,
        version=int(version.version),
        run_id=candidate.run_id,
        model_uri=candidate.model_uri,
    )


# What MLflow answers for a model or alias that does not exist. Anything else (the server down,
# a refusal) is raised: read as "no alias", an outage would look like a model with no champion,
# and whatever restores serving from the aliases would unload it.
NOT_FOUND = frozenset({"RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"})


def alias_version(settings: Settings, name: str, alias: str) -> int | None:
    mlflow_client = client(settings)
    try:
        return int(mlflow_client.get_model_version_by_alias(name, alias).version)
    except MlflowException as exc:
        if exc.error_code in NOT_FOUND:
            return None
        # MLflow's basic-auth app answers 403 for a model that does not exist yet (it finds no
        # permission for it): a refusal only if the model is there.
        if exc.error_code == "PERMISSION_DENIED" and not mlflow_client.search_registered_models(
            filter_string=f"name = '{name}'"
        ):
            return None
        raise


class AliasMove(BaseModel):
    """One change of one alias; MLflow keeps only the current aliases, conveyor keeps these."""

    alias: str
    from_version: int | None
    to_version: int | None
    at: datetime
    actor: str
    reason: str
    flow_run_id: str | None = None


def default_actor() -> str:
    return os.environ.get("CONVEYOR_ACTOR") or getpass.getuser()


def move_alias(
    settings: Settings, name: str, alias: str, version: int | None, reason: str, actor: str
) -> AliasMove | None:
    """Point `alias` at `version` (None: remove it) and record the move next to the aliases.

    The record is a registered-model tag, so it lives in the same store as the alias and is shared
    by every worker that shares the registry. No move, no record.
    """
    mlflow_client = client(settings)
    current = alias_version(settings, name, alias)
    if current == version:
        return None
    with refusals_explained():
        if version is None:
            mlflow_client.delete_registered_model_alias(name, alias)
        else:
            mlflow_client.set_registered_model_alias(name, alias, str(version))
    move = AliasMove(
        alias=alias,
        from_version=current,
        to_version=version,
        at=datetime.now(UTC),
        actor=actor,
        reason=reason[:1000],
        flow_run_id=str(flow_run.id) if flow_run.id else None,
    )
    key = f"{HISTORY_PREFIX}{move.at.strftime('%Y%m%dT%H%M%S.%fZ')}.{alias}"
    mlflow_client.set_registered_model_tag(name, key, move.model_dump_json())
    compact_history(settings, name)
    return move


# The newest moves stay tags on the registered model (what `conveyor status` reads); older ones
# are archived, a batch at a time, as JSON lines in the artifacts of an `alias-history` run of
# the model's experiment, so the record stays complete while the model's tags stay bounded.
HISTORY_TAGS_KEPT = 60
HISTORY_BATCH = 40
HISTORY_RUN = "alias-history"
HISTORY_ARTIFACTS = "alias-history"


def _history_tags(settings: Settings, name: str) -> dict[str, str]:
    try:
        tags = client(settings).get_registered_model(name).tags
    except MlflowException as exc:
        raise RegistryError(f"no registered model {name} in {settings.tracking_uri}") from exc
    return {k: v for k, v in tags.items() if k.startswith(HISTORY_PREFIX)}


def compact_history(settings: Settings, name: str) -> int:
    """Archive the oldest moves once more than HISTORY_TAGS_KEPT + HISTORY_BATCH are tags; the
    archive is written before any tag is deleted, so a failure in between only duplicates moves
    (`alias_history` reads each once). Returns how many moves were archived."""
    tags = _history_tags(settings, name)
    if len(tags) <= HISTORY_TAGS_KEPT + HISTORY_BATCH:
        return 0
    oldest = sorted(tags)[: len(tags) - HISTORY_TAGS_KEPT]
    lines = "".join(tags[k] + "\n" for k in oldest).encode()
    run = open_run(settings, name, HISTORY_RUN, {"conveyor.history_archive": "true"})
    try:
        first, last = (k.removeprefix(HISTORY_PREFIX) for k in (oldest[0], oldest[-1]))
        log_run_artifact(settings, run.run_id, f"{HISTORY_ARTIFACTS}/{first}--{last}.jsonl", lines)
    except BaseException:
        close_run(settings, run.run_id, "FAILED")
        raise
    close_run(settings, run.run_id, "FINISHED")
    mlflow_client = client(settings)
    for key in oldest:
        mlflow_client.delete_registered_model_tag(name, key)
    return len(oldest)


def _archived_moves(settings: Settings, name: str) -> list[str]:
    mlflow_client = client(settings)
    experiment = mlflow_client.get_experiment_by_name(name)
    if experiment is None:
        return []
    runs = mlflow_client.search_runs(
        [experiment.experiment_id],
        filter_string=f"attributes.run_name = '{HISTORY_RUN}' and attributes.status = 'FINISHED'",
    )
    lines: list[str] = []
    for run in runs:
        for artifact in mlflow_client.list_artifacts(run.info.run_id, HISTORY_ARTIFACTS):
            uri = f"runs:/{run.info.run_id}/{artifact.path}"
            lines += read_artifact(settings, uri).decode().splitlines()
    return lines


def _moves(records: list[str]) -> list[AliasMove]:
    # A move archived and still a tag (compaction interrupted between the two) counts once.
    moves = {move.model_dump_json(): move for move in map(AliasMove.model_validate_json, records)}
    return sorted(moves.values(), key=lambda m: m.at)


def recent_moves(model_tags: dict[str, str]) -> list[AliasMove]:
    """The moves kept as tags, from a registered model's tags already read (oldest first)."""
    return _moves([v for k, v in model_tags.items() if k.startswith(HISTORY_PREFIX)])


def alias_history(settings: Settings, name: str, archived: bool = True) -> list[AliasMove]:
    """Every move of the model's aliases, oldest first; `archived=False` reads only the recent
    ones kept as tags (always the newest HISTORY_TAGS_KEPT or more)."""
    records = list(_history_tags(settings, name).values())
    if archived:
        records += _archived_moves(settings, name)
    return _moves(records)


def version_tag(settings: Settings, name: str, version: int, key: str) -> str | None:
    tags = client(settings).get_model_version(name, str(version)).tags
    value = tags.get(key)
    return None if value is None else str(value)


def retire_version(settings: Settings, name: str, version: int, reason: str) -> None:
    """Say on the MLflow version that its repository files are gone (`tasks.retention`)."""
    client(settings).set_model_version_tag(name, str(version), TAG_RETIRED, reason)


def tag_version(settings: Settings, ref: ModelRef, tags: dict[str, str]) -> None:
    mlflow_client = client(settings)
    for key, value in tags.items():
        mlflow_client.set_model_version_tag(ref.name, str(ref.version), key, value)


def promote(settings: Settings, ref: ModelRef, reason: str, actor: str) -> PromotionResult:
    """champion → ref; the old champion becomes previous; challenger is consumed.

    `previous` is moved before `champion`, so a failure between the two calls leaves both aliases
    on versions that really were champions.
    """
    old = alias_version(settings, ref.name, CHAMPION)
    if old is not None and old != ref.version:
        move_alias(settings, ref.name, PREVIOUS, old, f"replaced by v{ref.version}", actor)
    move_alias(settings, ref.name, CHAMPION, ref.version, reason, actor)
    if alias_version(settings, ref.name, CHALLENGER) == ref.version:
        move_alias(settings, ref.name, CHALLENGER, None, "promoted", actor)
    client(settings).set_model_version_tag(ref.name, str(ref.version), TAG_RELEASE, "promoted")
    return PromotionResult(
        name=ref.name, champion=ref.version, previous=old if old != ref.version else None
    )


def retire_candidate(settings: Settings, ref: ModelRef, reason: str) -> None:
    """A failed release: the version keeps its record (and why it failed) but no alias."""
    if alias_version(settings, ref.name, CHALLENGER) == ref.version:
        move_alias(
            settings, ref.name, CHALLENGER, None, f"release failed: {reason}", default_actor()
        )
    client(settings).set_model_version_tag(
        ref.name, str(ref.version), TAG_RELEASE, f"failed: {reason}"[:5000]
    )


def register_challenger(
    settings: Settings, name: str, candidate: CandidateRun, tags: dict[str, str]
) -> ModelRef:
    ref = register(settings, name, candidate, tags)
    move_alias(settings, name, CHALLENGER, ref.version, "registered for release", default_actor())
    return ref


@task(name="register-challenger")
def register_challenger_task(
    settings: Settings, name: str, candidate: CandidateRun, tags: dict[str, str]
) -> ModelRef:
    ref = register_challenger(settings, name, candidate, tags)
    get_run_logger().info("registered %s version %d as %s", name, ref.version, CHALLENGER)
    return ref


@task(name="promote")
def promote_task(settings: Settings, ref: ModelRef, reason: str, actor: str) -> PromotionResult:
    result = promote(settings, ref, reason, actor)
    get_run_logger().info(
        "%s: champion → version %d (previous: %s)", ref.name, result.champion, result.previous
    )
    events.emit(
        events.MODEL_PROMOTED,
        ref.name,
        {"version": result.champion, "previous": result.previous, "reason": "release"},
    )
    return result


@task(name="retire-candidate")
def retire_candidate_task(settings: Settings, ref: ModelRef, reason: str) -> None:
    retire_candidate(settings, ref, reason)
    get_run_logger().warning("%s version %d retired: %s", ref.name, ref.version, reason)
    events.emit(events.RELEASE_FAILED, ref.name, {"version": ref.version, "reason": reason[:500]})


class RollbackPlan(BaseModel):
    name: str
    bad: int
    target: int


def plan_rollback(settings: Settings, name: str) -> RollbackPlan:
    champion = alias_version(settings, name, CHAMPION)
    previous = alias_version(settings, name, PREVIOUS)
    if champion is None:
        raise RegistryError(f"{name} has no champion: there is nothing to roll back")
    if previous is None:
        raise RegistryError(
            f"{name} has no `previous` version to roll back to (champion is v{champion}); "
            "release a fixed model instead"
        )
    return RollbackPlan(name=name, bad=champion, target=previous)


def rollback(settings: Settings, plan: RollbackPlan, reason: str, actor: str) -> PromotionResult:
    """champion → previous; `previous` is cleared, since the bad version is no rollback target."""
    move_alias(settings, plan.name, CHAMPION, plan.target, f"rollback: {reason}", actor)
    move_alias(settings, plan.name, PREVIOUS, None, f"rolled back to v{plan.target}", actor)
    client(settings).set_model_version_tag(
        plan.name, str(plan.bad), TAG_RELEASE, f"rolled back: {reason}"[:5000]
    )
    return PromotionResult(name=plan.name, champion=plan.target, previous=None)


@task(name="plan-rollback")
def plan_rollback_task(settings: Settings, name: str) -> RollbackPlan:
    return plan_rollback(settings, name)


@task(name="rollback-aliases")
def rollback_task(
    settings: Settings, plan: RollbackPlan, reason: str, actor: str
) -> PromotionResult:
    result = rollback(settings, plan, reason, actor)
    get_run_logger().warning(
        "%s rolled back: champion v%d → v%d (%s, by %s)",
        plan.name,
        plan.bad,
        plan.target,
        reason,
        actor,
    )
    events.emit(
        events.MODEL_PROMOTED,
        plan.name,
        {
            "version": plan.target,
            "previous": plan.bad,
            "reason": "rollback",
            "detail": reason[:500],
        },
    )
    return result
