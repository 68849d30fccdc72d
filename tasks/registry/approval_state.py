"""Whether a model's challenger waits for its reviewer: what its version's tags say, read
without importing Prefect (`conveyor status` and `doctor` read it for every model); only a
pending approval's flow run is then asked of Prefect's API. The gate itself, the typed pause,
is `tasks.registry.approval`."""

from __future__ import annotations

from datetime import UTC, datetime
from uuid import UUID

from pydantic import BaseModel

from tasks.core.settings import Settings
from tasks.registry.registry_state import RegistryState, read_registry_state

TAG_APPROVAL = "conveyor.approval"  # pending, approved or rejected
TAG_WAITING_RUN = "conveyor.approval.flow_run"  # the suspended release that waits for it
TAG_WAITING_UNTIL = "conveyor.approval.until"  # after this, the run can no longer resume
PENDING = "pending"


class Awaiting(BaseModel):
    """A challenger whose release is suspended until a reviewer answers."""

    model: str
    version: int
    flow_run_id: str
    until: datetime

    def describe(self) -> str:
        return (
            f"{self.model} v{self.version} awaits approval in flow run {self.flow_run_id} "
            f"(until {self.until:%Y-%m-%d %H:%M} UTC)"
        )


def awaiting(settings: Settings, model: str) -> Awaiting | None:
    """The challenger's pending approval, if its release suspended for one."""
    return awaiting_in(read_registry_state(settings, model))


def awaiting_in(state: RegistryState) -> Awaiting | None:
    """`awaiting`, as the registry state read once by a release says it."""
    if state.challenger is None:
        return None
    tags = state.challenger.tags
    if tags.get(TAG_APPROVAL) != PENDING or not tags.get(TAG_WAITING_RUN):
        return None
    return Awaiting(
        model=state.model,
        version=state.challenger.version,
        flow_run_id=tags[TAG_WAITING_RUN],
        until=datetime.fromisoformat(tags[TAG_WAITING_UNTIL]),
    )


def can_still_resume(waiting: Awaiting) -> bool:
    """Whether the suspended release will still carry on: suspended before its deadline, or
    already resumed. A run the API does not know, that ended, or whose deadline passed (Prefect
    refuses to resume it then) is dead, and its challenger a leftover. An API that cannot be
    reached proves nothing, so the challenger is kept; so does a process that has no server
    configured (only a server's deployment run suspends: this one cannot see it)."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound
    from prefect.settings import PREFECT_API_URL

    if not PREFECT_API_URL.value():
        return True
    try:
        with get_client(sync_client=True) as client:
            run = client.read_flow_run(UUID(waiting.flow_run_id))
    except ObjectNotFound:
        return False
    except Exception:  # no server to ask: keep what may be a live wait
        return True
    if run.state is None or run.state.is_final():
        return False
    if run.state.is_paused():
        return datetime.now(UTC) <= waiting.until
    return True  # scheduled, pending or running again: the answer came
