"""The stack's own state in its directory: generated secrets, env files, the ports it took
(its own, or free ones when another stack holds the defaults), and `Stack`, the one object the
services are started from."""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import secrets
import shlex
import socket
from dataclasses import dataclass
from pathlib import Path

from infra.stack.compose import (
    ADDRESS,
    BIN,
    ENV_FILE,
    HOST,
    LOCAL_PATHS,
    LOCAL_VALUES,
    MARKER,
    PORT_OFFSET,
    ROOT,
    SECRETS_FILE,
    STATE_FILE,
    container_ports,
    interpolate,
    worker_environment_template,
)


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
        # The edge's client keys: conveyor's, and one caller's ("demo") for the operator to try.
        "EDGE_CONVEYOR_KEY": secrets.token_urlsafe(32),
        "EDGE_DEMO_KEY": secrets.token_urlsafe(32),
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


def _free_ports(names: list[str], avoid: set[int]) -> dict[str, int]:
    """A free port for each name, below the kernel's ephemeral range: a port that range gave
    (bind to port 0) may be handed to another process's outgoing connection or bind between
    the choice and the service's own bind, minutes later on a busy host (seen: Prefect's server
    refused its port while other tests ran)."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    chosen: dict[str, int] = {}
    for name in names:
        while True:
            port = random.randint(PRIVATE_PORTS_FROM, low - 1)
            if port not in avoid and port not in chosen.values() and not _taken(port):
                chosen[name] = port
                break
    return chosen


# Above compose's ports + PORT_OFFSET (a first stack's), below the ephemeral range.
PRIVATE_PORTS_FROM = 20000


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
            ports = _free_ports(list(fixed), set(fixed.values())) if free_ports else fixed
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

        paths = {
            "project": str(ROOT),
            "home": str(self.root / "conveyor"),
            "edge_ca": str(self.root / "edge" / "edge-ca.crt"),
            "edge_routes": str(self.root / "edge" / "routes"),
        }
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
        # MLflow 3.17's telemetry thread deletes _MLFLOW_TELEMETRY_SESSION_ID from the
        # environment when its upload fails, while other threads read it: 1 release in 3 failed.
        env["MLFLOW_DISABLE_TELEMETRY"] = "true"
        env.update(extra)
        return env

    def log(self, name: str) -> Path:
        path = self.root / "logs" / f"{name}.log"
        path.parent.mkdir(parents=True, exist_ok=True)
        return path
