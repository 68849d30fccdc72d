"""docker-compose.yml read as the source of truth: the workers' and the Prefect server's
environment, the workers and their limits, the ports, databases and buckets; and the constants
the stack's modules share."""

from __future__ import annotations

import functools
import json
import re
import sys
from pathlib import Path
from typing import Any

import yaml

INFRA = Path(__file__).resolve().parents[1]


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
LOCAL_PATHS = {
    "CONVEYOR_PROJECT_DIR": "project",
    "CONVEYOR_HOME": "home",
    # The certificate the stack makes for its edge (compose: the operator's, in infra/edge/).
    "CONVEYOR_EDGE_CA_FILE": "edge_ca",
    # compose shares them through a volume; here they are the host edge's own directory.
    "CONVEYOR_EDGE_ROUTES_DIR": "edge_routes",
}


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
        # Published ports (container side) and the ones only other services reach (`expose`).
        for published in [*service.get("ports", []), *service.get("expose", [])]:
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
