"""The stack's servers on top of its stores, in start order: MLflow (basic-auth, on Postgres
and S3) and its metrics sidecar, Prefect's server and the workers, the embedded Triton, the
Pushgateway and Prometheus."""

from __future__ import annotations

import contextlib
import functools
import os
import ssl
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from infra.stack.compose import (
    BIN,
    HOST,
    INFRA,
    ROOT,
    StackError,
    compose,
    interpolate,
    prefect_server_environment_template,
    workers,
)
from infra.stack.dask_cluster import start_scheduler, start_workers
from infra.stack.data_services import postgres_url, s3_env, start_postgres, start_redis, start_s3
from infra.stack.processes import alive, http_ok, spawn, system_binary, wait_until
from infra.stack.state import Stack, write_private


def mlflow_auth_config(database_uri: str, admin: str) -> str:
    """The basic-auth app's config, as compose writes it."""
    return (
        "[mlflow]\n"
        "default_permission = READ\n"
        f"database_uri = {database_uri}\n"
        f"admin_username = {admin}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
        # Each request otherwise re-derives the PBKDF2 hash: a release makes hundreds.
        "auth_cache_ttl_seconds = 60\n"
    )


def start_mlflow(stack: Stack) -> str:
    v = stack.variables
    directory = stack.root / "mlflow"
    (directory / "metrics").mkdir(parents=True, exist_ok=True)
    config = directory / "basic_auth.ini"
    write_private(
        config, mlflow_auth_config(postgres_url(stack, "mlflow_auth"), v["MLFLOW_ADMIN_USER"])
    )
    bucket = interpolate("${MLFLOW_BUCKET:-mlflow}", v)
    command = [
        str(BIN / "mlflow"), "server", "--app-name", "basic-auth",
        "--host", HOST, "--port", str(stack.port("mlflow", 5000)), "--workers", "2",
        "--artifacts-destination", f"s3://{bucket}/artifacts",
        "--serve-artifacts", "--expose-prometheus", str(directory / "metrics"),
    ]  # fmt: skip
    s3 = s3_env(stack)
    env = stack.process_environment(
        # In the environment, not on the command line: `ps` shows every user a command line,
        # and this URL carries the database password.
        MLFLOW_BACKEND_STORE_URI=postgres_url(stack, "mlflow"),
        MLFLOW_AUTH_CONFIG_PATH=str(config),
        MLFLOW_AUTH_ADMIN_PASSWORD=v["MLFLOW_ADMIN_PASSWORD"],
        MLFLOW_FLASK_SERVER_SECRET_KEY=v["MLFLOW_SECRET_KEY"],
        MLFLOW_S3_ENDPOINT_URL=s3["AWS_ENDPOINT_URL"],
        AWS_ACCESS_KEY_ID=s3["AWS_ACCESS_KEY_ID"],
        AWS_SECRET_ACCESS_KEY=s3["AWS_SECRET_ACCESS_KEY"],
        AWS_DEFAULT_REGION=s3["AWS_DEFAULT_REGION"],
    )
    spawn(stack, "mlflow", command, env, directory)
    wait_until(stack, "mlflow", http_ok(f"{stack.url('mlflow', 5000)}/health"), 180)
    # compose's one-shot mlflow-users job: the worker and the reader.
    accounts = {
        k: v[k] for k in v if k.startswith("MLFLOW_") and k.endswith(("_USER", "_PASSWORD"))
    }
    users = subprocess.run(
        [sys.executable, str(INFRA / "mlflow" / "users.py")],
        env=stack.process_environment(MLFLOW_TRACKING_URI=stack.url("mlflow", 5000), **accounts),
        capture_output=True,
        text=True,
        check=False,
    )
    if users.returncode != 0:
        raise StackError(f"creating MLflow's users failed: {users.stdout}{users.stderr}")
    return f"{stack.url('mlflow', 5000)} (basic-auth; artifacts s3://{bucket}/artifacts)"


def start_prefect(stack: Stack) -> str:
    directory = stack.root / "prefect-server"
    directory.mkdir(exist_ok=True)
    server_env = stack.localise(prefect_server_environment_template())
    port = stack.port("prefect-server", 4200)
    command = [str(BIN / "prefect"), "server", "start", "--host", HOST, "--port", str(port)]
    # Extra settings win over compose's (a benchmark swaps the database for SQLite).
    env = stack.process_environment(
        PREFECT_HOME=str(directory), **{**server_env, **stack.prefect_settings}
    )
    spawn(stack, "prefect-server", command, env, directory)
    api = f"{stack.url('prefect-server', 4200)}/api"
    wait_until(stack, "prefect-server", http_ok(f"{api}/health"), 180)
    return f"{api} (on Postgres and Redis)"


def prefect_cli(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    env = stack.process_environment(
        PREFECT_HOME=str(stack.root / "client"), **stack.worker_environment()
    )
    return subprocess.run(
        [str(BIN / "prefect"), *args], env=env, capture_output=True, text=True, check=False
    )


def start_worker(stack: Stack, pool: str, limit: int) -> str:
    if prefect_cli(stack, "work-pool", "inspect", pool).returncode != 0:
        created = prefect_cli(stack, "work-pool", "create", pool, "--type", "process")
        if created.returncode != 0:
            raise StackError(f"creating work pool {pool} failed: {created.stdout}{created.stderr}")
    directory = stack.root / f"worker-{pool}"
    directory.mkdir(exist_ok=True)
    env = stack.process_environment(
        PREFECT_HOME=str(directory), **{**stack.worker_environment(), **stack.prefect_settings}
    )
    command = [str(BIN / "prefect"), "worker", "start", "--pool", pool, "--limit", str(limit)]
    spawn(stack, f"worker-{pool}", command, env, ROOT)
    return f"pool {pool}, up to {limit} flow runs"


def replicas() -> dict[str, tuple[int, int, int]]:
    """compose's Triton replicas: name → (http, gRPC, metrics) container ports."""
    found = {}
    for name, service in compose()["services"].items():
        if name.startswith("triton-"):
            http, grpc, metrics = sorted(int(p) for p in service["expose"])
            found[name] = (http, grpc, metrics)
    return found


def triton_settings(stack: Stack, name: str) -> Any:
    from tasks.core.settings import Settings

    worker = stack.worker_environment()
    http, grpc, metrics = replicas()[name]
    return Settings(
        home=stack.root / name,
        model_repository=worker["CONVEYOR_MODEL_REPOSITORY"],
        triton_http_port=stack.port(name, http),
        triton_grpc_port=stack.port(name, grpc),
        triton_metrics_port=stack.port(name, metrics),
        triton_startup_timeout_s=120,
    )


@contextlib.contextmanager
def _triton_environment(stack: Stack) -> Any:
    # conveyor's embedded server takes its key and S3 access from the environment.
    saved = dict(os.environ)
    env = stack.process_environment(
        CONVEYOR_TRITON_ADMIN_KEY=stack.variables["TRITON_ADMIN_KEY"], **s3_env(stack)
    )
    os.environ.clear()
    os.environ.update(env)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def start_triton(stack: Stack, name: str) -> str:
    """One replica, on the S3 repository, serving what its config.pbtxt files pin (what
    compose's `--load-model=*` does): a restarted replica answers with champion + previous."""
    from tasks.serving import triton_server

    with _triton_environment(stack):
        settings = triton_settings(stack, name)
        state = triton_server.ensure_running(settings)
        triton_server.restore_repository(settings, state)
    stack.pids[name] = state.pid
    stack.save()
    return (
        f"http://{state.endpoint.http}, grpc {state.endpoint.grpc} (repository {state.repository})"
    )


def edge_keys(stack: Stack) -> dict[str, str]:
    return {
        "conveyor": stack.variables["EDGE_CONVEYOR_KEY"],
        "demo": stack.variables["EDGE_DEMO_KEY"],
    }


# Per client; conveyor's own swap probe sends about 200 requests/s for a few seconds.
EDGE_RATE_PER_S = 1000
EDGE_BURST = 500


def start_edge(stack: Stack) -> str:
    """nginx in front of the replicas: TLS with a certificate made for 127.0.0.1, client keys,
    rate limits (infra/nginx/edge.conf)."""
    from infra import edge

    directory = stack.root / "edge"
    directory.mkdir(exist_ok=True)
    tls = edge.self_signed(directory)
    upstreams = [
        edge.Upstream(stack.address(name, http), stack.address(name, grpc))
        for name, (http, grpc, _) in replicas().items()
    ]
    http_port, grpc_port = stack.port("edge", 8443), stack.port("edge", 8444)
    config = edge.render(
        directory, upstreams, http_port, grpc_port, tls, EDGE_RATE_PER_S, EDGE_BURST
    )
    edge.write(directory, config, edge_keys(stack))
    command = [
        edge.nginx_binary(), "-e", "stderr", "-c", str(directory / "nginx.conf"),
        "-p", str(directory),
    ]  # fmt: skip
    spawn(stack, "edge", command, stack.process_environment(), directory)
    context = ssl.create_default_context(cafile=str(tls.trusted))
    url = f"https://{HOST}:{http_port}/v2/health/ready"
    wait_until(stack, "edge", http_ok(url, context=context), 30)
    return f"https://{HOST}:{http_port}, grpcs {HOST}:{grpc_port} (CA {tls.trusted})"


def start_edge_metrics(stack: Stack) -> str:
    """compose's edge-metrics sidecar: requests per client from the edge's access log."""
    port = stack.port("edge-metrics", 9103)
    log = stack.root / "edge" / "access.log"
    command = [
        sys.executable, "-m", "infra.edge_metrics",
        "--log", str(log), "--host", HOST, "--port", str(port),
    ]  # fmt: skip
    spawn(stack, "edge-metrics", command, stack.process_environment(), ROOT)
    wait_until(stack, "edge-metrics", http_ok(f"http://{HOST}:{port}/metrics"), 30)
    return f"http://{HOST}:{port}/metrics (requests per client at the edge)"


def start_pushgateway(stack: Stack) -> str:
    from infra.render_secrets import SCRAPE_USER, pushgateway_web_config

    v = stack.variables
    directory = stack.root / "pushgateway"
    directory.mkdir(exist_ok=True)
    web = directory / "web.yml"
    users = {
        v["PUSHGATEWAY_USER"]: v["PUSHGATEWAY_PASSWORD"],
        SCRAPE_USER: v["PUSHGATEWAY_SCRAPE_PASSWORD"],
    }
    write_private(web, pushgateway_web_config(users))
    port = stack.port("pushgateway", 9091)
    command = [
        system_binary("prometheus-pushgateway", "prometheus-pushgateway"),
        f"--web.listen-address={HOST}:{port}",
        f"--web.config.file={web}",
        f"--persistence.file={directory / 'pushgateway.db'}",
        "--persistence.interval=1m",
    ]
    spawn(stack, "pushgateway", command, stack.process_environment(), directory)
    auth = (v["PUSHGATEWAY_USER"], v["PUSHGATEWAY_PASSWORD"])
    wait_until(stack, "pushgateway", http_ok(f"http://{HOST}:{port}/-/ready", auth), 30)
    return f"http://{HOST}:{port} (basic auth)"


def prometheus_config(stack: Stack, secrets_dir: Path) -> str:
    """infra/prometheus/prometheus.yml with this stack's targets, rules and password files."""
    config = yaml.safe_load((INFRA / "prometheus" / "prometheus.yml").read_text())
    config["rule_files"] = [str(INFRA / "prometheus" / "rules" / "*.yml")]
    if stack.scrape_interval:
        config["global"] |= {
            "scrape_interval": stack.scrape_interval,
            "evaluation_interval": stack.scrape_interval,
        }
    for job in config["scrape_configs"]:
        for group in job.get("static_configs", []):
            group["targets"] = [
                stack.address(name, int(port))
                for name, port in (target.split(":") for target in group["targets"])
            ]
        auth = job.get("basic_auth")
        if auth and "password_file" in auth:
            auth["password_file"] = str(secrets_dir / Path(auth["password_file"]).name)
    return yaml.safe_dump(config, sort_keys=False)


def start_mlflow_metrics(stack: Stack) -> str:
    """compose's mlflow-metrics sidecar: MLflow's metrics without MLflow credentials."""
    port = stack.port("mlflow-metrics", 9102)
    command = [
        sys.executable, "-m", "infra.mlflow_metrics",
        "--dir", str(stack.root / "mlflow" / "metrics"), "--host", HOST, "--port", str(port),
    ]  # fmt: skip
    spawn(stack, "mlflow-metrics", command, stack.process_environment(), ROOT)
    wait_until(stack, "mlflow-metrics", http_ok(f"http://{HOST}:{port}/metrics"), 30)
    return f"http://{HOST}:{port}/metrics (MLflow's request metrics, read-only)"


def start_prometheus(stack: Stack) -> str:
    v = stack.variables
    directory = stack.root / "prometheus"
    secrets_dir = directory / "secrets"
    write_private(secrets_dir / "pushgateway-password", v["PUSHGATEWAY_SCRAPE_PASSWORD"])
    config = directory / "prometheus.yml"
    config.write_text(prometheus_config(stack, secrets_dir))
    port = stack.port("prometheus", 9090)
    command = [
        system_binary("prometheus", "prometheus"),
        f"--config.file={config}",
        f"--storage.tsdb.path={directory / 'data'}",
        f"--web.listen-address={HOST}:{port}",
    ]
    spawn(stack, "prometheus", command, stack.process_environment(), directory)
    wait_until(stack, "prometheus", http_ok(f"http://{HOST}:{port}/-/ready"), 60)
    return f"http://{HOST}:{port}"


def is_up(stack: Stack, name: str) -> bool:
    if name in replicas():
        from tasks.serving import triton_server

        with _triton_environment(stack):
            return triton_server.status(triton_settings(stack, name)) is not None
    return alive(stack.pids.get(name))


def services() -> list[tuple[str, Callable[[Stack], str]]]:
    started: list[tuple[str, Callable[[Stack], str]]] = [
        ("postgres", start_postgres),
        ("redis", start_redis),
        ("s3", start_s3),
        ("mlflow", start_mlflow),
        ("mlflow-metrics", start_mlflow_metrics),
        ("prefect-server", start_prefect),
        ("dask-scheduler", start_scheduler),
        ("dask-worker", start_workers),
        *((name, functools.partial(start_triton, name=name)) for name in replicas()),
        ("edge", start_edge),
        ("edge-metrics", start_edge_metrics),
        ("pushgateway", start_pushgateway),
        ("prometheus", start_prometheus),
    ]
    for pool, limit in workers().items():
        started.append((f"worker-{pool}", lambda s, p=pool, n=limit: start_worker(s, p, n)))
    return started
