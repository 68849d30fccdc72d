"""prefect.yaml on the production topology (`make stack`: Prefect server on PostgreSQL and
Redis, its cpu worker, MLflow's basic-auth server on PostgreSQL with artifacts on S3, Triton on
the S3 model repository): the release deployment, the nightly drift check, and retraining
triggered by its event.

Everything runs as it would in production: `make deploy` from this checkout with the stack's env
file, flow runs picked up by the worker in their own processes, the drift event matched by the
server's trigger.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import boto3
import httpx
import numpy as np
import pandas as pd
import pytest
import yaml

from tasks.core import credentials, events
from tasks.core.settings import Settings
from tasks.core.spec import load_spec
from tasks.datasets import pieces
from tasks.datasets.data import to_features
from tasks.datasets.synthetic import generate_transactions
from tasks.registry import mlflow_store, model_registry, tracking
from tasks.serving import replicas, triton_client
from tests.conftest import ROOT, ZOMBIE_AFTER_S, write_spec
from tests.servers import BIN, ProductionStack, clean_env

NAME = "fraud-detector"
SHIPPED = ("fraud-detector", "credit-default", "churn", "merchant-category", "loss-given-default")


@dataclass
class Stack:
    production: ProductionStack
    base: Path
    settings: Settings

    @property
    def api(self) -> str:
        return self.production.api

    @property
    def auth(self) -> tuple[str, str]:
        return self.production.auth

    def env(self) -> dict[str, str]:
        """What an operator's shell has after `source .stack/conveyor.env`."""
        return clean_env(PREFECT_HOME=str(self.base / "client"), **self.production.env)

    def make_deploy(self) -> None:
        """What an operator runs: work pools, every deployment, the zombie-run automation."""
        done = subprocess.run(
            ["make", "-s", "deploy"],
            env=self.env(),
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=240,
        )
        assert done.returncode == 0, done.stdout + done.stderr

    def cli(self, *args: str, timeout_s: float = 120) -> str:
        done = subprocess.run(
            [str(BIN / "prefect"), *args],
            env=self.env(),
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    def post(self, path: str, body: dict[str, object]) -> list[dict[str, object]]:
        response = httpx.post(f"{self.api}{path}", json=body, timeout=10, auth=self.auth)
        response.raise_for_status()
        result: list[dict[str, object]] = response.json()
        return result

    def deployment_id(self, name: str) -> str:
        [deployment] = self.post("/deployments/filter", {"deployments": {"name": {"any_": [name]}}})
        return str(deployment["id"])

    def runs(self, deployment: str, states: list[str] | None = None) -> list[dict[str, object]]:
        body: dict[str, object] = {
            "deployments": {"id": {"any_": [self.deployment_id(deployment)]}}
        }
        if states:
            body["flow_runs"] = {"state": {"type": {"any_": states}}}
        return self.post("/flow_runs/filter", body)

    def start_run(self, deployment: str, spec: Path | None = None, **params: str) -> str:
        """Ask for a deployment run; its flow run id."""
        flow = {"nightly-drift": "fleet-drift-check"}.get(deployment, deployment)
        if spec is not None:
            params["spec_path"] = str(spec)
        given = [arg for key, value in params.items() for arg in ("--param", f"{key}={value}")]
        output = self.cli("deployment", "run", f"{flow}/{deployment}", *given)
        return next(line.split(":")[-1].strip() for line in output.splitlines() if "UUID" in line)

    def run(
        self, deployment: str, spec: Path | None = None, timeout_s: float = 300, **params: str
    ) -> dict[str, object]:
        """Run a deployment through the worker and wait for a final state."""
        return self.wait(self.start_run(deployment, spec, **params), timeout_s)

    def wait(self, run_id: str, timeout_s: float = 300) -> dict[str, object]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            run = httpx.get(f"{self.api}/flow_runs/{run_id}", timeout=10, auth=self.auth).json()
            if run["state"]["type"] in {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}:
                return dict(run)
            time.sleep(1)
        raise AssertionError(f"flow run {run_id} did not finish in {timeout_s:.0f} s")

    def logs(self, run_id: str) -> str:
        entries = self.post("/logs/filter", {"logs": {"flow_run_id": {"any_": [run_id]}}})
        return "\n".join(str(e["message"]) for e in entries)

    def drift_events(self) -> list[dict[str, object]]:
        return self.events("conveyor.drift.detected")

    def events(self, name: str) -> list[dict[str, object]]:
        body = {"filter": {"event": {"name": [name]}}, "limit": 50}
        response = httpx.post(f"{self.api}/events/filter", json=body, timeout=10, auth=self.auth)
        response.raise_for_status()
        return list(response.json()["events"])


@pytest.fixture(scope="module")
def stack(deployed: ProductionStack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    base = tmp_path_factory.mktemp("deployments")
    with pytest.MonkeyPatch.context() as env:
        # This process reads the registry and the bucket as the workers do.
        for key, value in deployed.env.items():
            env.setenv(key, value)
        yield Stack(deployed, base, Settings())


@pytest.fixture(scope="module")
def released(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A first champion, released through the `release` deployment by the worker."""
    spec = write_spec(tmp_path_factory.mktemp("specs"), **{"drift.cooldown_s": 3600})
    run = stack.run("release", spec)
    assert run["state"]["type"] == "COMPLETED", stack.logs(str(run["id"]))
    assert (
        model_registry.alias_version(stack.settings, "fraud-detector", model_registry.CHAMPION) == 1
    )
    return spec


def _s3_keys(bucket: str, prefix: str) -> list[str]:
    client = boto3.client("s3")  # the stack's endpoint and worker credentials, from the env
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return [item["Key"] for page in pages for item in page.get("Contents", [])]


def test_the_release_kept_its_artifacts_and_model_files_on_s3_and_triton_serves_them(
    stack: Stack, released: Path
) -> None:
    # MLflow's server proxied the model's artifacts into its bucket (no local artifact root).
    artifacts = _s3_keys("mlflow", "artifacts/")
    assert any(key.endswith("/MLmodel") for key in artifacts), artifacts[:20]
    assert not (stack.settings.home / "mlartifacts").exists()
    # Triton serves the champion from the S3 repository conveyor published it to.
    served = _s3_keys("models", f"triton/{NAME}/")
    assert {f"triton/{NAME}/1/model.onnx", f"triton/{NAME}/config.pbtxt"} <= set(served), served
    # Both replicas serve it, each loaded from the repository.
    fleet = replicas.configured(stack.settings)
    assert len(fleet) == 2
    for replica in fleet:
        assert triton_client.loaded_versions(replica.endpoint, NAME) == [1], replica.name
        control = triton_client.control_client(replica.endpoint)
        [state] = [m for m in control.index() if m.name == NAME]
        assert state.state == "READY"
    # The operator's view of it, with the stack's env file sourced: every replica.
    status = subprocess.run(
        [str(BIN / "conveyor"), "triton", "status"],
        env=stack.env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert status.returncode == 0, status.stdout + status.stderr
    said = " ".join(status.stdout.split()).split("up: replica")[1:]
    assert len(said) == 2 and all(f"{NAME}:1" in replica for replica in said), status.stdout
    # A caller of the stack: through the edge, over TLS, with the key the stack made for a demo
    # client; the champion's own answers.
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(credentials.EDGE_KEY_ENV, stack.production.secrets["EDGE_DEMO_KEY"])
        edge = replicas.probe_endpoint(stack.settings, fleet)
        assert edge.via_edge and edge.tls_ca_file
        rows = to_features(generate_transactions(50, seed=2, fraud_rate=0.05), load_spec(released))
        labels, _ = triton_client.infer_http(triton_client.http_client(edge), NAME, rows)
        direct = triton_client.http_client(fleet[0].endpoint)
        np.testing.assert_array_equal(labels, triton_client.infer_http(direct, NAME, rows)[0])


def test_the_score_deployment_scores_a_table_on_the_stacks_dask_workers(
    stack: Stack, released: Path
) -> None:
    """The `score` deployment, run by the cpu worker with compose's environment: its pieces are
    scored by the stack's Dask worker processes (CONVEYOR_DASK_ADDRESS), not by the flow run."""
    table = stack.base / "table"
    frame = generate_transactions(2000, seed=3, fraud_rate=0.05).drop(columns=["is_fraud"])
    for i, rows in enumerate(np.array_split(np.arange(len(frame)), 4)):
        (table / f"date=2026-11-0{i + 1}").mkdir(parents=True)
        frame.iloc[rows].to_parquet(table / f"date=2026-11-0{i + 1}" / "part-0.parquet")
    out = stack.base / "scores"
    run = stack.run(
        "score", model=NAME, input=str(table), output=str(out), compute="dask", timeout_s=300
    )
    assert run["state"]["type"] == "COMPLETED", stack.logs(str(run["id"]))
    written = sorted(out.rglob("*.parquet"))
    assert len(written) == 4 and sum(len(pd.read_parquet(p)) for p in written) == 2000
    workers = set(descendants(stack.production.pid("dask-worker")))
    writers = {int(pieces.stamp_of(str(p))["writer"].rsplit(":", 1)[1]) for p in written}
    assert writers and writers <= workers, (writers, workers)


def test_deploy_registers_every_deployment_with_its_schedule_and_trigger(stack: Stack) -> None:
    deployments = {str(d["name"]): d for d in stack.post("/deployments/filter", {})}
    assert set(deployments) == {
        "release",
        "nightly-drift",
        "drift-check",
        "retrain",
        "outcome-check",
        "explain",
        "score",
        "release-gpu",
    }
    assert all("conveyor" in d["tags"] for d in deployments.values())  # type: ignore[operator]
    [schedule] = deployments["nightly-drift"]["schedules"]  # type: ignore[misc]
    assert schedule["schedule"]["cron"] == "0 2 * * *"
    assert schedule["schedule"]["timezone"] == "Europe/London"
    assert deployments["drift-check"]["schedules"] == []  # the fleet run covers it nightly
    # The release form offers the fleet's models by name, each described; a path still goes.
    release = deployments["release"]
    form = release["parameter_openapi_schema"]["properties"]  # type: ignore[index]
    choice, free = form["spec_path"]["anyOf"]
    assert choice["enum"] == sorted(SHIPPED) and choice["type"] == "string"
    assert free == {"title": "another spec file", "type": "string"}
    assert all(f"**{m}**:" in form["spec_path"]["description"] for m in SHIPPED)
    assert release["parameters"] == {"spec_path": "fraud-detector"}
    assert form["resume_from"] == {  # no str/None toggle
        "title": "resume from",
        "type": "string",
        "description": form["resume_from"]["description"],
        "position": 1,
    }
    assert all(f"**{m}**" in str(release["description"]) for m in SHIPPED)


def test_anonymous_api_calls_are_refused(stack: Stack) -> None:
    for method, path in (
        ("POST", "/flow_runs/filter"),
        ("POST", f"/deployments/{stack.deployment_id('release')}/create_flow_run"),
        ("POST", "/events/filter"),
    ):
        response = httpx.request(method, f"{stack.api}{path}", json={}, timeout=10)
        assert response.status_code == 401, (path, response.status_code)
    wrong = httpx.post(f"{stack.api}/flow_runs/filter", json={}, auth=("conveyor", "x"))
    assert wrong.status_code == 401
    assert stack.runs("release", ["SCHEDULED", "PENDING"]) == []


def test_conveyor_without_the_credential_is_one_paragraph(stack: Stack, tmp_path: Path) -> None:
    env = {**stack.env(), "CONVEYOR_HOME": str(tmp_path / "state")}
    del env["PREFECT_API_AUTH_STRING"]
    done = subprocess.run(
        [str(BIN / "conveyor"), "run", "--spec", str(write_spec(tmp_path))],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    output = " ".join((done.stdout + done.stderr).split())
    assert done.returncode == 2, output
    assert "Traceback" not in output
    assert "answered 401 Unauthorized" in output and "PREFECT_API_AUTH_STRING" in output


def test_nightly_schedule_has_scheduled_runs(stack: Stack) -> None:
    deadline = time.monotonic() + 60
    while not (scheduled := stack.runs("nightly-drift", ["SCHEDULED"])):
        assert time.monotonic() < deadline, "the scheduler created no nightly-drift runs"
        time.sleep(2)
    times = sorted(str(r["expected_start_time"]) for r in scheduled)
    assert len(times) >= 2 and all(t.endswith(("01:00:00Z", "02:00:00Z")) for t in times)


def test_no_drift_no_event_no_retrain(stack: Stack, released: Path, tmp_path: Path) -> None:
    spec = write_spec(tmp_path, **{"drift.cooldown_s": 3600})
    run = stack.run("drift-check", spec)
    assert run["state"]["type"] == "COMPLETED", stack.logs(str(run["id"]))
    time.sleep(15)  # a trigger fires within seconds; give it time to show it does not
    assert stack.drift_events() == []
    assert stack.runs("retrain") == []


def test_drift_triggers_a_retrain_that_moves_the_champion_then_cooldown_skips(
    stack: Stack, released: Path, tmp_path: Path
) -> None:
    drifted = write_spec(tmp_path, **{"data.drift": 1.0, "drift.cooldown_s": 3600})
    run = stack.run("drift-check", drifted)
    assert run["state"]["type"] == "COMPLETED", stack.logs(str(run["id"]))
    [event] = wait_for_events(stack, 1, stack.logs(str(run["id"])))
    assert event["resource"]["prefect.resource.id"] == "conveyor.model.fraud-detector"  # type: ignore[index]
    assert float(event["payload"]["share"]) >= 0.3  # type: ignore[index]
    retrain = wait_for_runs(stack, "retrain", 1)[0]
    finished = stack.wait(str(retrain["id"]), timeout_s=400)
    assert finished["state"]["type"] == "COMPLETED", stack.logs(str(retrain["id"]))
    assert (
        model_registry.alias_version(stack.settings, "fraud-detector", model_registry.CHAMPION) == 2
    )
    assert (
        model_registry.alias_version(stack.settings, "fraud-detector", model_registry.PREVIOUS) == 1
    )

    # Version 2 learned the drifted distribution, so the drifted batch is now the norm and the
    # old distribution is the drift. It comes back inside the cooldown: a retrain run starts and
    # skips, saying why.
    assert stack.run("drift-check", drifted)["state"]["type"] == "COMPLETED"
    assert len(stack.drift_events()) == 1
    reverted = write_spec(tmp_path, **{"drift.cooldown_s": 3600})
    second_check = stack.run("drift-check", reverted)
    assert second_check["state"]["type"] == "COMPLETED", stack.logs(str(second_check["id"]))
    wait_for_events(stack, 2, stack.logs(str(second_check["id"])))
    second = wait_for_runs(stack, "retrain", 2)
    skipped = next(r for r in second if r["id"] != retrain["id"])
    assert stack.wait(str(skipped["id"]))["state"]["type"] == "COMPLETED"
    # The run's logs reach the server in batches, a moment after its final state.
    deadline = time.monotonic() + 30
    while "inside the 3600 s cooldown" not in (logs := stack.logs(str(skipped["id"]))):
        assert time.monotonic() < deadline, logs
        time.sleep(1)
    assert (
        model_registry.alias_version(stack.settings, "fraud-detector", model_registry.CHAMPION) == 2
    )


def test_the_nightly_outcome_check_catches_degradation_and_the_retrain_deployment_runs(
    stack: Stack, released: Path, tmp_path: Path
) -> None:
    """The nightly run on the worker, for a champion trained on the batch it checks (version 2
    learned the drifted distribution above, so drift stays quiet): with the generator's
    degradation knob off, no event and no retrain; with it on, the realised drop with its
    interval, `conveyor.performance.degraded`, and a retrain run of the retrain deployment."""

    def nightly(degradation: float) -> dict[str, object]:
        directory = tmp_path / f"fleet-{degradation}"
        directory.mkdir()
        write_spec(
            directory,
            **{"data.drift": 1.0, "drift.cooldown_s": 0, "outcomes.degradation": degradation},
        ).rename(directory / f"{NAME}.yaml")
        run = stack.run("nightly-drift", timeout_s=400, spec_dir=str(directory))
        assert run["state"]["type"] == "COMPLETED", stack.logs(str(run["id"]))
        return run

    retrains, drifted = len(stack.runs("retrain")), len(stack.drift_events())
    quiet = nightly(0.0)
    time.sleep(15)  # a trigger fires within seconds; give it time to show it does not
    assert stack.events(events.PERFORMANCE_DEGRADED) == []
    assert len(stack.runs("retrain")) == retrains
    assert last_outcome_verdict(stack) == "healthy", stack.logs(str(quiet["id"]))

    loud = nightly(0.8)
    deadline = time.monotonic() + 30
    while not (found := stack.events(events.PERFORMANCE_DEGRADED)):
        assert time.monotonic() < deadline, stack.logs(str(loud["id"]))
        time.sleep(1)
    [event] = found
    payload = event["payload"]
    assert event["resource"]["prefect.resource.id"] == f"conveyor.model.{NAME}"  # type: ignore[index]
    low, high = json.loads(payload["ci"])  # type: ignore[index]
    assert high < float(payload["released"]) and low <= float(payload["realised"]) <= high  # type: ignore[index]
    assert len(stack.drift_events()) == drifted  # the features did not move
    runs = wait_for_runs(stack, "retrain", retrains + 1)
    [retrain] = [r for r in runs if r["parameters"].get("reason") == "performance degraded"]  # type: ignore[union-attr]
    finished = stack.wait(str(retrain["id"]), timeout_s=400)
    assert finished["state"]["type"] == "COMPLETED", stack.logs(str(retrain["id"]))
    assert str(retrain["parameters"]["report_uri"]).startswith("runs:/")  # type: ignore[index]
    assert last_outcome_verdict(stack) == "degraded"


def last_outcome_verdict(stack: Stack) -> str:
    """The verdict of the model's newest outcome-check run in MLflow (what the worker logged)."""
    client = mlflow_store.client(stack.settings)
    experiment = client.get_experiment_by_name(NAME)
    assert experiment is not None
    [run] = client.search_runs(
        [experiment.experiment_id],
        filter_string=f"attributes.run_name = '{tracking.OUTCOME_RUN}'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return str(run.data.tags["conveyor.outcome.verdict"])


def test_make_deploy_creates_the_zombie_run_automation(stack: Stack) -> None:
    automations = stack.post("/automations/filter", {})
    [zombie] = [a for a in automations if a["name"] == "conveyor-crash-zombie-flow-runs"]
    trigger = zombie["trigger"]
    assert trigger["posture"] == "Proactive"  # type: ignore[index]
    # Suspended runs (the approval gate) stop beating without dying.
    assert "prefect.flow-run.Suspended" in trigger["expect"]  # type: ignore[index]
    # As the tests' `make deploy` asked; more than two of the workers' heartbeats.
    beat = int(stack.production.env["PREFECT_FLOWS_HEARTBEAT_FREQUENCY"])
    assert trigger["within"] == ZOMBIE_AFTER_S > 2 * beat  # type: ignore[index]
    assert zombie["actions"][0]["type"] == "change-flow-run-state"  # type: ignore[index]
    stack.make_deploy()  # idempotent: no second automation
    names = [a["name"] for a in stack.post("/automations/filter", {})]
    assert names.count("conveyor-crash-zombie-flow-runs") == 1
    # What make deploys by default: longer than three heartbeats at Prefect's default (180 s).
    shipped = yaml.safe_load((ROOT / "infra/prefect/zombie-runs.yaml").read_text())
    assert shipped["trigger"]["within"] >= 3 * 180


def descendants(pid: int) -> list[int]:
    """`pid` and every process under it (the worker and the flow runs it started)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        found.append(current := todo.pop())
        todo.extend(children.get(current, []))
    return found


def wait_for_runs(stack: Stack, deployment: str, count: int) -> list[dict[str, object]]:
    deadline = time.monotonic() + 90
    while len(runs := stack.runs(deployment)) < count:
        assert time.monotonic() < deadline, f"{deployment}: {len(runs)} runs, expected {count}"
        time.sleep(2)
    return runs


def wait_for_events(stack: Stack, count: int, context: str) -> list[dict[str, object]]:
    """The server stores events in batches, a moment after its triggers have seen them."""
    deadline = time.monotonic() + 30
    while len(events := stack.drift_events()) < count:
        assert time.monotonic() < deadline, (
            f"{len(events)} drift events, expected {count}\n{context}"
        )
        time.sleep(1)
    return events


@dataclass
class WorkerKilled:
    name: str
    killed: str  # the flow run whose worker died mid-retrain
    queued: str  # the retrain asked for right after


@pytest.fixture(scope="module")
def worker_killed(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> WorkerKilled:
    """The host running a retrain dies: its worker and the flow run's process SIGKILLed at the
    training step; a second retrain is asked for at once; the operator's (or systemd's) restart
    brings the worker back. The dead run's crash is detected ZOMBIE_AFTER_S later: the fleet
    tests run meanwhile (CLI releases of other models), and the test at the end checks it."""
    name = "worker-killed"
    base = tmp_path_factory.mktemp("worker-killed")
    spec = write_spec(base, name=name, **{"drift.cooldown_s": 0})
    killed = stack.start_run("retrain", spec)
    deadline = time.monotonic() + 300
    while not any(n.startswith("train-") for _, n in tracking.running_runs(stack.settings, name)):
        assert time.monotonic() < deadline, "the retrain never reached training"
        time.sleep(0.5)
    for pid in descendants(stack.production.pid("worker-cpu")):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    queued = stack.start_run("retrain", spec)
    # `make stack` starts what is down.
    restarted = stack.production.up()
    assert "worker-cpu" in restarted and "already up" in restarted
    return WorkerKilled(name, killed, queued)


# The fleet: one shipped spec per task (made small), under names of their own on the shared
# stack: a binary classifier, a multiclass one on LightGBM and a regression on XGBoost. What
# `--all` and the nightly deployment iterate is the same for three models as for all five (the
# other two shipped specs are released by test_fairness_release and test_outcomes_release), and
# each model costs the suite two releases and two nightly checks.
FLEET = {
    "fleet-card-fraud": ROOT / "deployments/models/fraud-detector.yaml",
    "fleet-merchant": ROOT / "deployments/models/merchant-category.yaml",
    "fleet-lgd": ROOT / "deployments/models/loss-given-default.yaml",
}


@dataclass
class Fleet:
    directory: Path
    first: subprocess.CompletedProcess[str]
    again: subprocess.CompletedProcess[str]
    status: list[dict[str, object]]


@pytest.fixture(scope="module")
def fleet(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Fleet:
    """`conveyor run --all` over the fleet of three, twice, then `conveyor status --json`; the
    module's last fixture, so its models do not meet the drift tests above."""
    directory = tmp_path_factory.mktemp("fleet")
    for name, base in FLEET.items():
        write_spec(directory, base, name=name).rename(directory / f"{name}.yaml")
    env = {**stack.env(), "CONVEYOR_SPEC_DIR": str(directory)}

    def conveyor(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(BIN / "conveyor"), *args],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=900,
        )

    first, again = conveyor("run", "--all"), conveyor("run", "--all")
    status = conveyor("status", "--json")
    assert status.returncode == 0, status.stdout + status.stderr
    rows = [json.loads(line) for line in status.stdout.splitlines() if line.startswith("{")]
    return Fleet(directory, first, again, rows)


# The killed worker's crash detection waits out its window while the fleet releases.
@pytest.mark.usefixtures("worker_killed")
def test_run_all_releases_every_model_and_status_lists_them(stack: Stack, fleet: Fleet) -> None:
    said = " ".join((fleet.first.stdout + fleet.first.stderr).split())
    assert fleet.first.returncode == 0, said[-4000:]
    rows = {str(r["model"]): r for r in fleet.status}
    for name in FLEET:
        assert model_registry.alias_version(stack.settings, name, model_registry.CHAMPION) == 1, (
            said
        )
        assert f"{name}: v1 is champion" in said
        row = rows[name]
        assert row["champion"]["version"] == 1 and row["served"] == [1], row  # type: ignore[index]
        assert str(row["last_release"]).startswith("v1 promoted"), row
        assert row["problems"] == [], row


def test_a_second_run_all_on_unchanged_data_registers_nothing(stack: Stack, fleet: Fleet) -> None:
    said = " ".join((fleet.again.stdout + fleet.again.stderr).split())
    assert fleet.again.returncode == 0, said[-4000:]
    client = mlflow_store.client(stack.settings)
    for name in FLEET:
        assert f"{name}: unchanged: champion v1 already is this model" in said, said[-3000:]
        assert [v.version for v in client.search_model_versions(f"name='{name}'")] == ["1"]


def test_the_nightly_drift_deployment_checks_every_model(stack: Stack, fleet: Fleet) -> None:
    run = stack.run("nightly-drift", timeout_s=400, spec_dir=str(fleet.directory))
    assert run["state"]["type"] == "COMPLETED", stack.logs(str(run["id"]))
    children = stack.post(
        "/flow_runs/filter",
        {"flow_runs": {"parent_flow_run_id": {"any_": [str(run["id"])]}}},
    )
    client = mlflow_store.client(stack.settings)
    for name in FLEET:
        experiment = client.get_experiment_by_name(name)
        assert experiment is not None
        checks = client.search_runs(
            [experiment.experiment_id], filter_string="attributes.run_name = 'drift-check'"
        )
        assert len(checks) == 1 and "drift_share" in checks[0].data.metrics, name
        assert checks[0].data.tags[tracking.TAG_FLOW_RUN] == str(run["id"])
        # ... and, beside it, its outcome check (every shipped spec says where labels come from)
        [outcome] = client.search_runs(
            [experiment.experiment_id],
            filter_string=f"attributes.run_name = '{tracking.OUTCOME_RUN}'",
        )
        assert outcome.data.tags["conveyor.outcome.verdict"] == "healthy", name
        assert outcome.data.tags[tracking.TAG_FLOW_RUN] == str(run["id"])
    # A drift-check and an outcome-check subflow per model, under the model's task.
    assert len(children) == 2 * len(FLEET)
    artifacts = stack.post("/artifacts/filter", {"artifacts": {"key": {"any_": ["fleet-status"]}}})
    [table] = [str(a["data"]) for a in artifacts if a["flow_run_id"] == run["id"]]
    tasks = {"fleet-merchant": "multiclass", "fleet-lgd": "regression"}
    assert all(f"| **{name}** | {tasks.get(name, 'binary')} | v1" in table for name in FLEET), table


def test_a_worker_killed_mid_retrain_crashes_its_run_and_the_next_retrain_runs(
    stack: Stack, worker_killed: WorkerKilled
) -> None:
    """The zombie-run automation marked the dead run Crashed, which freed the retrain
    deployment's slot; the model's lease expired unrenewed; the queued retrain then ran,
    repaired what the dead one left, and its version is served."""
    name = worker_killed.name
    crashed = stack.wait(worker_killed.killed, timeout_s=ZOMBIE_AFTER_S + 120)
    assert crashed["state"]["type"] == "CRASHED", crashed["state"]  # type: ignore[index]
    assert "No heartbeat" in str(crashed["state"]["message"])  # type: ignore[index]
    done = stack.wait(worker_killed.queued, timeout_s=300)
    assert done["state"]["type"] == "COMPLETED", stack.logs(worker_killed.queued)[-3000:]
    champion = model_registry.alias_version(stack.settings, name, model_registry.CHAMPION)
    assert champion is not None
    for replica in replicas.configured(stack.settings):
        assert triton_client.loaded_versions(replica.endpoint, name) == [champion], replica.name
    doctor = subprocess.run(
        [str(BIN / "conveyor"), "doctor", name],
        cwd=ROOT, env=stack.env(), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert doctor.returncode == 0, doctor.stdout + doctor.stderr
