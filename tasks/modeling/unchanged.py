"""Whether a release would rebuild the champion: the same source data, spec and code.

Every retrigger of a schedule (or a second `conveyor run`) on unchanged inputs used to register
a version identical to the champion, and each went through the gates, the swap and the alias
history again. The champion's lineage tags say what it was built from; a release whose snapshot,
spec fingerprint and code version all equal them stops before training. `force` releases anyway
(a rebuild after an incident, a deliberate re-run of the gates).
"""

from __future__ import annotations

from prefect import get_run_logger, task
from pydantic import BaseModel

from tasks.core.settings import Settings
from tasks.core.spec import ModelSpec
from tasks.datasets.data import DatasetRef
from tasks.modeling.training import spec_fingerprint
from tasks.registry import tracking
from tasks.registry.registry_state import RegistryState, read_registry_state


class Fingerprint(BaseModel):
    """What a model version is built from."""

    source_sha256: str
    spec_sha256: str
    code_version: str


class UnchangedModel(BaseModel):
    """A release that stopped because the champion already is this model."""

    model: str
    version: int  # the champion, which stays
    fingerprint: Fingerprint

    def sentence(self) -> str:
        return (
            f"champion v{self.version} already is this model: same data "
            f"({self.fingerprint.source_sha256[:12]}…), spec and code "
            f"({self.fingerprint.code_version[:12]}); nothing was registered. Release it "
            "anyway with `conveyor run --force` (the deployment's `force` parameter)."
        )


def fingerprint(spec: ModelSpec, data: DatasetRef) -> Fingerprint:
    return Fingerprint(
        source_sha256=data.sha256,
        spec_sha256=spec_fingerprint(spec),
        code_version=tracking.code_version(),
    )


def champion_fingerprint(state: RegistryState) -> tuple[int, Fingerprint] | None:
    """The champion's version and what it was built from; None without a champion, or for one
    trained before conveyor recorded its source (it cannot be shown to be the same)."""
    if state.champion is None:
        return None
    version, tags = state.champion.version, state.champion.tags
    keys = (tracking.TAG_SOURCE, tracking.TAG_SPEC, tracking.TAG_CODE)
    if not all(tags.get(k) for k in keys):
        return None
    return version, Fingerprint(
        source_sha256=tags[tracking.TAG_SOURCE],
        spec_sha256=tags[tracking.TAG_SPEC],
        code_version=tags[tracking.TAG_CODE],
    )


def unchanged(
    settings: Settings, spec: ModelSpec, data: DatasetRef, state: RegistryState | None = None
) -> UnchangedModel | None:
    """The champion, when this release would rebuild it exactly. Code of unknown version (no
    git checkout) is never taken for the same code. `state`: the registry as the release read
    it (read here when not given)."""
    current = fingerprint(spec, data)
    champion = champion_fingerprint(state or read_registry_state(settings, spec.name))
    if champion is None or current.code_version == tracking.UNKNOWN_CODE:
        return None
    version, built_from = champion
    if built_from != current:
        return None
    return UnchangedModel(model=spec.name, version=version, fingerprint=current)


@task(name="compare-with-champion")
def unchanged_task(
    settings: Settings, spec: ModelSpec, data: DatasetRef, state: RegistryState
) -> UnchangedModel | None:
    same = unchanged(settings, spec, data, state)
    if same is not None:
        get_run_logger().info(same.sentence())
    return same
