"""Triton's control plane is conveyor's alone: after real releases through the CLI, an anonymous
or wrongly keyed client can neither unload the champion nor load a model of its own (over HTTP or
gRPC), while inference, health and metadata stay open; conveyor's own smoke test, rollback and
next release keep working with the key it holds."""

from __future__ import annotations

import json
import os
import signal
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException
from typer.testing import CliRunner

from cli.main import app
from tasks.core import credentials
from tasks.core.settings import Settings
from tasks.core.spec import load_spec
from tasks.registry import mlflow_store, model_registry, tracking
from tasks.serving import model_config, triton_client, triton_server
from tests.conftest import write_spec

NAME = "fraud-detector"
# What an attacker would send: a python-backend model is code the server runs.
HOSTILE_MODEL = b"import os\nos.system('touch /tmp/conveyor-pwned')\n"


@dataclass
class Released:
    settings: Settings
    spec_path: Path
    env: dict[str, str]
    runner: CliRunner
    unchanged: str = ""  # what a second `conveyor run` on the champion's data and spec said

    def cli(self, *args: str) -> str:
        result = self.runner.invoke(app, list(args), env=self.env)
        assert result.exit_code == 0, result.output
        return result.output

    @property
    def endpoint(self) -> triton_server.Endpoint:
        state = triton_server.status(self.settings)
        assert state is not None
        return state.endpoint


@pytest.fixture(scope="module")
def released(prefect_api: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Released]:
    base = tmp_path_factory.mktemp("locked")
    settings = Settings(home=base / "state")
    spec_path = write_spec(base)
    env = {"CONVEYOR_HOME": str(settings.home), "CONVEYOR_SPEC": str(spec_path)}
    released = Released(settings, spec_path, env, CliRunner())
    try:
        released.cli("run")
        released.unchanged = released.cli("run")
        released.cli("run", "--force")
        yield released
    finally:
        triton_server.stop(settings)


def _python_model_config() -> str:
    spec = load_spec(write_spec(Path(os.environ.get("TMPDIR", "/tmp"))))
    return model_config.config_json(
        model_config.render_config(spec, "python", [1], name="intruder")
    )


def _refused(call: object) -> str:
    assert callable(call)
    with pytest.raises(InferenceServerException) as refused:
        call()
    return str(refused.value.message())


def _shared_control_calls(client: object, headers: dict[str, str] | None) -> dict[str, object]:
    """The control calls both tritonclient flavours spell alike: unload the champion, load a
    python model of the caller's own (code the server would run), list and read configs."""
    files = {"file:1/model.py": HOSTILE_MODEL}
    c = client  # httpclient or grpcclient InferenceServerClient
    return {
        "unload": lambda: c.unload_model(NAME, headers=headers),  # type: ignore[attr-defined]
        "load": lambda: c.load_model(  # type: ignore[attr-defined]
            "intruder", headers=headers, config=_python_model_config(), files=files
        ),
        "index": lambda: c.get_model_repository_index(headers=headers),  # type: ignore[attr-defined]
        "config": lambda: c.get_model_config(NAME, headers=headers),  # type: ignore[attr-defined]
    }


def _assert_all_refused(client: object, calls: dict[str, object]) -> None:
    for what, call in calls.items():
        assert "restricted" in _refused(call).lower(), what
    assert not client.is_model_ready("intruder")  # type: ignore[attr-defined]


@pytest.mark.parametrize("headers", [None, {credentials.TRITON_KEY_HEADER: "guessed"}])
def test_http_control_calls_without_the_key_are_refused(released: Released, headers) -> None:
    client = httpclient.InferenceServerClient(released.endpoint.http)
    calls = {
        **_shared_control_calls(client, headers),
        "logging": lambda: client.update_log_settings({"log_verbose_level": 1}, headers=headers),
        "trace": lambda: client.update_trace_settings(
            settings={"trace_rate": "1"}, headers=headers
        ),
    }
    _assert_all_refused(client, calls)
    assert not Path("/tmp/conveyor-pwned").exists()


@pytest.mark.parametrize(
    "headers", [None, {credentials.GRPC_METADATA_PREFIX + credentials.TRITON_KEY_HEADER: "guessed"}]
)
def test_grpc_control_calls_without_the_key_are_refused(released: Released, headers) -> None:
    client = grpcclient.InferenceServerClient(released.endpoint.grpc)
    calls = {
        **_shared_control_calls(client, headers),
        "shared memory": lambda: client.unregister_system_shared_memory(headers=headers),
    }
    _assert_all_refused(client, calls)


def test_champion_still_ready_and_open_to_callers(released: Released) -> None:
    endpoint = released.endpoint
    http = httpclient.InferenceServerClient(endpoint.http)  # anonymous, as callers are
    assert http.is_server_live() and http.is_model_ready(NAME)
    assert http.get_model_metadata(NAME)["name"] == NAME
    champion = model_registry.alias_version(released.settings, NAME, model_registry.CHAMPION)
    assert champion == 2
    spec = load_spec(released.spec_path)
    rows = np.zeros((4, spec.n_features), dtype=np.float32)
    labels, proba = triton_client.infer_http(http, NAME, rows)
    assert labels.shape == (4,) and proba.shape == (4, spec.n_classes)
    labels, _ = triton_client.infer_grpc(
        grpcclient.InferenceServerClient(endpoint.grpc), NAME, rows
    )
    assert labels.shape == (4,)
    # conveyor's own control client holds the key.
    assert triton_client.loaded_versions(endpoint, NAME) == [1, 2]


def test_key_is_owner_only_and_only_in_its_file(released: Released) -> None:
    state = triton_server.status(released.settings)
    assert state is not None and state.key_file is not None
    key_file = Path(state.key_file)
    key = key_file.read_text().strip()
    assert len(key) >= 40
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(released.settings.triton_dir.stat().st_mode) == 0o700
    assert key not in (released.settings.triton_dir / triton_server.STATE_FILE).read_text()
    assert key not in Path(state.log_path).read_text(errors="replace")
    assert json.loads(state.endpoint.model_dump_json())["key_file"] == str(key_file)


def test_a_second_run_on_unchanged_data_registers_nothing(released: Released) -> None:
    said = " ".join(released.unchanged.split())
    assert f"{NAME}: champion v1 already is this model" in said, said
    assert "nothing was registered" in said and "--force" in said
    assert "Traceback" not in said and "ERROR" not in said
    # The --force run after it registered v2: the unforced one used no version number.
    versions = mlflow_store.client(released.settings).search_model_versions(f"name='{NAME}'")
    assert sorted(int(v.version) for v in versions) == [1, 2]
    first, forced = (
        mlflow_store.client(released.settings).get_model_version(NAME, v).tags for v in ("1", "2")
    )
    assert len(first[tracking.TAG_SOURCE]) == 64
    assert first[tracking.TAG_SOURCE] == forced[tracking.TAG_SOURCE]


def test_conveyor_smoke_rollback_and_next_release_still_work(released: Released) -> None:
    """Runs last in this module: it moves the champion."""
    assert "passed" in released.cli("smoke")
    released.cli("rollback", NAME, "--reason", "security test")
    assert model_registry.alias_version(released.settings, NAME, model_registry.CHAMPION) == 1
    assert triton_client.loaded_versions(released.endpoint, NAME) == [1]
    released.cli("run", "--force")  # v1 is this data and spec: unforced, nothing would change
    assert model_registry.alias_version(released.settings, NAME, model_registry.CHAMPION) == 3
    assert triton_client.loaded_versions(released.endpoint, NAME) == [1, 3]


def test_configured_key_replaces_the_generated_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(credentials.TRITON_KEY_ENV, "operator-key-" + "x" * 32)
    settings = Settings(home=tmp_path / "state")
    try:
        state = triton_server.start(settings)
        assert state.key_file is None
        assert not (settings.triton_dir / triton_server.KEY_FILE).exists()
        assert triton_client.loaded_versions(state.endpoint, NAME) == []  # keyed, accepted
        # Another process without the key: a clear error naming the variable, not a 4xx.
        monkeypatch.delenv(credentials.TRITON_KEY_ENV)
        with pytest.raises(credentials.CredentialError, match=credentials.TRITON_KEY_ENV):
            triton_server.ensure_running(settings)
        result = CliRunner().invoke(
            app, ["triton", "status"], env={"CONVEYOR_HOME": str(settings.home)}
        )
        assert result.exit_code == 2, result.output
        assert "Traceback" not in result.output
        assert credentials.TRITON_KEY_ENV in " ".join(result.output.split())
    finally:
        triton_server.stop(settings)


def test_a_killed_server_leaves_no_stub_and_restarts_cleanly(
    tmp_path: Path, released: Released
) -> None:
    """SIGKILL of tritonserver leaves its python stubs running; the next start ends them and
    does not trip over their busy binary."""
    settings = Settings(home=tmp_path / "state", model_repository=released.settings.repository)
    state = triton_server.start(settings)
    spec = load_spec(released.spec_path)
    triton_client.load_versions(state.endpoint, spec, "python", [2], timeout_s=60)
    os.kill(state.pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while triton_server._alive(state.pid) and time.monotonic() < deadline:
        triton_server._reap(state.pid)
        time.sleep(0.1)
    assert triton_server.stray_stubs(state.pid), "expected the killed server's stubs to survive"
    try:
        fresh = triton_server.ensure_running(settings)
        assert fresh.pid != state.pid
        assert triton_server.stray_stubs(state.pid) == []
        triton_client.load_versions(fresh.endpoint, spec, "python", [2], timeout_s=60)
        assert triton_client.loaded_versions(fresh.endpoint, spec.name) == [2]
    finally:
        triton_server.stop(settings)
    assert triton_server.stray_stubs(fresh.pid) == []
