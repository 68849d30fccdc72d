"""The production stack, checked structurally (there is no Docker engine here): the compose file,
its secrets, the Grafana provisioning and dashboards."""

from __future__ import annotations

import json
import re
from pathlib import Path

import bcrypt
import pytest
import yaml

from infra.render_secrets import SCRAPE_USER, read_env, render
from tasks.core import credentials
from tasks.core.settings import Settings
from tests.conftest import ROOT

INFRA = ROOT / "infra"
COMPOSE = yaml.safe_load((INFRA / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]


def test_compose_has_every_service_of_the_stack() -> None:
    assert set(SERVICES) == {
        "postgres",
        "redis",
        "minio",
        "minio-buckets",
        "mlflow",
        "mlflow-metrics",
        "mlflow-users",
        "triton-1",
        "triton-2",
        "edge",
        "edge-metrics",
        "prefect-server",
        "worker-cpu",
        "worker-gpu",
        "dask-scheduler",
        "dask-worker",
        "pushgateway",
        "prometheus",
        "grafana",
    }


def test_every_variable_the_compose_file_reads_is_in_the_example_env() -> None:
    text = (INFRA / "docker-compose.yml").read_text()
    used = set(re.findall(r"(?<!\$)\$\{([A-Z_]+)", text))
    example = {
        line.split("=", 1)[0]
        for line in (INFRA / ".env.example").read_text().splitlines()
        if line and not line.startswith("#")
    }
    assert used <= example, f"not in infra/.env.example: {sorted(used - example)}"
    secrets = {name for name in used if "PASSWORD" in name}
    assert secrets, "secrets must come from the env file"
    assert "infra/.env" in (ROOT / ".gitignore").read_text().splitlines()


REPLICAS = ("triton-1", "triton-2")


@pytest.mark.parametrize("name", REPLICAS)
def test_triton_serves_the_s3_repository_in_explicit_mode_on_a_gpu(name: str) -> None:
    triton = SERVICES[name]
    assert triton["image"].startswith("nvcr.io/nvidia/tritonserver:")
    command = triton["command"]
    assert "--model-control-mode=explicit" in command
    # A restarted replica serves what the repository's config.pbtxt files pin at once.
    assert "--load-model=*" in command
    assert any(arg.startswith("--model-repository=s3://http://minio:9000/") for arg in command)
    assert "--metrics-config=summary_latencies=true" in command
    [device] = triton["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    # Only the edge is published: callers never reach a replica directly.
    assert "ports" not in triton


def test_workers_reach_every_replica_and_callers_the_edge() -> None:
    env = SERVICES["worker-cpu"]["environment"]
    replicas = Settings(triton_replicas=env["CONVEYOR_TRITON_REPLICAS"]).triton_replicas
    assert [(r.http, r.grpc) for r in replicas] == [
        ("triton-1:8000", "triton-1:8001"),
        ("triton-2:8010", "triton-2:8011"),
    ]
    for replica, ports in zip(REPLICAS, ((8000, 8001, 8002), (8010, 8011, 8012)), strict=True):
        assert sorted(int(p) for p in SERVICES[replica]["expose"]) == list(ports)
    assert env["CONVEYOR_EDGE_HTTP_URL"] == "edge:8443"
    assert env["CONVEYOR_EDGE_GRPC_URL"] == "edge:8444"
    assert _env_secret(env[credentials.EDGE_KEY_ENV])
    assert sorted(SERVICES["edge"]["ports"]) == ["8443:8443", "8444:8444"]
    # Canary routes: one volume, written by the workers, read by the edge under its config.
    routes = env["CONVEYOR_EDGE_ROUTES_DIR"]
    for worker in ("worker-cpu", "worker-gpu"):
        assert f"edge-routes:{routes}" in SERVICES[worker]["volumes"]
    assert "edge-routes:/etc/conveyor-edge/routes:ro" in SERVICES["edge"]["volumes"]


def test_workers_get_the_production_endpoints_and_the_gpu_pool_the_nvidia_runtime() -> None:
    for name, pool in (("worker-cpu", "cpu"), ("worker-gpu", "gpu")):
        worker = SERVICES[name]
        env = worker["environment"]
        assert f"--pool {pool}" in worker["command"]
        assert env["CONVEYOR_TRITON_BACKEND"] == "onnxruntime"
        assert env["CONVEYOR_MODEL_REPOSITORY"].startswith("s3://")
        assert env["CONVEYOR_PUSHGATEWAY_URL"] == "http://pushgateway:9091"
        assert env["PREFECT_API_URL"] == "http://prefect-server:4200/api"
    assert SERVICES["worker-gpu"]["runtime"] == "nvidia"
    assert SERVICES["worker-gpu"]["environment"]["CUDA_VISIBLE_DEVICES"] == "0"


def test_mlflow_uses_postgres_and_minio() -> None:
    command, environment = SERVICES["mlflow"]["command"], SERVICES["mlflow"]["environment"]
    # The store's URL carries the database password: environment, never the command line.
    assert environment["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql://")
    assert "--backend-store-uri" not in command
    assert "--artifacts-destination s3://" in command
    assert SERVICES["mlflow"]["environment"]["MLFLOW_S3_ENDPOINT_URL"] == "http://minio:9000"


# Written from infra/.env by infra/render_secrets.py (git-ignored, so absent in a clone).
# Rendered from infra/.env (render_secrets.py, `python -m infra.edge render`), git-ignored.
RENDERED = {"./pushgateway/web.yml", "./prometheus/secrets", "./edge"}


def test_every_file_the_stack_mounts_or_builds_exists() -> None:
    ignored = (ROOT / ".gitignore").read_text().splitlines()
    for name, service in SERVICES.items():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source in RENDERED:
                assert any(f"infra/{source[2:]}".startswith(i.rstrip("/")) for i in ignored)
            elif source.startswith("."):
                assert (INFRA / source).exists(), f"{name} mounts missing {source}"
        if "build" in service:
            build = service["build"]
            assert (INFRA / build["context"] / build["dockerfile"]).exists()


def _dashboards() -> dict[str, dict[str, object]]:
    return {
        p.stem: json.loads(p.read_text()) for p in (INFRA / "grafana/dashboards").glob("*.json")
    }


def test_grafana_provisioning_points_at_the_mounted_dashboards_and_datasource() -> None:
    [source] = yaml.safe_load(
        (INFRA / "grafana/provisioning/datasources/prometheus.yml").read_text()
    )["datasources"]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
    [provider] = yaml.safe_load(
        (INFRA / "grafana/provisioning/dashboards/conveyor.yml").read_text()
    )["providers"]
    mounts = dict(v.split(":")[:2] for v in SERVICES["grafana"]["volumes"] if v.startswith("."))
    assert mounts["./grafana/dashboards"] == provider["options"]["path"]
    for name, dashboard in _dashboards().items():
        for panel in dashboard["panels"]:  # type: ignore[attr-defined]
            assert panel["datasource"]["uid"] == source["uid"], f"{name}: {panel['title']}"


def test_three_dashboards_with_unique_ids_and_an_expression_in_every_panel() -> None:
    dashboards = _dashboards()
    assert set(dashboards) == {"pipeline", "models", "serving"}
    assert len({d["uid"] for d in dashboards.values()}) == 3
    for name, dashboard in dashboards.items():
        panels = dashboard["panels"]
        assert isinstance(panels, list) and panels
        assert len({p["id"] for p in panels}) == len(panels)
        for panel in panels:
            assert panel["targets"], f"{name}: {panel['title']} has no query"
            assert all(t["expr"].strip() for t in panel["targets"])
    serving = json.dumps(dashboards["serving"])
    for series in (
        "nv_inference_request_success",
        "nv_inference_queue_duration_us",
        "nv_inference_exec_count",
        "nv_inference_request_summary_us",
    ):
        assert series in serving


def test_prometheus_scrapes_the_pushgateway_triton_and_mlflow() -> None:
    config = yaml.safe_load((INFRA / "prometheus/prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == {"pushgateway", "triton", "mlflow", "edge"}
    assert jobs["triton"]["static_configs"][0]["targets"] == ["triton-1:8002", "triton-2:8012"]
    assert jobs["pushgateway"]["honor_labels"] is True
    mounted = " ".join(SERVICES["prometheus"]["volumes"])
    assert "./prometheus/rules:/etc/prometheus/rules" in mounted
    assert Path(INFRA / "prometheus/rules").is_dir()


def _env_secret(value: str) -> bool:
    """A value compose reads from infra/.env, never a literal."""
    return bool(re.fullmatch(r"\$\{[A-Z_]+(:\?[^}]*)?\}", value))


@pytest.mark.parametrize("name", REPLICAS)
def test_triton_is_pinned_locked_and_unprivileged(name: str) -> None:
    triton = SERVICES[name]
    year, month = triton["image"].split(":")[1].split("-")[0].split(".")
    assert (int(year), int(month)) >= (26, 3), "26.03 fixes CVE-2026-24207"
    assert triton["user"] not in {"0", "root"} and not triton["user"].startswith("0:")
    command = triton["command"]
    apis = ",".join(credentials.TRITON_RESTRICTED)
    header = credentials.TRITON_KEY_HEADER
    assert f"--http-restricted-api={apis}:{header}=${{TRITON_ADMIN_KEY}}" in command
    assert f"--grpc-restricted-protocol={apis}:{header}=${{TRITON_ADMIN_KEY}}" in command
    assert {"--allow-sagemaker=false", "--allow-vertex-ai=false"} <= set(command)
    # Read-only MinIO user, not root.
    assert triton["environment"]["AWS_ACCESS_KEY_ID"] == "${MINIO_TRITON_USER}"


def test_embedded_triton_restricts_the_same_apis_as_compose() -> None:
    flags = credentials.triton_restriction_flags("k")
    assert flags == [
        f"--http-restricted-api={','.join(credentials.TRITON_RESTRICTED)}:conveyor-admin-key=k",
        f"--grpc-restricted-protocol={','.join(credentials.TRITON_RESTRICTED)}:conveyor-admin-key=k",
    ]


def test_workers_hold_every_credential_from_the_env_file_and_no_root_one() -> None:
    for name in ("worker-cpu", "worker-gpu"):
        env = SERVICES[name]["environment"]
        for variable in (
            "PREFECT_API_AUTH_STRING",
            "MLFLOW_TRACKING_USERNAME",
            "MLFLOW_TRACKING_PASSWORD",
            credentials.TRITON_KEY_ENV,
            credentials.PUSHGATEWAY_USER_ENV,
            credentials.PUSHGATEWAY_PASSWORD_ENV,
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
        ):
            assert _env_secret(env[variable]), f"{name}: {variable}={env[variable]}"
        assert "MINIO_WORKER" in env["AWS_ACCESS_KEY_ID"]
    root_users = {n for n, s in SERVICES.items() if "MINIO_ROOT_PASSWORD" in json.dumps(s)}
    assert root_users == {"minio", "minio-buckets"}


def test_servers_take_writes_only_with_credentials() -> None:
    assert _env_secret(SERVICES["prefect-server"]["environment"]["PREFECT_SERVER_API_AUTH_STRING"])
    mlflow = SERVICES["mlflow"]
    assert "--app-name basic-auth" in mlflow["command"]
    assert "default_permission = READ" in mlflow["command"]
    assert "5432/mlflow_auth" in mlflow["command"]
    assert "CREATE DATABASE mlflow_auth;" in (INFRA / "postgres/init.sql").read_text()
    assert _env_secret(mlflow["environment"]["MLFLOW_AUTH_ADMIN_PASSWORD"])
    assert SERVICES["mlflow-users"]["command"][-1].endswith("users.py")
    assert "--web.config.file=/etc/pushgateway/web.yml" in SERVICES["pushgateway"]["command"]
    config = yaml.safe_load((INFRA / "prometheus/prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert jobs["pushgateway"]["basic_auth"]["password_file"].startswith("/etc/prometheus/secrets/")
    # MLflow's metrics come from the sidecar that reads its metrics directory: Prometheus holds
    # no MLflow credentials (basic-auth serves /metrics to admins only).
    assert "basic_auth" not in jobs["mlflow"]
    assert jobs["mlflow"]["static_configs"][0]["targets"] == ["mlflow-metrics:9102"]
    assert "mlflow-metrics:/mlflow-metrics:ro" in SERVICES["mlflow-metrics"]["volumes"]
    assert "--expose-prometheus /mlflow-metrics" in mlflow["command"]
    assert "./prometheus/secrets:/etc/prometheus/secrets:ro" in SERVICES["prometheus"]["volumes"]


def test_minio_policies_give_each_service_only_its_buckets() -> None:
    def grants(role: str) -> dict[str, set[str]]:
        policy = json.loads((INFRA / "minio" / f"conveyor-{role}.json").read_text())
        found: dict[str, set[str]] = {}
        for statement in policy["Statement"]:
            assert statement["Effect"] == "Allow"
            for resource in statement["Resource"]:
                found.setdefault(resource, set()).update(statement["Action"])
        return found

    triton = grants("triton")
    assert set(triton) == {"arn:aws:s3:::MODEL_BUCKET", "arn:aws:s3:::MODEL_BUCKET/*"}
    assert triton["arn:aws:s3:::MODEL_BUCKET/*"] == {"s3:GetObject"}
    assert set(grants("mlflow")) == {"arn:aws:s3:::MLFLOW_BUCKET", "arn:aws:s3:::MLFLOW_BUCKET/*"}
    worker = grants("worker")
    assert "s3:PutObject" in worker["arn:aws:s3:::MODEL_BUCKET/*"]
    assert "s3:PutObject" in worker["arn:aws:s3:::MLFLOW_BUCKET/*"]
    assert not any(a.startswith("admin:") or a == "s3:*" for acts in worker.values() for a in acts)
    entrypoint = SERVICES["minio-buckets"]["entrypoint"]
    for role in ("triton", "mlflow", "worker"):
        assert f"mc admin policy attach local conveyor-{role} --user" in entrypoint


def test_render_secrets_writes_a_web_config_that_verifies(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text(
        (INFRA / ".env.example").read_text()
        + "PUSHGATEWAY_PASSWORD=push-pw\nPUSHGATEWAY_SCRAPE_PASSWORD=scrape-pw\n"
    )
    written = render(read_env(env_file), tmp_path)
    web = yaml.safe_load((tmp_path / "pushgateway" / "web.yml").read_text())["basic_auth_users"]
    assert bcrypt.checkpw(b"push-pw", web["conveyor"].encode())
    assert bcrypt.checkpw(b"scrape-pw", web[SCRAPE_USER].encode())
    password_file = tmp_path / "prometheus" / "secrets" / "pushgateway-password"
    assert password_file.read_text() == "scrape-pw"
    assert "push-pw" not in "".join(p.read_text() for p in written)
