"""A release killed (SIGKILL, no clean-up) while its smoke test runs, then resumed with
`conveyor run --resume last`: the finished steps are reused, nothing is trained twice, and the
version the killed release registered is the one that goes live."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from prefect import flow, task
from prefect.client.schemas.objects import FlowRun
from prefect.settings import PREFECT_API_URL
from prefect.states import State

from tasks.core import names, pushgateway
from tasks.core.attempts import RESUMABLE
from tasks.core.settings import Settings
from tasks.core.spec import load_spec
from tasks.ops.resume import releases
from tasks.registry import mlflow_store, model_registry
from tasks.serving import triton_client, triton_server
from tests.conftest import write_spec
from tests.servers import BIN, clean_env, in_smoke_test, stop_process

RESUMED_STEPS = {
    "snapshot-data",
    "validate-data",
    "split-data",
    "open-candidate-run",
    "trial",
    "train-candidate",
    "export-onnx",
    "tune-serving",
}


@dataclass
class Resumed:
    settings: Settings
    name: str
    killed: FlowRun
    resumed: FlowRun
    done: subprocess.CompletedProcess[str]  # the resumed release's console
    again: subprocess.CompletedProcess[str]


@pytest.fixture(scope="module")
def resumed(prefect_api: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Resumed]:
    base = tmp_path_factory.mktemp("resume")
    env = clean_env(CONVEYOR_HOME=str(base / "state"), PREFECT_API_URL=str(PREFECT_API_URL.value()))
    # Small: what is measured is which steps run again, not how long they take.
    # The smoke test is where the release is killed: long enough (a few seconds) that polling
    # the API every 0.2 s on a busy host sees it running.
    spec = write_spec(
        base,
        **{
            "data.rows": 4000,
            "estimator.params": {"n_estimators": 12, "max_depth": 8},
            "smoke.latency_requests": 1000,
            "smoke.load_requests": 6000,
        },
    )
    command = [str(BIN / "conveyor"), "run", "--spec", str(spec)]
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CONVEYOR_HOME", str(base / "state"))
        settings = Settings()
        try:
            with (base / "killed.log").open("wb") as log:
                process = subprocess.Popen(
                    command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
                )
                deadline = time.monotonic() + 300
                while not in_smoke_test(str(spec)):
                    assert process.poll() is None, (base / "killed.log").read_text()[-3000:]
                    assert time.monotonic() < deadline, "the release never reached its smoke test"
                    time.sleep(0.2)
                process.kill()  # SIGKILL: no except-block clean-up, no final state
                process.wait(10)
            (killed,) = releases(str(spec))
            done = subprocess.run(
                [*command, "--resume", "last"], env=env, capture_output=True, text=True, timeout=600
            )
            assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
            resumed, _ = releases(str(spec))
            again = subprocess.run(
                [*command, "--resume", "last"], env=env, capture_output=True, text=True, timeout=120
            )
            yield Resumed(settings, load_spec(spec).name, killed, resumed, done, again)
        finally:
            if process.poll() is None:
                stop_process(process)
            triton_server.stop(settings)


def test_the_killed_release_left_its_version_as_challenger_only(resumed: Resumed) -> None:
    assert resumed.killed.state is not None and not resumed.killed.state.is_completed()
    assert resumed.resumed.parameters["resume_from"] == str(resumed.killed.id)


def test_resume_reuses_the_finished_steps_and_reruns_the_rest(resumed: Resumed) -> None:
    states: dict[str, set[str]] = {}
    for run in pushgateway.task_runs(str(resumed.resumed.id)):
        assert run.state is not None
        states.setdefault(pushgateway.step_name(run), set()).add(run.state.name)
    for step in RESUMED_STEPS:
        assert states[step] == {"Cached"}, (step, states)
    for step in ("register-challenger", "publish-version", "serve-candidate", "smoke-test"):
        assert states[step] == {"Completed"}, (step, states)
    assert states["swap-in"] == {"Completed"} and states["promote"] == {"Completed"}


def test_nothing_was_trained_or_registered_twice(resumed: Resumed) -> None:
    settings, name = resumed.settings, resumed.name
    client = mlflow_store.client(settings)
    experiment = client.get_experiment_by_name(name)
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id])
    candidates = [r for r in runs if r.info.run_name == f"train-{name}"]
    trials = [r for r in runs if r.data.tags.get("mlflow.parentRunId")]
    assert len(candidates) == 1 and len(trials) == 2
    assert [v.version for v in client.search_model_versions(f"name='{name}'")] == [1]
    assert model_registry.alias_version(settings, name, model_registry.CHAMPION) == 1
    assert model_registry.alias_version(settings, name, model_registry.CHALLENGER) is None
    endpoint = triton_server.endpoint(settings)
    assert triton_client.loaded_versions(endpoint, name) == [1]
    assert not triton_client.grpc_client(endpoint).is_model_ready(names.candidate_name(name, 1))
    assert candidates[0].info.status == "FINISHED"
    assert Path(settings.repository, name, "1", "model.onnx").exists()


def test_a_completed_release_is_not_resumed(resumed: Resumed) -> None:
    assert resumed.again.returncode == 2
    assert "completed: there is nothing to resume" in " ".join(resumed.again.stdout.split())


def test_results_are_reused_within_an_attempt_never_across(prefect_api: None, tmp_path: Path):
    calls: list[int] = []

    @task(cache_policy=RESUMABLE, persist_result=True)
    def step(x: int) -> int:
        calls.append(x)
        return x * 2

    @flow
    def attempt(x: int, resume_from: str | None = None) -> int:
        return step(x)

    run = attempt.with_options(result_storage=tmp_path)

    def run_id(state: State) -> str:
        assert state.is_completed()
        return str(state.state_details.flow_run_id)

    first = run_id(run(1, return_state=True))
    run_id(run(1, return_state=True))
    assert calls == [1, 1]  # the same inputs in a new release: computed again
    resumed = run_id(run(1, resume_from=first, return_state=True))
    assert calls == [1, 1]
    run_id(run(1, resume_from=resumed, return_state=True))  # a resume of a resume
    run_id(run(2, resume_from=first, return_state=True))  # other inputs: computed
    assert calls == [1, 1, 2]


def test_the_console_shows_each_stage_and_no_log_lines(resumed: Resumed) -> None:
    """What a person reads: the stages with their figures, the summary, and no ERROR or WARNING
    line (Prefect's and MLflow's go to the log file)."""
    lines = (resumed.done.stdout + resumed.done.stderr).splitlines()
    noisy = [line for line in lines if any(w in line for w in ("ERROR", "WARNING", "Trace"))]
    assert not noisy, "\n".join(lines)  # the whole console: a traceback's cause is below it
    shown = [line.split()[1] for line in lines if line.startswith("✓ ")]
    assert shown == [
        "model",
        "state",
        "data",
        "training",
        "validation",
        "registration",
        "ONNX",
        "smoke",
        "swap",
        "promotion",
        "model",
    ], lines
    assert any("ROC AUC" in line and line.startswith("✓ training") for line in lines)
    log = resumed.settings.home / "logs" / "conveyor.log"
    assert "Finished in state" in log.read_text()  # Prefect's lines are there instead


def test_a_completed_release_prunes_its_step_results(resumed: Resumed) -> None:
    """The killed attempt's results served the resumed run (above), then went with it."""
    results = Path(resumed.settings.results)
    assert results.is_dir()
    assert not (results / str(resumed.killed.id)).exists()
    assert [p for p in results.iterdir() if p.is_dir()] == []
