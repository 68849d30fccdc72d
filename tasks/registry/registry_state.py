"""A model's registry state, read once: which versions `champion`, `previous` and `challenger`
name, with their tags.

The guards a release runs before training (a pending approval, the leftovers of a crashed
release, the unchanged-model check, what the clean-up would put back) each used to ask MLflow
again which version is champion. A release reads this once it holds the model's lease (nothing
else moves the aliases then) and passes it down; a guard that changes the registry (a repair)
reads it again."""

from __future__ import annotations

from mlflow.exceptions import MlflowException
from pydantic import BaseModel

from tasks.core.settings import Settings
from tasks.registry.mlflow_store import client
from tasks.registry.model_registry import CHALLENGER, CHAMPION, NOT_FOUND, PREVIOUS


class AliasedVersion(BaseModel):
    version: int
    tags: dict[str, str]


class RegistryState(BaseModel):
    model: str
    champion: AliasedVersion | None = None
    previous: AliasedVersion | None = None
    challenger: AliasedVersion | None = None

    def version(self, alias: str) -> int | None:
        aliased: AliasedVersion | None = getattr(self, alias)
        return aliased.version if aliased else None

    def live(self) -> list[int]:
        """Champion and previous: what the registry says is served."""
        return sorted({v for v in (self.version(PREVIOUS), self.version(CHAMPION)) if v})


def read_registry_state(settings: Settings, model: str) -> RegistryState:
    """One read of the registered model (its aliases) and of the aliased versions' tags. A model
    not registered yet has no aliases."""
    mlflow_client = client(settings)
    try:
        aliases = {k: int(v) for k, v in mlflow_client.get_registered_model(model).aliases.items()}
    except MlflowException as exc:
        # MLflow's basic-auth app answers 403 for a model that does not exist yet (it finds no
        # permission for it): not registered, if the search agrees.
        absent = exc.error_code == "PERMISSION_DENIED" and not (
            mlflow_client.search_registered_models(filter_string=f"name = '{model}'")
        )
        if exc.error_code in NOT_FOUND or absent:
            return RegistryState(model=model)
        raise
    found: dict[int, AliasedVersion] = {}
    for version in set(aliases.values()):
        tags = mlflow_client.get_model_version(model, str(version)).tags
        found[version] = AliasedVersion(version=version, tags=dict(tags))
    return RegistryState(
        model=model,
        **{
            alias: found[aliases[alias]]
            for alias in (CHAMPION, PREVIOUS, CHALLENGER)
            if alias in aliases
        },
    )
