"""prefect.yaml on a real `prefect server start` with a real `prefect worker start --pool cpu`:
the release deployment, the nightly drift check, and retraining triggered by its event.

Everything runs as it would in production: `prefect deploy --all` from this checkout, flow runs
picked up by the worker in their own processes, the drift event matched by the server's trigger.
"""

from __future__ import annotations

import secrets
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tasks import registry, triton_server
from tasks.settings import Settings
from tests.conftest import ROOT, write_spec
from tests.servers import BIN, clean_env, prefect_server, stop_process


@dataclass
class Stack:
    api: str
    base: Path
    settings: Settings
    auth_string: str  # the server runs with PREFECT_SERVER_API_AUTH_STRING
    worker: subprocess.Popen[bytes] | None = None

    @property
    def auth(self) -> tuple[str, str]:
        user, password = self.auth_string.split(":", 1)
        return user, password

    def env(self) -> dict[str, str]:
        return clean_env(
            PREFECT_API_URL=self.api,
            PREFECT_API_AUTH_STRING=self.auth_string,
            PREFECT_HOME=str(self.base / "client"),
            CONVEYOR_HOME=str(self.settings.home),
            CONVEYOR_PROJECT_DIR=str(ROOT),
        )

    def make_deploy(self) -> None:
        """What an operator runs: work pools, every deployment, the zombie-run automation."""
        done = subprocess.run(
            ["make", "-s", "deploy", f"PREFECT_API_URL={self.api}"],
            env=self.env(),
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=240,
        )
        assert done.returncode == 0, done.stdout + done.stderr

    def start_worker(self, log: str) -> subprocess.Popen[bytes]:
        command = [str(BIN / "prefect"), "worker", "start", "--pool", "cpu", "--limit", "2"]
        with (self.base / log).open("ab") as handle:
            return subprocess.Popen(
                command,
                env=self.env(),
                stdout=handle,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

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

    def start_run(self, deployment: str, spec: Path) -> str:
        """Ask for a deployment run; its flow run id."""
        flow = {"release": "release", "drift-check": "drift-check", "retrain": "retrain"}
        output = self.cli(
            "deployment", "run", f"{flow[deployment]}/{deployment}", "--param", f"spec_path={spec}"
        )
        return next(line.split(":")[-1].strip() for line in output.splitlines() if "UUID" in line)

    def run(self, deployment: str, spec: Path, timeout_s: float = 300) -> dict[str, object]:
        """Run a deployment through the worker and wait for a final state."""
        return self.wait(self.start_run(deployment, spec), timeout_s)

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
        body = {"filter": {"event": {"name": ["conveyor.drift.detected"]}}, "limit": 50}
        response = httpx.post(f"{self.api}/events/filter", json=body, timeout=10, auth=self.auth)
        response.raise_for_status()
        return list(response.json()["events"])


def _worker_up(api: str, auth: tuple[str, str]) -> bool:
    try:
        response = httpx.post(f"{api}/work_pools/cpu/workers/filter", json={}, timeout=2, auth=auth)
    except httpx.HTTPError:
        return False
    return response.status_code == 200 and bool(response.json())


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    base = tmp_path_factory.mktemp("deployments")
    settings = Settings(home=base / "state")
    auth_string = f"conveyor:{secrets.token_urlsafe(16)}"
    # The scheduler checks every 5 s instead of 60, so the nightly runs appear during the test.
    with prefect_server(
        base / "prefect",
        PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS="5",
        PREFECT_SERVER_API_AUTH_STRING=auth_string,
    ) as api:
        stack = Stack(api, base, settings, auth_string)
        stack.make_deploy()
        stack.worker = stack.start_worker("worker.log")
        try:
            deadline = time.monotonic() + 90
            while not _worker_up(api, stack.auth):
                assert stack.worker.poll() is None and time.monotonic() < deadline, (
                    base / "worker.log"
                ).read_text()[-3000:]
                time.sleep(0.5)
            yield stack
        finally:
            stop_process(stack.worker)
            triton_server.stop(settings)


@pytest.fixture(scope="module")
def released(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A first champion, released through the `release` deployment by the worker."""
    spec = write_spec(tmp_path_factory.mktemp("specs"), **{"drift.cooldown_s": 3600})
    run = stack.run("release", spec)
    assert run["state"]["type"] == "COMPLETED", stack.logs(str(run["id"]))
    assert registry.alias_version(stack.settings, "fraud-detector", registry.CHAMPION) == 1
    return spec


def test_deploy_registers_every_deployment_with_its_schedule_and_trigger(stack: Stack) -> None:
    names = {d["name"] for d in stack.post("/deployments/filter", {})}
    assert names == {"release", "drift-check", "retrain", "release-gpu"}
    [nightly] = stack.post(
        "/deployments/filter", {"deployments": {"name": {"any_": ["drift-check"]}}}
    )
    [schedule] = nightly["schedules"]  # type: ignore[misc]
    assert schedule["schedule"]["cron"] == "0 2 * * *"
    assert schedule["schedule"]["timezone"] == "Europe/London"


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
    while not (scheduled := stack.runs("drift-check", ["SCHEDULED"])):
        assert time.monotonic() < deadline, "the scheduler created no drift-check runs"
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
    assert registry.alias_version(stack.settings, "fraud-detector", registry.CHAMPION) == 2
    assert registry.alias_version(stack.settings, "fraud-detector", registry.PREVIOUS) == 1

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
    assert registry.alias_version(stack.settings, "fraud-detector", registry.CHAMPION) == 2


def test_make_deploy_creates_the_zombie_run_automation(stack: Stack) -> None:
    automations = stack.post("/automations/filter", {})
    [zombie] = [a for a in automations if a["name"] == "conveyor-crash-zombie-flow-runs"]
    assert zombie["trigger"]["posture"] == "Proactive"  # type: ignore[index]
    # Longer than three heartbeats at Prefect's default (180 s): no live run taken for dead.
    assert zombie["trigger"]["within"] >= 3 * 180  # type: ignore[index]
    assert zombie["actions"][0]["type"] == "change-flow-run-state"  # type: ignore[index]
    stack.make_deploy()  # idempotent: no second automation
    names = [a["name"] for a in stack.post("/automations/filter", {})]
    assert names.count("conveyor-crash-zombie-flow-runs") == 1


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
