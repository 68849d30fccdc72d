"""The embedded tritonserver from the nvidia-pytriton wheel: lifecycle, serving, refusals."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from tritonclient.utils import InferenceServerException
from typer.testing import CliRunner

from cli.main import app
from tasks.core.settings import Settings
from tasks.core.spec import DEFAULT_SPEC, ModelSpec, load_spec
from tasks.core.storage import IntegrityError, LocalStore
from tasks.datasets.data import to_features, to_target
from tasks.datasets.synthetic import generate_transactions
from tasks.modeling.onnx import convert, input_bounds, predict
from tasks.modeling.training import build_pipeline
from tasks.serving import answers, model_config, rollout, triton_client, triton_ports, triton_server


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    home = tmp_path_factory.mktemp("triton") / "state"
    settings = Settings(home=home)
    triton_server.start(settings)
    try:
        yield settings
    finally:
        triton_server.stop(settings)


@pytest.fixture(scope="module")
def model() -> tuple[ModelSpec, bytes, np.ndarray]:
    spec = load_spec(DEFAULT_SPEC)
    spec = spec.model_copy(
        update={"estimator": spec.estimator.model_copy(update={"params": {"n_estimators": 10}})}
    )
    frame = generate_transactions(3000, seed=5, fraud_rate=0.05)
    features = to_features(frame, spec)
    fitted = build_pipeline(spec).fit(features, to_target(frame, spec))
    return spec, convert(fitted, spec.n_features), features


def test_server_is_up_on_loopback_with_its_state_recorded(server: Settings) -> None:
    state = triton_server.status(server)
    assert state is not None
    assert state.endpoint.http.startswith("127.0.0.1:")
    assert Path(state.log_path).is_file()
    assert triton_client.http_client(state.endpoint).is_server_live()
    assert triton_client.grpc_client(state.endpoint).is_server_ready()
    with pytest.raises(triton_server.TritonServerError, match="already running"):
        triton_server.start(server)


def test_published_version_loads_serves_and_unloads(server: Settings, model) -> None:
    spec, onnx_bytes, features = model
    store = LocalStore(Path(server.repository))
    rollout.publish_version(store, server.repository, spec, 1, onnx_bytes, "python")
    endpoint = triton_server.endpoint(server)
    triton_client.load_versions(endpoint, spec, "python", [1], timeout_s=60)
    assert triton_client.loaded_versions(endpoint, spec.name) == [1]
    labels, proba = triton_client.infer_grpc(
        triton_client.grpc_client(endpoint), spec.name, features[:64], "1"
    )
    offline_labels, offline_proba = predict(onnx_bytes, features[:64])
    np.testing.assert_array_equal(labels, offline_labels)
    np.testing.assert_allclose(proba, offline_proba, atol=1e-6)
    triton_client.unload_model(endpoint, spec.name)
    assert triton_client.loaded_versions(endpoint, spec.name) == []


def test_tampered_version_is_refused_before_load(server: Settings, model) -> None:
    spec, onnx_bytes, _ = model
    spec = spec.model_copy(update={"name": "tampered"})
    store = LocalStore(Path(server.repository))
    rollout.publish_version(store, server.repository, spec, 1, onnx_bytes, "python")
    (Path(server.repository) / "tampered" / "1" / "model.onnx").write_bytes(b"not the model")
    from tasks.registry.model_registry import ModelRef

    ref = ModelRef(name="tampered", version=1, run_id="r", model_uri="models:/x")
    with pytest.raises(IntegrityError, match=r"model.onnx sha256"):
        rollout.serve_candidate(server, spec, ref)
    assert triton_client.loaded_versions(triton_server.endpoint(server), "tampered") == []


def test_port_already_taken_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        settings = Settings(home=tmp_path / "state", triton_http_port=port)
        with pytest.raises(triton_ports.PortInUseError) as err:
            triton_server.start(settings)
        assert f"port {port}" in str(err.value)
        assert "CONVEYOR_TRITON_HTTP_PORT" in str(err.value)
        assert triton_server.read_state(settings) is None


def test_cli_reports_a_taken_port_without_a_traceback(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {"CONVEYOR_HOME": str(tmp_path / "s"), "CONVEYOR_TRITON_GRPC_PORT": str(port)}
        result = CliRunner().invoke(app, ["triton", "up"], env=env)
    assert result.exit_code == 2
    assert f"port {port} on 127.0.0.1 is already in use" in " ".join(result.output.split())
    assert "Traceback" not in result.output


def test_cli_up_status_down(tmp_path: Path) -> None:
    env = {"CONVEYOR_HOME": str(tmp_path / "s")}
    runner = CliRunner()
    try:
        up = runner.invoke(app, ["triton", "up"], env=env)
        assert up.exit_code == 0, up.output
        assert "no released model yet" in " ".join(up.output.split())
        status = runner.invoke(app, ["triton", "status"], env=env)
        assert status.exit_code == 0
        assert "up: pid" in status.output
    finally:
        down = runner.invoke(app, ["triton", "down"], env=env)
    assert down.output.strip() == "stopped"
    assert runner.invoke(app, ["triton", "status"], env=env).exit_code == 1
    state_pid = (
        None if (s := triton_server.read_state(Settings(home=tmp_path / "s"))) is None else s.pid
    )
    assert state_pid is None


def test_stop_ends_the_process(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "state")
    state = triton_server.start(settings)
    assert triton_server.stop(settings)
    assert (
        not Path(f"/proc/{state.pid}").exists()
        or b"tritonserver" not in Path(f"/proc/{state.pid}/cmdline").read_bytes()
    )
    assert not triton_server.stop(settings)
    assert os.environ.get("CONVEYOR_HOME") is None


def test_two_processes_needing_the_server_at_once_start_one(tmp_path: Path) -> None:
    """Releases of two models on one state directory both call ensure_running at their start."""
    env = {**os.environ, "CONVEYOR_HOME": str(tmp_path / "state")}
    code = "from tasks.serving import triton_server as t; "
    code += "from tasks.core.settings import Settings as S; print(t.ensure_running(S()).pid)"
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        for _ in range(2)
    ]
    results = [p.communicate(timeout=120) for p in processes]
    settings = Settings(home=tmp_path / "state")
    pids = {int(out) for out, _ in results if out.strip().isdigit()}
    try:
        assert [p.returncode for p in processes] == [0, 0], [r[1][-2000:] for r in results]
        assert len(pids) == 1, pids  # the second found the first's server, started no other
        state = triton_server.status(settings)
        assert state is not None and {state.pid} == pids
    finally:
        triton_server.stop(settings)
        for pid in pids:  # a second server, had there been one
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)


SLOW_MODEL = b"""
import time

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        time.sleep(6)  # a model (or a stub) that takes longer to come up than allowed

    def execute(self, requests):  # the served contract (the config's warm-up calls it)
        out = []
        for request in requests:
            n = pb_utils.get_input_tensor_by_name(request, "features").as_numpy().shape[0]
            out.append(pb_utils.InferenceResponse([
                pb_utils.Tensor("label", np.zeros((n, 1), np.int64)),
                pb_utils.Tensor("probabilities", np.zeros((n, 2), np.float32)),
            ]))
        return out
"""


def test_a_load_that_does_not_finish_in_time_is_one_clear_error(server: Settings) -> None:
    spec = load_spec(DEFAULT_SPEC)
    config = model_config.config_json(model_config.render_config(spec, "python", [1], name="slow"))
    client = triton_client.control_client(triton_server.endpoint(server))
    with pytest.raises(triton_client.TritonError, match=r"did not finish loading slow within 2 s"):
        client.load("slow", config, {"file:1/model.py": SLOW_MODEL}, timeout_s=2)
    client.unload("slow")  # nothing of it stays behind once it has come up


def test_status_lists_a_loaded_candidate(server: Settings, model) -> None:
    spec, onnx_bytes, _ = model
    endpoint = triton_server.endpoint(server)
    files = rollout.version_files(onnx_bytes, "python")
    name = triton_client.load_candidate(server, endpoint, spec, 7, files)
    try:
        result = CliRunner().invoke(
            app, ["triton", "status"], env={"CONVEYOR_HOME": str(server.home)}
        )
        assert result.exit_code == 0, result.output
        # Loaded from the request's files, the candidate is not in the repository index.
        assert f"{name}:7" in " ".join(result.output.split())
    finally:
        triton_client.unload_model(endpoint, name)


def test_a_model_answering_nan_is_refused_and_fails_the_smoke_check(server: Settings) -> None:
    """A linear model exported without the contract's clipping answers every feature at 1e37
    with NaN: the python backend refuses it (never a 200 with NaN) and the smoke test's extreme
    rows fail it; the same model with the clipping answers numbers."""
    spec = load_spec(DEFAULT_SPEC)
    spec = spec.model_copy(
        update={
            "name": "unclipped",
            "estimator": spec.estimator.model_copy(
                update={"family": "logistic_regression", "params": {}}
            ),
        }
    )
    frame = generate_transactions(3000, seed=5, fraud_rate=0.05)
    fitted = build_pipeline(spec).fit(to_features(frame, spec), to_target(frame, spec))
    store = LocalStore(Path(server.repository))
    endpoint = triton_server.endpoint(server)
    http, grpc = triton_client.http_client(endpoint), triton_client.grpc_client(endpoint)
    predictors: dict[str, answers.Predict] = {
        "HTTP": lambda x: triton_client.outputs_http(http, spec.name, x),
        "gRPC": lambda x: triton_client.outputs_grpc(grpc, spec.name, x),
    }
    rows = answers.extreme_rows(spec)
    try:
        raw = convert(fitted, spec.n_features)
        assert np.isnan(predict(raw, rows)[1]).any()  # the fault is real offline
        rollout.publish_version(store, server.repository, spec, 1, raw, "python")
        triton_client.load_versions(endpoint, spec, "python", [1], timeout_s=60)
        with pytest.raises(InferenceServerException, match="non-finite probability"):
            triton_client.infer_http(http, spec.name, rows)
        problems = answers.extreme_problems(predictors, spec, spec.serving.max_batch_size)
        assert [p.split(":")[0] for p in problems] == ["HTTP", "gRPC"], problems
        clipped = convert(fitted, spec.n_features, input_bounds(spec))
        rollout.publish_version(store, server.repository, spec, 2, clipped, "python")
        triton_client.load_versions(endpoint, spec, "python", [2], timeout_s=60)
        assert answers.extreme_problems(predictors, spec, spec.serving.max_batch_size) == []
        _, proba = triton_client.infer_grpc(grpc, spec.name, rows)
        assert np.isfinite(proba).all()
    finally:
        triton_client.unload_model(endpoint, spec.name)
