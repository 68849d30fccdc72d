"""Measured serving tuning: a short sweep of dynamic-batching queue delay x instance count on the
candidate, choosing the best throughput within the latency budget."""

from __future__ import annotations

import itertools

from prefect import get_run_logger, task
from prefect.artifacts import create_table_artifact
from pydantic import BaseModel

from tasks.core.attempts import RESUMABLE
from tasks.core.settings import Settings
from tasks.core.spec import ModelSpec, ServingSpec
from tasks.core.storage import open_store, read_verified
from tasks.datasets.data import DatasetRef, load_dataset, to_features
from tasks.registry import model_registry, tracking
from tasks.serving import replicas, triton_client
from tasks.serving.traffic import LoadResult, measure


class TuningTrial(BaseModel):
    max_queue_delay_microseconds: int
    instance_count: int
    load: LoadResult

    @property
    def key(self) -> str:
        return f"q{self.max_queue_delay_microseconds}_i{self.instance_count}"


class TuningResult(BaseModel):
    trials: list[TuningTrial]
    chosen: ServingSpec
    within_budget: bool  # False: no configuration met the budget; the smoke test will say so


def choose(trials: list[TuningTrial], budget_ms: float) -> tuple[TuningTrial, bool]:
    """Best throughput among error-free trials within the p99 budget; else the lowest p99."""
    clean = [t for t in trials if t.load.errors == 0] or trials
    within = [t for t in clean if t.load.p99_ms <= budget_ms]
    if within:
        return max(within, key=lambda t: t.load.throughput_rps), True
    return min(clean, key=lambda t: t.load.p99_ms), False


def _configured(base: ServingSpec, delay_us: int, instances: int) -> ServingSpec:
    return base.model_copy(
        update={"max_queue_delay_microseconds": delay_us, "instance_count": instances}
    )


def tune(
    settings: Settings, spec: ModelSpec, ref: model_registry.ModelRef, holdout: DatasetRef
) -> TuningResult:
    """Serve the candidate under each configuration in turn and measure it at the smoke test's
    concurrency. The candidate is never reachable by production callers while this runs.

    On the first replica only: the replicas run the same files on the same kind of host, so a
    sweep per replica would measure the same thing again (and load the host it shares)."""
    sweep = spec.serving.tuning
    if not sweep.enabled:
        return TuningResult(trials=[], chosen=spec.serving, within_budget=True)
    files = read_verified(open_store(settings.repository), f"{spec.name}/{ref.version}")
    rows = to_features(load_dataset(holdout.uri), spec)[: spec.smoke.rows]
    endpoint = replicas.quorum(settings, f"tuning {spec.name} v{ref.version}")[0].endpoint
    trials = []
    for delay, count in itertools.product(sweep.max_queue_delays_us, sweep.instance_counts):
        serving = _configured(spec.serving, delay, count)
        name = triton_client.load_candidate(settings, endpoint, spec, ref.version, files, serving)
        load = measure(
            endpoint, name, rows, str(ref.version), spec.smoke.concurrency, sweep.requests
        )
        trials.append(
            TuningTrial(max_queue_delay_microseconds=delay, instance_count=count, load=load)
        )
    best, within = choose(trials, spec.smoke.p99_budget_ms)
    chosen = _configured(spec.serving, best.max_queue_delay_microseconds, best.instance_count)
    return TuningResult(trials=trials, chosen=chosen, within_budget=within)


def record(settings: Settings, ref: model_registry.ModelRef, result: TuningResult) -> None:
    """The sweep as run metrics, the choice as params, and the version's serving tag."""
    metrics: dict[str, float] = {}
    for trial in result.trials:
        metrics[f"tuning_{trial.key}_rps"] = trial.load.throughput_rps
        metrics[f"tuning_{trial.key}_p99_ms"] = trial.load.p99_ms
        metrics[f"tuning_{trial.key}_errors"] = float(trial.load.errors)
    tracking.log_to_run(
        settings,
        ref.run_id,
        metrics=metrics,
        params={
            "serving_max_queue_delay_us": result.chosen.max_queue_delay_microseconds,
            "serving_instance_count": result.chosen.instance_count,
        },
    )
    model_registry.tag_version(
        settings, ref, {model_registry.TAG_SERVING: result.chosen.model_dump_json()}
    )


@task(name="tune-serving", cache_policy=RESUMABLE, persist_result=True)
def tune_task(
    settings: Settings, spec: ModelSpec, ref: model_registry.ModelRef, holdout: DatasetRef
) -> TuningResult:
    result = tune(settings, spec, ref, holdout)
    record(settings, ref, result)
    logger = get_run_logger()
    if not result.trials:
        logger.info(
            "serving tuning is off; %s v%d uses the spec's configuration", ref.name, ref.version
        )
        return result
    create_table_artifact(
        key=f"tuning-{spec.name}",
        table=[
            {
                "max_queue_delay_us": t.max_queue_delay_microseconds,
                "instances": t.instance_count,
                "req/s": round(t.load.throughput_rps),
                "p50 ms": round(t.load.p50_ms, 2),
                "p99 ms": round(t.load.p99_ms, 2),
                "errors": t.load.errors,
            }
            for t in result.trials
        ],
        description=f"Serving sweep of {spec.name} v{ref.version} at concurrency "
        f"{spec.smoke.concurrency}: the highest throughput without errors within the p99 budget "
        "is chosen",
    )
    logger.info(
        "tuned %s v%d: max_queue_delay %d µs x %d instance(s)%s",
        ref.name,
        ref.version,
        result.chosen.max_queue_delay_microseconds,
        result.chosen.instance_count,
        "" if result.within_budget else f" (none within the {spec.smoke.p99_budget_ms} ms budget)",
    )
    return result
