"""The model card: a markdown document per released version, in MLflow and as a Prefect artifact."""

from __future__ import annotations

from prefect import task
from prefect.artifacts import create_markdown_artifact
from pydantic import BaseModel

from tasks.core.settings import Settings
from tasks.core.spec import ModelSpec
from tasks.modeling import fairness, training
from tasks.modeling.evaluation import ValidationReport
from tasks.modeling.onnx_export import OnnxArtifact
from tasks.modeling.scores import Metrics, ModelMetrics, MulticlassMetrics
from tasks.modeling.training import TrainResult
from tasks.registry import model_registry, tracking, ui_links
from tasks.registry.approval import ApprovalDecision
from tasks.serving.smoke import SmokeReport

CARD_ARTIFACT = "model_card.md"


class ReleaseEvidence(BaseModel):
    """What a release's gates found about the version it promoted: what its card is made of."""

    ref: model_registry.ModelRef
    train: TrainResult
    validation: ValidationReport
    onnx: OnnxArtifact
    smoke: SmokeReport
    approval: ApprovalDecision | None
    promotion: model_registry.PromotionResult


def _data_lines(spec: ModelSpec, train: TrainResult) -> list[str]:
    """Which rows each step read: with `compute: dask`, the whole table for the refit and the
    holdout metrics, samples for what needs rows in one process."""
    t, h = train.train, train.holdout
    rows = train.lineage.get(tracking.TAG_ROWS)
    if rows is None:
        return [
            f"- Training data: {_where(t.uri)}, {t.rows:,} {spec.subjects}, sha256 `{t.sha256}`",
            f"- Holdout: {_where(h.uri)}, {h.rows:,} {spec.subjects}, sha256 `{h.sha256}`",
        ]
    return [
        f"- Computed on a Dask cluster (`compute: dask`) from the partitioned table's manifest "
        f"{_where(train.lineage[tracking.TAG_MANIFEST])}, sha256 "
        f"`{train.lineage[tracking.TAG_SOURCE]}`: {rows}.",
        f"- The refit read every training row, and the holdout metrics and the ONNX parity every "
        f"holdout row; the search's trials and the operating threshold read a seeded sample of "
        f"{t.rows:,} training {spec.subjects} ({_where(t.uri)}), and the champion comparison, "
        f"segments, model gates, explanations and plots a seeded sample of {h.rows:,} holdout "
        f"{spec.subjects} ({_where(h.uri)}): their intervals are those of that sample's size.",
    ]


def answer_sentence(spec: ModelSpec, m: Metrics) -> str:
    """What the served answer means for one of the model's subjects, in the model's task."""
    one, target = spec.subject, spec.target.name
    if isinstance(m, ModelMetrics):
        positive = spec.class_names[1]
        return (
            f"A {one} is predicted `{target} = {positive}` when its probability "
            f"(`probabilities[:, 1]`) is at least **{m.threshold:.4f}**: the operating point "
            f"({spec.evaluation.operating_point}), chosen on {training.THRESHOLD_SOURCE}, so the "
            "holdout had no part in it and the figures above are what to expect of unseen "
            f"{spec.subjects}. Triton's `label` output is the argmax (0.5), not this decision."
        )
    if isinstance(m, MulticlassMetrics):
        recall = ", ".join(f"`{k}` {v:.3f}" for k, v in m.per_class_recall.items())
        return (
            f"Each {one} gets the likeliest `{target}` of {spec.class_names}: Triton's `label` "
            "output is its index (the model config's `class_names` parameter lists them), and "
            f"`probabilities` one probability per class in that order. Recall by class: {recall}."
        )
    return (
        f"Each {one} gets a predicted `{target}` in its own units (Triton's `prediction` "
        f"output); errors above are in those units (the holdout target's standard deviation "
        f"is {m.target_std:.4g}; |error| p{m.quantile * 100:.0f} is {m.abs_error_quantile:.4g})."
    )


def _where(uri: str, place: str = "the state directory's `data/`") -> str:
    """A snapshot's place as a reader of the card needs it: an object store URI as it is, a local
    file by its name in the state directory (a worker's absolute path means nothing to a
    reviewer, and the sha256 beside it is what identifies the data)."""
    if "://" in uri and not uri.startswith("file://"):
        return f"`{uri}`"
    return f"`{uri.rstrip('/').rsplit('/', 1)[-1]}` ({place})"


def _source(spec: ModelSpec) -> str:
    """Where the data came from, without a worker's paths: a generator by name, an object
    store by URI, a local file or folder by its name."""
    source = spec.data.source
    if source.startswith("synthetic:"):
        return (
            f"`{source}`, conveyor's seeded generator (seed {spec.data.seed}, "
            f"drift knob {spec.data.drift})"
        )
    return _where(source, "a file or folder on the worker")


def review_sections(spec: ModelSpec, evidence: ReleaseEvidence) -> list[str]:
    """Performance by segment, the fairness gates and global importance: what a model-risk
    reviewer reads beside the holdout metrics."""
    lines = ["## Performance by segment and fairness"]
    report = evidence.validation.fairness
    if report is None:
        lines += ["No segments in the spec (`segments.columns`): not assessed.", ""]
    else:
        lines += [
            f"{report.confidence:.0%} intervals from {report.resamples} seeded resamples of the "
            f"holdout; segments under {report.min_rows} rows are reported, not judged. "
            f"Gates: {'passed' if report.passed else 'FAILED'}.",
            "",
            *fairness.segment_table(report.segments),
            "",
        ]
        for d in report.disparities:
            limit = "no limit" if d.limit is None else f"limit {'≥' if d.kind == 'min' else '≤'} "
            limit += "" if d.limit is None else f"{d.limit}"
            versus = f"; change vs champion {d.versus_champion.text()}" if d.versus_champion else ""
            lines.append(
                f"- {d.figure} across `{d.column}`: {d.estimate.text()} ({limit}; "
                f"{d.between}){versus}"
            )
        lines.append("")
    importance = evidence.train.importance
    lines.append("## Explanations")
    if importance is None:
        lines += ["Global importance was not computed for this version.", ""]
    else:
        reasons = spec.explanations.reasons
        lines += [
            f"Global importance: mean |contribution| over {importance.rows} holdout rows, "
            f"{importance.method}, in {importance.link} units. Reason codes per {spec.subject}: "
            f"`conveyor explain {spec.name} --rows FILE --version {evidence.ref.version}`"
            + (f" (reason texts for {len(reasons)} features in the spec)." if reasons else "."),
            "",
            *importance.markdown(),
            "",
        ]
    return lines


def render(settings: Settings, spec: ModelSpec, evidence: ReleaseEvidence) -> str:
    ref, train, validation = evidence.ref, evidence.train, evidence.validation
    onnx, smoke, approval = evidence.onnx, evidence.smoke, evidence.approval
    promotion = evidence.promotion
    m = train.metrics
    lineage = train.lineage
    comparison = (
        validation.comparison.summary() if validation.comparison else "first release: no champion"
    )
    if approval is None:
        approved = "not required by the spec"
    else:
        approved = (
            f"{approval.approver} at {approval.decided_at:%Y-%m-%d %H:%M UTC}: {approval.reason}"
        )
    features = ", ".join(f"`{f.name}` ({f.type.value})" for f in spec.features)
    version_url = ui_links.model_version_url(settings, ref.name, ref.version)
    return "\n".join(
        [
            f"# Model card: {spec.name} version {ref.version}",
            "",
            " ".join(spec.description.split()),
            "",
            f"One row is one {spec.subject}; the model answers for each {spec.subject} it is "
            f"sent ({spec.task.value} task, target `{spec.target.name}`).",
            "",
            "## Decision",
            f"- Promoted to champion; previous champion: {promotion.previous or 'none'}",
            f"- Validation: {validation.verdict}",
            f"- Comparison with the champion: {comparison}",
            f"- Approval: {approved}",
            "",
            "## Data",
            *_data_lines(spec, train),
            f"- Source: {_source(spec)}",
            f"- Features, in served order: {features}",
            "",
            "## Holdout metrics",
            f"On {m.rows:,} holdout {spec.subjects} the version never saw:",
            "",
            "| " + " | ".join(m.scalars()) + " |",
            "|" + "---|" * len(m.scalars()),
            "| " + " | ".join(f"{v:.4g}" for v in m.scalars().values()) + " |",
            "",
            answer_sentence(spec, m),
            "",
            *[line for gate in validation.gates for line in (*gate.lines, "")],
            *review_sections(spec, evidence),
            "## Serving",
            f"- ONNX sha256 `{onnx.sha256}`; parity with the trained model: "
            f"{onnx.parity.summary()}",
            f"- Smoke test: {smoke.rows} {spec.subjects} answered as offline over HTTP and gRPC, "
            f"single-client p50 {smoke.p50_ms:.2f} ms, p99 {smoke.p99_ms:.2f} ms; under load "
            f"({smoke.load.concurrency} clients) {smoke.load.throughput_rps:.0f} req/s, "
            f"p99 {smoke.load.p99_ms:.2f} ms (budget {smoke.p99_budget_ms} ms), "
            f"{smoke.load.errors} errors",
            "",
            "## Lineage",
            f"- Estimator: {spec.estimator.family} {spec.estimator.params}",
            f"- MLflow run {ui_links.link(ref.run_id, ui_links.run_url(settings, ref.run_id))}, "
            f"model version {ui_links.link(f'v{ref.version}', version_url)} (`{ref.model_uri}`)",
            f"- Code version `{lineage.get(tracking.TAG_CODE)}`, spec sha256 "
            f"`{lineage.get(tracking.TAG_SPEC)}`, "
            f"Prefect flow run `{lineage.get(tracking.TAG_FLOW_RUN)}`",
            "",
            "## Drift baseline",
            f"- Reference for the nightly drift check: the training data above "
            f"(sha256 `{train.train.sha256}`); dataset drift when more than "
            f"{spec.drift.share:.0%} of the features drift.",
        ]
    )


@task(name="model-card")
def model_card_task(settings: Settings, spec: ModelSpec, evidence: ReleaseEvidence) -> str:
    """Log the card with the version's run; returns its `runs:/` URI."""
    ref = evidence.ref
    card = render(settings, spec, evidence)
    uri = tracking.log_run_artifact(settings, ref.run_id, CARD_ARTIFACT, card.encode())
    model_registry.tag_version(settings, ref, {"conveyor.model_card": uri})
    create_markdown_artifact(
        key=f"model-card-{spec.name}",
        markdown=card,
        description=f"Model card of {spec.name} v{ref.version}: decision, data, metrics, "
        "fairness, explanations, serving, lineage",
    )
    return uri
