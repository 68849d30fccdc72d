"""The production stack, checked structurally (there is no Docker engine here): the compose file,
its secrets, the Grafana provisioning and dashboards."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from tests.conftest import ROOT

INFRA = ROOT / "infra"
COMPOSE = yaml.safe_load((INFRA / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]


def test_compose_has_every_service_of_the_stack() -> None:
    assert set(SERVICES) == {
        "postgres",
        "minio",
        "minio-buckets",
        "mlflow",
        "triton",
        "prefect-server",
        "worker-cpu",
        "worker-gpu",
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


def test_triton_serves_the_s3_repository_in_explicit_mode_on_a_gpu() -> None:
    triton = SERVICES["triton"]
    assert triton["image"].startswith("nvcr.io/nvidia/tritonserver:")
    command = triton["command"]
    assert "--model-control-mode=explicit" in command
    assert any(arg.startswith("--model-repository=s3://http://minio:9000/") for arg in command)
    assert "--metrics-config=summary_latencies=true" in command
    [device] = triton["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]


def test_workers_get_the_production_endpoints_and_the_gpu_pool_the_nvidia_runtime() -> None:
    for name, pool in (("worker-cpu", "cpu"), ("worker-gpu", "gpu")):
        worker = SERVICES[name]
        env = worker["environment"]
        assert f"--pool {pool}" in worker["command"]
        assert env["CONVEYOR_TRITON_BACKEND"] == "onnxruntime"
        assert env["TRITON_URL"] == "triton:8000"
        assert env["CONVEYOR_MODEL_REPOSITORY"].startswith("s3://")
        assert env["CONVEYOR_PUSHGATEWAY_URL"] == "http://pushgateway:9091"
        assert env["PREFECT_API_URL"] == "http://prefect-server:4200/api"
    assert SERVICES["worker-gpu"]["runtime"] == "nvidia"
    assert SERVICES["worker-gpu"]["environment"]["CUDA_VISIBLE_DEVICES"] == "0"


def test_mlflow_uses_postgres_and_minio() -> None:
    command = SERVICES["mlflow"]["command"]
    assert "--backend-store-uri postgresql://" in command
    assert "--artifacts-destination s3://" in command
    assert SERVICES["mlflow"]["environment"]["MLFLOW_S3_ENDPOINT_URL"] == "http://minio:9000"


def test_every_file_the_stack_mounts_or_builds_exists() -> None:
    for name, service in SERVICES.items():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith("."):
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
    assert set(jobs) == {"pushgateway", "triton", "mlflow"}
    assert jobs["pushgateway"]["honor_labels"] is True
    mounted = " ".join(SERVICES["prometheus"]["volumes"])
    assert "./prometheus/rules:/etc/prometheus/rules" in mounted
    assert Path(INFRA / "prometheus/rules").is_dir()
