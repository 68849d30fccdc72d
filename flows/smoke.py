"""smoke_test_flow: the served version answers correctly and fast enough, or the flow fails."""

from __future__ import annotations

from prefect import flow

from tasks.core.settings import Settings
from tasks.core.spec import ModelSpec
from tasks.datasets.data import DatasetRef
from tasks.registry.model_registry import ModelRef
from tasks.serving.smoke import SmokeReport, require_passed, smoke_test_task


@flow(name="smoke-test")
def smoke_test_flow(
    spec: ModelSpec,
    settings: Settings,
    ref: ModelRef,
    holdout: DatasetRef,
    served_as: str | None = None,
) -> SmokeReport:
    """`served_as`: the Triton model name to test; default the release's candidate."""
    report = smoke_test_task(settings, spec, ref, holdout, served_as)
    require_passed(report)
    return report
