"""rollback_flow: Triton serves the previous version, then champion moves back to it."""

from __future__ import annotations

from contextlib import ExitStack

from prefect import flow

from tasks.core import lease
from tasks.core.progress import stage
from tasks.core.settings import Settings
from tasks.core.spec import DEFAULT_SPEC, load_spec
from tasks.ops import metrics
from tasks.ops.doctor.repairs import repair_leftovers_task
from tasks.registry import known_specs
from tasks.registry.model_registry import PromotionResult, default_actor
from tasks.registry.rollback import plan_rollback_task, rollback_task
from tasks.serving.rollout import restore_serving_task, serve_only_task


@flow(name="rollback")
def rollback_flow(
    spec_path: str = str(DEFAULT_SPEC),
    reason: str = "manual rollback",
    actor: str = "",
    model: str | None = None,
) -> PromotionResult:
    """Triton first: serving the good version is what stops the harm; the aliases follow.

    `model`: roll back a model by name instead of by spec file; its spec is the fleet's or the
    one recorded with its champion (`tasks.registry.known_specs`), wherever it was released from."""
    settings = Settings()
    spec = known_specs.spec_of(settings, model) if model else load_spec(spec_path)
    # The model's lease: a rollback during a release waits for it (and then rolls back what it
    # promoted), never interleaves with its swap.
    with ExitStack() as held:
        with stage("model lease") as step:
            held.enter_context(lease.model_lease(settings, spec.name, "rollback"))
            step.figure = f"held for {spec.name}"
        held.enter_context(metrics.observed(settings, spec.name, "rollback"))
        # Holding the lease proves a release killed mid-swap dead: what it left (a version no
        # alias names answering callers, its challenger, its files) goes first.
        repair_leftovers_task(settings, spec)
        plan = plan_rollback_task(settings, spec.name)
        with stage("serve previous") as step:
            serve_only_task(settings, spec, plan.target)
            step.figure = f"Triton serves v{plan.target} alone"
        try:
            with stage("aliases") as step:
                moved = rollback_task(settings, plan, reason, actor or default_actor())
                step.figure = f"champion v{moved.champion}"
            return moved
        except Exception:
            # The registry refused the move (a read-only user, an outage): Triton goes back to
            # what the aliases say, so the champion is still the version served.
            restore_serving_task(settings, spec)
            raise
