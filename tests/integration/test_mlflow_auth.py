"""MLflow writes need credentials: the production topology's MLflow (`make stack`: `mlflow server
--app-name basic-auth` on PostgreSQL, artifacts proxied to S3) with the users compose creates
(infra/mlflow/users.py). A release with the worker's credentials passes; an anonymous or
read-only client cannot move `champion`; conveyor says which credential to set in one paragraph;
a refused rollback leaves the champion served; MLflow killed mid-release and brought back by
`make stack` leaves what was served, and doctor repairs the rest."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from prefect.settings import PREFECT_API_URL
from typer.testing import CliRunner

from flows.cli import app
from flows.release import release_flow
from flows.rollback import rollback_flow
from tasks import credentials, doctor, registry, triton, triton_server
from tasks.settings import Settings
from tests.conftest import ROOT, write_spec
from tests.servers import BIN, ProductionStack, clean_env

# Its own model on the shared stack.
NAME = "auth-fraud"


@dataclass
class Server:
    stack: ProductionStack
    uri: str
    passwords: dict[str, str]  # user → password: admin, worker, reader
    worker: str
    reader: str
    settings: Settings

    def as_user(self, user: str | None) -> dict[str, str]:
        if user is None:
            return {credentials.MLFLOW_USER_ENV: "", credentials.MLFLOW_PASSWORD_ENV: ""}
        return {
            credentials.MLFLOW_USER_ENV: user,
            credentials.MLFLOW_PASSWORD_ENV: self.passwords[user],
        }


def _use(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> None:
    for key, value in env.items():
        if value:
            monkeypatch.setenv(key, value)
        else:
            monkeypatch.delenv(key, raising=False)


@pytest.fixture(scope="module")
def server(
    production: ProductionStack, prefect_api: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """The stack's MLflow; this module's releases use their own state directory and embedded
    Triton, and this process's Prefect API."""
    secrets = production.secrets
    users = {
        role: (secrets[f"MLFLOW_{role}_USER"], secrets[f"MLFLOW_{role}_PASSWORD"])
        for role in ("ADMIN", "WORKER", "READER")
    }
    uri = production.env["CONVEYOR_MLFLOW_TRACKING_URI"]
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
    for role, (user, password) in users.items():
        env |= {f"MLFLOW_{role}_USER": user, f"MLFLOW_{role}_PASSWORD": password}
    # `make stack` ran compose's one-shot job; it is idempotent, as compose runs it on every up.
    again = subprocess.run(
        [sys.executable, str(ROOT / "infra" / "mlflow" / "users.py")],
        env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert again.stdout.count("exists") == 2, again.stdout
    home = tmp_path_factory.mktemp("mlflow-auth") / "state"
    settings = Settings(home=home, mlflow_tracking_uri=uri)
    try:
        yield Server(
            production,
            uri,
            dict(users.values()),
            users["WORKER"][0],
            users["READER"][0],
            settings,
        )
    finally:
        triton_server.stop(settings)


@pytest.fixture(scope="module")
def released(server: Server, tmp_path_factory: pytest.TempPathFactory) -> Server:
    """Two releases with the worker's credentials: champion 2, previous 1."""
    base = tmp_path_factory.mktemp("mlflow-auth-specs")
    with pytest.MonkeyPatch.context() as env:
        _use(env, server.as_user(server.worker))
        env.setenv("CONVEYOR_HOME", str(server.settings.home))
        env.setenv("CONVEYOR_MLFLOW_TRACKING_URI", server.uri)
        for expected in (1, 2):
            spec = write_spec(base, name=NAME)
            assert release_flow(str(spec), force=True).version == expected
    return server


def _artifact_names(server: Server, *locations: str) -> set[str]:
    """Names of the stack's S3 objects under any of `locations` (paths in MLflow's store)."""
    return {
        key.rsplit("/", 1)[-1]
        for key, _ in server.stack.s3_objects()
        if any(f"/{where.strip('/')}/" in key for where in locations)
    }


def test_release_with_the_worker_credentials_passes(released: Server) -> None:
    with pytest.MonkeyPatch.context() as env:
        _use(env, released.as_user(released.reader))  # readers may browse
        client = MlflowClient(released.uri)
        champion = client.get_model_version_by_alias(NAME, registry.CHAMPION)
        assert champion.version == "2"
        assert client.get_model_version_by_alias(NAME, registry.PREVIOUS).version == "1"
        # Artifacts went through the server's proxy into its S3 destination, not a client-side path.
        where = [
            client.get_run(champion.run_id).info.artifact_uri,
            client.get_model_version_download_uri(NAME, champion.version),
        ]
    assert all(w.startswith("mlflow-artifacts:/") for w in where), where
    stored = _artifact_names(released, *(w.removeprefix("mlflow-artifacts:/") for w in where))
    assert {"model.onnx", "MLmodel"} <= stored, (where, stored)
    assert not (released.settings.home / "mlartifacts").exists()


@pytest.mark.parametrize("role", [None, "reader"], ids=["anonymous", "read-only"])
def test_anonymous_and_read_only_cannot_move_champion(
    released: Server, role: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    user = released.reader if role else None
    _use(monkeypatch, released.as_user(user))
    with pytest.raises(MlflowException) as refused:
        MlflowClient(released.uri).set_registered_model_alias(NAME, registry.CHAMPION, "1")
    assert refused.value.get_http_status_code() == (401 if user is None else 403)
    _use(monkeypatch, released.as_user(released.worker))
    assert registry.alias_version(released.settings, NAME, registry.CHAMPION) == 2


@pytest.mark.parametrize(
    ("role", "password", "says"),
    [
        (None, None, "no credentials were sent"),
        ("worker", "wrong-password", "(401, user 'conveyor-worker')"),
    ],
    ids=["anonymous", "wrong-password"],
)
def test_missing_or_wrong_credentials_are_one_paragraph(
    released: Server, role: str | None, password: str | None, says: str
) -> None:
    user = released.worker if role else None
    env = {
        "CONVEYOR_HOME": str(released.settings.home),
        "CONVEYOR_MLFLOW_TRACKING_URI": released.uri,
        credentials.MLFLOW_USER_ENV: user or "",
        credentials.MLFLOW_PASSWORD_ENV: password or "",
    }
    result = CliRunner().invoke(app, ["history", NAME], env=env)
    output = " ".join(result.output.split())
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert f"MLflow at {released.uri} refused" in output and says in output
    assert credentials.MLFLOW_USER_ENV in output
    assert "wrong-password" not in output


def test_refused_rollback_leaves_the_champion_served(
    released: Server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A read-only user's rollback: Triton had already switched to the previous version when
    the registry refused the alias move; it goes back, so the champion is what is served."""
    monkeypatch.setenv("CONVEYOR_HOME", str(released.settings.home))
    monkeypatch.setenv("CONVEYOR_MLFLOW_TRACKING_URI", released.uri)
    _use(monkeypatch, released.as_user(released.reader))
    with pytest.raises(credentials.CredentialError, match="give that user EDIT"):
        rollback_flow(str(write_spec(tmp_path, name=NAME)), reason="read-only attempt")
    _use(monkeypatch, released.as_user(released.worker))
    assert registry.alias_version(released.settings, NAME, registry.CHAMPION) == 2
    endpoint = triton_server.endpoint(released.settings)
    assert triton.loaded_versions(endpoint, NAME) == [1, 2]


def _kill_mlflow(server: Server) -> None:
    """SIGKILL the stack's MLflow server with its whole process group (its workers)."""
    port = int(server.uri.rsplit(":", 1)[1])
    os.killpg(server.stack.pid("mlflow"), signal.SIGKILL)
    deadline = time.monotonic() + 30
    while True:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) != 0:
                return
        assert time.monotonic() < deadline, f"port {port} still answers"
        time.sleep(0.2)


def test_mlflow_stopped_between_registration_and_promotion(
    released: Server, tmp_path: Path
) -> None:
    """Runs last here: it kills the stack's MLflow. The tracking server dies once the new
    version is loaded beside the champion (its swap ran; the promotion is next). The release
    fails in one paragraph with Triton back on what was live, not on nothing; once `make stack`
    has brought MLflow back, `conveyor doctor --repair` clears the rest and the champion is
    unchanged."""
    settings = released.settings
    env = clean_env(
        **released.as_user(released.worker),
        CONVEYOR_HOME=str(settings.home),
        CONVEYOR_MLFLOW_TRACKING_URI=released.uri,
        PREFECT_API_URL=str(PREFECT_API_URL.value()),
        # MLflow's client retries a refused connection for minutes by default.
        MLFLOW_HTTP_REQUEST_MAX_RETRIES="0",
    )
    spec = write_spec(tmp_path, name=NAME)
    endpoint = triton_server.endpoint(settings)
    with (tmp_path / "release.log").open("wb") as log:
        release = subprocess.Popen(
            [str(BIN / "conveyor"), "run", "--spec", str(spec), "--force"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 300
        while 3 not in triton.loaded_versions(endpoint, NAME):
            assert release.poll() is None, (tmp_path / "release.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the release never reached its swap"
            time.sleep(0.05)
        _kill_mlflow(released)
        code = release.wait(300)
    try:
        said = " ".join((tmp_path / "release.log").read_text().split())
        assert code == 2, said[-3000:]
        assert "Traceback" not in said and "was withdrawn" in said, said[-3000:]
        assert f"doctor {NAME} --repair" in said, said[-3000:]
        # Served: exactly what was live before the release, found without the registry.
        assert triton.loaded_versions(endpoint, NAME) == [1, 2]
    finally:
        # `make stack` starts what is down: MLflow again, on the same database and bucket
        # (whatever the checks above found: the modules after this one share the stack).
        started = released.stack.up()
    assert "mlflow " in started
    assert httpx.get(f"{released.uri}/health", timeout=10).status_code == 200
    with pytest.MonkeyPatch.context() as patch:
        _use(patch, released.as_user(released.worker))
        runner = CliRunner()
        cli_env = {
            "CONVEYOR_HOME": str(settings.home),
            "CONVEYOR_MLFLOW_TRACKING_URI": released.uri,
        }
        repaired = runner.invoke(app, ["doctor", NAME, "--repair"], env=cli_env)
        assert repaired.exit_code == 0, repaired.output
        assert registry.alias_version(settings, NAME, registry.CHAMPION) == 2
        assert registry.alias_version(settings, NAME, registry.CHALLENGER) is None
        assert triton.loaded_versions(endpoint, NAME) == [1, 2]
        assert doctor.examine(settings, [NAME]).clean
