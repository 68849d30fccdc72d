"""The human approval gate: a typed Prefect pause, its decision recorded on the model version.

A release run by a worker (a deployment run) *suspends*: its process exits, so the worker's slot
is free for as long as the reviewer takes (up to a day), and a worker runs the flow again once
it is answered; that run reuses the finished steps (`tasks.ops.resume`), smoke-tests the candidate
again and gets the answer at once. While it waits, the version is tagged `conveyor.approval:
pending` with the waiting flow run, so `conveyor doctor`, a second release and `conveyor status`
know the challenger is not a leftover. A `conveyor run` (no worker to run it again) pauses: its
process waits, as before.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from uuid import UUID

from prefect import get_run_logger, task
from prefect.client.orchestration import get_client
from prefect.exceptions import FlowPauseTimeout, ObjectNotFound
from prefect.flow_runs import pause_flow_run, resume_flow_run, suspend_flow_run
from prefect.input import RunInput
from prefect.runtime import deployment, flow_run
from prefect.settings import PREFECT_API_URL
from pydantic import BaseModel, Field

from tasks.core import events, lease
from tasks.core.errors import ConveyorError
from tasks.core.settings import Settings
from tasks.core.spec import ModelSpec
from tasks.registry import model_registry
from tasks.registry.approval_state import (
    PENDING,
    TAG_APPROVAL,
    TAG_WAITING_RUN,
    TAG_WAITING_UNTIL,
    awaiting_in,
    can_still_resume,
)
from tasks.registry.registry_state import RegistryState

POLL_SECONDS = 2


class ApprovalError(ConveyorError):
    """Approval could not be asked for, or was not given."""

    gate = "approval"


class ApprovalInput(RunInput):
    """The form a reviewer fills in (Prefect UI "Resume", or `conveyor approve`)."""

    approve: bool = Field(default=False, description="Promote this version to champion?")
    approver: str = Field(min_length=1, description="Who decides (name or e-mail).")
    reason: str = Field(min_length=1, description="Why: ticket, review notes, risk sign-off.")


class ApprovalDecision(BaseModel):
    approved: bool
    approver: str
    reason: str
    decided_at: datetime
    timed_out: bool = False


def ensure_approvable(spec: ModelSpec) -> None:
    """Approval needs a Prefect server another process can reach; fail before any work is done."""
    if spec.promotion.requires_approval and not PREFECT_API_URL.value():
        raise ApprovalError(
            f"{spec.name} requires approval, which needs a Prefect server a reviewer can reach: "
            "start one (`prefect server start`) and set PREFECT_API_URL, or set "
            "promotion.requires_approval: false in the spec"
        )


def refuse_while_awaiting(state: RegistryState) -> None:
    """A release must not replace the challenger of one that waits for its reviewer (it would
    resume onto another version); the run that is itself resuming passes."""
    waiting = awaiting_in(state)
    if waiting is None or waiting.flow_run_id == str(flow_run.id):
        return
    if can_still_resume(waiting):
        raise lease.ModelBusyError(
            f"{waiting.describe()}: answer it first (`conveyor approve {waiting.flow_run_id} "
            "--approver NAME --reason TEXT`, or --reject), or let it time out; a second release "
            "now would replace the version its reviewer is looking at"
        )


def _suspends() -> bool:
    # Only a deployment's run has a worker to run it again once answered.
    return deployment.id is not None


def _wait_in_place(spec: ModelSpec, version: int) -> ApprovalDecision:
    try:
        answer = pause_flow_run(
            wait_for_input=ApprovalInput.with_initial_data(
                description=f"Promote {spec.name} version {version} to champion?",
                approve=False,
            ),
            timeout=spec.promotion.approval_timeout_s,
            poll_interval=POLL_SECONDS,
        )
    except FlowPauseTimeout:
        return ApprovalDecision(
            approved=False,
            approver="(nobody)",
            reason=f"no decision within {spec.promotion.approval_timeout_s} s",
            decided_at=datetime.now(UTC),
            timed_out=True,
        )
    return ApprovalDecision(
        approved=answer.approve,
        approver=answer.approver,
        reason=answer.reason,
        decided_at=datetime.now(UTC),
    )


def _suspend(settings: Settings, spec: ModelSpec, ref: model_registry.ModelRef) -> ApprovalDecision:
    """Suspend this run until answered. The first time, this raises Prefect's Pause and the
    process ends; when the run is executed again after the answer, it returns the answer.

    The candidate stays loaded under its own name for the wait (callers never reach it): the
    run executed again reuses its finished steps, serving the candidate among them, and its smoke
    test runs again on it."""
    until = datetime.now(UTC) + timedelta(seconds=spec.promotion.approval_timeout_s)
    model_registry.tag_version(
        settings,
        ref,
        {
            TAG_APPROVAL: PENDING,
            TAG_WAITING_RUN: str(flow_run.id),
            TAG_WAITING_UNTIL: until.isoformat(),
        },
    )
    answer = suspend_flow_run(
        wait_for_input=ApprovalInput.with_initial_data(
            description=f"Promote {spec.name} version {ref.version} to champion?", approve=False
        ),
        timeout=spec.promotion.approval_timeout_s,
        key=f"approval-{spec.name}-v{ref.version}",
    )
    return ApprovalDecision(
        approved=answer.approve,
        approver=answer.approver,
        reason=answer.reason,
        decided_at=datetime.now(UTC),
    )


def request_approval(
    settings: Settings, spec: ModelSpec, ref: model_registry.ModelRef
) -> ApprovalDecision:
    """Wait for a reviewer's answer: suspended (a deployment run: the worker is freed) or
    paused in place (a `conveyor run`), until the spec's timeout."""
    version = ref.version
    get_run_logger().warning(
        "%s v%d passed its smoke test and waits for approval (%d s): resume flow run %s in the "
        "Prefect UI, or `conveyor approve %s --approver NAME --reason TEXT` (--reject refuses)",
        spec.name,
        version,
        spec.promotion.approval_timeout_s,
        flow_run.id,
        flow_run.id,
    )
    return _suspend(settings, spec, ref) if _suspends() else _wait_in_place(spec, version)


def record_expired(settings: Settings, ref: model_registry.ModelRef) -> None:
    """The decision of a suspended release that was never answered in time."""
    record_decision(
        settings,
        ref,
        ApprovalDecision(
            approved=False,
            approver="(nobody)",
            reason="no decision before the approval timeout",
            decided_at=datetime.now(UTC),
            timed_out=True,
        ),
    )


def record_decision(
    settings: Settings, ref: model_registry.ModelRef, decision: ApprovalDecision
) -> None:
    model_registry.tag_version(
        settings,
        ref,
        {
            TAG_APPROVAL: "approved" if decision.approved else "rejected",
            "conveyor.approval.approver": decision.approver,
            "conveyor.approval.reason": decision.reason,
            "conveyor.approval.at": decision.decided_at.isoformat(),
        },
    )
    events.emit(
        events.APPROVED if decision.approved else events.REJECTED,
        ref.name,
        {
            "version": ref.version,
            "approver": decision.approver,
            "reason": decision.reason[:500],
            "timed_out": int(decision.timed_out),
        },
    )


@task(name="record-approval")
def record_decision_task(
    settings: Settings, ref: model_registry.ModelRef, decision: ApprovalDecision
) -> ApprovalDecision:
    record_decision(settings, ref, decision)
    verdict = "approved" if decision.approved else "rejected"
    get_run_logger().info(
        "%s v%d %s by %s: %s", ref.name, ref.version, verdict, decision.approver, decision.reason
    )
    if not decision.approved:
        champion = model_registry.alias_version(settings, ref.name, model_registry.CHAMPION)
        raise ApprovalError(
            f"{ref.name} version {ref.version} was not approved ({decision.approver}: "
            f"{decision.reason}); it is withdrawn and {model_registry.what_stays(champion)}"
        )
    return decision


async def answer(flow_run_id: UUID, approve: bool, approver: str, reason: str) -> None:
    """Resume a release paused for approval, with the reviewer's decision."""
    async with get_client() as client:
        try:
            run = await client.read_flow_run(flow_run_id)
        except ObjectNotFound as exc:
            raise ApprovalError(f"no flow run {flow_run_id} on {PREFECT_API_URL.value()}") from exc
    if run.state is None or not run.state.is_paused():
        state = run.state.name if run.state else "unknown"
        raise ApprovalError(f"flow run {flow_run_id} is {state}, not paused for approval")
    ApprovalInput(approve=approve, approver=approver, reason=reason)  # validate before sending
    await resume_flow_run(
        flow_run_id, run_input={"approve": approve, "approver": approver, "reason": reason}
    )
