"""score_flow: batch scoring of a partitioned Parquet table with a registered version (the
champion by default), piece by piece on a Dask cluster or in turn; deployable, so the monthly
run (a credit team's provisioning) is a schedule on the `score` deployment."""

from __future__ import annotations

from prefect import flow

from tasks.core.cluster import Compute
from tasks.core.progress import stage
from tasks.core.settings import Settings
from tasks.ops.scoring import ScoreReport, score_task


@flow(name="score")
def score_flow(
    model: str,
    input: str,
    output: str,
    version: int | None = None,
    compute: Compute = "local",
    skip_bad: bool = False,
    keep: list[str] | None = None,
) -> ScoreReport:
    """Score every piece of `input` into `output`.

    Args:
        model: The registered model (a model of the fleet by name).
        input: A Parquet file, or a folder or `s3://` prefix of them (`date=` partitions kept).
        output: The folder or `s3://` prefix the scores go to, one piece per input piece.
        version: The registered version; default the champion.
        compute: `local` (this worker, piece after piece) or `dask` (the cluster at
            CONVEYOR_DASK_ADDRESS, or a local one conveyor starts).
        skip_bad: Score the pieces that keep the data contract and name the others, instead
            of refusing them all.
        keep: Columns copied beside the scores (a join key); default the outcomes' `key`.
    """
    with stage(f"score {model}") as step:
        report = score_task(Settings(), model, input, output, version, compute, skip_bad, keep)
        step.figure = f"{report.rows:,} rows in {report.scored} pieces"
    return report
