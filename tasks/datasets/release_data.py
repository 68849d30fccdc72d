"""The release's data stage as Prefect tasks: the snapshot, its data contract and its split, each
done where the spec's `compute` says: in this process (`tasks.datasets.data`,
`tasks.datasets.quality`), or on a Dask cluster over a partitioned table
(`tasks.datasets.partitioned`, `tasks.datasets.partition_contract`). Either way the results are
the same references: a `DatasetRef`, a `DataQualityReport`, a `SplitResult`."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from tasks.core.attempts import RESUMABLE
from tasks.core.settings import Settings
from tasks.core.spec import ModelSpec
from tasks.datasets import data, partition_contract, partitioned
from tasks.datasets.data import DatasetRef, SplitResult
from tasks.datasets.quality import DataQualityReport, check_frame, require_quality
from tasks.registry import tracking


@task(name="snapshot-data", cache_policy=RESUMABLE, persist_result=True)
def snapshot_task(spec: ModelSpec, settings: Settings) -> DatasetRef:
    on_cluster = spec.compute == "dask"
    ref = (partitioned.snapshot if on_cluster else data.snapshot)(spec, settings)
    get_run_logger().info(
        "%s: %d rows, %d positives, sha256 %s…%s",
        spec.data.source,
        ref.rows,
        ref.positives,
        ref.sha256[:12],
        " (the manifest of its pieces)" if on_cluster else "",
    )
    return ref


@task(name="validate-data", cache_policy=RESUMABLE, persist_result=True)
def validate_data_task(settings: Settings, spec: ModelSpec, ref: DatasetRef) -> DataQualityReport:
    """Run the contract; the report goes to a Prefect artifact and MLflow whatever the outcome."""
    if spec.compute == "dask":
        report = partition_contract.check_table(spec, settings, ref)
    else:
        report = check_frame(data.load_dataset(ref.uri), spec, ref.sha256)
    create_markdown_artifact(
        key=f"data-validation-{spec.name}",
        markdown=report.markdown(),
        description=f"Data contract of {spec.name}: the snapshot's rows, columns, ranges and "
        "label balance against the spec",
    )
    tracking.log_data_validation(settings, spec.name, ref, report.passed, report.markdown())
    logger = get_run_logger()
    for issue in report.warnings:
        logger.warning("data warning: %s", issue.line())
    if report.passed:
        logger.info("data contract passed: %d rows, %d checks", report.rows, report.checks)
    # A partitioned table is named by its source; the manifest is conveyor's own file.
    require_quality(report, (ref.read_from or ref.uri) if spec.compute == "dask" else ref.uri)
    return report


@task(name="split-data", cache_policy=RESUMABLE, persist_result=True)
def split_task(spec: ModelSpec, settings: Settings, ref: DatasetRef) -> SplitResult:
    if spec.compute == "dask":
        return partitioned.split(spec, settings, ref)
    return data.split_dataset(spec, settings, ref)
