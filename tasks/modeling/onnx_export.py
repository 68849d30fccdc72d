"""The release's ONNX step: convert the registered model (`tasks.modeling.onnx`), prove it
answers as the model does, and keep it with the version's MLflow run.

The proof covers every holdout row the release judged the model on: the holdout file, or, with
`compute: dask`, every holdout row of every piece, measured on the cluster piece by piece
(`distributed.holdout_parity`) and judged once, merged. A conversion that goes wrong on a few
rows of a large table is caught there, not in production."""

from __future__ import annotations

from prefect import get_run_logger, task
from pydantic import BaseModel

from tasks.core.attempts import RESUMABLE
from tasks.core.settings import Settings
from tasks.core.spec import ModelSpec
from tasks.datasets.data import DatasetRef, PartitionedSplit, load_dataset, to_features, to_target
from tasks.modeling import distributed
from tasks.modeling.kinds import kind_of
from tasks.modeling.onnx import (
    ParityReport,
    convert,
    input_bounds,
    measure_parity,
    require_parity,
    sha256,
)
from tasks.registry import model_registry, tracking


class OnnxArtifact(BaseModel):
    """The exported model, stored with its MLflow run, and the proof that it matches sklearn."""

    uri: str
    sha256: str
    parity: ParityReport


def export_onnx(
    settings: Settings,
    spec: ModelSpec,
    ref: model_registry.ModelRef,
    holdout: DatasetRef,
    partitioned: PartitionedSplit | None = None,
) -> OnnxArtifact:
    """`partitioned`: the release's split on a cluster (`holdout` is then its sample), whose
    every holdout row the proof covers."""
    model = tracking.load_model(settings, ref.model_uri)
    data = convert(model, spec.n_features, input_bounds(spec))
    frame = load_dataset(holdout.uri)
    # A regression's tolerance is relative to the target's spread: the sample's is the table's
    # to within sampling error, and one number every piece is judged by.
    scale = kind_of(spec).parity_scale(to_target(frame, spec))
    tolerance = spec.smoke.tolerance
    if partitioned is None:
        parity = measure_parity(model, data, to_features(frame, spec), tolerance, scale)
    else:
        parity = distributed.holdout_parity(
            spec, settings, partitioned, model, data, tolerance, scale
        )
    require_parity(parity)
    digest = sha256(data)
    uri = tracking.log_run_artifact(settings, ref.run_id, tracking.ONNX_ARTIFACT, data)
    model_registry.tag_version(settings, ref, {model_registry.TAG_ONNX: digest})
    return OnnxArtifact(uri=uri, sha256=digest, parity=parity)


@task(name="export-onnx", cache_policy=RESUMABLE, persist_result=True)
def export_onnx_task(
    settings: Settings,
    spec: ModelSpec,
    ref: model_registry.ModelRef,
    holdout: DatasetRef,
    partitioned: PartitionedSplit | None = None,
) -> OnnxArtifact:
    result = export_onnx(settings, spec, ref, holdout, partitioned)
    get_run_logger().info(
        "ONNX %s… matches sklearn on %d holdout rows: max |Δ| %.2e (%.2e of scale %.4g), "
        "%d label flips",
        result.sha256[:12],
        result.parity.rows,
        result.parity.max_abs_diff,
        result.parity.relative_diff,
        result.parity.scale,
        result.parity.label_flips,
    )
    return result
