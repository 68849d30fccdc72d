"""Retention: after a promotion the model repository keeps champion, previous and the newest
`retention.keep_last` versions; the files of older ones are deleted (local or S3). Their MLflow
versions stay, tagged `conveyor.retired`, so lineage and the model card remain; only serving
them again would need a new release."""

from __future__ import annotations

from datetime import UTC, datetime

from prefect import get_run_logger, task
from pydantic import BaseModel

from tasks.core.settings import Settings
from tasks.core.spec import ModelSpec
from tasks.core.storage import open_store, repository_versions
from tasks.registry import model_registry


class RetentionReport(BaseModel):
    model: str
    kept: list[int]
    removed: list[int]
    # Retention runs after the promotion: its failure is reported here and in the log (the
    # next release retries it), it does not undo a release that went live.
    error: str | None = None

    def summary(self) -> str:
        if self.error:
            return f"retention failed ({self.error[:120]}); the next release retries it"
        removed = f"; removed the files of {self.removed}" if self.removed else ""
        return f"keeps versions {self.kept}{removed}"


def kept_versions(
    present: list[int], champion: int | None, previous: int | None, keep_last: int
) -> set[int]:
    newest = sorted(present)[-keep_last:] if keep_last else []
    return {v for v in (champion, previous) if v is not None} | set(newest)


def retire_old_versions(settings: Settings, spec: ModelSpec) -> RetentionReport:
    """Delete the repository files of every version retention does not keep. Runs under the
    model's lease, after the promotion: nothing else is publishing or loading this model, and
    Triton serves only champion and previous, which are kept."""
    store = open_store(settings.repository)
    present = repository_versions(store, spec.name)
    champion = model_registry.alias_version(settings, spec.name, model_registry.CHAMPION)
    previous = model_registry.alias_version(settings, spec.name, model_registry.PREVIOUS)
    keep = kept_versions(present, champion, previous, spec.retention.keep_last)
    removed = []
    for version in sorted(set(present) - keep):
        # The tag first: a deletion that fails halfway leaves a version that says it is retired
        # (and is retried next time), never files that vanished without a word.
        reason = (
            f"{datetime.now(UTC):%Y-%m-%dT%H:%M:%SZ}: files removed from {settings.repository} "
            f"(retention keeps champion, previous and the newest {spec.retention.keep_last})"
        )
        model_registry.retire_version(settings, spec.name, version, reason)
        store.remove_dir(f"{spec.name}/{version}")
        removed.append(version)
    return RetentionReport(model=spec.name, kept=sorted(keep & set(present)), removed=removed)


@task(name="retire-old-versions")
def retire_old_versions_task(settings: Settings, spec: ModelSpec) -> RetentionReport:
    logger = get_run_logger()
    try:
        report = retire_old_versions(settings, spec)
    except Exception as exc:  # reported, not raised: the release it follows is live
        logger.warning("%s: retention failed, the next release retries it: %s", spec.name, exc)
        return RetentionReport(model=spec.name, kept=[], removed=[], error=str(exc)[:500])
    if report.removed:
        logger.info(
            "%s: repository keeps versions %s; removed the files of %s (MLflow versions tagged %s)",
            spec.name,
            report.kept,
            report.removed,
            model_registry.TAG_RETIRED,
        )
    return report
