"""Retrain guard: a cooldown between retrains of one model, recorded in the registry so every
worker sees it. (One retrain at a time is the `retrain` deployment's concurrency limit.)"""

from __future__ import annotations

from datetime import UTC, datetime

from mlflow.exceptions import MlflowException
from prefect import get_run_logger, task
from prefect.runtime import flow_run
from pydantic import BaseModel

from tasks.core.settings import Settings
from tasks.core.spec import ModelSpec
from tasks.registry import mlflow_store

TAG_LAST_RETRAIN = "conveyor.last_retrain"


class RetrainClaim(BaseModel):
    model: str
    granted: bool
    last_at: datetime | None
    cooldown_s: int
    reason: str


def claim_retrain(settings: Settings, spec: ModelSpec, now: datetime | None = None) -> RetrainClaim:
    """Grant a retrain unless the last one started less than `drift.cooldown_s` ago; a granted
    claim is recorded before the retrain starts, so a retrain that fails still counts."""
    now = now or datetime.now(UTC)
    client = mlflow_store.client(settings)
    try:
        tags = client.get_registered_model(spec.name).tags
    except MlflowException:
        # Never released: claim it anyway, so a retrain storm on a new model is throttled too.
        client.create_registered_model(spec.name)
        tags = {}
    last = datetime.fromisoformat(tags[TAG_LAST_RETRAIN]) if TAG_LAST_RETRAIN in tags else None
    cooldown = spec.drift.cooldown_s
    if last is not None and (now - last).total_seconds() < cooldown:
        return RetrainClaim(
            model=spec.name,
            granted=False,
            last_at=last,
            cooldown_s=cooldown,
            reason=f"last retrain started {(now - last).total_seconds():.0f} s ago, inside the "
            f"{cooldown} s cooldown (drift.cooldown_s)",
        )
    client.set_registered_model_tag(spec.name, TAG_LAST_RETRAIN, now.isoformat())
    client.set_registered_model_tag(
        spec.name, f"{TAG_LAST_RETRAIN}_flow_run", str(flow_run.id or "")
    )
    return RetrainClaim(
        model=spec.name, granted=True, last_at=last, cooldown_s=cooldown, reason="granted"
    )


@task(name="claim-retrain")
def claim_retrain_task(settings: Settings, spec: ModelSpec) -> RetrainClaim:
    claim = claim_retrain(settings, spec)
    if not claim.granted:
        get_run_logger().warning("retrain of %s skipped: %s", spec.name, claim.reason)
    return claim
