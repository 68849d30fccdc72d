"""Rollback: champion back to `previous`, the bad version marked, as one plan then one move."""

from __future__ import annotations

from prefect import get_run_logger, task
from pydantic import BaseModel

from tasks.core import events
from tasks.core.settings import Settings
from tasks.registry.mlflow_store import RegistryError, client
from tasks.registry.model_registry import (
    CHAMPION,
    PREVIOUS,
    TAG_RELEASE,
    PromotionResult,
    alias_version,
    move_alias,
)


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
