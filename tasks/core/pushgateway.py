"""Pipeline metrics for Prometheus, pushed to a Pushgateway at the end of every flow.

Flows are batch jobs, so they push rather than wait to be scraped. Each push replaces one group
on the Pushgateway (job `conveyor`, grouping key `model` + `flow`), so:

- counters (`*_total`) are read back from the Pushgateway and carried forward before the push,
  and every label set a counter can take starts at 0, so rates and alerts have a series to work
  on before the first failure;
- a released version's model metrics go to their own group (`version` in the grouping key) and
  stay there when the next version is released;
- the champion is pushed to a `flow="registry"` group from the registry's current alias, so
  release, retrain and rollback all leave the same truthful series.

Metrics never fail a flow: an unset `CONVEYOR_PUSHGATEWAY_URL` is one log line; an unreachable
or malformed one is a warning, and so is a refusal (which says which credentials to set).
Pushes and read-backs carry basic auth when `tasks.core.credentials.pushgateway_auth` has some.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from urllib.parse import urlparse

import httpx
from prefect.runtime import flow_run
from prometheus_client import CollectorRegistry, Counter, Gauge, push_to_gateway
from prometheus_client.exposition import basic_auth_handler, default_handler
from prometheus_client.parser import text_string_to_metric_families

from tasks.core import credentials
from tasks.core.errors import ConveyorError
from tasks.core.gates import MODEL_GATES
from tasks.core.logs import Logger, run_logger
from tasks.core.settings import Settings
from tasks.core.spec import ModelSpec

if TYPE_CHECKING:
    from prefect.client.schemas.objects import TaskRun

JOB = "conveyor"


# unchanged: a release that stopped because the champion already was its model.
# suspended: a release that waits for approval with its process ended (tasks.registry.approval).
OUTCOMES = ("completed", "unchanged", "suspended", "failed")


DECISIONS = ("pass", "fail")


# The release's gates in the order they run; a failure at one means the earlier ones passed.
GATES = (
    "data_quality",
    "model_validation",
    "fairness",
    *MODEL_GATES,
    "onnx_parity",
    "repository_integrity",
    "smoke_test",
    "approval",
    "canary",
    "swap",
)


# (counter sample name, its own labels) → value, as read back from the Pushgateway.
Carried = dict[tuple[str, frozenset[tuple[str, str]]], float]


def _logger() -> Logger:
    return run_logger("conveyor.metrics")


def failed_gate(exc: BaseException) -> str | None:
    """The release gate an exception stands for, or None for any other failure."""
    return exc.gate if isinstance(exc, ConveyorError) else None


def gateway_problem(url: str) -> str | None:
    parsed = urlparse(url if "://" in url else f"http://{url}")
    if parsed.scheme not in {"http", "https"} or not parsed.hostname:
        return f"CONVEYOR_PUSHGATEWAY_URL={url!r} is not an http(s)://host:port URL"
    try:
        parsed.port  # noqa: B018 - raises on a malformed port
    except ValueError:
        return f"CONVEYOR_PUSHGATEWAY_URL={url!r} has a malformed port"
    return None


def _gateway(url: str) -> str:
    return url if "://" in url else f"http://{url}"


def pushed_counters(url: str, grouping: dict[str, str]) -> Carried:
    """Counter samples currently held on the Pushgateway for one group: (name, labels) → value."""
    response = httpx.get(f"{_gateway(url)}/metrics", timeout=5, auth=credentials.pushgateway_auth())
    response.raise_for_status()
    wanted = {"job": JOB, **grouping}
    values: Carried = {}
    for family in text_string_to_metric_families(response.text):
        if family.type != "counter" or not family.name.startswith("conveyor_"):
            continue
        for sample in family.samples:
            if not sample.name.endswith("_total"):
                continue
            labels = dict(sample.labels)
            if any(labels.get(k) != v for k, v in wanted.items()):
                continue
            own = frozenset((k, v) for k, v in labels.items() if k not in {"instance", *wanted})
            values[(sample.name, own)] = sample.value
    return values


@dataclass(frozen=True)
class Series:
    name: str
    help_text: str
    labels: dict[str, str]
    value: float | bool


def _gauges(series: Iterable[Series], registry: CollectorRegistry) -> None:
    families: dict[str, Gauge] = {}
    for one in series:
        names = sorted(one.labels)
        if one.name not in families:
            families[one.name] = Gauge(one.name, one.help_text, names, registry=registry)
        gauge = families[one.name]
        (gauge.labels(*[one.labels[k] for k in names]) if names else gauge).set(float(one.value))


@dataclass
class Observation:
    """What one flow run records; pushed when the flow ends, whatever its outcome."""

    model: str
    flow: str
    started: float = field(default_factory=time.monotonic)
    outcome: str = "completed"
    gates: dict[str, str] = field(default_factory=dict)
    gauges: dict[str, Series] = field(default_factory=dict)
    # A registered version's own series (its group outlives the next run's push).
    version_gauges: dict[str, Series] = field(default_factory=dict)
    version: int | None = None

    def gauge(self, name: str, help_text: str, value: float | bool, **labels: str) -> None:
        self.gauges[name + repr(sorted(labels.items()))] = Series(name, help_text, labels, value)

    def version_gauge(self, name: str, help_text: str, value: float, **labels: str) -> None:
        key = name + repr(sorted(labels.items()))
        self.version_gauges[key] = Series(name, help_text, labels, value)

    def gate(self, gate: str, passed: bool) -> None:
        self.gates[gate] = "pass" if passed else "fail"

    def failed(self, exc: BaseException, gates: tuple[str, ...] = ()) -> None:
        self.outcome = "failed"
        gate = failed_gate(exc)
        if gate in gates:
            for earlier in gates[: gates.index(gate)]:
                self.gates.setdefault(earlier, "pass")
            self.gate(gate, False)

    def unchanged(self) -> None:
        # Not a failure and not a release: the champion already was the model
        # (tasks.modeling.unchanged).
        self.outcome = "unchanged"

    def registered(self, version: int, metrics: dict[str, float], task: str = "binary") -> None:
        self.version = version
        for name, value in metrics.items():
            self.version_gauge(
                "conveyor_model_metric_ratio",
                "Holdout metrics of a version, by the model's task (a regression's errors are in "
                "the target's units).",
                value,
                metric=name,
                task=task,
            )


def task_runs(flow_run_id: str) -> list[TaskRun]:
    """Every task run of a flow run and of its subflows, however deep."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterId,
        FlowRunFilterParentFlowRunId,
    )

    with get_client(sync_client=True) as client:
        runs, frontier = [flow_run_id], [flow_run_id]
        while frontier:
            children = client.read_flow_runs(
                flow_run_filter=FlowRunFilter(
                    parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=frontier)
                )
            )
            frontier = [str(child.id) for child in children]
            runs += frontier
        return client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=runs)))


def step_name(task_run: TaskRun) -> str:
    # Prefect names task runs `<task name>-<3 hex digits>`.
    return task_run.name.rsplit("-", 1)[0]


def task_durations(flow_run_id: str) -> dict[str, float]:
    """Seconds per task (name without Prefect's run suffix) in a flow run and its subflows."""
    return summed_durations(task_runs(flow_run_id))


def summed_durations(runs: Iterable[TaskRun]) -> dict[str, float]:
    """Seconds per task name, summed over its runs."""
    durations: dict[str, float] = {}
    for task_run in runs:
        name = step_name(task_run)
        durations[name] = durations.get(name, 0.0) + task_run.total_run_time.total_seconds()
    return durations


def _carried_counter(
    registry: CollectorRegistry,
    name: str,
    help_text: str,
    labelnames: tuple[str, ...],
    label_sets: list[tuple[str, ...]],
    this_run: set[tuple[str, ...]],
    carried: Carried,
) -> None:
    """A counter over every label set (0 if never seen): its pushed value, plus 1 for the label
    sets this run adds to."""
    counter = Counter(name, help_text, list(labelnames), registry=registry)
    for values in label_sets:
        labels = frozenset(zip(labelnames, values, strict=True))
        before = carried.get((f"{name}_total", labels), 0.0)
        counter.labels(*values).inc(before + (1 if values in this_run else 0))


def build_registry(
    obs: Observation, seconds: float, tasks: dict[str, float], carried: Carried
) -> CollectorRegistry:
    registry = CollectorRegistry()
    _carried_counter(
        registry,
        "conveyor_flow_runs",
        "Flow runs by outcome.",
        ("outcome",),
        [(outcome,) for outcome in OUTCOMES],
        {(obs.outcome,)},
        carried,
    )
    Gauge("conveyor_flow_duration_seconds", "Wall time of the last run.", registry=registry).set(
        seconds
    )
    Gauge(
        "conveyor_flow_last_run_timestamp_seconds", "When the last run ended.", registry=registry
    ).set(time.time())
    Gauge(
        "conveyor_flow_last_run_success", "1 if the last run did not fail.", registry=registry
    ).set(obs.outcome != "failed")
    if tasks:
        task_gauge = Gauge(
            "conveyor_task_duration_seconds",
            "Run time of each task in the last run (summed over its calls).",
            ["task"],
            registry=registry,
        )
        for name, value in tasks.items():
            task_gauge.labels(name).set(value)
    if obs.gates or any(name == "conveyor_gate_decisions_total" for name, _ in carried):
        _carried_counter(
            registry,
            "conveyor_gate_decisions",
            "Release gate decisions.",
            ("gate", "decision"),
            list(itertools.product(GATES, DECISIONS)),
            set(obs.gates.items()),
            carried,
        )
    _gauges(obs.gauges.values(), registry)
    return registry


def _auth_handler(
    url: str, method: str, timeout: float | None, headers: list[tuple[str, str]], data: bytes
) -> Callable[[], None]:
    auth = credentials.pushgateway_auth()
    if auth is None:
        return default_handler(url, method, timeout, headers, data)
    return basic_auth_handler(url, method, timeout, headers, data, *auth)


def _push(url: str, registry: CollectorRegistry, grouping: dict[str, str]) -> None:
    push_to_gateway(
        _gateway(url),
        job=JOB,
        registry=registry,
        grouping_key=grouping,
        timeout=5,
        handler=_auth_handler,
    )


def _push_problem(url: str, exc: Exception) -> str:
    """What went wrong with a push, as the operator needs to hear it."""
    status = getattr(exc, "code", None)  # urllib's HTTPError
    if isinstance(exc, httpx.HTTPStatusError):
        status = exc.response.status_code
    if status in {401, 403}:
        return credentials.pushgateway_refused(url, int(status))
    return f"Pushgateway {url} unreachable or refused the push ({exc})"


def push_observation(settings: Settings, obs: Observation) -> bool:
    """Push one flow run's metrics; True if pushed. Never raises."""
    url = settings.pushgateway_url
    log = _logger()
    if not url:
        log.info("CONVEYOR_PUSHGATEWAY_URL is unset: %s metrics not pushed", obs.flow)
        return False
    if problem := gateway_problem(url):
        log.warning("%s; metrics not pushed (fix the URL, e.g. http://127.0.0.1:9091)", problem)
        return False
    grouping = {"model": obs.model, "flow": obs.flow}
    seconds = time.monotonic() - obs.started
    try:
        tasks = task_durations(str(flow_run.id)) if flow_run.id else {}
    except Exception as exc:  # durations are a nicety: an API hiccup must not cost the push
        log.warning("task durations unavailable (%s); pushing flow metrics only", exc)
        tasks = {}
    try:
        carried = pushed_counters(url, grouping)
        _push(url, build_registry(obs, seconds, tasks, carried), grouping)
        if obs.version is not None:
            _push(url, version_registry(obs), {**grouping, "version": str(obs.version)})
    except (OSError, httpx.HTTPError, ValueError) as exc:
        log.warning("%s; metrics lost", _push_problem(url, exc))
        return False
    log.info("pushed %s metrics for %s to %s", obs.flow, obs.model, url)
    return True


def version_registry(obs: Observation) -> CollectorRegistry:
    registry = CollectorRegistry()
    _gauges(obs.version_gauges.values(), registry)
    return registry


def push_champion(settings: Settings, model: str, version: int | None) -> None:
    """The registry's champion as `conveyor_champion_version` and `conveyor_champion_info`."""
    url = settings.pushgateway_url
    if not url or gateway_problem(url) or version is None:
        return
    registry = CollectorRegistry()
    Gauge("conveyor_champion_version", "Current champion version.", registry=registry).set(version)
    Gauge(
        "conveyor_champion_info",
        "1 for the champion version (joins Triton's per-version series).",
        ["version"],
        registry=registry,
    ).labels(str(version)).set(1)
    try:
        _push(url, registry, {"model": model, "flow": "registry"})
    except (OSError, httpx.HTTPError, ValueError) as exc:
        _logger().warning("%s; champion not pushed", _push_problem(url, exc))


def record_budget(obs: Observation, spec: ModelSpec) -> None:
    """The spec's serving budget, which the Triton p99 alert compares against; pushed by every
    release, whatever its outcome, so a failed release does not take it away."""
    obs.gauge(
        "conveyor_smoke_p99_budget_seconds",
        "The spec's p99 budget (smoke.p99_budget_ms).",
        spec.smoke.p99_budget_ms / 1e3,
    )
