"""A flow run's metrics: its outcome observed and pushed when it ends (`tasks.core.pushgateway`),
and the registry's champion pushed after a release or rollback."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from prefect.exceptions import Pause

from tasks.core.errors import ConveyorError
from tasks.core.pushgateway import Observation, _logger, push_champion, push_observation
from tasks.core.settings import Settings


@contextmanager
def observed(
    settings: Settings, model: str, flow: str, gates: tuple[str, ...] = ()
) -> Iterator[Observation]:
    """Record a flow run's outcome and push everything when it ends, failure included."""
    obs = Observation(model=model, flow=flow)
    try:
        yield obs
    except Pause:
        obs.outcome = "suspended"  # not an outcome yet: the run carries on once answered
        raise
    except BaseException as exc:
        obs.failed(exc, gates)
        raise
    finally:
        push_observation(settings, obs)
        # A retrain moves the champion through its release subflow, which pushes it.
        if flow in {"release", "rollback"}:
            _push_current_champion(settings, model)


def _push_current_champion(settings: Settings, model: str) -> None:
    from mlflow.exceptions import MlflowException

    from tasks.registry import model_registry

    try:
        version = model_registry.alias_version(settings, model, model_registry.CHAMPION)
    except (ConveyorError, MlflowException) as exc:
        _logger().warning("champion not pushed: %s", exc)
        return
    push_champion(settings, model, version)
