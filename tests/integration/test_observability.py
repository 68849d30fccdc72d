"""Pipeline metrics on Debian's real `prometheus-pushgateway` and `prometheus`: releases, a gate
failure and a drift check push; Prometheus scrapes them and the embedded Triton with the rules
of infra/prometheus; every expression the dashboards and alerts use returns data."""

from __future__ import annotations

import json
import logging
import re
import secrets
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
from flows.release import ReleaseResult, release_flow
from infra.render_secrets import SCRAPE_USER
from tasks import credentials, metrics, triton_server
from tasks.evaluation import GateError
from tasks.settings import Settings
from tasks.traffic import measure
from tasks.triton_server import Endpoint
from tests.conftest import ROOT, write_spec
from tests.servers import clean_env, free_port, pushgateway, serving, system_binary

INFRA = ROOT / "infra"
PROMETHEUS = INFRA / "prometheus"
DASHBOARDS = INFRA / "grafana" / "dashboards"
WEAK = {
    "estimator.params": {"n_estimators": 2, "max_depth": 2},
    "search.space": {},
    "thresholds.roc_auc": 0.5,
    "thresholds.pr_auc": 0.02,
}
PUSH_USER = "conveyor-push"
# What Grafana substitutes in dashboard expressions.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__range": "1h", "$model": "fraud-detector"}


def binary(name: str) -> str:
    try:
        return system_binary(name)
    except RuntimeError as exc:
        pytest.fail(str(exc))


def _ready(url: str, auth: tuple[str, str] | None = None) -> bool:
    try:
        return httpx.get(url, timeout=2, auth=auth).status_code == 200
    except httpx.HTTPError:
        return False


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


def prometheus_config(
    base: Path, pushgateway: str, triton_metrics: str, password_files: dict[str, Path]
) -> Path:
    """infra/prometheus/prometheus.yml with loopback targets, a 1 s scrape, absolute paths, and
    the scrape credentials' files where this test keeps them."""
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    targets = {"pushgateway": pushgateway, "triton": triton_metrics, "mlflow": "127.0.0.1:1"}
    config["global"].update(scrape_interval="1s", evaluation_interval="1s")
    config["rule_files"] = [str(PROMETHEUS / pattern) for pattern in config["rule_files"]]
    for job in config["scrape_configs"]:
        job["static_configs"] = [{"targets": [targets[job["job_name"]]]}]
        if "basic_auth" in job:
            job["basic_auth"]["password_file"] = str(password_files[job["job_name"]])
    path = base / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def observed(prefect_api: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Observed]:
    base = tmp_path_factory.mktemp("observability")
    prometheus_port = free_port()
    # Two users, as in compose: conveyor pushes, Prometheus (user `prometheus`) scrapes.
    password, scrape_password = secrets.token_urlsafe(16), secrets.token_urlsafe(16)
    password_file = base / "pushgateway.password"
    password_file.write_text(scrape_password)
    users = {PUSH_USER: password, SCRAPE_USER: scrape_password}
    with pytest.MonkeyPatch.context() as env, pushgateway(base / "pushgateway", users) as gateway:
        env.setenv("CONVEYOR_HOME", str(base / "state"))
        env.setenv(credentials.PUSHGATEWAY_USER_ENV, PUSH_USER)
        env.setenv(credentials.PUSHGATEWAY_PASSWORD_ENV, password)
        settings = Settings()
        try:
            # First, a Pushgateway nobody listens on: the release warns and completes.
            env.setenv("CONVEYOR_PUSHGATEWAY_URL", f"http://127.0.0.1:{free_port()}")
            unreachable = release_flow(str(write_spec(base)))
            env.setenv("CONVEYOR_PUSHGATEWAY_URL", gateway)
            # With a swap (the champion serves); forced, as its data and spec are the champion's.
            second = release_flow(str(write_spec(base)), force=True)
            with pytest.raises(GateError) as failure:
                release_flow(str(write_spec(base, **WEAK)))
            drift_check_flow(str(write_spec(base, **{"data.drift": 1.0})))
            # Clients' traffic, so Triton's rate and latency series have samples to work on.
            endpoint = triton_server.endpoint(settings)
            state = triton_server.read_state(settings)
            assert state is not None
            config = prometheus_config(
                base,
                gateway.removeprefix("http://"),
                f"127.0.0.1:{state.metrics_port}",
                # MLflow's target is unreachable here (no MLflow server); its file must exist.
                {"pushgateway": password_file, "mlflow": password_file},
            )
            prometheus = f"http://127.0.0.1:{prometheus_port}"
            prometheus_cmd = [
                binary("prometheus"),
                f"--config.file={config}",
                f"--storage.tsdb.path={base / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{prometheus_port}",
            ]
            with serving(
                prometheus_cmd,
                clean_env(),
                base / "prometheus.log",
                lambda: _ready(f"{prometheus}/-/ready"),
                60,
            ):
                more_traffic(endpoint, second.model)
                yield Observed(
                    settings,
                    gateway,
                    (PUSH_USER, password),
                    prometheus,
                    second,
                    unreachable,
                    failure.value,
                )
        finally:
            triton_server.stop(settings)


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
    # And none fires now: the release completed, Triton serves the champion within budget.
    firing = httpx.get(f"{observed.prometheus}/api/v1/alerts", timeout=10).json()["data"]
    names_firing = {a["labels"]["alertname"] for a in firing["alerts"] if a["state"] == "firing"}
    assert names_firing <= {"ConveyorReleaseFailed", "ConveyorDriftDetected"}


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
    tasks = {str(s["metric"]["task"]) for s in observed.query("conveyor_task_duration_seconds")}
    # The last release failed at its gate: its tasks up to there, not the publish.
    assert {"validate-data", "check-drift"} <= tasks
    assert "publish-version" not in tasks


def test_drift_metrics_and_alert(observed: Observed) -> None:
    share = observed.value('conveyor_drift_share_ratio{model="fraud-detector"}')
    assert share >= 0.3
    columns = observed.query('conveyor_drift_column_score{model="fraud-detector"}')
    assert len(columns) == 11  # ten features and the prediction score

    def fires() -> None:
        alerts = httpx.get(f"{observed.prometheus}/api/v1/alerts", timeout=10).json()
        assert any(
            a["labels"]["alertname"] == "ConveyorDriftDetected" and a["state"] == "firing"
            for a in alerts["data"]["alerts"]
        )

    eventually(fires)


def test_unreachable_pushgateway_warns_and_the_release_completes(observed: Observed) -> None:
    assert observed.unreachable.promotion.champion == 1
    # Nothing from it reached the Pushgateway: it holds one completed release, the second.
    body = httpx.get(f"{observed.pushgateway}/metrics", timeout=10, auth=observed.push_auth).text
    assert 'conveyor_flow_runs_total{flow="release",instance="",job="conveyor"' in body
    assert re.search(r'conveyor_flow_runs_total\{[^}]*outcome="completed"[^}]*\} 1\b', body)


def test_push_never_raises_on_bad_configuration(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("CONVEYOR_HOME", str(tmp_path))
    caplog.set_level(logging.INFO, logger="conveyor.metrics")
    obs = metrics.Observation(model="m", flow="release")
    for url, says in (
        ("not a url:99x", "malformed"),
        ("ftp://host:21", "is not an http(s)://host:port URL"),
        (f"http://127.0.0.1:{free_port()}", "unreachable or refused"),
    ):
        monkeypatch.setenv("CONVEYOR_PUSHGATEWAY_URL", url)
        assert metrics.push_observation(Settings(), obs) is False
        assert says in caplog.text, caplog.text
    monkeypatch.delenv("CONVEYOR_PUSHGATEWAY_URL")
    assert metrics.push_observation(Settings(), obs) is False
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
    obs = metrics.Observation(model="forged", flow="release")
    settings = observed.settings.model_copy(update={"pushgateway_url": observed.pushgateway})
    assert metrics.push_observation(settings, obs) is False
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
