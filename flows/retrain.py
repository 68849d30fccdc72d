"""retrain_flow: what a `conveyor.drift.detected` or `conveyor.performance.degraded` event runs:
the release flow on fresh data (every gate still applies), unless the model was retrained within
its cooldown; one at a time (the deployment's concurrency limit), whichever event asked."""

from __future__ import annotations

from prefect import flow
from pydantic import BaseModel

from flows.release import release_flow
from tasks.core.orchestration import subflows_without_heartbeats
from tasks.core.settings import Settings
from tasks.core.spec import DEFAULT_SPEC
from tasks.modeling.unchanged import UnchangedModel
from tasks.ops import metrics
from tasks.ops.retrain import RetrainClaim, claim_retrain_task
from tasks.registry import known_specs


class RetrainResult(BaseModel):
    claim: RetrainClaim
    version: int | None  # the released version; None when skipped or unchanged
    unchanged: UnchangedModel | None = None  # the source data had not changed since the champion


@flow(name="retrain")
def retrain_flow(
    spec_path: str = str(DEFAULT_SPEC),
    drift_share: float = 0.0,
    report_uri: str = "",
    reason: str = "drift",
) -> RetrainResult:
    """Retrain the model described by `spec_path`. The rest is the event's, kept in the run's
    parameters for the record.

    Args:
        spec_path: The model: a model of the fleet by name, or a spec file's path.
        drift_share: The drifted share of features the drift event reported (0 otherwise).
        report_uri: The drift report, or the outcome check's MLflow run, that asked for it.
        reason: Why: drift, or performance degraded.
    """
    settings = Settings()
    spec_path, spec = known_specs.resolve(settings, spec_path)  # a fleet name, from the form
    with metrics.observed(settings, spec.name, "retrain") as obs:
        claim = claim_retrain_task(settings, spec)
        obs.gauge(
            "conveyor_retrain_skipped", "1 if the last retrain was skipped.", not claim.granted
        )
        if not claim.granted:
            return RetrainResult(claim=claim, version=None)
        with subflows_without_heartbeats():
            released = release_flow(spec_path)
        if isinstance(released, UnchangedModel):
            return RetrainResult(claim=claim, version=None, unchanged=released)
        return RetrainResult(claim=claim, version=released.version)
