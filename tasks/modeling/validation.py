"""The model gate: thresholds, then the challenger against the champion on the same holdout."""

from __future__ import annotations

import functools

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from tasks.core.errors import ConveyorError
from tasks.core.gates import MODEL_GATES, set_gates
from tasks.core.gates.gate import GateInputs
from tasks.core.settings import Settings
from tasks.core.spec import ModelSpec
from tasks.datasets.data import load_dataset, to_features, to_target
from tasks.modeling import disparity, fairness
from tasks.modeling.evaluation import (
    ValidationReport,
    compare,
    resample_weights,
    threshold_failures,
)
from tasks.modeling.kinds import kind_of
from tasks.modeling.training import TrainResult
from tasks.registry import model_registry, tracking


def validate(settings: Settings, spec: ModelSpec, train: TrainResult) -> ValidationReport:
    """Judge the candidate; with no champion yet, the thresholds (and the fairness gates) alone
    decide."""
    kind = kind_of(spec)
    comparison, champion_scores, champion_threshold = None, None, None
    champion = model_registry.alias_version(settings, spec.name, model_registry.CHAMPION)
    metrics_only = ValidationReport(
        metrics=train.metrics,
        thresholds=spec.thresholds,
        threshold_failures=threshold_failures(train.metrics, spec.thresholds),
        comparison=None,
        champion=champion,
    )
    gates = set_gates(spec.gates)
    if champion is None and not spec.segments.columns and not gates:
        return metrics_only  # the training step's holdout metrics decide: nothing to re-score
    holdout = load_dataset(train.holdout.uri)
    features, target = to_features(holdout, spec), to_target(holdout, spec)
    challenger_scores = kind.scores(
        tracking.load_model(settings, train.candidate.model_uri), features
    )
    if champion is not None:
        ref = model_registry.version_ref(settings, spec.name, champion)
        trained_on = tracking.run_param(settings, ref.run_id, "features")
        if trained_on != ",".join(spec.feature_names):
            raise ConveyorError(
                f"champion v{champion} of {spec.name} was trained on features [{trained_on}], "
                f"the challenger on [{','.join(spec.feature_names)}]: they cannot be compared on "
                "one holdout. Register the new feature set under a new model name."
            )
        tags = tracking.run_tags(settings, ref.run_id)
        task = tags.get(tracking.TAG_TASK, "binary")
        if task != spec.task.value:
            raise ConveyorError(
                f"champion v{champion} of {spec.name} is a {task} model, the challenger a "
                f"{spec.task.value} one: they cannot be compared. Register the new task under a "
                "new model name."
            )
        champion_scores = kind.scores(tracking.load_model(settings, ref.model_uri), features)
        if tracking.TAG_THRESHOLD in tags:
            champion_threshold = float(tags[tracking.TAG_THRESHOLD])
        comparison = compare(spec, target, challenger_scores, champion_scores, champion)
    report = None
    if spec.segments.columns:
        report = fairness.evaluate(
            spec,
            holdout,
            target,
            disparity.predictions(
                spec, challenger_scores, getattr(train.metrics, "threshold", None)
            ),
            None
            if champion_scores is None
            else disparity.predictions(spec, champion_scores, champion_threshold),
        )
    inputs = {
        "task": spec.task,
        "target": target,
        "challenger": challenger_scores,
        "champion": champion_scores,
        "champion_version": champion,
        "resample": functools.partial(resample_weights, spec, target),
        "confidence": spec.validation.confidence,
    }
    judged = [
        MODEL_GATES[name].evaluate(GateInputs(settings=section, **inputs))
        for name, section in gates.items()
    ]
    return metrics_only.model_copy(
        update={"comparison": comparison, "fairness": report, "gates": judged}
    )


@task(name="validate-candidate")
def validate_task(settings: Settings, spec: ModelSpec, train: TrainResult) -> ValidationReport:
    report = validate(settings, spec, train)
    metrics = report.fairness.mlflow_metrics() if report.fairness else {}
    for gate in report.gates:
        metrics |= gate.metrics
    tracking.log_to_run(settings, train.run_id, metrics=metrics or None, tags=report.tags())
    if report.fairness is not None:
        tracking.log_run_artifact(
            settings,
            train.run_id,
            fairness.REPORT_ARTIFACT,
            report.fairness.model_dump_json(indent=1).encode(),
        )
    create_markdown_artifact(
        key=f"validation-{spec.name}",
        markdown=report.markdown(),
        description=f"Model gate of {spec.name}: thresholds, champion comparison"
        + (", performance by segment and fairness" if report.fairness else "")
        + "".join(f", {gate.gate}" for gate in report.gates),
    )
    logger = get_run_logger()
    if report.comparison is not None:
        logger.info(report.comparison.summary())
    (logger.info if report.passed else logger.warning)("validation %s", report.verdict)
    return report
