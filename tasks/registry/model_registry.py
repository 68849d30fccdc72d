"""The MLflow model registry: registered versions, the aliases that say what is served
(`champion`, `previous`, `challenger`), their moves, and release tags on versions."""

from __future__ import annotations

import getpass
import os
from datetime import UTC, datetime

from mlflow.exceptions import MlflowException
from pydantic import BaseModel

from tasks.core.settings import Settings
from tasks.registry import alias_history
from tasks.registry.mlflow_store import RegistryError, client, refusals_explained
from tasks.registry.tracking import CandidateRun

CHALLENGER = "challenger"
CHAMPION = "champion"
PREVIOUS = "previous"

# Release state, tagged on versions.
TAG_ONNX = "conveyor.onnx_sha256"
TAG_RELEASE = "conveyor.release"
TAG_RETIRED = "conveyor.retired"  # its repository files were deleted by retention
TAG_SERVING = "conveyor.serving"  # the serving configuration (JSON) the version went live with


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


def what_stays(champion: int | None) -> str:
    """What a refused release leaves in production, for the sentence that refuses it."""
    if champion is None:
        return "there is still no champion (nothing of this model is served)"
    return f"the champion (v{champion}) is unchanged"


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


def _flow_run_id() -> str | None:
    """The Prefect flow run moving the alias; None outside one (Prefect is imported only here:
    `conveyor status` reads this module for every model)."""
    from prefect.runtime import flow_run

    return str(flow_run.id) if flow_run.id else None


def default_actor() -> str:
    return os.environ.get("CONVEYOR_ACTOR") or getpass.getuser()


def move_alias(
    settings: Settings, name: str, alias: str, version: int | None, reason: str, actor: str
) -> alias_history.AliasMove | None:
    """Point `alias` at `version` (None: remove it) and record the move
    (`tasks.registry.alias_history`) next to the aliases. No move, no record."""
    mlflow_client = client(settings)
    current = alias_version(settings, name, alias)
    if current == version:
        return None
    with refusals_explained():
        if version is None:
            mlflow_client.delete_registered_model_alias(name, alias)
        else:
            mlflow_client.set_registered_model_alias(name, alias, str(version))
    move = alias_history.AliasMove(
        alias=alias,
        from_version=current,
        to_version=version,
        at=datetime.now(UTC),
        actor=actor,
        reason=reason[:1000],
        flow_run_id=_flow_run_id(),
    )
    alias_history.record(settings, name, move)
    return move


def version_tag(settings: Settings, name: str, version: int, key: str) -> str | None:
    tags = client(settings).get_model_version(name, str(version)).tags
    value = tags.get(key)
    return None if value is None else str(value)


def retire_version(settings: Settings, name: str, version: int, reason: str) -> None:
    """Say on the MLflow version that its repository files are gone (`tasks.registry.retention`)."""
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
