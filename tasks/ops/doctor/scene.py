"""One model as `conveyor doctor` sees it, read once per examination: its registry state and
aliases, whether their files verify, the replicas that answer and what each serves, whether a
release holds the model or waits for its reviewer. Every model check reads the scene; none
reads the servers again."""

from __future__ import annotations

from dataclasses import dataclass, field

from tasks.core import lease
from tasks.core.settings import Settings
from tasks.core.storage import StorageError, Store, open_store, verify_dir
from tasks.registry import approval_state, mlflow_store, model_registry
from tasks.registry.approval_state import Awaiting
from tasks.registry.registry_state import RegistryState, read_registry_state
from tasks.serving import replicas, triton_client, triton_server


def serving_replicas(settings: Settings) -> list[replicas.Replica]:
    """The replicas that answer; none when the embedded server is down (it is not started here:
    the doctor examines before it repairs)."""
    if settings.embedded_triton and triton_server.status(settings) is None:
        return []
    return replicas.survey(settings).up


def registered_versions(settings: Settings, model: str) -> list[int]:
    found = mlflow_store.client(settings).search_model_versions(f"name='{model}'")
    return sorted(int(v.version) for v in found)


@dataclass
class ModelScene:
    settings: Settings
    model: str
    store: Store
    state: RegistryState
    aliases: dict[str, int | None]
    # Champion's and previous's files: None where they verify, else why not.
    unverified: dict[tuple[str, int], StorageError]
    up: list[replicas.Replica]
    served_by: dict[str, list[int]]  # replica name → versions of the model it serves
    busy: bool  # a release holds the model's lease (and the caller does not)
    waiting: Awaiting | None  # a release that paused for its reviewer
    resumable: bool  # ... and can still resume: its challenger and candidate are live
    registered: list[int] = field(default_factory=list)  # read only when a replica answers

    @property
    def aliased(self) -> set[int]:
        """Versions champion and previous name: what may answer production traffic."""
        names = (model_registry.CHAMPION, model_registry.PREVIOUS)
        return {v for a in names if (v := self.aliases[a]) is not None}

    @property
    def suspended(self) -> int | None:
        """The version of a release waiting for its reviewer that can still resume."""
        return self.waiting.version if self.waiting is not None and self.resumable else None

    @property
    def live(self) -> set[int]:
        """Versions a live alias names, and a waiting release's version."""
        return self.aliased | ({self.suspended} if self.suspended is not None else set())

    @property
    def servable(self) -> list[tuple[str, int]]:
        """(alias, version) of champion and previous whose files verify."""
        names = (model_registry.CHAMPION, model_registry.PREVIOUS)
        pairs = [(a, v) for a in names if (v := self.aliases[a]) is not None]
        return sorted(p for p in pairs if p not in self.unverified)


def look(
    settings: Settings, model: str, holding_lease: bool = False, state: RegistryState | None = None
) -> ModelScene:
    """`holding_lease`: the caller holds the model's lease, so no live release owns anything.
    `state`: the model's registry state as the caller read it (read here when not given)."""
    store = open_store(settings.repository)
    state = state or read_registry_state(settings, model)
    names = (model_registry.CHAMPION, model_registry.PREVIOUS, model_registry.CHALLENGER)
    aliases = {alias: state.version(alias) for alias in names}
    unverified = {}
    for alias in (model_registry.CHAMPION, model_registry.PREVIOUS):
        if (version := aliases[alias]) is None:
            continue
        try:
            verify_dir(store, f"{model}/{version}")
        except StorageError as exc:
            unverified[(alias, version)] = exc
    up = serving_replicas(settings)
    waiting = approval_state.awaiting_in(state)
    return ModelScene(
        settings=settings,
        model=model,
        store=store,
        state=state,
        aliases=aliases,
        unverified=unverified,
        up=up,
        served_by={r.name: triton_client.loaded_versions(r.endpoint, model) for r in up},
        busy=not holding_lease and lease.is_held(settings, model),
        waiting=waiting,
        resumable=waiting is not None and approval_state.can_still_resume(waiting),
        registered=registered_versions(settings, model) if up else [],
    )
