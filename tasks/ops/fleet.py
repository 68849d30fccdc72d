"""The fleet: every spec in the spec directory is a model (`Settings.spec_dir`, by default
`deployments/models/`), and `conveyor status` is one row per model of what production holds.

Each row is read from the systems of record, never from a cache of conveyor's: aliases and their
history from MLflow, what is served from Triton, the last release from the newest registered
version's `conveyor.release` tag, the last drift check from its MLflow run, problems from
`tasks.ops.doctor`.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from mlflow.exceptions import MlflowException
from pydantic import BaseModel

from tasks.core.errors import ConveyorError
from tasks.core.settings import Settings
from tasks.core.spec import ModelSpec, SpecError, load_spec
from tasks.ops.doctor import checks
from tasks.registry import (
    alias_history,
    approval_state,
    known_specs,
    mlflow_store,
    model_registry,
    tracking,
)
from tasks.serving import replicas, triton_client, triton_server


class FleetError(ConveyorError):
    """The spec directory holds no model, or a spec in it does not load."""


def spec_paths(settings: Settings) -> list[Path]:
    """One YAML per model, in name order; a directory without any is an error that says where."""
    directory = settings.spec_dir
    paths = sorted(directory.glob("*.yaml")) if directory.is_dir() else []
    if not paths:
        raise FleetError(
            f"no model specs in {directory}/: write one with `conveyor init --from DATA "
            "--target COLUMN`, or point CONVEYOR_SPEC_DIR at the fleet's directory"
        )
    return paths


def load_fleet(settings: Settings) -> list[tuple[Path, ModelSpec]]:
    """Every spec, loaded up front: one broken file stops a fleet command before any work."""
    loaded = []
    for path in spec_paths(settings):
        try:
            loaded.append((path, load_spec(path)))
        except SpecError as exc:
            raise FleetError(f"{path} does not load, so no model was touched: {exc}") from None
    names = [spec.name for _, spec in loaded]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise FleetError(
            f"two specs in {settings.spec_dir}/ name the same model ({', '.join(twice)}): a "
            "model name is its registry entry and its Triton name; rename one"
        )
    return loaded


def released_specs(settings: Settings) -> list[ModelSpec]:
    """Every registered model with a champion, described by its spec (the fleet's, else the one
    recorded with its release): what a restarted Triton must serve again."""
    registered = mlflow_store.client(settings).search_registered_models()
    released = sorted(m.name for m in registered if model_registry.CHAMPION in (m.aliases or {}))
    return [known_specs.spec_of(settings, name) for name in released]


class AliasState(BaseModel):
    version: int
    since: datetime | None = None
    by: str = ""
    why: str = ""


class ModelStatus(BaseModel):
    model: str
    task: str = ""  # binary, multiclass or regression, from the spec ("" without one)
    champion: AliasState | None = None
    previous: AliasState | None = None
    served: list[int] | None = None  # READY versions on Triton; None: Triton not reachable
    last_release: str = ""  # "v3 promoted", "v4 failed: …"
    last_release_at: datetime | None = None
    drift_share: float | None = None
    drift_at: datetime | None = None
    approval_pending: int | None = None  # the challenger waiting for a decision
    problems: list[str] = []


def _alias(
    aliases: dict[str, int], moves: list[alias_history.AliasMove], alias: str
) -> AliasState | None:
    version = aliases.get(alias)
    if version is None:
        return None
    moves = [m for m in moves if m.alias == alias and m.to_version]
    last = moves[-1] if moves and moves[-1].to_version == version else None
    if last is None:
        return AliasState(version=version)
    return AliasState(version=version, since=last.at, by=last.actor, why=last.reason)


def _millis(value: int | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value / 1000, UTC)


def _served(settings: Settings, model: str) -> list[int] | None:
    if settings.embedded_triton and triton_server.status(settings) is None:
        return None
    # The first replica that answers: `conveyor doctor` compares them all.
    up = replicas.survey(settings).up
    try:
        return triton_client.loaded_versions(up[0].endpoint, model) if up else None
    except ConveyorError:
        return None


def model_status(settings: Settings, model: str, spec: ModelSpec | None) -> ModelStatus:
    status = _registry_status(settings, model, spec)
    status.task = spec.task.value if spec is not None else ""
    # Read whatever the registry holds: a first release killed before it registered anything
    # leaves a RUNNING run and files, and no registered model.
    status.problems = [p.line() for p in checks.model_problems(settings, model)]
    return status


def fleet_problems(settings: Settings) -> list[str]:
    """What is wrong with no one model: the embedded Triton down, a replica down, stray stubs,
    the edge's certificate near its end."""
    return [p.line() for p in checks.server_problems(settings)]


def _registry_status(settings: Settings, model: str, spec: ModelSpec | None) -> ModelStatus:
    client = mlflow_store.client(settings)
    try:
        # One read gives the aliases and the recent history (tags): no call per alias.
        registered = client.get_registered_model(model)
    except MlflowException as exc:
        if exc.error_code not in model_registry.NOT_FOUND:
            raise  # an outage is not a model that was never released
        return ModelStatus(model=model, served=_served(settings, model), last_release="never")
    aliases = {alias: int(v) for alias, v in registered.aliases.items()}
    moves = alias_history.recent(registered.tags)
    status = ModelStatus(
        model=model,
        champion=_alias(aliases, moves, model_registry.CHAMPION),
        previous=_alias(aliases, moves, model_registry.PREVIOUS),
        served=_served(settings, model),
    )
    versions = client.search_model_versions(f"name='{model}'")
    if versions:
        newest = max(versions, key=lambda v: int(v.version))
        outcome = newest.tags.get(model_registry.TAG_RELEASE) or "in progress (or its process died)"
        status.last_release = f"v{newest.version} {outcome}"[:120]
        status.last_release_at = _millis(newest.creation_timestamp)
    challenger = aliases.get(model_registry.CHALLENGER)
    if challenger is not None:
        # A suspended release tagged it pending; a `conveyor run` paused in place has not
        # tagged it yet, which its spec's approval policy explains.
        tag = approval_state.TAG_APPROVAL
        decided = model_registry.version_tag(settings, model, challenger, tag)
        asks = spec is not None and spec.promotion.requires_approval
        if decided == approval_state.PENDING or (decided is None and asks):
            status.approval_pending = challenger
    experiment = client.get_experiment_by_name(model)
    if experiment is not None:
        drift_runs = client.search_runs(
            [experiment.experiment_id],
            # Finished ones only: a check killed mid-way leaves a RUNNING run without its report.
            filter_string=f"attributes.run_name = '{tracking.DRIFT_RUN}' "
            "and attributes.status = 'FINISHED'",
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
        if drift_runs:
            status.drift_share = drift_runs[0].data.metrics.get(tracking.DRIFT_SHARE_METRIC)
            status.drift_at = _millis(drift_runs[0].info.start_time)
    return status


def fleet_status(settings: Settings) -> list[ModelStatus]:
    """Every model with a spec, and every model the registry or repository knows without one."""
    specs = {spec.name: spec for _, spec in load_fleet(settings)}
    names = sorted(set(specs) | set(checks.fleet(settings)))
    return [model_status(settings, name, specs.get(name)) for name in names]


COLUMNS = (
    "model",
    "task",
    "champion",
    "previous",
    "Triton READY",
    "last release",
    "drift",
    "problems",
)


def _when(at: datetime | None) -> str:
    return f"{at:%Y-%m-%d %H:%M}" if at else ""


def _alias_cell(state: AliasState | None) -> str:
    if state is None:
        return "-"
    told = f" {_when(state.since)} by {state.by}: {state.why}" if state.since else ""
    return f"v{state.version}{told}"


def row(status: ModelStatus) -> tuple[str, ...]:
    """The table's cells for one model, as the CLI and the Prefect artifact show them."""
    served = "Triton down" if status.served is None else ", ".join(map(str, status.served)) or "-"
    release = status.last_release + (
        f" ({_when(status.last_release_at)})" if status.last_release_at else ""
    )
    if status.approval_pending is not None:
        release += f"; v{status.approval_pending} awaiting approval"
    drift = (
        "never checked"
        if status.drift_share is None
        else f"{status.drift_share:.2f} ({_when(status.drift_at)})"
    )
    problems = "; ".join(status.problems) or "none"
    return (
        status.model,
        status.task or "-",
        _alias_cell(status.champion),
        _alias_cell(status.previous),
        served,
        release,
        drift,
        problems,
    )


# The short table: every cell a few characters, so it fits a laptop's pane and an 80-column
# terminal; the long fields follow per model (`details`).
SHORT_COLUMNS = ("model", "task", "champion", "previous", "served", "drift", "problems")


def short_cells(status: ModelStatus) -> tuple[str, ...]:
    champion, previous = status.champion, status.previous
    return (
        status.model,
        status.task or "-",
        f"v{champion.version}" if champion else "-",
        f"v{previous.version}" if previous else "-",
        "down" if status.served is None else ", ".join(map(str, status.served)) or "-",
        "-" if status.drift_share is None else f"{status.drift_share:.2f}",
        str(len(status.problems)) if status.problems else "none",  # each one below
    )


def details(status: ModelStatus) -> list[str]:
    """A model's long fields, as list items (markdown, and plain text alike)."""
    _, _, champion_cell, previous_cell, _, release, drift, problems = row(status)
    return [
        f"last release {release}",
        f"champion {champion_cell}; previous {previous_cell}",
        f"drift checked: {drift}",
        *([f"problems: {problems}"] if status.problems else []),
    ]


def markdown(statuses: list[ModelStatus]) -> str:
    """The status as a Prefect artifact: the short table, then each model's long fields."""
    lines = ["| " + " | ".join(SHORT_COLUMNS) + " |", "|" + "---|" * len(SHORT_COLUMNS)]
    listed = []
    for status in statuses:
        model, *cells = short_cells(status)
        lines.append("| " + " | ".join([f"**{model}**", *cells]) + " |")
        first, *rest = details(status)
        listed += [f"- **{model}**: {first}", *(f"  - {line}" for line in rest)]
    return "\n".join([*lines, "", *listed])
