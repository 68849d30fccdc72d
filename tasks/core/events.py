"""Prefect events conveyor emits, all about one resource: `conveyor.model.<name>`."""

from __future__ import annotations

DRIFT_DETECTED = "conveyor.drift.detected"
PERFORMANCE_DEGRADED = "conveyor.performance.degraded"
MODEL_PROMOTED = "conveyor.model.promoted"
RELEASE_FAILED = "conveyor.release.failed"
APPROVED = "conveyor.model.approved"
REJECTED = "conveyor.model.rejected"


def resource_id(model: str) -> str:
    return f"conveyor.model.{model}"


def emit(event: str, model: str, payload: dict[str, str | int | float | None]) -> None:
    from prefect.events import emit_event  # imported here: reading a model's state needs no Prefect

    emit_event(
        event=event,
        resource={"prefect.resource.id": resource_id(model), "prefect.resource.name": model},
        payload=payload,
    )
