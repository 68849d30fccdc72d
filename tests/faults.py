"""What every fault test shares: a state directory driven by `conveyor` subprocesses, the
moments a release reaches, and the invariant that must hold after any failure."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from typer.testing import CliRunner

from cli.main import app
from tasks.core import names
from tasks.core.settings import Settings
from tasks.core.spec import ModelSpec, load_spec
from tasks.core.storage import open_store, repository_versions, verify_dir
from tasks.datasets.data import to_features
from tasks.datasets.synthetic import generate_transactions
from tasks.modeling.onnx import predict
from tasks.ops.doctor import checks, scene
from tasks.registry import model_registry
from tasks.serving import triton_client, triton_server
from tests.conftest import ROOT
from tests.servers import BIN

CONVEYOR = str(BIN / "conveyor")
# A spec small enough that a fault test's many releases take seconds each (write_spec overrides).
SMALL_RELEASE: dict[str, object] = {
    "data.rows": 4000,
    "estimator.params": {"n_estimators": 12, "max_depth": 8},
    "search.trials": 1,
    "search.parallel": 1,
    "smoke.rows": 300,
    "smoke.latency_requests": 50,
    "smoke.load_requests": 200,
}


@dataclass
class Site:
    base: Path
    settings: Settings
    spec_path: Path
    env: dict[str, str]
    killed_servers: list[int] = field(default_factory=list)

    @property
    def spec(self) -> ModelSpec:
        return load_spec(self.spec_path)

    @property
    def name(self) -> str:
        return self.spec.name

    def start(
        self, *args: str, log: str, env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        """A conveyor command in its own session (so SIGKILL takes all of it)."""
        handle = (self.base / log).open("wb")
        return subprocess.Popen(
            [CONVEYOR, *args],
            env=self.env if env is None else env,
            cwd=ROOT,
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def output(self, log: str) -> str:
        return (self.base / log).read_text(errors="replace")

    def run(self, *args: str, timeout_s: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [CONVEYOR, *args],
            env=self.env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )

    def release(self, *args: str) -> subprocess.CompletedProcess[str]:
        # Every release here rebuilds the champion's data and spec: forced, so each registers.
        return self.run("run", "--spec", str(self.spec_path), "--force", *args)

    def champion(self) -> int | None:
        return model_registry.alias_version(self.settings, self.name, model_registry.CHAMPION)


def ok(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    return done.stdout


def wait_until(condition: Callable[[], bool], what: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 300
    while not condition():
        assert process.poll() is None, f"the release ended before {what}"
        assert time.monotonic() < deadline, f"never reached: {what}"
        time.sleep(0.1)


def kill(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL the whole command: no except-block clean-up, no final state."""
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(10)


def serving(site: Site) -> triton_server.ServerState | None:
    return triton_server.status(site.settings)


def loaded(site: Site) -> list[str]:
    state = serving(site)
    if state is None:
        return []
    return [f"{e.name}:{e.version}" for e in triton_client.control_client(state.endpoint).index()
            if e.state == "READY"]  # fmt: skip


def next_version(site: Site) -> int:
    return max(scene.registered_versions(site.settings, site.name), default=0) + 1


def candidate_ready(site: Site, version: int) -> bool:
    """The release's candidate is served (its smoke test is next). Candidates are loaded from
    the request's files, so Triton's index does not list them: ask the model."""
    state = serving(site)
    name = names.candidate_name(site.name, version)
    return state is not None and triton_client.control_client(state.endpoint).is_ready(name)


def assert_invariant(site: Site) -> None:
    """The promise after any failure, checked against the real servers."""
    settings, name = site.settings, site.name
    state = serving(site)
    assert state is not None, "the embedded Triton is not serving"
    champion = site.champion()
    previous = model_registry.alias_version(settings, name, model_registry.PREVIOUS)
    assert champion is not None
    assert model_registry.alias_version(settings, name, model_registry.CHALLENGER) is None
    store = open_store(settings.repository)
    live = sorted(v for v in (champion, previous) if v is not None)
    for version in live:
        verify_dir(store, f"{name}/{version}")
    assert triton_client.loaded_versions(state.endpoint, name) == live
    control = triton_client.control_client(state.endpoint)
    for version in scene.registered_versions(settings, name):
        assert not control.is_ready(names.candidate_name(name, version)), version
    # The champion answers unversioned requests like its own ONNX file.
    rows = to_features(generate_transactions(200, seed=11, fraud_rate=0.05), site.spec)
    offline_labels, offline_proba = predict(store.read_file(f"{name}/{champion}/model.onnx"), rows)
    labels, proba = triton_client.infer_http(triton_client.http_client(state.endpoint), name, rows)
    np.testing.assert_array_equal(labels, offline_labels)
    np.testing.assert_allclose(proba, offline_proba, atol=1e-5)
    # Retention holds across every release of the module (forced: the data never changes).
    present = repository_versions(store, name)
    assert len(present) <= 2 + site.spec.retention.keep_last, present
    for pid in site.killed_servers:
        assert triton_server.stray_stubs(pid) == [], f"stubs of killed server {pid} still run"
    report = checks.examine(settings, [name])
    assert report.clean and not report.problems, checks.report_lines(report)
    # `conveyor doctor` itself, in this process: the same command and exit code, without the
    # seconds a new process spends importing MLflow, Prefect and scikit-learn.
    env = {k: v for k, v in site.env.items() if k.startswith(("CONVEYOR_", "AWS_"))}
    done = CliRunner().invoke(app, ["doctor", name], env=env)
    assert done.exit_code == 0, done.output


def assert_one_paragraph(output: str) -> None:
    assert "Traceback" not in output, output[-3000:]
    assert "error:" in output
