"""Pipeline metrics on the production topology (`make stack`: Debian's `prometheus-pushgateway`
behind basic auth and `prometheus` scraping it, Triton and MLflow with infra/prometheus's config
and rules): releases, a gate failure and a drift check of this module's own model push;
Prometheus scrapes them and the stack's Triton; every expression the dashboards and alerts use
returns data for the model."""

from __future__ import annotations

import json
import logging
import re
import subprocess
import time
import urllib.error
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml
from prometheus_client import CollectorRegistry, Gauge, push_to_gateway

from flows.drift import drift_check_flow
from flows.outcomes import outcome_check_flow
from flows.release import ReleaseResult, release_flow
from infra.stack import StackError, system_binary
from tasks.core import credentials, pushgateway
from tasks.core.settings import Settings
from tasks.modeling.evaluation import GateError
from tasks.serving import replicas
from tasks.serving.traffic import measure
from tasks.serving.triton_server import Endpoint
from tests.conftest import ROOT, write_spec
from tests.servers import ProductionStack, free_port

INFRA = ROOT / "infra"
PROMETHEUS = INFRA / "prometheus"
DASHBOARDS = INFRA / "grafana" / "dashboards"
# Its own model on the shared stack: every query here selects it.
NAME = "observed-fraud"
WEAK = {
    "estimator.params": {"n_estimators": 2, "max_depth": 2},
    "search.space": {},
    "thresholds.roc_auc": 0.5,
    "thresholds.pr_auc": 0.02,
}
# What Grafana substitutes in dashboard expressions.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__range": "1h", "$model": NAME}


def binary(name: str) -> str:
    try:
        return system_binary(name, "prometheus")
    except StackError as exc:
        pytest.fail(str(exc))


@dataclass
class Observed:
    settings: Settings
    pushgateway: str
    push_auth: tuple[str, str]
    prometheus: str
    released: ReleaseResult  # pushed, and swapped in under the probe
    unreachable: ReleaseResult  # the first release, its Pushgateway down
    failure: GateError

    def query(self, expr: str) -> list[dict[str, object]]:
        response = httpx.get(f"{self.prometheus}/api/v1/query", params={"query": expr}, timeout=10)
        body = response.json()
        assert body.get("status") == "success", f"{expr}: {body}"
        return list(body["data"]["result"])

    def value(self, expr: str) -> float:
        [sample] = self.query(expr)
        return float(sample["value"][1])  # type: ignore[index]


@pytest.fixture(scope="module")
def observed(
    production: ProductionStack, prefect_api: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Observed]:
    base = tmp_path_factory.mktemp("observability")
    stack = production.env
    with pytest.MonkeyPatch.context() as env:
        # The stack's settings, as a worker has them; Prefect's stay the session's test API.
        for key, value in stack.items():
            if not key.startswith("PREFECT_"):
                env.setenv(key, value)
        env.setenv("CONVEYOR_HOME", str(base / "state"))
        settings = Settings()
        # First, a Pushgateway nobody listens on: the release warns and completes.
        env.setenv("CONVEYOR_PUSHGATEWAY_URL", f"http://127.0.0.1:{free_port()}")
        unreachable = release_flow(str(write_spec(base, name=NAME)))
        env.setenv("CONVEYOR_PUSHGATEWAY_URL", stack["CONVEYOR_PUSHGATEWAY_URL"])
        # With a swap (the champion serves); forced, as its data and spec are the champion's.
        second = release_flow(str(write_spec(base, name=NAME)), force=True)
        with pytest.raises(GateError) as failure:
            release_flow(str(write_spec(base, name=NAME, **WEAK)))
        drift_check_flow(str(write_spec(base, name=NAME, **{"data.drift": 1.0})))
        # A healthy outcome check: its gauges exist (the degradation alert compares them) and
        # its alert stays silent.
        outcome_check_flow(str(write_spec(base, name=NAME)))
        # Clients' traffic, so Triton's rate and latency series have samples to work on.
        # Through the edge, as callers send it: both replicas get their share.
        fleet = replicas.configured(settings)
        more_traffic(replicas.probe_endpoint(settings, fleet), second.model)
        yield Observed(
            settings,
            stack["CONVEYOR_PUSHGATEWAY_URL"],
            (
                stack[credentials.PUSHGATEWAY_USER_ENV],
                stack[credentials.PUSHGATEWAY_PASSWORD_ENV],
            ),
            f"http://127.0.0.1:{production.port('prometheus', 9090)}",
            second,
            unreachable,
            failure.value,
        )


def more_traffic(endpoint: Endpoint, model: str) -> None:
    """Clients' traffic across several scrapes (rates need two samples in their window)."""
    rows = np.zeros((8, 10), dtype=np.float32)
    for _ in range(4):
        load = measure(endpoint, model, rows, version="", clients=2, requests=200)
        assert load.errors == 0
        time.sleep(1.5)


def rule_expressions() -> dict[str, str]:
    found = {}
    for path in (PROMETHEUS / "rules").glob("*.yml"):
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                found[rule.get("record") or rule["alert"]] = rule["expr"]
    return found


def dashboard_expressions() -> dict[str, str]:
    found = {}
    for path in sorted(DASHBOARDS.glob("*.json")):
        dashboard = json.loads(path.read_text())
        for panel in dashboard["panels"]:
            for target in panel["targets"]:
                expr = target["expr"]
                for variable, value in GRAFANA_VARIABLES.items():
                    expr = expr.replace(variable, value)
                found[f"{path.stem}: {panel['title']} ({target['refId']})"] = expr
    return found


def eventually(check: object, timeout_s: float = 30) -> None:
    """Prometheus scrapes every second and evaluates rules every second: wait a few rounds."""
    assert callable(check)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            check()
            return
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(1)


def test_every_dashboard_and_recording_rule_expression_returns_data(observed: Observed) -> None:
    expressions = dashboard_expressions()
    expressions |= {
        name: expr for name, expr in rule_expressions().items() if name.startswith("conveyor:")
    }
    assert len(expressions) >= 20

    def all_return_data() -> None:
        empty = [name for name, expr in expressions.items() if not observed.query(expr)]
        assert not empty, f"no data for: {empty}"

    eventually(all_return_data, 60)


def test_every_series_the_alerts_compare_returns_data(observed: Observed) -> None:
    """Alert expressions return nothing while all is well (that is the point); each series they
    compare must exist, or the alert could never fire. promtool's rule tests (below) prove they
    do fire on the failures they are for."""
    names: set[str] = set()
    alerts = {n: e for n, e in rule_expressions().items() if not n.startswith("conveyor:")}
    for expr in alerts.values():
        names |= set(
            re.findall(r"\b(conveyor:[a-z0-9_]+|conveyor_[a-z0-9_]+|nv_[a-z_]+|up)\b", expr)
        )
    assert {"conveyor_flow_runs_total", "conveyor:champion_loaded", "up"} <= names

    def exist() -> None:
        missing = [n for n in sorted(names) if not observed.query(n)]
        assert not missing, f"no series: {missing}"

    eventually(exist)
    # And none fires now for this model or the stack: the release completed, Triton serves the
    # champion within budget (the other server tests' models have alerts of their own).
    firing = httpx.get(f"{observed.prometheus}/api/v1/alerts", timeout=10).json()["data"]
    names_firing = {
        a["labels"]["alertname"]
        for a in firing["alerts"]
        if a["state"] == "firing" and a["labels"].get("model") in (None, NAME)
    }
    assert names_firing <= {"ConveyorReleaseFailed", "ConveyorDriftDetected"}


def test_every_scrape_target_of_the_stack_is_up(observed: Observed) -> None:
    """Each job of infra/prometheus/prometheus.yml scrapes: MLflow's metrics were DOWN with 403
    on every scrape (basic-auth serves /metrics to admins only) until the mlflow-metrics
    sidecar served them."""
    response = httpx.get(f"{observed.prometheus}/api/v1/targets", timeout=10).json()
    active = response["data"]["activeTargets"]
    jobs = {job["job_name"] for job in yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())[
        "scrape_configs"
    ]}  # fmt: skip
    assert {t["labels"]["job"] for t in active} == jobs
    down = {t["labels"]["job"]: t["lastError"] for t in active if t["health"] != "up"}
    assert down == {}, down
    # And MLflow's series are there: its request counts.
    assert observed.query('mlflow_http_request_total{job="mlflow"}'), "no MLflow request metrics"


def test_counters_carry_across_runs_and_gates_are_counted(observed: Observed) -> None:
    model = observed.released.model
    selector = f'model="{model}", flow="release"'

    def counted() -> None:
        runs = {
            str(s["metric"]["outcome"]): float(s["value"][1])  # type: ignore[index]
            for s in observed.query(f"conveyor_flow_runs_total{{{selector}}}")
        }
        # Every outcome is a series from the first push (0 until it happens).
        assert runs == {"completed": 1.0, "unchanged": 0.0, "suspended": 0.0, "failed": 1.0}

    eventually(counted)
    gates = {
        (str(s["metric"]["gate"]), str(s["metric"]["decision"])): float(s["value"][1])  # type: ignore[index]
        for s in observed.query(f"conveyor_gate_decisions_total{{{selector}}}")
    }
    assert gates[("data_quality", "pass")] == 2
    assert gates[("model_validation", "pass")] == 1
    assert gates[("model_validation", "fail")] == 1
    assert gates[("smoke_test", "pass")] == 1
    assert gates[("approval", "pass")] == 0  # no approval configured: not a decision
    assert observed.value(f'conveyor_champion_version{{model="{model}"}}') == 2
    # Only the pushed version has a group: version 1's release could not reach the Pushgateway.
    [auc] = observed.query(f'conveyor_model_metric_ratio{{model="{model}", metric="roc_auc"}}')
    assert auc["metric"]["version"] == "2"  # type: ignore[index]
    assert float(auc["value"][1]) == pytest.approx(observed.released.metrics.roc_auc)  # type: ignore[index]
    ratio = observed.value(f'conveyor_swap_p99_ratio{{model="{model}"}}')
    assert ratio == pytest.approx(observed.released.swap.p99_ratio)
    durations = observed.query(f'conveyor_task_duration_seconds{{model="{model}"}}')
    tasks = {str(s["metric"]["task"]) for s in durations}
    # The last release failed at its gate: its tasks up to there, not the publish.
    assert {"validate-data", "check-drift"} <= tasks
    assert "publish-version" not in tasks


def test_drift_metrics_and_alert(observed: Observed) -> None:
    share = observed.value(f'conveyor_drift_share_ratio{{model="{NAME}"}}')
    assert share >= 0.3
    columns = observed.query(f'conveyor_drift_column_score{{model="{NAME}"}}')
    assert len(columns) == 11  # ten features and the prediction score

    def fires() -> None:
        alerts = httpx.get(f"{observed.prometheus}/api/v1/alerts", timeout=10).json()
        assert any(
            a["labels"]["alertname"] == "ConveyorDriftDetected"
            and a["labels"].get("model") == NAME
            and a["state"] == "firing"
            for a in alerts["data"]["alerts"]
        )

    eventually(fires)


def test_unreachable_pushgateway_warns_and_the_release_completes(observed: Observed) -> None:
    assert observed.unreachable.promotion.champion == 1
    # Nothing from it reached the Pushgateway: it holds one completed release, the second.
    body = httpx.get(f"{observed.pushgateway}/metrics", timeout=10, auth=observed.push_auth).text
    runs = [
        line
        for line in body.splitlines()
        if line.startswith("conveyor_flow_runs_total{") and f'model="{NAME}"' in line
    ]
    completed = [line for line in runs if 'flow="release"' in line and '"completed"' in line]
    assert [line.rsplit(" ", 1)[1] for line in completed] == ["1"], runs


def test_push_never_raises_on_bad_configuration(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("CONVEYOR_HOME", str(tmp_path))
    caplog.set_level(logging.INFO, logger="conveyor.metrics")
    obs = pushgateway.Observation(model="m", flow="release")
    for url, says in (
        ("not a url:99x", "malformed"),
        ("ftp://host:21", "is not an http(s)://host:port URL"),
        (f"http://127.0.0.1:{free_port()}", "unreachable or refused"),
    ):
        monkeypatch.setenv("CONVEYOR_PUSHGATEWAY_URL", url)
        assert pushgateway.push_observation(Settings(), obs) is False
        assert says in caplog.text, caplog.text
    monkeypatch.delenv("CONVEYOR_PUSHGATEWAY_URL")
    assert pushgateway.push_observation(Settings(), obs) is False
    assert "CONVEYOR_PUSHGATEWAY_URL is unset" in caplog.text


def test_pushgateway_refuses_anonymous_and_wrong_pushes(
    observed: Observed, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry = CollectorRegistry()
    Gauge("conveyor_champion_version", "forged", registry=registry).set(99)
    with pytest.raises(urllib.error.HTTPError) as anonymous:
        push_to_gateway(observed.pushgateway, job="conveyor", registry=registry)
    assert anonymous.value.code == 401
    assert httpx.get(f"{observed.pushgateway}/metrics", timeout=5).status_code == 401
    # conveyor with a wrong password: a warning that says what to set, and the flow goes on.
    monkeypatch.setenv(credentials.PUSHGATEWAY_PASSWORD_ENV, "wrong")
    caplog.set_level(logging.WARNING, logger="conveyor.metrics")
    obs = pushgateway.Observation(model="forged", flow="release")
    settings = observed.settings.model_copy(update={"pushgateway_url": observed.pushgateway})
    assert pushgateway.push_observation(settings, obs) is False
    assert "answered 401" in caplog.text and credentials.PUSHGATEWAY_PASSWORD_ENV in caplog.text
    model = observed.released.model
    assert observed.value(f'conveyor_champion_version{{model="{model}"}}') == 2
    assert not observed.query('conveyor_champion_version{model="forged"}')


@pytest.mark.parametrize(
    "args",
    [
        ["check", "config", "prometheus.yml"],
        ["check", "rules", "rules/conveyor.yml"],
        ["test", "rules", "tests/conveyor_test.yml"],
    ],
    ids=["check-config", "check-rules", "alerts-fire-on-their-failures"],
)
def test_promtool(args: list[str]) -> None:
    done = subprocess.run(
        [binary("promtool"), *args], cwd=PROMETHEUS, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout + done.stderr
