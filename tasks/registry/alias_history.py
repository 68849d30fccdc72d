"""Who moved which alias, when and why. MLflow keeps only the current aliases; conveyor records
every move as a registered-model tag next to them (shared by every worker that shares the
registry), and archives the oldest into a run's artifacts so the model's tags stay bounded.

The tags are a record for programs, under `mlflow.`: MLflow's UI lists a model's tags except
those (its own), so the model's page is not a column of JSON repeating the history its
description shows people, as a list (MLflow's UI draws markdown tables without borders or
padding: a table of moves read as one run-together line per move)."""

from __future__ import annotations

from datetime import datetime

from mlflow.exceptions import MlflowException
from pydantic import BaseModel

from tasks.core.logs import run_logger
from tasks.core.settings import Settings
from tasks.registry.mlflow_store import RegistryError, client
from tasks.registry.tracking import close_run, log_run_artifact, open_run, read_artifact

HISTORY_PREFIX = "mlflow.conveyor.history."
# Where moves were recorded before (shown by MLflow's UI): still read, and moved under
# HISTORY_PREFIX at the next move.
LEGACY_PREFIX = "conveyor.history."


class AliasMove(BaseModel):
    """One change of one alias; MLflow keeps only the current aliases, conveyor keeps these."""

    alias: str
    from_version: int | None
    to_version: int | None
    at: datetime
    actor: str
    reason: str
    flow_run_id: str | None = None


def record(settings: Settings, name: str, move: AliasMove) -> None:
    """Keep a move that has just been made (the alias is already where it says)."""
    key = f"{HISTORY_PREFIX}{move.at.strftime('%Y%m%dT%H%M%S.%fZ')}.{move.alias}"
    client(settings).set_registered_model_tag(name, key, move.model_dump_json())
    # One read of the history tags serves the migration and the compaction.
    compact(settings, name, _move_legacy_tags(settings, name, _history_tags(settings, name)))
    try:
        describe(settings, name)
    except MlflowException as exc:
        # The move is recorded (the tag above); the table is a view the next move rewrites,
        # and a promotion must not fail on it.
        run_logger(__name__).warning("%s: the alias history table was not rewritten: %s", name, exc)


# The registered model's page in the MLflow UI shows its description as markdown: the newest
# moves are written there as a list for people (the tags stay the record programs read). A
# description is a view: two workers writing at once can leave one move out of it until the
# next move rewrites it.
DESCRIBED_MOVES = 20
DESCRIPTION_HEADING = "**Alias history**, newest first"
# What a description written by an older conveyor starts its part with (replaced whole).
LEGACY_HEADINGS = ("#### Alias history (newest first; written by conveyor)",)


def _words(text: str) -> str:
    return " ".join(text.split())


def history_lines(name: str, moves: list[AliasMove]) -> list[str]:
    """The description's part: a heading, then one list item per move, newest first."""

    def version(v: int | None) -> str:
        return "none" if v is None else f"v{v}"

    def what(m: AliasMove) -> str:
        if m.to_version is None:
            return f"`{m.alias}` removed (was {version(m.from_version)})"
        return f"`{m.alias}` → v{m.to_version} (was {version(m.from_version)})"

    return [
        f"{DESCRIPTION_HEADING} (written by conveyor at every move; `conveyor history {name}` "
        "shows them all)",
        "",
        *(
            f"- **{m.at:%Y-%m-%d %H:%M} UTC** · {what(m)} · {_words(m.actor)} · {_words(m.reason)}"
            for m in reversed(moves)
        ),
    ]


def describe(settings: Settings, name: str) -> None:
    """Rewrite the model's description: what a person wrote above the heading stays, the table
    of the newest moves below it is conveyor's."""
    mlflow_client = client(settings)
    model = mlflow_client.get_registered_model(name)
    own = model.description or ""
    for heading in (DESCRIPTION_HEADING, *LEGACY_HEADINGS):
        own = own.split(heading)[0]
    shown = "\n".join(history_lines(name, recent(model.tags)[-DESCRIBED_MOVES:]))
    mlflow_client.update_registered_model(name, description=f"{own.rstrip()}\n\n{shown}".lstrip())


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
    return {k: v for k, v in tags.items() if k.startswith((HISTORY_PREFIX, LEGACY_PREFIX))}


def _move_legacy_tags(settings: Settings, name: str, tags: dict[str, str]) -> dict[str, str]:
    """Moves recorded under LEGACY_PREFIX, under HISTORY_PREFIX: written before deleted (an
    interruption between leaves a move twice, which `moves` reads once). Returns the history
    tags as they now are."""
    mlflow_client = client(settings)
    moved = {}
    for key, value in tags.items():
        if key.startswith(LEGACY_PREFIX):
            new = HISTORY_PREFIX + key.removeprefix(LEGACY_PREFIX)
            mlflow_client.set_registered_model_tag(name, new, value)
            mlflow_client.delete_registered_model_tag(name, key)
            key = new
        moved[key] = value
    return moved


def compact(settings: Settings, name: str, tags: dict[str, str] | None = None) -> int:
    """Archive the oldest moves once more than HISTORY_TAGS_KEPT + HISTORY_BATCH are tags; the
    archive is written before any tag is deleted, so a failure in between only duplicates moves
    (`moves` reads each once). `tags`: the history tags already read. Returns how many moves
    were archived."""
    tags = _history_tags(settings, name) if tags is None else tags
    if len(tags) <= HISTORY_TAGS_KEPT + HISTORY_BATCH:
        return 0
    oldest = sorted(tags, key=_when)[: len(tags) - HISTORY_TAGS_KEPT]
    lines = "".join(tags[k] + "\n" for k in oldest).encode()
    run = open_run(settings, name, HISTORY_RUN, {"conveyor.history_archive": "true"})
    try:
        first, last = (_when(k) for k in (oldest[0], oldest[-1]))
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
    unique = {m.model_dump_json(): m for m in map(AliasMove.model_validate_json, records)}
    return sorted(unique.values(), key=lambda m: m.at)


def _when(key: str) -> str:
    """A history tag's time and alias (`20261207T101608.175947Z.champion`), whatever prefix."""
    return key.removeprefix(HISTORY_PREFIX).removeprefix(LEGACY_PREFIX)


def recent(model_tags: dict[str, str]) -> list[AliasMove]:
    """The moves kept as tags, from a registered model's tags already read (oldest first)."""
    prefixes = (HISTORY_PREFIX, LEGACY_PREFIX)
    return _moves([v for k, v in model_tags.items() if k.startswith(prefixes)])


def moves(settings: Settings, name: str, archived: bool = True) -> list[AliasMove]:
    """Every move of the model's aliases, oldest first; `archived=False` reads only the recent
    ones kept as tags (always the newest HISTORY_TAGS_KEPT or more)."""
    records = list(_history_tags(settings, name).values())
    if archived:
        records += _archived_moves(settings, name)
    return _moves(records)
