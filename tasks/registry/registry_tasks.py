"""The Prefect tasks of the registry: thin wrappers of `model_registry`'s plain functions, kept
apart so that reading the registry (`conveyor status`, `doctor`) never imports Prefect."""

from __future__ import annotations

from prefect import get_run_logger, task

from tasks.core import events
from tasks.core.settings import Settings
from tasks.registry.model_registry import (
    CHALLENGER,
    ModelRef,
    PromotionResult,
    promote,
    register_challenger,
    retire_candidate,
)
from tasks.registry.registry_state import RegistryState, read_registry_state
from tasks.registry.tracking import CandidateRun


@task(name="read-registry-state")
def read_registry_state_task(settings: Settings, model: str) -> RegistryState:
    return read_registry_state(settings, model)


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
