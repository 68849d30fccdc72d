"""No secret leaks, on the production topology (`make stack`): a release through the CLI with the
stack's credentials (every one of them random, so each is its own marker), each used for real
(Prefect server with auth, MLflow's basic-auth server, the Pushgateway with basic auth, the S3
repository and artifact store, Triton with its control key). Then a search of everything the
release and the stack wrote for every marker: the console, the release's state directory, every
file of the stack (logs, Redis, Prometheus' data, the worker's state) except the stack's own
credential files, dumps of every PostgreSQL database (Prefect's logs, artifacts, parameters and
events; MLflow's params, tags and metrics; MLflow's users), every S3 object and what the
Pushgateway holds (the model card is an MLflow artifact: in S3)."""

from __future__ import annotations

import os
import ssl
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from infra.stack import SECRETS_FILE, system_binary
from tasks.core.settings import Settings
from tasks.ops.model_card import CARD_ARTIFACT
from tasks.registry import model_registry
from tasks.serving import replicas, triton_client
from tests.conftest import ROOT, write_spec
from tests.servers import BIN, ProductionStack, clean_env

# Its own model on the shared stack.
NAME = "leak-check"
# Where the stack keeps credentials on purpose (each written readable only by its owner):
# searched for nothing, and each must exist, so this list cannot go stale unnoticed.
CREDENTIAL_FILES = {
    SECRETS_FILE,
    "conveyor.env",  # the env file operators source
    "redis/redis.conf",
    "mlflow/basic_auth.ini",  # its database URL
    "prometheus/secrets/pushgateway-password",
    "edge/clients.map",  # the edge's key → client name map, mode 0600
}
# PostgreSQL's own files are searched through dumps (its pages may be compressed).
DUMPED = "postgres"
DATABASES = ("prefect", "mlflow", "mlflow_auth")


@dataclass
class Leak:
    stack: ProductionStack
    markers: dict[str, str]  # variable → its value
    base: Path
    console: str
    env: dict[str, str]


def markers(stack: ProductionStack) -> dict[str, str]:
    """Every secret the stack generated (user names are not secrets)."""
    found = {}
    for key, value in stack.secrets.items():
        if key.endswith("_USER"):
            continue
        found[key] = value.split(":", 1)[1] if key == "PREFECT_AUTH_STRING" else value
    assert len(found) >= 10 and all(len(v) >= 16 for v in found.values()), sorted(found)
    return found


@pytest.fixture(scope="module")
def released(production: ProductionStack, tmp_path_factory: pytest.TempPathFactory) -> Leak:
    base = tmp_path_factory.mktemp("secrets")
    env = clean_env(
        **{**production.env, "CONVEYOR_HOME": str(base / "state")},
        PREFECT_HOME=str(base / "client"),
    )
    done = subprocess.run(
        [str(BIN / "conveyor"), "run", "--spec", str(write_spec(base, name=NAME))],
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
        assert model_registry.alias_version(settings, NAME, model_registry.CHAMPION) == 1
        for replica in replicas.configured(settings):
            assert triton_client.loaded_versions(replica.endpoint, NAME) == [1], replica.name
    time.sleep(2)  # Prefect writes logs and events in batches
    return Leak(production, markers(production), base, console, env)


def _hits(data: bytes, markers: dict[str, str]) -> list[str]:
    return [name for name, marker in markers.items() if marker.encode() in data]


def _dump(stack: ProductionStack, database: str) -> bytes:
    secrets, port = stack.secrets, stack.port("postgres", 5432)
    done = subprocess.run(
        [system_binary("pg_dump", "postgresql"), "-h", "127.0.0.1", "-p", str(port),
         "-U", secrets["POSTGRES_USER"], "--data-only", database],
        env={**clean_env(), "PGPASSWORD": secrets["POSTGRES_PASSWORD"]},
        capture_output=True,
        timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr.decode()
    return done.stdout


def test_every_credential_was_needed(released: Leak) -> None:
    """The servers refuse anonymous clients (so the credentials were really in use)."""
    env = released.env
    anonymous = httpx.post(f"{env['PREFECT_API_URL']}/flow_runs/filter", json={}, timeout=10)
    assert anonymous.status_code == 401
    mlflow = httpx.get(
        f"{env['CONVEYOR_MLFLOW_TRACKING_URI']}/api/2.0/mlflow/registered-models/search",
        timeout=10,
    )
    assert mlflow.status_code == 401
    assert httpx.get(f"{env['CONVEYOR_PUSHGATEWAY_URL']}/metrics", timeout=10).status_code == 401
    # Each replica's control API without the key: refused; inference metadata stays open.
    for replica in Settings(triton_replicas=env["CONVEYOR_TRITON_REPLICAS"]).triton_replicas:
        control = httpx.post(f"http://{replica.http}/v2/repository/index", timeout=10)
        assert control.status_code in (401, 403), control.text
        assert httpx.get(f"http://{replica.http}/v2/models/{NAME}", timeout=10).is_success
    # The edge without a client key: 401, over TLS.
    ca = ssl.create_default_context(cafile=env["CONVEYOR_EDGE_CA_FILE"])
    edge = httpx.get(f"https://{env['CONVEYOR_EDGE_HTTP_URL']}/v2/models/{NAME}", verify=ca)
    assert edge.status_code == 401, edge.text


def test_no_marker_in_console_or_any_file_written(released: Leak) -> None:
    root, found = released.stack.root, released.markers
    assert _hits(released.console.encode(), found) == []
    for name in CREDENTIAL_FILES:
        assert (root / name).is_file(), f"{name}: the stack no longer writes it; update the list"
    leaks, searched = [], set()
    for top in (released.base, root):
        for path in sorted(p for p in top.rglob("*") if p.is_file()):
            relative = path.relative_to(top)
            if top == root and (str(relative) in CREDENTIAL_FILES or relative.parts[0] == DUMPED):
                continue
            searched.add(str(relative))
            leaks += [f"{path}: {name}" for name in _hits(path.read_bytes(), found)]
    assert leaks == []
    # What was searched holds the release's traces, so the search looked in the right places.
    expected = {"logs/prefect-server.log", "logs/mlflow.log", "logs/worker-cpu.log"}
    assert expected | {"state/logs/conveyor.log"} <= searched


def test_no_marker_in_any_database(released: Leak) -> None:
    for database in DATABASES:
        dump = _dump(released.stack, database)
        assert _hits(dump, released.markers) == [], database
        if database != "mlflow_auth":
            assert NAME.encode() in dump, f"{database} holds nothing of the release"


def test_no_marker_in_s3_or_the_pushgateway(released: Leak) -> None:
    env, found = released.env, released.markers
    leaks, keys = [], []
    for key, body in released.stack.s3_objects():
        keys.append(key)
        leaks += [f"s3://{key}: {name}" for name in _hits(body, found)]
    assert leaks == []
    # The model's files in the repository, its MLflow artifacts through the server's proxy.
    onnx = [k for k in keys if k.endswith("model.onnx")]
    assert any(f"/{NAME}/1/" in k for k in onnx) and len(onnx) >= 2, onnx
    assert any(k.endswith(CARD_ARTIFACT) for k in keys)  # the model card is an artifact
    auth = (env["CONVEYOR_PUSHGATEWAY_USERNAME"], env["CONVEYOR_PUSHGATEWAY_PASSWORD"])
    body = httpx.get(f"{env['CONVEYOR_PUSHGATEWAY_URL']}/metrics", auth=auth, timeout=10).text
    champion = 'conveyor_champion_version{flow="registry",instance="",job="conveyor"'
    assert f'{champion},model="{NAME}"}} 1' in body
    assert _hits(body.encode(), found) == []


def test_no_marker_in_prefect_logs_artifacts_or_parameters(released: Leak) -> None:
    api = released.env["PREFECT_API_URL"]
    texts = []
    for path, body in (
        ("/logs/filter", {"limit": 200, "sort": "TIMESTAMP_DESC"}),
        ("/artifacts/filter", {"limit": 200}),
        ("/flow_runs/filter", {"limit": 200}),
        ("/task_runs/filter", {"limit": 200}),
    ):
        response = httpx.post(f"{api}{path}", json=body, auth=released.stack.auth, timeout=10)
        response.raise_for_status()
        assert response.json(), path
        texts.append(response.text)
    assert NAME in "".join(texts)
    assert _hits("".join(texts).encode(), released.markers) == []
    assert os.environ.get("PREFECT_API_AUTH_STRING") is None  # the test leaked nothing either
