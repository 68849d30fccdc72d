"""The human approval gate: a typed Prefect pause, its decision recorded on the model version."""

from __future__ import annotations

from datetime import UTC, datetime
from uuid import UUID

from prefect import get_run_logger, task
from prefect.client.orchestration import get_client
from prefect.exceptions import FlowPauseTimeout, ObjectNotFound
from prefect.flow_runs import pause_flow_run, resume_flow_run
from prefect.input import RunInput
from prefect.runtime import flow_run
from prefect.settings import PREFECT_API_URL
from pydantic import BaseModel, Field

from tasks import events, registry
from tasks.errors import ConveyorError
from tasks.settings import Settings
from tasks.spec import ModelSpec

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


def request_approval(spec: ModelSpec, version: int) -> ApprovalDecision:
    """Pause the calling flow run until a reviewer answers or the spec's timeout passes."""
    get_run_logger().warning(
        "%s v%d passed its smoke test and waits for approval (%d s): resume flow run %s in the "
        "Prefect UI, or `conveyor approve %s --approver NAME --reason TEXT` (--reject refuses)",
        spec.name,
        version,
        spec.promotion.approval_timeout_s,
        flow_run.id,
        flow_run.id,
    )
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


def record_decision(settings: Settings, ref: registry.ModelRef, decision: ApprovalDecision) -> None:
    registry.tag_version(
        settings,
        ref,
        {
            "conveyor.approval": "approved" if decision.approved else "rejected",
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
    settings: Settings, ref: registry.ModelRef, decision: ApprovalDecision
) -> ApprovalDecision:
    record_decision(settings, ref, decision)
    verdict = "approved" if decision.approved else "rejected"
    get_run_logger().info(
        "%s v%d %s by %s: %s", ref.name, ref.version, verdict, decision.approver, decision.reason
    )
    if not decision.approved:
        raise ApprovalError(
            f"{ref.name} version {ref.version} was not approved ({decision.approver}: "
            f"{decision.reason}); it is withdrawn and the champion is unchanged"
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
