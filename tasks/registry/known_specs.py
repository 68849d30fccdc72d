"""Which spec describes a registered model, wherever its YAML file lives.

A spec can live anywhere (`conveyor run --spec PATH`), and a release records the spec it was
released with beside the version (`spec.json` of the version's MLflow run, `tracking`). Repair,
rollback, status and `triton up` read the model's spec here: the fleet's file when the spec
directory names the model (the operator's current word), else the spec recorded with the
champion (or, before any champion, with the newest version). So a model released from outside
`deployments/models/` is as repairable as one of the fleet's.
"""

from __future__ import annotations

import json
from pathlib import Path

from mlflow.exceptions import MlflowException

from tasks.core.settings import Settings
from tasks.core.spec import ModelSpec, SpecError, load_spec
from tasks.registry import mlflow_store, model_registry, tracking


def fleet_entries(settings: Settings) -> dict[str, tuple[Path, ModelSpec]]:
    """The specs in the spec directory that load, by model name (the name inside the file,
    which need not be the file's stem), with their files."""
    found: dict[str, tuple[Path, ModelSpec]] = {}
    directory = settings.spec_dir
    for path in sorted(directory.glob("*.yaml")) if directory.is_dir() else []:
        try:
            spec = load_spec(path)
        except SpecError:
            continue  # a broken spec is the fleet commands' error to report, not this lookup's
        found.setdefault(spec.name, (path, spec))
    return found


def fleet_specs(settings: Settings) -> dict[str, ModelSpec]:
    return {name: spec for name, (_, spec) in fleet_entries(settings).items()}


def _path_like(reference: str) -> bool:
    return Path(reference).is_file() or "/" in reference or reference.endswith((".yaml", ".yml"))


def spec_file(
    settings: Settings,
    reference: str,
    fleet: dict[str, tuple[Path, ModelSpec]] | None = None,
) -> str:
    """A spec as the run forms and `--spec` give it: a file's path, or the name of a model of the
    fleet. A name the fleet does not have is a `SpecError` that lists the fleet's. `fleet`: the
    entries already read, for a caller resolving many references."""
    if _path_like(reference):
        return reference  # a path: `load_spec` says so if it is missing
    fleet = fleet_entries(settings) if fleet is None else fleet
    if reference in fleet:
        return str(fleet[reference][0])
    raise SpecError(
        f"no model named {reference!r} in {settings.spec_dir}/ (its models: "
        f"{', '.join(sorted(fleet)) or 'none'}); give a model of the fleet by name or the path "
        "of a spec file"
    )


def resolve(settings: Settings, reference: str) -> tuple[str, ModelSpec]:
    """The spec file and its spec for a flow's `spec_path` (a path, or a fleet model's name,
    whose spec was read finding it)."""
    if _path_like(reference):
        return reference, load_spec(reference)
    fleet = fleet_entries(settings)
    path = spec_file(settings, reference, fleet)
    return path, fleet[reference][1]


def recorded_spec(settings: Settings, model: str, version: int) -> ModelSpec:
    """The spec `model` v`version` was released with, as its release recorded it."""
    ref = model_registry.version_ref(settings, model, version)
    try:
        raw = tracking.read_artifact(settings, f"runs:/{ref.run_id}/{tracking.SPEC_ARTIFACT}")
    except (MlflowException, OSError) as exc:
        raise SpecError(
            f"{model} v{version} has no recorded spec ({tracking.SPEC_ARTIFACT} of MLflow run "
            f"{ref.run_id}: {str(exc)[:200]}); put its spec in {settings.spec_dir}/ "
            "(CONVEYOR_SPEC_DIR) and run the command again"
        ) from None
    return ModelSpec.model_validate(json.loads(raw))


def spec_of(settings: Settings, model: str) -> ModelSpec:
    """The spec that describes `model` now: the fleet's, else the champion's recorded one, else
    the newest registered version's. `SpecError` saying where it looked when there is none."""
    fleet = fleet_specs(settings).get(model)
    if fleet is not None:
        return fleet
    version = model_registry.alias_version(settings, model, model_registry.CHAMPION)
    if version is None:
        found = mlflow_store.client(settings).search_model_versions(f"name='{model}'")
        version = max((int(v.version) for v in found), default=None)
    if version is None:
        raise SpecError(
            f"no spec in {settings.spec_dir}/ names the model {model!r}, and the registry has "
            f"no version of it; `conveyor status` lists the models conveyor knows"
        )
    return recorded_spec(settings, model, version)
