"""The approval gate on the production topology (`make stack`: Prefect server on PostgreSQL,
MLflow's basic-auth server, Triton on the S3 repository): approve, reject, and time out.

Releases run as `conveyor run` subprocesses against that server with the stack's env file, as a
scheduled or UI-triggered run would. Approval goes through `conveyor approve`; rejection through
the same REST call the Prefect UI's "Resume" form makes.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from mlflow import MlflowClient

from tasks.core import names
from tasks.core.settings import Settings
from tasks.core.storage import open_store
from tasks.registry import alias_history, model_registry
from tasks.serving import replicas, triton_client
from tests.conftest import write_spec
from tests.servers import BIN, ProductionStack, clean_env, stop_process

# Its own model on the shared stack: the other server tests' models are theirs.
NAME = "approval-fraud"


@dataclass
class Gate:
    production: ProductionStack
    base: Path
    settings: Settings
    # Every release started, so a test that fails while one is paused does not leave it behind.
    started: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def api(self) -> str:
        return self.production.api

    def env(self) -> dict[str, str]:
        return clean_env(
            **{**self.production.env, "CONVEYOR_HOME": str(self.settings.home)},
            PREFECT_HOME=str(self.base / "client"),
        )

    def spec(self, **overrides: object) -> Path:
        return write_spec(self.base, name=NAME, **overrides)

    def logs(self, run_id: str) -> str:
        return self.production.flow_run_logs(run_id)

    def conveyor(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(BIN / "conveyor"), *args],
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=240,
        )

    def post(self, path: str, body: dict[str, object]) -> httpx.Response:
        return httpx.post(f"{self.api}{path}", json=body, timeout=30, auth=self.production.auth)

    def release(self, spec: Path) -> subprocess.Popen[bytes]:
        process = subprocess.Popen(
            # Forced: the gate is under test, and two tests here share one spec.
            [str(BIN / "conveyor"), "run", "--spec", str(spec), "--force"],
            env=self.env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.started.append(process)
        return process

    def paused_run(self, release: subprocess.Popen[bytes], timeout_s: float = 240) -> str:
        deadline = time.monotonic() + timeout_s
        body = {"flow_runs": {"state": {"type": {"any_": ["PAUSED"]}}}}
        while time.monotonic() < deadline:
            runs = self.post("/flow_runs/filter", body).json()
            if runs:
                return str(runs[0]["id"])
            assert release.poll() is None, release.stdout.read().decode() if release.stdout else ""
            time.sleep(1)
        raise AssertionError("the release never paused for approval")


def finish(release: subprocess.Popen[bytes], timeout_s: float = 240) -> tuple[int, str]:
    try:
        output, _ = release.communicate(timeout=timeout_s)
    finally:
        stop_process(release)
    return release.returncode, " ".join(output.decode(errors="replace").split())


@pytest.fixture(scope="module")
def gate(production: ProductionStack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gate]:
    base = tmp_path_factory.mktemp("approval")
    with pytest.MonkeyPatch.context() as env:
        # This process reads the registry and Triton as the releases do.
        for key, value in production.env.items():
            env.setenv(key, value)
        gate = Gate(production, base, Settings(home=base / "state"))
        try:
            yield gate
        finally:
            for release in gate.started:
                stop_process(release)


def version_tags(gate: Gate, version: int) -> dict[str, str]:
    return MlflowClient(gate.settings.tracking_uri).get_model_version(NAME, str(version)).tags


def served(gate: Gate) -> list[int]:
    """What the stack's replicas serve: the same on every one (a release changes all or none)."""
    each = [
        triton_client.loaded_versions(r.endpoint, NAME) for r in replicas.configured(gate.settings)
    ]
    assert len(each) == 2 and each[0] == each[1], each
    return each[0]


def candidate_ready(gate: Gate, version: int) -> bool:
    """Whether the candidate is loaded, on every replica alike."""
    name = names.candidate_name(NAME, version)
    each = {
        triton_client.control_client(r.endpoint).is_ready(name)
        for r in replicas.configured(gate.settings)
    }
    assert len(each) == 1, f"{name} is loaded on some replicas only"
    return each.pop()


def test_approved_release_is_promoted_and_the_decision_recorded(gate: Gate) -> None:
    spec = gate.spec(**{"promotion.requires_approval": True, "promotion.approval_timeout_s": 600})
    release = gate.release(spec)
    run_id = gate.paused_run(release)
    approve = subprocess.run(
        [
            str(BIN / "conveyor"),
            "approve",
            run_id,
            "--approver",
            "alice@bank",
            "--reason",
            "RISK-42 signed",
        ],
        env=gate.env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert approve.returncode == 0, approve.stdout + approve.stderr
    code, output = finish(release)
    assert code == 0, output
    assert model_registry.alias_version(gate.settings, NAME, model_registry.CHAMPION) == 1
    tags = version_tags(gate, 1)
    assert tags["conveyor.approval"] == "approved"
    assert tags["conveyor.approval.approver"] == "alice@bank"
    champion_move = [m for m in alias_history.moves(gate.settings, NAME) if m.alias == "champion"]
    assert champion_move[-1].actor == "alice@bank"
    assert champion_move[-1].reason == "approved: RISK-42 signed"


def test_rejection_from_the_ui_api_keeps_the_champion(gate: Gate) -> None:
    spec = gate.spec(**{"promotion.requires_approval": True, "promotion.approval_timeout_s": 600})
    release = gate.release(spec)
    run_id = gate.paused_run(release)
    # What the Prefect UI's Resume form sends.
    response = gate.post(
        f"/flow_runs/{run_id}/resume",
        {"run_input": {"approve": False, "approver": "bob", "reason": "calibration drifted"}},
    )
    assert response.status_code in (200, 201), response.text
    code, output = finish(release)
    assert code == 2, output
    assert "was not approved (bob: calibration drifted)" in output
    assert model_registry.alias_version(gate.settings, NAME, model_registry.CHAMPION) == 1
    assert model_registry.alias_version(gate.settings, NAME, model_registry.CHALLENGER) is None
    assert version_tags(gate, 2)["conveyor.approval"] == "rejected"
    assert served(gate) == [1]
    assert not open_store(gate.settings.repository).exists(f"{NAME}/2")


def test_no_decision_in_time_is_a_rejection(gate: Gate) -> None:
    spec = gate.spec(**{"promotion.requires_approval": True, "promotion.approval_timeout_s": 6})
    code, output = finish(gate.release(spec))
    assert code == 2, output
    assert "no decision within 6 s" in output
    assert model_registry.alias_version(gate.settings, NAME, model_registry.CHAMPION) == 1
    assert version_tags(gate, 3)["conveyor.approval.approver"] == "(nobody)"
    assert served(gate) == [1]


def test_approval_without_a_server_fails_before_any_work(tmp_path: Path) -> None:
    spec = write_spec(tmp_path, **{"promotion.requires_approval": True})
    result = subprocess.run(
        [str(BIN / "conveyor"), "run", "--spec", str(spec)],
        env=clean_env(CONVEYOR_HOME=str(tmp_path / "state")),
        capture_output=True,
        text=True,
        timeout=180,
    )
    output = " ".join((result.stdout + result.stderr).split())
    assert result.returncode == 2, output
    assert "requires approval, which needs a Prefect server" in output
    assert not (tmp_path / "state" / "mlflow.db").exists()


def test_decisions_were_emitted_as_events(gate: Gate) -> None:
    """Runs after the three decisions above (pytest keeps file order)."""
    body = {
        "filter": {
            "event": {"name": ["conveyor.model.approved", "conveyor.model.rejected"]},
            "resource": {"id": [f"conveyor.model.{NAME}"]},
        },
        "limit": 50,
    }
    deadline = time.monotonic() + 30  # the server persists events asynchronously
    while True:
        page = gate.post("/events/filter", body).json()
        seen = sorted((e["event"], e["payload"]["approver"]) for e in page["events"])
        if len(seen) >= 3 or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert seen == [
        ("conveyor.model.approved", "alice@bank"),
        ("conveyor.model.rejected", "(nobody)"),
        ("conveyor.model.rejected", "bob"),
    ]


def _flow_run_processes(run_id: str) -> list[int]:
    """Pids of the processes a worker started for this flow run (they carry its id)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            environ = (proc / "environ").read_bytes()
        except OSError:
            continue  # gone, or not ours to read
        if f"PREFECT__FLOW_RUN_ID={run_id}".encode() in environ.split(b"\0"):
            found.append(int(proc.name))
    return found


def test_a_deployment_run_suspends_freeing_its_worker_and_completes_once_approved(
    gate: Gate, deployed: ProductionStack
) -> None:
    """Runs last here: it moves the champion. The run a worker picked up suspends for its
    reviewer: no process holds it while it waits; doctor and a second release respect it; once
    approved, a worker runs it again and it completes."""
    champion = model_registry.alias_version(gate.settings, NAME, model_registry.CHAMPION)
    assert champion is not None
    spec = gate.spec(**{"promotion.requires_approval": True, "promotion.approval_timeout_s": 900})
    [deployment] = gate.post(
        "/deployments/filter", {"deployments": {"name": {"any_": ["release"]}}}
    ).json()
    created = gate.post(
        f"/deployments/{deployment['id']}/create_flow_run",
        {"parameters": {"spec_path": str(spec), "force": True}},
    )
    assert created.status_code in (200, 201), created.text
    run_id = str(created.json()["id"])

    def state() -> dict[str, str]:
        response = httpx.get(f"{gate.api}/flow_runs/{run_id}", auth=gate.production.auth)
        return dict(response.json()["state"])

    deadline = time.monotonic() + 300
    while state()["name"] != "Suspended":
        assert state()["type"] not in {"FAILED", "CRASHED", "COMPLETED"}, state()
        assert time.monotonic() < deadline, f"never suspended: {state()}"
        time.sleep(1)
    # The worker's slot is free: its flow-run process ended (give it a moment to exit).
    deadline = time.monotonic() + 30
    while _flow_run_processes(run_id):
        assert time.monotonic() < deadline, f"still running: {_flow_run_processes(run_id)}"
        time.sleep(0.5)
    new = model_registry.alias_version(gate.settings, NAME, model_registry.CHALLENGER)
    assert new is not None and new > champion
    tags = version_tags(gate, new)
    assert (tags["conveyor.approval"], tags["conveyor.approval.flow_run"]) == ("pending", run_id)
    # Callers still get the champion; the candidate waits under its own name.
    assert champion in served(gate) and new not in served(gate)
    assert candidate_ready(gate, new)
    # Nobody treats the waiting challenger as a leftover of a dead release (asked as an
    # operator would: this process's Prefect settings predate the stack's env).
    checked = gate.conveyor("doctor", NAME)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    listed = gate.conveyor("status", "--json")
    assert listed.returncode == 0, listed.stdout + listed.stderr
    [row] = [json.loads(x) for x in listed.stdout.splitlines() if f'"model":"{NAME}"' in x]
    assert row["approval_pending"] == new and row["problems"] == [], row
    second = gate.conveyor("run", "--spec", str(gate.spec()), "--force")
    said = " ".join((second.stdout + second.stderr).split())
    assert second.returncode == 2, said
    assert f"awaits approval in flow run {run_id}" in said and "Traceback" not in said
    approve = gate.conveyor("approve", run_id, "--approver", "carol", "--reason", "MRM-7")
    assert approve.returncode == 0, approve.stdout + approve.stderr
    deadline = time.monotonic() + 400
    while state()["type"] != "COMPLETED":
        assert state()["type"] not in {"FAILED", "CRASHED", "CANCELLED"}, gate.logs(run_id)
        assert time.monotonic() < deadline, f"not completed after approval: {state()}"
        time.sleep(2)
    assert model_registry.alias_version(gate.settings, NAME, model_registry.CHAMPION) == new
    assert model_registry.alias_version(gate.settings, NAME, model_registry.CHALLENGER) is None
    tags = version_tags(gate, new)
    assert (tags["conveyor.approval"], tags["conveyor.approval.approver"]) == ("approved", "carol")
    assert new in served(gate)
    assert not candidate_ready(gate, new)
    checked = gate.conveyor("doctor", NAME)
    assert checked.returncode == 0, checked.stdout + checked.stderr
