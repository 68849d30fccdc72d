"""`make stack`: conveyor's production topology on 127.0.0.1, from packages, without Docker.

    .venv/bin/python -m infra.stack up [--dir .stack] [--free-ports]   # idempotent
    .venv/bin/python -m infra.stack status [--dir .stack]
    .venv/bin/python -m infra.stack down [--dir .stack]                # leaves no process

What compose runs, one process each, in one state directory: PostgreSQL (its own cluster) with
the Prefect, MLflow and MLflow-auth databases; Redis; an S3 server (moto) with the artifact and
model buckets; MLflow's basic-auth server on Postgres with artifacts on S3; Prefect's server on
Postgres and Redis; a worker per compose worker service; the embedded Triton on the S3 model
repository; the Pushgateway and Prometheus.

Compose is the source of truth: the workers' environment is compose's `x-conveyor-env`, the
Prefect server's is compose's `prefect-server` environment, the databases are compose's plus
`infra/postgres/init.sql`, the workers and their limits are compose's `worker-*` commands.
Only what has to differ on one host differs (`LOCAL`): addresses (`service:port` becomes
127.0.0.1 and a port of the stack), the checkout and state paths, and the Triton backend
(the embedded build has the python backend only). Credentials are generated once per stack
directory into `secrets.env` (mode 0600) under the names `infra/.env` uses.

`up` writes `conveyor.env` (0600): exactly the variables compose gives its workers, as
`export` lines, so that `source .stack/conveyor.env` points `conveyor` and `make deploy` at it.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import hashlib
import json
import os
import re
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

INFRA = Path(__file__).resolve().parent
ROOT = INFRA.parent
COMPOSE = INFRA / "docker-compose.yml"
INIT_SQL = INFRA / "postgres" / "init.sql"
BIN = Path(sys.executable).parent
HOST = "127.0.0.1"
# Every process the stack starts carries this variable: `down` finds them (and the flow-run
# processes workers spawn) by it, so nothing is left behind whatever its process group.
MARKER = "CONVEYOR_STACK_DIR"
# `make stack` ports are compose's plus this, so they stay recognisable and clear of `make ui`
# (4200, 5000) and of a system PostgreSQL or Redis on their default ports.
PORT_OFFSET = 10_000
ENV_FILE = "conveyor.env"
SECRETS_FILE = "secrets.env"
STATE_FILE = "stack.json"
# Worker images in compose run from /opt/conveyor with their state in /var/lib/conveyor.
LOCAL_PATHS = {"CONVEYOR_PROJECT_DIR": "project", "CONVEYOR_HOME": "home"}
LOCAL_VALUES = {
    # The embedded tritonserver build carries the python backend only; same I/O contract.
    "CONVEYOR_TRITON_BACKEND": "python",
}
# Services that are not processes here: MinIO is moto's S3 server (one user; moto does not
# enforce per-user bucket policies), Grafana is not packaged for Debian (dashboards are tested
# against Prometheus instead), the one-shot jobs are steps of `up`.
NOT_STARTED = {"minio-buckets", "mlflow-users", "grafana"}
S3_SERVICE = "minio"
WORKER_COMMAND = re.compile(r"prefect worker start --pool (\S+) --limit (\d+)")
# `$$` is compose's escape for a literal `$`; it is matched first so that `$${X}` stays as is.
VARIABLE = re.compile(r"\$\$|\$\{([A-Z0-9_]+)(?::([-?])([^}]*))?\}")


class StackError(RuntimeError):
    """The stack could not be started or stopped; the message says why and what to do."""


# --- compose, read as the source of truth -------------------------------------------------


@functools.cache
def compose() -> dict[str, Any]:
    """The compose file, parsed once per process: every environment block, port and worker the
    stack derives reads it (a worker environment alone is built several times per `up`).
    Callers only read it."""
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return loaded


def interpolate(value: str, variables: dict[str, str]) -> str:
    """Compose's `${NAME}`, `${NAME:-default}` and `${NAME:?message}` against `variables`."""

    def one(match: re.Match[str]) -> str:
        name, kind, rest = match.groups()
        if name is None:
            return "$"
        if variables.get(name):
            return variables[name]
        if kind == "-":
            return rest
        raise StackError(f"compose needs {name} and the stack has no value for it: {rest}")

    return VARIABLE.sub(one, value)


def worker_environment_template() -> dict[str, str]:
    """Compose's `x-conveyor-env`: what every worker (and so every flow run) gets."""
    return {k: str(v) for k, v in compose()["x-conveyor-env"].items()}


def prefect_server_environment_template() -> dict[str, str]:
    environment = compose()["services"]["prefect-server"]["environment"]
    # The image installs EXTRA_PIP_PACKAGES at start; here they are in the virtual environment.
    return {k: str(v) for k, v in environment.items() if k != "EXTRA_PIP_PACKAGES"}


def workers() -> dict[str, int]:
    """Pool → process limit, from compose's worker services."""
    found = {}
    for name, service in compose()["services"].items():
        if name.startswith("worker-"):
            match = WORKER_COMMAND.search(str(service["command"]))
            if match is None:
                raise StackError(f"compose's {name} does not run `prefect worker start`")
            found[match.group(1)] = int(match.group(2))
    return found


ADDRESS = re.compile(r"(?<![\w.-])([a-z][a-z0-9-]*):(\d{2,5})(?!\d)")


def container_ports() -> dict[str, list[int]]:
    """Service → the ports other services and the workers reach it on: `service:port` in
    compose's environments and commands, and its published ports (container side)."""
    spec = compose()
    ports: dict[str, set[int]] = {n: set() for n in set(spec["services"]) - NOT_STARTED}
    texts = [json.dumps(spec["x-conveyor-env"])]
    for service in spec["services"].values():
        texts += [json.dumps(service.get(k)) for k in ("environment", "command", "entrypoint")]
    for name, port in (m for text in texts for m in ADDRESS.findall(text)):
        if name in ports:
            ports[name].add(int(port))
    for name, service in spec["services"].items():
        for published in service.get("ports", []):
            if name in ports:
                ports[name].add(int(str(published).split(":")[-1]))
    return {name: sorted(found) for name, found in ports.items() if found}


def database_names() -> list[str]:
    spec = compose()["services"]["postgres"]["environment"]
    names = [str(spec["POSTGRES_DB"])]
    names += re.findall(r"CREATE DATABASE (\w+);", INIT_SQL.read_text())
    return names


def bucket_names(variables: dict[str, str]) -> list[str]:
    """The buckets compose's bucket job makes (`mc mb`), their names as compose resolves them."""
    entrypoint = str(compose()["services"]["minio-buckets"]["entrypoint"])
    return [
        interpolate(b, variables)
        for b in re.findall(r"mc mb --ignore-existing local/(\S+?);", entrypoint)
    ]


# --- the stack's own state -----------------------------------------------------------------


def generated_secrets() -> dict[str, str]:
    """Credentials under `infra/.env`'s names, made once per stack directory. Values are
    URL-safe: some go into connection URLs."""
    token = secrets.token_hex
    return {
        "POSTGRES_USER": "conveyor",
        "POSTGRES_PASSWORD": token(16),
        "REDIS_PASSWORD": token(16),
        "MINIO_WORKER_USER": "conveyor-worker",
        "MINIO_WORKER_PASSWORD": token(16),
        "TRITON_ADMIN_KEY": secrets.token_urlsafe(32),
        "PREFECT_AUTH_STRING": f"conveyor:{token(16)}",
        "MLFLOW_ADMIN_USER": "admin",
        "MLFLOW_ADMIN_PASSWORD": token(16),
        "MLFLOW_SECRET_KEY": token(16),
        "MLFLOW_WORKER_USER": "conveyor-worker",
        "MLFLOW_WORKER_PASSWORD": token(16),
        "MLFLOW_READER_USER": "conveyor-reader",
        "MLFLOW_READER_PASSWORD": token(16),
        "PUSHGATEWAY_USER": "conveyor",
        "PUSHGATEWAY_PASSWORD": token(16),
        "PUSHGATEWAY_SCRAPE_PASSWORD": token(16),
    }


def write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)


def read_env_file(path: Path) -> dict[str, str]:
    values = {}
    for line in path.read_text().splitlines():
        line = line.strip().removeprefix("export ")
        if line and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            values[key] = shlex.split(value)[0] if value else ""
    return values


def env_file_text(values: dict[str, str], header: str) -> str:
    lines = [f"# {line}" for line in header.splitlines()]
    lines += [f"export {key}={shlex.quote(value)}" for key, value in values.items()]
    return "\n".join(lines) + "\n"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _taken(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return True
    return False


def other_stacks(root: Path) -> list[str]:
    """Directories of the other stacks running on this host (their processes carry MARKER)."""
    prefix = f"{MARKER}=".encode()
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                for item in (entry / "environ").read_bytes().split(b"\0"):
                    if item.startswith(prefix):
                        found.add(item[len(prefix) :].decode(errors="replace"))
    return sorted(found - {str(root)})


@dataclass
class Stack:
    """One stack directory: its ports, credentials and the processes it started."""

    root: Path
    ports: dict[str, int]  # "service:container-port" → port on 127.0.0.1
    variables: dict[str, str]
    pids: dict[str, int]
    # PREFECT_* settings for the server and workers beyond compose's (tests: faster loops).
    prefect_settings: dict[str, str]
    # Prometheus' scrape and rule interval instead of prometheus.yml's (tests: seconds).
    scrape_interval: str | None = None
    # What `up` says first (its ports moved off the usual set, and why).
    notice: str = ""

    @classmethod
    def open(
        cls,
        root: Path,
        free_ports: bool = False,
        prefect_settings: dict[str, str] | None = None,
        scrape_interval: str | None = None,
    ) -> Stack:
        root = root.resolve()
        root.mkdir(parents=True, exist_ok=True)
        state_path = root / STATE_FILE
        notice = ""
        if state_path.is_file():
            state = json.loads(state_path.read_text())
            ports, pids = state["ports"], state["pids"]
            prefect_settings = state.get("prefect_settings", {})
            scrape_interval = state.get("scrape_interval")
        else:
            fixed = {
                f"{name}:{port}": port + PORT_OFFSET
                for name, found in container_ports().items()
                for port in found
            }
            taken = sorted(p for p in fixed.values() if _taken(p))
            if taken and not free_ports:
                # A second clone's stack on this host: compose's ports + 10000 are the first's.
                free_ports = True
                others = other_stacks(root)
                notice = (
                    f"ports {', '.join(map(str, taken[:6]))} of the usual set are taken"
                    + (f" (by the stack in {', '.join(others)})" if others else "")
                    + f": this stack uses free ports of its own, written to {root / ENV_FILE}"
                )
            ports = {k: _free_port() for k in fixed} if free_ports else fixed
            pids = {}
        secrets_path = root / SECRETS_FILE
        if not secrets_path.is_file():
            write_private(
                secrets_path,
                env_file_text(generated_secrets(), "make stack's credentials (infra/.env names)"),
            )
        variables = read_env_file(secrets_path)
        stack = cls(root, ports, variables, pids, prefect_settings or {}, scrape_interval)
        stack.notice = notice
        variables.update(stack.public_urls())
        stack.save()
        return stack

    def save(self) -> None:
        state = {
            "ports": self.ports,
            "pids": self.pids,
            "prefect_settings": self.prefect_settings,
            "scrape_interval": self.scrape_interval,
        }
        (self.root / STATE_FILE).write_text(json.dumps(state, indent=2) + "\n")

    def port(self, service: str, container_port: int) -> int:
        return self.ports[f"{service}:{container_port}"]

    def address(self, service: str, container_port: int) -> str:
        return f"{HOST}:{self.port(service, container_port)}"

    def url(self, service: str, container_port: int) -> str:
        return f"http://{self.address(service, container_port)}"

    def public_urls(self) -> dict[str, str]:
        # What browsers use (links in artifacts, the Prefect UI's API calls).
        return {
            "MLFLOW_PUBLIC_URL": self.url("mlflow", 5000),
            "PREFECT_PUBLIC_API_URL": f"{self.url('prefect-server', 4200)}/api",
        }

    def localise(self, template: dict[str, str]) -> dict[str, str]:
        """A compose environment block for this host: variables filled in, `service:port`
        addresses moved to 127.0.0.1 and the stack's ports."""

        def move(match: re.Match[str]) -> str:
            key = f"{match.group(1)}:{match.group(2)}"
            return f"{HOST}:{self.ports[key]}" if key in self.ports else match.group(0)

        paths = {"project": str(ROOT), "home": str(self.root / "conveyor")}
        values = {}
        for key, raw in template.items():
            value = ADDRESS.sub(move, raw)
            value = interpolate(value, self.variables)
            if key in LOCAL_PATHS:
                value = paths[LOCAL_PATHS[key]]
            values[key] = LOCAL_VALUES.get(key, value)
        return values

    def worker_environment(self) -> dict[str, str]:
        return self.localise(worker_environment_template())

    def process_environment(self, **extra: str) -> dict[str, str]:
        """A clean environment for a stack process: no developer PREFECT_/CONVEYOR_/AWS_/MLFLOW_
        settings leak in; the virtual environment's tools first on PATH; the marker."""
        prefixes = ("PREFECT_", "CONVEYOR_", "AWS_", "MLFLOW_", "TRITON_")
        env = {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}
        env["PATH"] = f"{BIN}:{env.get('PATH', '')}"
        env[MARKER] = str(self.root)
        env["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
        env.update(extra)
        return env

    def log(self, name: str) -> Path:
        path = self.root / "logs" / f"{name}.log"
        path.parent.mkdir(parents=True, exist_ok=True)
        return path


# --- processes -----------------------------------------------------------------------------


def alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def spawn(stack: Stack, name: str, command: list[str], env: dict[str, str], cwd: Path) -> int:
    with stack.log(name).open("ab") as log:
        log.write(f"\n--- make stack: {shlex.join(command)}\n".encode())
        log.flush()
        process = subprocess.Popen(
            command,
            env=env,
            cwd=cwd,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    stack.pids[name] = process.pid
    stack.save()
    return process.pid


def wait_until(stack: Stack, name: str, ready: Callable[[], bool], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    pid = stack.pids.get(name)
    while not ready():
        if (pid and not alive(pid)) or time.monotonic() > deadline:
            tail = stack.log(name).read_text(errors="replace")[-3000:]
            why = "exited" if pid and not alive(pid) else f"was not ready in {timeout_s:.0f} s"
            raise StackError(f"{name} {why}; the end of {stack.log(name)}:\n{tail}")
        time.sleep(0.3)


def http_ok(url: str, auth: tuple[str, str] | None = None) -> Callable[[], bool]:
    import httpx

    def check() -> bool:
        try:
            return httpx.get(url, timeout=2, auth=auth).status_code == 200
        except httpx.HTTPError:
            return False

    return check


def port_open(port: int) -> Callable[[], bool]:
    def check() -> bool:
        with socket.socket() as sock:
            sock.settimeout(1)
            return sock.connect_ex((HOST, port)) == 0

    return check


def system_binary(name: str, package: str) -> str:
    # Debian keeps PostgreSQL's server programs off PATH, under its major version.
    versions = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), reverse=True)
    found = shutil.which(name) or next((str(p) for p in versions), None)
    if found is None:
        raise StackError(
            f"{name} is not installed: `make system-deps` installs it as root "
            f"(apt-get install {package})"
        )
    return found


# --- the services, in start order ----------------------------------------------------------


def _as_postgres(command: list[str]) -> list[str]:
    # PostgreSQL refuses to run as root; CI (and `make` under sudo) is root.
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


def postgres_url(stack: Stack, database: str) -> str:
    v = stack.variables
    return (
        f"postgresql://{v['POSTGRES_USER']}:{v['POSTGRES_PASSWORD']}@"
        f"{stack.address('postgres', 5432)}/{database}"
    )


# Where PostgreSQL's data goes when root runs the stack from a directory the postgres user
# cannot traverse (a clone under /root, mode 0700): under the postgres user's own home, one
# folder per stack directory. `make stack-down` deletes it with the rest of the stack's data.
POSTGRES_ELSEWHERE = Path("/var/lib/postgresql/conveyor-stacks")


def postgres_data(stack: Stack) -> Path:
    """PostgreSQL's data directory: in the stack directory, unless the server (run as the
    postgres user when root starts it) could not reach it there."""
    inside = stack.root / "postgres"
    if os.geteuid() != 0:
        return inside
    reach = subprocess.run(_as_postgres(["test", "-x", str(stack.root)]), check=False)
    if reach.returncode == 0:
        return inside
    digest = hashlib.sha256(str(stack.root).encode()).hexdigest()[:16]
    return POSTGRES_ELSEWHERE / digest


def _postgres_owned(path: Path, directory: bool) -> None:
    if directory:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    else:
        path.touch(mode=0o600)
    if os.geteuid() == 0:
        shutil.chown(path, "postgres", "postgres")


def start_postgres(stack: Stack) -> str:
    data = postgres_data(stack)
    pg_ctl = system_binary("pg_ctl", "postgresql")
    env = stack.process_environment()
    if not (data / "PG_VERSION").is_file():
        _postgres_owned(data, directory=True)
        # initdb wants an empty data directory, and must read this as the postgres user.
        password_file = data.parent / f"{data.name}.initdb.pw"
        write_private(password_file, stack.variables["POSTGRES_PASSWORD"] + "\n")
        if os.geteuid() == 0:
            shutil.chown(password_file, "postgres", "postgres")
        initdb = system_binary("initdb", "postgresql")
        done = subprocess.run(
            _as_postgres(
                [initdb, "-D", str(data), "-U", stack.variables["POSTGRES_USER"],
                 f"--pwfile={password_file}", "--auth=scram-sha-256", "--encoding=UTF8"]
            ),
            env=env, capture_output=True, text=True, check=False,
        )  # fmt: skip
        password_file.unlink()
        if done.returncode != 0:
            raise StackError(f"initdb failed: {done.stdout}{done.stderr}")
    # pg_ctl opens the log as the postgres user: beside the data when that is elsewhere.
    log = stack.log("postgres") if data.is_relative_to(stack.root) else data.with_suffix(".log")
    _postgres_owned(log, directory=False)
    options = f"-h {HOST} -p {stack.port('postgres', 5432)} -k {data}"
    done = subprocess.run(
        _as_postgres([pg_ctl, "-D", str(data), "-l", str(log), "-o", options, "-w", "start"]),
        env=env, capture_output=True, text=True, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        raise StackError(f"PostgreSQL did not start ({done.stderr.strip()}); see {log}")
    stack.pids["postgres"] = int((data / "postmaster.pid").read_text().split()[0])
    stack.save()
    create_databases(stack)
    where = "" if data.is_relative_to(stack.root) else f"; data in {data}"
    return f"postgresql://{stack.address('postgres', 5432)} ({', '.join(database_names())}{where})"


def create_databases(stack: Stack) -> None:
    import psycopg2

    connection = psycopg2.connect(postgres_url(stack, "postgres"))
    connection.autocommit = True
    # Not `with connection`: that opens a transaction, and CREATE DATABASE refuses to run in one.
    with connection.cursor() as cursor:
        cursor.execute("SELECT datname FROM pg_database")
        existing = {row[0] for row in cursor.fetchall()}
        for name in database_names():
            if name not in existing:
                cursor.execute(f'CREATE DATABASE "{name}"')
    connection.close()


def start_redis(stack: Stack) -> str:
    directory = stack.root / "redis"
    directory.mkdir(exist_ok=True)
    config = directory / "redis.conf"
    # The password in a 0600 file, not on the command line where `ps` shows it.
    write_private(
        config,
        f"bind {HOST}\nport {stack.port('redis', 6379)}\ndir {directory}\n"
        f"requirepass {stack.variables['REDIS_PASSWORD']}\nappendonly yes\nprotected-mode yes\n",
    )
    command = [system_binary("redis-server", "redis-server"), str(config)]
    spawn(stack, "redis", command, stack.process_environment(), directory)
    wait_until(stack, "redis", port_open(stack.port("redis", 6379)), 30)
    return f"redis://{stack.address('redis', 6379)}"


def s3_env(stack: Stack) -> dict[str, str]:
    worker = stack.worker_environment()
    keys = ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")
    return {key: worker[key] for key in keys}


def s3_client(env: dict[str, str]) -> Any:
    """A boto3 S3 client for the AWS_* variables in `env` (the workers' credentials)."""
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=env["AWS_ENDPOINT_URL"],
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        region_name=env["AWS_DEFAULT_REGION"],
    )


def start_s3(stack: Stack) -> str:
    port = stack.port(S3_SERVICE, 9000)
    command = [str(BIN / "moto_server"), "-H", HOST, "-p", str(port)]
    spawn(stack, "s3", command, stack.process_environment(), stack.root)
    wait_until(stack, "s3", http_ok(f"http://{HOST}:{port}/moto-api/"), 60)
    client = s3_client(s3_env(stack))
    existing = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
    buckets = bucket_names(stack.variables)
    for bucket in buckets:
        if bucket not in existing:
            client.create_bucket(Bucket=bucket)
    return f"s3 http://{HOST}:{port} (buckets {', '.join(buckets)})"


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


def triton_settings(stack: Stack) -> Any:
    from tasks.settings import Settings

    worker = stack.worker_environment()
    return Settings(
        home=stack.root / "triton",
        model_repository=worker["CONVEYOR_MODEL_REPOSITORY"],
        triton_http_port=stack.port("triton", 8000),
        triton_grpc_port=stack.port("triton", 8001),
        triton_metrics_port=stack.port("triton", 8002),
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


def start_triton(stack: Stack) -> str:
    from tasks import triton_server

    with _triton_environment(stack):
        settings = triton_settings(stack)
        state = triton_server.ensure_running(settings)
        triton_server.restore_repository(settings, state)
    stack.pids["triton"] = state.pid
    stack.save()
    return (
        f"http://{state.endpoint.http}, grpc {state.endpoint.grpc} (repository {state.repository})"
    )


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
    if name == "triton":
        from tasks import triton_server

        with _triton_environment(stack):
            return triton_server.status(triton_settings(stack)) is not None
    return alive(stack.pids.get(name))


def services() -> list[tuple[str, Callable[[Stack], str]]]:
    started: list[tuple[str, Callable[[Stack], str]]] = [
        ("postgres", start_postgres),
        ("redis", start_redis),
        ("s3", start_s3),
        ("mlflow", start_mlflow),
        ("mlflow-metrics", start_mlflow_metrics),
        ("prefect-server", start_prefect),
        ("triton", start_triton),
        ("pushgateway", start_pushgateway),
        ("prometheus", start_prometheus),
    ]
    for pool, limit in workers().items():
        started.append((f"worker-{pool}", lambda s, p=pool, n=limit: start_worker(s, p, n)))
    return started


def up(stack: Stack) -> list[str]:
    lines = [stack.notice] if stack.notice else []
    for name, start in services():
        if is_up(stack, name):
            lines.append(f"{name:<16} already up (pid {stack.pids.get(name)})")
            continue
        lines.append(f"{name:<16} {start(stack)}")
    env_path = stack.root / ENV_FILE
    write_private(
        env_path,
        env_file_text(
            stack.worker_environment(),
            "compose's x-conveyor-env for this stack: `source` it to point conveyor at it.",
        ),
    )
    lines.append(
        f"\nsource {env_path}   # then: make deploy; conveyor run; prefect deployment run ..."
    )
    return lines


# --- down ----------------------------------------------------------------------------------


def marked_processes(root: Path) -> list[int]:
    """Processes carrying this stack's marker: everything it started and their children."""
    needle = f"{MARKER}={root}\0".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            if needle in (entry / "environ").read_bytes() + b"\0" and alive(int(entry.name)):
                found.append(int(entry.name))
    return found


def _signal(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def stop_pid(pid: int, grace_s: float) -> None:
    # A Prefect worker ignores its first SIGTERM while it winds down: a second one ends it.
    for sig in (signal.SIGTERM, signal.SIGTERM):
        _signal(pid, sig)
        deadline = time.monotonic() + grace_s / 2
        while alive(pid) and time.monotonic() < deadline:
            _reap(pid)
            time.sleep(0.2)
    if alive(pid):
        _signal(pid, signal.SIGKILL)
    _reap(pid)


def down(stack: Stack) -> list[str]:
    lines = []
    for name, _ in reversed(services()):
        pid = stack.pids.pop(name, None)
        if name == "triton":
            from tasks import triton_server

            with _triton_environment(stack):
                stopped = triton_server.stop(triton_settings(stack))
        elif name == "postgres" and alive(pid):
            data = postgres_data(stack)
            command = [
                system_binary("pg_ctl", "postgresql"),
                "-D",
                str(data),
                "-m",
                "fast",
                "-w",
                "stop",
            ]
            subprocess.run(_as_postgres(command), capture_output=True, check=False)
            stopped = True
        elif alive(pid):
            assert pid is not None
            stop_pid(pid, grace_s=20)
            stopped = True
        else:
            stopped = False
        lines.append(f"{name:<16} {'stopped' if stopped else 'was not running'}")
        stack.save()
    left = marked_processes(stack.root)
    for pid in left:
        _signal(pid, signal.SIGKILL)
    if left:
        lines.append(f"killed {len(left)} leftover process(es): {left}")
    time.sleep(0.5)
    still = marked_processes(stack.root)
    if still:
        raise StackError(f"processes of the stack are still running: {still}")
    # moto's S3 keeps its objects in memory only: a registry and a database kept past it would
    # point at artifacts and model files that are gone. The logs stay for a post-mortem.
    elsewhere = postgres_data(stack)
    if not elsewhere.is_relative_to(stack.root):
        shutil.rmtree(elsewhere, ignore_errors=True)
        elsewhere.with_suffix(".log").unlink(missing_ok=True)
    for child in stack.root.iterdir():
        if child.name != "logs":
            if child.is_dir():
                shutil.rmtree(child)
            else:
                child.unlink()
    lines.append(f"data deleted (logs kept in {stack.root / 'logs'})")
    return lines


def status(stack: Stack) -> list[str]:
    return [
        f"{name:<16} {'up' if is_up(stack, name) else 'down'}"
        + (f" (pid {stack.pids[name]})" if name in stack.pids else "")
        for name, _ in services()
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m infra.stack", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("command", choices=["up", "down", "status"])
    parser.add_argument(
        "--dir", type=Path, default=Path(os.environ.get("STACK_DIR", ROOT / ".stack"))
    )
    parser.add_argument(
        "--prefect-setting",
        action="append",
        default=[],
        metavar="PREFECT_X=VALUE",
        help="an extra setting for the Prefect server and the workers (repeatable)",
    )
    parser.add_argument(
        "--scrape-interval",
        metavar="DURATION",
        help="Prometheus' scrape and rule-evaluation interval (default: prometheus.yml's 15s)",
    )
    parser.add_argument(
        "--free-ports",
        action="store_true",
        help="any free ports (tests) instead of compose's + 10000",
    )
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    if args.command != "up" and not (args.dir / STATE_FILE).is_file():
        print(f"no stack in {args.dir}")
        return 0 if args.command == "down" else 1
    try:
        extra = dict(item.split("=", 1) for item in args.prefect_setting)
        stack = Stack.open(
            args.dir,
            free_ports=args.free_ports,
            prefect_settings=extra,
            scrape_interval=args.scrape_interval,
        )
        lines = {"up": up, "down": down, "status": status}[args.command](stack)
    except StackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print("\n".join(lines))
    if args.command == "status":
        return 0 if all(line.split()[1] == "up" for line in lines) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
