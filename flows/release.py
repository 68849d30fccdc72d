"""release_flow: train → validate → register → export → smoke → swap in → promote, or withdraw."""

from __future__ import annotations

from contextlib import ExitStack

from prefect import flow
from prefect.artifacts import create_markdown_artifact
from pydantic import BaseModel

from flows.export import ExportResult, triton_export_flow
from flows.registration import registration_flow
from flows.smoke import smoke_test_flow
from flows.training import training_flow
from flows.validation import validation_flow
from tasks.core import lease, pushgateway
from tasks.core.attempts import attempt_results, prune_results_task
from tasks.core.errors import ConveyorError, ServiceUnavailableError
from tasks.core.gates import MODEL_GATES, set_gates
from tasks.core.orchestration import subflows_without_heartbeats
from tasks.core.progress import stage
from tasks.core.settings import Settings
from tasks.core.spec import DEFAULT_SPEC, ModelSpec
from tasks.datasets.data import DatasetRef
from tasks.datasets.release_data import snapshot_task, validate_data_task
from tasks.modeling.evaluation import ValidationReport
from tasks.modeling.scores import Metrics
from tasks.modeling.search import task_runner
from tasks.modeling.unchanged import UnchangedModel, unchanged_task
from tasks.ops import metrics
from tasks.ops.crashed_runs import mark_crashed_task
from tasks.ops.doctor.repairs import repair_leftovers_task
from tasks.ops.model_card import ReleaseEvidence, model_card_task
from tasks.ops.resume import resume_task
from tasks.registry import known_specs, ui_links
from tasks.registry.approval import (
    ApprovalDecision,
    ensure_approvable,
    record_decision_task,
    refuse_while_awaiting,
    request_approval,
)
from tasks.registry.model_registry import PromotionResult, default_actor
from tasks.registry.registry_state import RegistryState
from tasks.registry.registry_tasks import (
    promote_task,
    read_registry_state_task,
    retire_candidate_task,
)
from tasks.registry.retention import RetentionReport, retire_old_versions_task
from tasks.serving import replicas
from tasks.serving.canary import CanaryReport, canary_task
from tasks.serving.rollout import live_set, withdraw_task
from tasks.serving.smoke import SmokeReport, record_smoke
from tasks.serving.swap import SwapReport, record_swap, swap_task


class ReleaseWithdrawnError(ConveyorError):
    """A release failed past registration for a reason outside conveyor's gates, and was undone."""


class ReleaseResult(BaseModel):
    model: str
    version: int
    run_id: str
    metrics: Metrics
    train: DatasetRef
    holdout: DatasetRef
    validation: ValidationReport
    export: ExportResult
    smoke: SmokeReport
    approval: ApprovalDecision | None
    canary: CanaryReport | None = None
    swap: SwapReport
    promotion: PromotionResult
    model_card: str
    retention: RetentionReport
    # The run's experiment, so the artifact's links need no MLflow read after the promotion.
    experiment_id: str | None = None

    def served_by(self, settings: Settings) -> str:
        """Where callers reach it: the edge, when there is one, in front of every replica that
        serves it; else the one Triton, over HTTP and gRPC."""
        serving = self.export.serving
        edge, scheme = settings.edge_http_url, "https" if settings.edge_ca_file else "http"
        if edge:
            return f"the edge {edge if '//' in edge else f'{scheme}://{edge}'} → {serving.where()}"
        if len(serving.replicas) > 1:
            return serving.where()
        return f"Triton http://{serving.endpoint.http}, gRPC {serving.endpoint.grpc}"

    def markdown(self, settings: Settings) -> str:
        """The release at a glance, with links to MLflow where a reader goes next. Prefect's UI
        does not wrap a table's cells: the table holds short facts (it fits a laptop's window,
        test_ui), the sentences behind them follow as a list."""
        m, o, c = self.metrics, self.export.onnx, self.canary
        version = ui_links.link(
            f"v{self.version}", ui_links.model_version_url(settings, self.model, self.version)
        )
        url = ui_links.run_url(settings, self.run_id, self.experiment_id)
        run = ui_links.link(self.run_id[:12] + "…", url)
        previous = f"v{self.promotion.previous}" if self.promotion.previous else "none"
        card = ui_links.artifact_link(settings, "model card", self.model_card, self.experiment_id)
        parity = "within its bound" if o.parity.passed else "over its bound"
        serving = self.export.serving
        where = f"{len(serving.replicas)} replicas" if len(serving.replicas) > 1 else "Triton"
        edge = "the edge → " if settings.edge_http_url else ""
        chosen = self.export.tuning.chosen
        rows = [
            ("model version", f"{version} ({m.task}), previous champion {previous}"),
            ("holdout", m.headline()),
            ("validation", self.validation.verdict),
            ("model card", card),
            ("MLflow run", run),
            ("ONNX", f"sha256 `{o.sha256[:16]}…`, parity {parity}"),
            ("served by", f"{edge}{where}; smoke p99 {self.smoke.p99_ms:.2f} ms"),
            *(
                [
                    (
                        "canary",
                        f"{c.share:.0%} for {c.baked_s:.0f} s, {c.candidate.requests} requests",
                    )
                ]
                if c
                else []
            ),
            ("swap", f"{self.swap.before} → {self.swap.after}, {len(self.swap.errors)} errors"),
            ("repository", f"keeps versions {self.retention.kept}"),
        ]
        details = [
            ("ONNX parity", o.parity.summary()),
            (
                "Served by",
                f"{self.served_by(settings)}; smoke test p50 {self.smoke.p50_ms:.2f} ms / p99 "
                f"{self.smoke.p99_ms:.2f} ms; max_queue_delay "
                f"{chosen.max_queue_delay_microseconds} µs, {chosen.instance_count} instance(s)",
            ),
            *([("Canary", c.summary())] if c else []),
            ("Swap", self.swap.summary()),
            ("Repository", self.retention.summary()),
        ]
        return "\n".join(
            [
                f"# {self.model} {version} is champion",
                "",
                "| what | outcome |",
                "|---|---|",
                *(f"| {what} | {_cell(text)} |" for what, text in rows),
                "",
                *(f"- **{what}**: {text}" for what, text in details),
            ]
        )


def _cell(text: str) -> str:
    """A table cell's text: a `|` (as in "|error|") would end the cell."""
    return text.replace("|", "\\|")


@flow(name="release")
def release_flow(
    spec_path: str = str(DEFAULT_SPEC),
    resume_from: str | None = None,
    wait: bool = True,
    force: bool = False,
) -> ReleaseResult | UnchangedModel:
    """Release the model described by `spec_path`. A challenger the gate rejects is never
    registered; the candidate is smoke-tested under its own Triton name, so callers keep getting
    the champion until the swap. On any failure after registration (export, smoke test, approval,
    swap) the new version is withdrawn from Triton and the repository, and `champion` does not
    move. Finished steps of an interrupted release are reused by `resume_from` (see
    `tasks.ops.resume`); the steps that act on shared state always run again.

    One release per model at a time: the model's lease is held throughout (`tasks.core.lease`).
    Holding it, the release first clears what a crashed release left
    (`tasks.ops.doctor.repairs.repair_leftovers`). When the source data, the spec and the code
    equal the champion's, nothing is trained or registered and the result is `UnchangedModel`
    (`tasks.modeling.unchanged`).

    Args:
        spec_path: The model's spec (a file in deployments/models/, relative to the checkout).
        resume_from: The flow run id of an interrupted release of the same spec, to continue.
        wait: If another flow holds the model, wait for it (bounded by
            CONVEYOR_LEASE_TIMEOUT_S); false fails at once naming the holder.
        force: Release even when data, spec and code equal the champion's.
    """
    settings = Settings()
    spec_path, spec = known_specs.resolve(settings, spec_path)  # a fleet name, from the form
    with ExitStack() as held:
        with stage("model lease") as waiting:
            # Waiting for another release of the model is a stage an operator wants to see.
            held.enter_context(lease.model_lease(settings, spec.name, "release", wait=wait))
            waiting.figure = f"held for {spec.name}"
        mark_crashed_task()
        with metrics.observed(settings, spec.name, "release", pushgateway.GATES) as obs:
            with stage("state check") as checked:
                if resume_from:
                    # A resume finishes the release as it was asked: forced stays forced.
                    force = resume_task(resume_from, spec_path).force or force
                # A fleet with replicas down stops here, before anything is trained or registered:
                # a release would otherwise leave them on the old champion (unless the operator
                # said how many may serve while the others are down).
                # (The embedded server is not surveyed: the repair below restarts it.)
                up = (
                    replicas.quorum(settings, f"the release of {spec.name}")
                    if settings.triton_replicas
                    else []
                )
                # Read once, under the lease: nothing else moves the aliases until it is let go.
                state = read_registry_state_task(settings, spec.name)
                refuse_while_awaiting(state)
                found = repair_leftovers_task(
                    settings, spec, resuming=bool(resume_from), state=state
                )
                fixed = sum(p.repaired for p in found)
                if fixed:
                    state = read_registry_state_task(settings, spec.name)  # the repair moved it
                checked.figure = (
                    f"{fixed} leftover(s) repaired, {len(found) - fixed} not (see the log)"
                    if found
                    else "clean"
                ) + (f"; {len(up)} replicas up" if len(up) > 1 else "")
            with subflows_without_heartbeats():
                try:
                    result = _release(settings, spec, state, obs, force)
                except Exception as exc:
                    if getattr(exc, "gate", None):
                        # A gate's refusal is a verdict, not an interruption: a resume would
                        # reach it again, so the attempt's step results go now.
                        prune_results_task(settings)
                    raise
    markdown = (
        f"# {spec.name}: unchanged\n\n{result.sentence()}"
        if isinstance(result, UnchangedModel)
        else result.markdown(settings)
    )
    create_markdown_artifact(
        key=f"release-{spec.name}",
        markdown=markdown,
        description=f"The release of {spec.name}: what was promoted, its evidence, where it is "
        "served (or why nothing changed)",
    )
    prune_results_task(settings)
    return result


def _release(
    settings: Settings,
    spec: ModelSpec,
    state: RegistryState,
    obs: pushgateway.Observation,
    force: bool,
) -> ReleaseResult | UnchangedModel:
    pushgateway.record_budget(obs, spec)
    ensure_approvable(spec)
    runner = task_runner(settings.task_runner, spec.search.parallel, settings.dask_address)
    # Steps that a resumed release reuses keep their results where a later process finds them.
    results = attempt_results(settings)
    with stage("data") as step:
        data = snapshot_task.with_options(result_storage=results)(spec, settings)
        same = None if force else unchanged_task(settings, spec, data, state)
        step.figure = f"{data.rows:,} rows, sha256 {data.sha256[:12]}…" + (
            f"; unchanged since v{same.version}" if same else ""
        )
        if same is None:
            # The data contract is the data stage's verdict: a refused snapshot fails here,
            # not in the training stage after a ✓ for the data.
            validate_data_task.with_options(result_storage=results)(settings, spec, data)
    if same is not None:
        obs.unchanged()
        return same
    # What the clean-up puts back if the registry itself fails later.
    before = live_set(settings, spec, state)
    with stage("training") as step:
        train = training_flow.with_options(task_runner=runner, result_storage=results)(
            spec, settings, data, validated=True
        )
        m = train.metrics
        step.figure = m.headline()
    with stage("validation") as step:
        validation = validation_flow(spec, settings, train)
        step.figure = validation.verdict[:70]
    with stage("registration") as step:
        ref = registration_flow(spec, settings, train, validation)
        step.figure = f"v{ref.version} is challenger"
    obs.registered(ref.version, train.metrics.scalars(), spec.task.value)
    try:
        with stage("ONNX export") as step:
            export = triton_export_flow.with_options(result_storage=results)(
                spec, settings, ref, train.holdout, train.partitioned
            )
            parity = export.onnx.parity
            step.figure = f"parity max |Δ| {parity.max_abs_diff:.1e}, {parity.label_flips} flips"
        with stage("smoke test") as step:
            smoke = smoke_test_flow(spec, settings, ref, train.holdout)
            step.figure = (
                f"p99 {smoke.p99_ms:.2f} ms; {smoke.load.throughput_rps:.0f} req/s at "
                f"{smoke.load.concurrency} clients"
            )
        record_smoke(obs, smoke)
        approval = None
        if spec.promotion.requires_approval:
            with stage("approval") as step:
                approval = record_decision_task(
                    settings, ref, request_approval(settings, spec, ref)
                )
                step.figure = f"{approval.approver}: {approval.reason}"[:70]
        canary = None
        if spec.promotion.rollout == "canary" and before.versions:
            # A first release has no champion to judge against, and no callers to protect.
            with stage("canary") as step:
                canary = canary_task(settings, spec, ref, train.holdout)
                step.figure = (
                    f"{canary.candidate.requests} requests, {canary.candidate.error_rate:.1%} "
                    f"failed, {canary.baked_s:.0f} s"
                )
        # Triton first: the version answers callers before the registry calls it champion.
        with stage("swap") as step:
            swap = swap_task(settings, spec, ref, train.holdout)
            step.figure = f"served {swap.before} → {swap.after}, {len(swap.errors)} errors"
        record_swap(obs, swap)
        with stage("promotion") as step:
            promotion = promote_task(
                settings,
                ref,
                f"approved: {approval.reason}" if approval else "release passed every gate",
                approval.approver if approval else default_actor(),
            )
            previous = f"v{promotion.previous}" if promotion.previous else "none"
            step.figure = f"champion v{promotion.champion}, previous {previous}"
    except Exception as exc:
        # Alias first: it is the cheap step, and a Triton that cannot be reached must not leave
        # `challenger` pointing at a version that failed.
        uncleared = ""
        try:
            retire_candidate_task(settings, ref, f"{type(exc).__name__}: {exc}")
        except Exception as registry_down:  # said in the error below; Triton still goes back
            uncleared = (
                f" The registry did not answer the clean-up either ({str(registry_down)[:200]}):"
                f" `challenger` may still name v{ref.version}; run `conveyor doctor "
                f"{spec.name} --repair` once it is back."
            )
        withdrawn = withdraw_task(settings, spec, ref, before)
        verdict = isinstance(exc, ConveyorError) and not isinstance(exc, ServiceUnavailableError)
        if verdict and not uncleared and not withdrawn.files_kept:
            raise
        # A component failed under the release (Triton killed, a server gone): the clean-up
        # above put production back, so this is an expected failure, said in one paragraph
        # with what is served now; the traceback stays in the flow run's logs.
        moved = uncleared or " The aliases did not move."
        on = f" on {withdrawn.state.where()}" if len(withdrawn.state.replicas) > 1 else ""
        if withdrawn.unreachable:
            on += f" ({', '.join(withdrawn.unreachable)} did not answer)"
        if withdrawn.files_kept:
            moved += (
                f" Its files stay in the repository ({withdrawn.files_kept}): `conveyor doctor "
                f"{spec.name} --repair` removes them once it answers."
            )
        raise ReleaseWithdrawnError(
            f"the release of {spec.name} v{ref.version} failed ({type(exc).__name__}: "
            f"{str(exc)[:300]}) and was withdrawn: Triton serves {spec.name} "
            f"{withdrawn.state.versions or 'nothing yet'}{on}.{moved} Fix the cause "
            f"and run again; `conveyor doctor {spec.name}` checks the state."
        ) from exc
    with stage("model card") as step:
        evidence = ReleaseEvidence(
            ref=ref,
            train=train,
            validation=validation,
            onnx=export.onnx,
            smoke=smoke,
            approval=approval,
            promotion=promotion,
        )
        card = model_card_task(settings, spec, evidence)
        retention = retire_old_versions_task(settings, spec)
        step.figure = retention.summary()[:70]
    skipped = {"approval": approval is None, "canary": canary is None}
    skipped |= {name: name not in set_gates(spec.gates) for name in MODEL_GATES}  # not run
    for gate in pushgateway.GATES:
        if not skipped.get(gate, False):
            obs.gate(gate, True)
    return ReleaseResult(
        model=spec.name,
        version=ref.version,
        run_id=ref.run_id,
        metrics=train.metrics,
        train=train.train,
        holdout=train.holdout,
        validation=validation,
        export=export,
        smoke=smoke,
        approval=approval,
        canary=canary,
        swap=swap,
        promotion=promotion,
        model_card=card,
        retention=retention,
        experiment_id=train.candidate.experiment_id,
    )
