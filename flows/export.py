"""triton_export_flow: ONNX with its parity proof → published repository version → measured
serving configuration → loaded as the candidate (not yet reachable by production callers)."""

from __future__ import annotations

from prefect import flow
from pydantic import BaseModel

from tasks.core.settings import Settings
from tasks.core.spec import ModelSpec
from tasks.datasets.data import DatasetRef, PartitionedSplit
from tasks.modeling.onnx_export import OnnxArtifact, export_onnx_task
from tasks.registry.model_registry import ModelRef
from tasks.serving.rollout import PublishResult, ServingState, publish_task, serve_candidate_task
from tasks.serving.tuning import TuningResult, tune_task


class ExportResult(BaseModel):
    onnx: OnnxArtifact
    published: PublishResult
    tuning: TuningResult
    serving: ServingState


@flow(name="triton-export")
def triton_export_flow(
    spec: ModelSpec,
    settings: Settings,
    ref: ModelRef,
    holdout: DatasetRef,
    partitioned: PartitionedSplit | None = None,
) -> ExportResult:
    """`partitioned`: a cluster release's split, whose every holdout row the parity covers."""
    onnx = export_onnx_task(settings, spec, ref, holdout, partitioned)
    published = publish_task(settings, spec, ref, onnx)
    tuning = tune_task(settings, spec, ref, holdout)
    serving = serve_candidate_task(settings, spec, ref, tuning.chosen)
    return ExportResult(onnx=onnx, published=published, tuning=tuning, serving=serving)
