"""Real servers started by tests on 127.0.0.1, stopped by their own process ids."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import httpx

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def stop_process(process: subprocess.Popen[bytes], grace_s: float = 10.0) -> None:
    """Stop a process and everything in its session (it was started with start_new_session)."""
    if process.poll() is not None:
        return
    with suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(grace_s)
    except subprocess.TimeoutExpired:
        with suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(5)


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "CONVEYOR_"))}
    env["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    env.update(extra)
    return env


@contextmanager
def serving(
    command: list[str],
    env: dict[str, str],
    log_path: Path,
    up: Callable[[], bool],
    timeout_s: float,
) -> Iterator[None]:
    """Run `command` in its own session until the block ends; wait for `up()` first."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            deadline = time.monotonic() + timeout_s
            while not up():
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"{command[0]} did not come up: {log_path.read_text()[-2000:]}"
                    )
                time.sleep(0.3)
            yield
        finally:
            stop_process(process)


def _answers(url: str, status: int | None = None) -> Callable[[], bool]:
    def check() -> bool:
        try:
            response = httpx.get(url, timeout=2)
        except httpx.HTTPError:
            return False
        return status is None or response.status_code == status

    return check


@contextmanager
def prefect_server(home: Path, timeout_s: float = 90.0, **settings: str) -> Iterator[str]:
    """`prefect server start` in its own PREFECT_HOME (plus PREFECT_* `settings`); yields the
    API URL."""
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    command = [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    env = clean_env(PREFECT_HOME=str(home), **settings)
    with serving(command, env, home / "server.log", _answers(f"{api}/health", 200), timeout_s):
        yield api


MLFLOW_ADMIN = "admin"


def system_binary(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise RuntimeError(
            f"{name} is not installed: `make test` installs Debian's prometheus and "
            "prometheus-pushgateway as root (apt-get install prometheus prometheus-pushgateway)"
        )
    return found


@contextmanager
def pushgateway(base: Path, users: dict[str, str], timeout_s: float = 30.0) -> Iterator[str]:
    """Debian's Pushgateway behind basic auth for `users` (name → password), as compose runs
    it (infra/render_secrets.py writes the web config); yields its URL."""
    from infra.render_secrets import pushgateway_web_config

    base.mkdir(parents=True, exist_ok=True)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    web_config = base / "pushgateway-web.yml"
    web_config.write_text(pushgateway_web_config(users))
    command = [
        system_binary("prometheus-pushgateway"),
        f"--web.listen-address=127.0.0.1:{port}",
        f"--web.config.file={web_config}",
        # Debian's build persists to /var/lib/prometheus by default: earlier runs would leak in.
        f"--persistence.file={base / 'pushgateway.data'}",
    ]
    user, password = next(iter(users.items()))

    def up() -> bool:
        try:
            return httpx.get(f"{url}/-/ready", auth=(user, password), timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    with serving(command, clean_env(), base / "pushgateway.log", up, timeout_s):
        yield url


@contextmanager
def mlflow_server(
    base: Path,
    admin_password: str,
    artifacts: str | None = None,
    timeout_s: float = 120.0,
    port: int | None = None,
) -> Iterator[str]:
    """`mlflow server --app-name basic-auth` on SQLite, artifacts proxied to `artifacts` (default
    a directory under `base`), default permission READ; yields its URI. The same `base` and
    `port` again restart it on the same stores (an outage and its end)."""
    from infra.stack import mlflow_auth_config

    base.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    uri = f"http://127.0.0.1:{port}"
    config = base / "basic_auth.ini"
    # The same config compose and `make stack` give their MLflow servers.
    config.write_text(mlflow_auth_config(f"sqlite:///{base / 'auth.db'}", MLFLOW_ADMIN))
    command = [
        str(BIN / "mlflow"),
        "server",
        "--app-name",
        "basic-auth",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
        "--backend-store-uri",
        f"sqlite:///{base / 'mlflow.db'}",
        "--artifacts-destination",
        artifacts or str(base / "artifacts"),
    ]
    env = clean_env(
        MLFLOW_AUTH_CONFIG_PATH=str(config),
        MLFLOW_AUTH_ADMIN_PASSWORD=admin_password,
        # CSRF protection of the auth app's forms needs a stable secret.
        MLFLOW_FLASK_SERVER_SECRET_KEY=secrets.token_hex(16),
    )
    with serving(command, env, base / "mlflow.log", _answers(f"{uri}/health", 200), timeout_s):
        yield uri


@contextmanager
def moto_s3(log_dir: Path, require_auth: bool = False, timeout_s: float = 30.0) -> Iterator[str]:
    """moto's S3-compatible server on 127.0.0.1; yields its endpoint URL."""
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    env = clean_env()
    if require_auth:
        env["INITIAL_NO_AUTH_ACTION_COUNT"] = "0"  # every request is authenticated from the start
    command = [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)]
    with serving(command, env, log_dir / f"moto-{port}.log", _answers(endpoint), timeout_s):
        yield endpoint


def in_smoke_test(spec_path: str) -> bool:
    """Whether the newest release of `spec_path` is running its smoke-test subflow."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowFilter,
        FlowFilterName,
        FlowRunFilter,
        FlowRunFilterParentFlowRunId,
    )

    from tasks.resume import releases

    runs = releases(spec_path)
    if not runs:
        return False
    with get_client(sync_client=True) as client:
        smoke = client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=["smoke-test"])),
            flow_run_filter=FlowRunFilter(
                parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[runs[0].id])
            ),
        )
    return any(run.state is not None and run.state.is_running() for run in smoke)


LOCKED = "database is locked"


@dataclass
class ProductionStack:
    """`make stack` started by the tests: its directory and the env file it wrote."""

    root: Path
    env: dict[str, str]  # exactly compose's x-conveyor-env, for this stack

    @property
    def api(self) -> str:
        return self.env["PREFECT_API_URL"]

    @property
    def auth(self) -> tuple[str, str]:
        user, password = self.env["PREFECT_API_AUTH_STRING"].split(":", 1)
        return user, password


def _stack_command(root: Path, *args: str, timeout_s: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "python"), "-m", "infra.stack", *args, "--dir", str(root)],
        cwd=Path(__file__).resolve().parent.parent,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )


@contextmanager
def production_stack(**prefect_settings: str) -> Iterator[ProductionStack]:
    """The production topology (`infra/stack.py`) on free ports; stopped, and checked to leave
    no process behind, when the block ends."""
    from infra.stack import ENV_FILE, read_env_file

    # PostgreSQL runs as its own user when the tests run as root: it must be able to reach
    # the directory, which pytest's tmp_path (0700, root's) does not allow.
    root = Path(tempfile.mkdtemp(prefix="conveyor-stack-"))
    root.chmod(0o711)
    settings = [f"--prefect-setting={k}={v}" for k, v in prefect_settings.items()]
    started = _stack_command(root, "up", "--free-ports", *settings, timeout_s=600)
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        yield ProductionStack(root, read_env_file(root / ENV_FILE))
    finally:
        stopped = _stack_command(root, "down", timeout_s=300)
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr
        # What SQLite gave the Prefect servers under several writers; on PostgreSQL, nothing.
        locked = [
            p.name
            for p in (root / "logs").glob("*.log")
            if LOCKED in p.read_text("utf-8", "replace")
        ]
        assert locked == [], f"`{LOCKED}` in {locked} (logs kept in {root / 'logs'})"
        shutil.rmtree(root)  # only its logs were left; kept when stopping failed
