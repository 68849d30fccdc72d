"""drift_check_flow: the newest batch against the champion's training data; emits
`conveyor.drift.detected` when the drifted-column share crosses the spec's threshold.

fleet_drift_flow: the nightly run over every model of the fleet, one drift-check subflow and one
outcome-check subflow (`flows.outcomes`: where the spec has outcomes, or a binary model's
estimate) per model, a few models at a time; one model's failure does not stop the others,
and the run ends Failed naming every model that failed, after a fleet status table (artifact
`fleet-status`)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from pydantic import BaseModel

from flows.outcomes import outcome_check_flow
from tasks.core.errors import ConveyorError
from tasks.core.model_task import Task
from tasks.core.progress import stage
from tasks.core.settings import Settings
from tasks.core.spec import DEFAULT_SPEC, load_spec
from tasks.ops import fleet, metrics
from tasks.ops.drift import DriftReport, check_drift_task, emit_drift_task, record_drift
from tasks.registry import known_specs, model_registry, ui_links

# Models checked at once: each check scores both samples through onnxruntime and builds an
# Evidently report (a core and a few hundred MB each); more would only queue on the CPU.
FLEET_CONCURRENCY = 2


@flow(name="drift-check")
def drift_check_flow(spec_path: str = str(DEFAULT_SPEC)) -> DriftReport:
    """Check the model described by `spec_path` for data and prediction drift."""
    settings = Settings()
    spec_path, spec = known_specs.resolve(settings, spec_path)  # a fleet name, from the form
    with (
        metrics.observed(settings, spec.name, "drift-check") as obs,
        stage(f"drift {spec.name}") as step,
    ):
        report = check_drift_task(settings, spec)
        record_drift(obs, report)
        emit_drift_task(report, spec_path)
        verdict = "DRIFT, event emitted" if report.drifted else "no drift"
        step.figure = f"{verdict}; share {report.drift_share:.2f} of {len(report.columns)}"
    return report


class ModelDrift(BaseModel):
    model: str
    spec_path: str
    outcome: Literal["drift", "no drift", "no champion", "failed"]
    drift_share: float | None = None
    detail: str = ""  # the report's URI, or what failed
    # The outcome check beside it: its one line, or what failed ("" when not run).
    performance: str = ""
    performance_failed: bool = False

    def line(self, detail: str | None = None) -> str:
        """One line; `detail` in place of the raw one (the report as a link)."""
        share = "" if self.drift_share is None else f" (share {self.drift_share:.2f})"
        performance = f"; outcomes: {self.performance}" if self.performance else ""
        detail = self.detail if detail is None else detail
        said = f"; {detail}" if detail else ""
        return f"{self.model}: {self.outcome}{share}{said}{performance}"

    def markdown(self, settings: Settings) -> str:
        if not self.detail.startswith(ui_links.RUNS_URI):
            return self.line()
        return self.line(ui_links.artifact_link(settings, "drift report", self.detail))


class FleetDriftReport(BaseModel):
    models: list[ModelDrift]

    @property
    def failed(self) -> list[ModelDrift]:
        return [m for m in self.models if m.outcome == "failed" or m.performance_failed]


class FleetDriftError(ConveyorError):
    """At least one model's drift check failed (the others ran)."""


@task(name="check-model-drift")
def check_model_task(spec_path: str) -> ModelDrift:
    """One model's drift check, then its outcome check, each as its own subflow run; a failure
    is this model's result, so the fleet run goes on and reports it (the subflow run itself
    ends Failed, with its logs)."""
    settings = Settings()
    spec = load_spec(spec_path)
    if model_registry.alias_version(settings, spec.name, model_registry.CHAMPION) is None:
        return ModelDrift(model=spec.name, spec_path=spec_path, outcome="no champion")
    try:
        report = drift_check_flow(spec_path=spec_path)
    except Exception as exc:  # reported, and the fleet run fails at its end naming it
        get_run_logger().error("%s: drift check failed: %s", spec.name, exc)
        return ModelDrift(
            model=spec.name,
            spec_path=spec_path,
            outcome="failed",
            detail=f"{type(exc).__name__}: {str(exc)[:300]}",
        )
    result = ModelDrift(
        model=spec.name,
        spec_path=spec_path,
        outcome="drift" if report.drifted else "no drift",
        drift_share=report.drift_share,
        detail=report.report_uri,
    )
    if not spec.outcomes.configured and spec.task is not Task.binary:
        return result  # no labels, and no probabilities to estimate from
    try:
        performance = outcome_check_flow(spec_path=spec_path).line()
    except Exception as exc:  # reported like a failed drift check
        get_run_logger().error("%s: outcome check failed: %s", spec.name, exc)
        return result.model_copy(
            update={
                "performance": f"failed: {type(exc).__name__}: {str(exc)[:300]}",
                "performance_failed": True,
            }
        )
    return result.model_copy(update={"performance": performance})


@flow(name="fleet-drift-check")
def fleet_drift_flow(
    spec_dir: str | None = None, max_concurrent: int = FLEET_CONCURRENCY
) -> FleetDriftReport:
    """Check every model of the fleet; each drifted model emits its own event, so retraining
    stays per model.

    Args:
        spec_dir: The fleet's spec directory (default: CONVEYOR_SPEC_DIR, deployments/models/).
        max_concurrent: Models checked at a time.
    """
    settings = Settings()
    if spec_dir:
        settings = settings.model_copy(update={"spec_dir": Path(spec_dir)})
    paths = [str(path) for path, _ in fleet.load_fleet(settings)]
    results: list[ModelDrift] = []
    for start in range(0, len(paths), max(1, max_concurrent)):
        batch = [check_model_task.submit(p) for p in paths[start : start + max_concurrent]]
        results += [future.result() for future in batch]
    report = FleetDriftReport(models=results)
    lines = "\n".join(f"- {m.markdown(settings)}" for m in results)
    create_markdown_artifact(
        key="fleet-status",
        markdown=f"# Nightly drift and outcome checks: {len(results)} model"
        f"{'s' if len(results) != 1 else ''}\n\n{lines}\n\n"
        "## Fleet status\n\n" + fleet.markdown(fleet.fleet_status(settings)),
        description="The nightly checks of every model (a drifted or degraded one starts its "
        "retrain), then what production holds: aliases, what Triton serves, problems",
    )
    if report.failed:
        raise FleetDriftError(
            f"the drift or outcome check failed for {', '.join(m.model for m in report.failed)} "
            f"(the other "
            f"{len(results) - len(report.failed)} models were checked): "
            + "; ".join(m.line() for m in report.failed)
        )
    return report
