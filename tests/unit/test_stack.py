"""`make stack` follows compose: the same worker environment, Prefect server environment,
databases, buckets and workers, with only addresses and local paths changed."""

from __future__ import annotations

import contextlib
import re
import socket
from pathlib import Path

import pytest

from infra import stack
from infra.render_secrets import read_env

COMPOSE_SERVICES = set(stack.compose()["services"])


@pytest.fixture
def local(tmp_path: Path) -> stack.Stack:
    return stack.Stack.open(tmp_path / "stack", free_ports=True)


def _compose_addresses(value: str) -> list[str]:
    return [f"{n}:{p}" for n, p in stack.ADDRESS.findall(value) if n in COMPOSE_SERVICES]


def test_the_env_file_has_exactly_the_variables_compose_gives_its_workers(
    local: stack.Stack,
) -> None:
    written = stack.read_env_file(
        _write_env(local, local.root / stack.ENV_FILE),
    )
    assert list(written) == list(stack.compose()["x-conveyor-env"])


def _write_env(local: stack.Stack, path: Path) -> Path:
    stack.write_private(path, stack.env_file_text(local.worker_environment(), "test"))
    assert path.stat().st_mode & 0o777 == 0o600  # it holds the workers' credentials
    return path


def test_every_compose_address_moves_to_the_stack_and_nothing_else_changes(
    local: stack.Stack,
) -> None:
    template = stack.worker_environment_template()
    values = local.worker_environment()
    for key, raw in template.items():
        value = values[key]
        assert _compose_addresses(value) == [], (key, value)
        for address in _compose_addresses(raw):
            assert f"127.0.0.1:{local.ports[address]}" in value, (key, value)
        if key in stack.LOCAL_PATHS or key in stack.LOCAL_VALUES:
            continue
        if "${" not in raw and not _compose_addresses(raw):
            assert value == raw, key  # e.g. the heartbeat frequency, the region
    assert values["CONVEYOR_PROJECT_DIR"] == str(stack.ROOT)
    assert values["CONVEYOR_HOME"] == str(local.root / "conveyor")
    # The canary routes a worker writes are the ones the stack's edge reads.
    assert values["CONVEYOR_EDGE_ROUTES_DIR"] == str(local.root / "edge" / "routes")
    assert values["CONVEYOR_MODEL_REPOSITORY"] == "s3://models/triton"
    assert values["PREFECT_API_AUTH_STRING"] == local.variables["PREFECT_AUTH_STRING"]


def test_the_prefect_server_runs_on_the_stacks_postgres_and_redis(local: stack.Stack) -> None:
    server = local.localise(stack.prefect_server_environment_template())
    postgres = local.ports["postgres:5432"]
    assert server["PREFECT_API_DATABASE_CONNECTION_URL"].endswith(f"127.0.0.1:{postgres}/prefect")
    assert server["PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE"] == "prefect_redis.lease_storage"
    assert f"127.0.0.1:{local.ports['redis:6379']}/0" in server["PREFECT_REDIS_MESSAGING_URL"]
    assert "EXTRA_PIP_PACKAGES" not in server  # installed in the virtual environment instead


def test_databases_buckets_and_workers_are_composes() -> None:
    init_sql = (stack.INFRA / "postgres" / "init.sql").read_text()
    assert stack.database_names() == ["prefect", *re.findall(r"CREATE DATABASE (\w+);", init_sql)]
    assert stack.bucket_names({}) == ["mlflow", "models"]
    assert stack.bucket_names({"MODEL_BUCKET": "prod-models"}) == ["mlflow", "prod-models"]
    assert stack.workers() == {"cpu": 4, "gpu": 2}


def test_every_variable_the_stack_takes_from_compose_is_generated_and_documented(
    local: stack.Stack,
) -> None:
    blocks = {**stack.worker_environment_template(), **stack.prefect_server_environment_template()}
    found = [m for value in blocks.values() for m in stack.VARIABLE.findall(value)]
    needed = {name for name, kind, _ in found if name and kind != "-"}  # no default
    assert "TRITON_ADMIN_KEY" in needed and "REDIS_PASSWORD" in needed
    assert needed <= set(local.variables), needed - set(local.variables)
    documented = set(read_env(stack.INFRA / ".env.example"))
    assert needed <= documented, needed - documented


def test_credentials_are_made_once_per_stack_directory(tmp_path: Path) -> None:
    first = stack.Stack.open(tmp_path / "s", free_ports=True)
    again = stack.Stack.open(tmp_path / "s", free_ports=True)
    assert first.variables == again.variables and first.ports == again.ports
    assert (tmp_path / "s" / stack.SECRETS_FILE).stat().st_mode & 0o777 == 0o600
    other = stack.Stack.open(tmp_path / "t", free_ports=True)
    assert other.variables["TRITON_ADMIN_KEY"] != first.variables["TRITON_ADMIN_KEY"]


def test_default_ports_are_composes_plus_the_offset(tmp_path: Path) -> None:
    fixed = stack.Stack.open(tmp_path / "s")
    assert fixed.ports["prefect-server:4200"] == 4200 + stack.PORT_OFFSET
    assert fixed.ports["triton-1:8001"] == 8001 + stack.PORT_OFFSET
    assert fixed.ports["triton-2:8011"] == 8011 + stack.PORT_OFFSET
    assert fixed.ports["edge:8443"] == 8443 + stack.PORT_OFFSET


def test_prometheus_scrapes_the_stacks_targets(local: stack.Stack, tmp_path: Path) -> None:
    import yaml

    config = yaml.safe_load(stack.prometheus_config(local, tmp_path))
    targets = {
        job["job_name"]: group["targets"]
        for job in config["scrape_configs"]
        for group in job["static_configs"]
    }
    assert targets["triton"] == [
        f"127.0.0.1:{local.ports['triton-1:8002']}",
        f"127.0.0.1:{local.ports['triton-2:8012']}",
    ]
    assert targets["edge"] == [f"127.0.0.1:{local.ports['edge-metrics:9103']}"]
    assert targets["pushgateway"] == [f"127.0.0.1:{local.ports['pushgateway:9091']}"]
    for job in config["scrape_configs"]:
        if "basic_auth" in job:
            assert Path(job["basic_auth"]["password_file"]).parent == tmp_path
    assert config["global"]["scrape_interval"] == "15s"  # prometheus.yml's, unless asked


def test_the_scrape_interval_is_kept_with_the_stack(tmp_path: Path) -> None:
    import yaml

    stack.Stack.open(tmp_path / "s", free_ports=True, scrape_interval="1s")
    again = stack.Stack.open(tmp_path / "s")  # a later `make stack` on the same directory
    config = yaml.safe_load(stack.prometheus_config(again, tmp_path))
    assert config["global"] == {"scrape_interval": "1s", "evaluation_interval": "1s"}


@pytest.mark.parametrize(
    ("template", "expected"),
    [("${A}", "a"), ("${B:-dflt}", "dflt"), ("${A:-dflt}", "a"), ("$${A}", "${A}")],
)
def test_interpolation_follows_compose(template: str, expected: str) -> None:
    assert stack.interpolate(template, {"A": "a"}) == expected


def test_a_missing_required_variable_is_named() -> None:
    with pytest.raises(stack.StackError, match=r"compose needs B .*set B in infra/\.env"):
        stack.interpolate("${B:?set B in infra/.env}", {})


def test_a_second_stack_on_the_host_gets_ports_of_its_own(tmp_path: Path) -> None:
    """The usual ports (compose's + 10000) taken, as by a first clone's stack: the second
    stack picks free ones and says why, instead of failing on a taken port mid-start."""
    usual = 9090 + stack.PORT_OFFSET
    with socket.socket() as first:
        with contextlib.suppress(OSError):  # taken by something else already: just as good
            first.bind(("127.0.0.1", usual))
            first.listen()
        second = stack.Stack.open(tmp_path / "second")
    assert second.port("prometheus", 9090) != usual
    assert str(usual) in second.notice
    assert str(tmp_path / "second" / stack.ENV_FILE) in second.notice
    # Kept: reopening the stack (status, down) finds the same ports.
    assert stack.Stack.open(tmp_path / "second").ports == second.ports


def test_mlflow_telemetry_is_off_in_every_process_conveyor_or_the_stack_starts(
    local: stack.Stack,
) -> None:
    """MLflow 3.17's telemetry thread deletes a variable from os.environ while other threads
    read it: 1 stack release in 3 failed with a raw KeyError (#42)."""
    from cli.app import PROCESS_DEFAULTS

    assert PROCESS_DEFAULTS["MLFLOW_DISABLE_TELEMETRY"] == "true"
    assert local.process_environment()["MLFLOW_DISABLE_TELEMETRY"] == "true"
    assert local.worker_environment()["MLFLOW_DISABLE_TELEMETRY"] == "true"
    compose = stack.compose()
    assert compose["x-conveyor-env"]["MLFLOW_DISABLE_TELEMETRY"] == "true"
    assert compose["services"]["mlflow"]["environment"]["MLFLOW_DISABLE_TELEMETRY"] == "true"
