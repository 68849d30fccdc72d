"""No secret leaks: a release through the CLI with every credential set to a unique marker, each
one used for real (Prefect server with auth, MLflow basic-auth server, Pushgateway with basic
auth, S3 repository on moto, Triton with a configured key), then a search of everything the
release wrote for the markers: console, state directory (logs, results, model card), Prefect's
database (logs, artifacts, parameters, events), MLflow's store and artifacts, the S3 objects
and what the Pushgateway holds."""

from __future__ import annotations

import os
import secrets
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import boto3
import httpx
import pytest

from tasks import credentials, registry, triton, triton_server
from tasks.settings import Settings
from tests.conftest import ROOT, write_spec
from tests.servers import (
    BIN,
    MLFLOW_ADMIN,
    clean_env,
    mlflow_server,
    moto_s3,
    prefect_server,
    pushgateway,
)

NAME = "fraud-detector"


def _marker(what: str) -> str:
    return f"mk{what}{secrets.token_hex(8)}"


@dataclass
class Leak:
    markers: dict[str, str]
    base: Path
    console: str
    env: dict[str, str]
    s3_objects: dict[str, bytes]
    pushgateway_body: str


@pytest.fixture(scope="module")
def released(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Leak]:
    base = tmp_path_factory.mktemp("secrets")
    markers = {
        "prefect": _marker("prefect"),
        "mlflow": _marker("mlflow"),
        "mlflow_admin": _marker("mlflowadmin"),
        "pushgateway": _marker("push"),
        "triton": _marker("triton"),
        "aws": _marker("aws"),
    }
    auth_string = f"conveyor:{markers['prefect']}"
    with (
        prefect_server(base / "prefect", PREFECT_SERVER_API_AUTH_STRING=auth_string) as api,
        mlflow_server(base / "mlflow", markers["mlflow_admin"]) as mlflow_uri,
        pushgateway(base / "pushgateway", {"conveyor": markers["pushgateway"]}) as gateway,
        moto_s3(base) as s3,
    ):
        aws = {
            "AWS_ACCESS_KEY_ID": "conveyor",
            "AWS_SECRET_ACCESS_KEY": markers["aws"],
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": s3,
        }
        s3_client = boto3.client(
            "s3",
            endpoint_url=s3,
            aws_access_key_id=aws["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=aws["AWS_SECRET_ACCESS_KEY"],
            region_name="us-east-1",
        )
        s3_client.create_bucket(Bucket="models")
        worker = {"MLFLOW_TRACKING_USERNAME": "conveyor-worker"}
        admin = (MLFLOW_ADMIN, markers["mlflow_admin"])
        created = httpx.post(
            f"{mlflow_uri}/api/2.0/mlflow/users/create",
            json={"username": worker["MLFLOW_TRACKING_USERNAME"], "password": markers["mlflow"]},
            auth=admin,
            timeout=30,
        )
        assert created.status_code == 200, created.text
        home = base / "state"
        env = clean_env(
            **aws,
            **worker,
            MLFLOW_TRACKING_PASSWORD=markers["mlflow"],
            PREFECT_API_URL=api,
            PREFECT_API_AUTH_STRING=auth_string,
            PREFECT_HOME=str(base / "client"),
            CONVEYOR_HOME=str(home),
            CONVEYOR_MLFLOW_TRACKING_URI=mlflow_uri,
            CONVEYOR_MODEL_REPOSITORY="s3://models/triton",
            CONVEYOR_PUSHGATEWAY_URL=gateway,
            CONVEYOR_PUSHGATEWAY_USERNAME="conveyor",
            CONVEYOR_PUSHGATEWAY_PASSWORD=markers["pushgateway"],
            CONVEYOR_TRITON_ADMIN_KEY=markers["triton"],
        )
        spec = write_spec(base)
        try:
            done = subprocess.run(
                [str(BIN / "conveyor"), "run", "--spec", str(spec)],
                env=env,
                cwd=ROOT,
                capture_output=True,
                text=True,
                timeout=400,
            )
            console = done.stdout + done.stderr
            assert done.returncode == 0, console
            # Each credential was used, not merely set: the release went through every server.
            with pytest.MonkeyPatch.context() as patch:
                for key, value in env.items():
                    patch.setenv(key, value)
                settings = Settings()
                assert registry.alias_version(settings, NAME, registry.CHAMPION) == 1
                assert triton.loaded_versions(triton_server.endpoint(settings), NAME) == [1]
            objects = {
                item["Key"]: s3_client.get_object(Bucket="models", Key=item["Key"])["Body"].read()
                for item in s3_client.list_objects_v2(Bucket="models")["Contents"]
            }
            body = httpx.get(
                f"{gateway}/metrics", auth=("conveyor", markers["pushgateway"]), timeout=10
            ).text
            champion = 'conveyor_champion_version{flow="registry",instance="",job="conveyor"'
            assert f'{champion},model="{NAME}"}} 1' in body
            time.sleep(2)  # Prefect writes logs and events in batches
            yield Leak(markers, base, console, env, objects, body)
        finally:
            triton_server.stop(Settings(home=home))


def _hits(data: bytes, markers: dict[str, str]) -> list[str]:
    return [name for name, marker in markers.items() if marker.encode() in data]


def test_every_credential_was_needed(released: Leak) -> None:
    """The servers refuse the release without them (so the markers were really in use)."""
    env = released.env
    anonymous = httpx.post(f"{env['PREFECT_API_URL']}/flow_runs/filter", json={}, timeout=10)
    assert anonymous.status_code == 401
    mlflow = httpx.get(
        f"{env['CONVEYOR_MLFLOW_TRACKING_URI']}/api/2.0/mlflow/registered-models/search",
        timeout=10,
    )
    assert mlflow.status_code == 401
    assert httpx.get(f"{env['CONVEYOR_PUSHGATEWAY_URL']}/metrics", timeout=10).status_code == 401
    state = triton_server.read_state(Settings(home=Path(env["CONVEYOR_HOME"])))
    assert state is not None and state.key_file is None
    assert state.key_fingerprint == credentials.fingerprint(released.markers["triton"])


def test_no_marker_in_console_or_any_file_written(released: Leak) -> None:
    assert _hits(released.console.encode(), released.markers) == []
    leaks = []
    # State directory, Prefect server home (its database: logs, artifacts, parameters, events,
    # results), MLflow's store, artifacts and log, the Pushgateway's data.
    for path in sorted(p for p in released.base.rglob("*") if p.is_file()):
        if path.name == "pushgateway-web.yml":
            continue  # the bcrypt hashes the test wrote, not something the release wrote
        leaks += [f"{path}: {name}" for name in _hits(path.read_bytes(), released.markers)]
    for key, data in released.s3_objects.items():
        leaks += [f"s3://models/{key}: {name}" for name in _hits(data, released.markers)]
    leaks += [
        f"pushgateway: {n}" for n in _hits(released.pushgateway_body.encode(), released.markers)
    ]
    assert leaks == []
    searched = {p.name for p in released.base.rglob("*") if p.is_file()}
    assert {"prefect.db", "mlflow.db", "tritonserver.log", "model.onnx"} <= searched
    assert any(name.startswith("model_card") or "card" in name for name in searched), searched


def test_no_marker_in_prefect_logs_artifacts_or_parameters(released: Leak) -> None:
    api, auth = released.env["PREFECT_API_URL"], ("conveyor", released.markers["prefect"])
    texts = []
    for path, body in (
        ("/logs/filter", {"limit": 200}),
        ("/artifacts/filter", {"limit": 200}),
        ("/flow_runs/filter", {"limit": 200}),
        ("/task_runs/filter", {"limit": 200}),
    ):
        response = httpx.post(f"{api}{path}", json=body, auth=auth, timeout=10)
        response.raise_for_status()
        assert response.json(), path
        texts.append(response.text)
    assert _hits("".join(texts).encode(), released.markers) == []
    assert os.environ.get("PREFECT_API_AUTH_STRING") is None  # the test leaked nothing either
